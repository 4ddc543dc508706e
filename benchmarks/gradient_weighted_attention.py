r"""
Does weighing the toy Flux's joint attention by its gradient (Chefer et al., 2021: `E_h[(dL/dA * A)^+]`, the
attention a box depends on rather than the attention it pays) put the boxed object's colour first? A probe, not a
method: for each object box of `faithfulness.py`'s two-object scenes, the `grad_x_input` explanation is run with hooks
that keep every joint-attention layer's output (before its projection) and its gradient from the box's backward pass;
then, for each layer and traced step, `dL/dA_hij = g_hi . v_hj` (the gradient at image token `i`'s attention output
times text token `j`'s value, head `h`), times the attention `A_hij` (computed beside the layer as the recorders do,
one softmax over every key), clipped at zero (or signed, or absolute), averaged over heads and summed over the image's
tokens. Each word scores its most-read T5 piece (as `word_attention` merges pieces). Printed: for each variant, the
truth (each word left out, `faithfulness.word_ablation_effects`) and `grad_x_input`, the share of boxes whose colour
word comes first, what comes first by the object's shape (colour / shape / a side word / another word), and the
median Spearman with the truth.

Read at T5's positions, every position of an object's clause carries the whole clause (the toy's T5 is
bidirectional), so the "handed back" rows also give each position's score (the prompt's own tokens' only, as the maps
leave the sinks out) to the input tokens that feed it, in proportion to `||(d h_j / d e_i) e_i||` through T5 (the
hand-back `word_attention` makes).

    python benchmarks/gradient_weighted_attention.py --num-scenes 6 --seed 4242
"""

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faithfulness as fb  # noqa: E402

VARIANTS = ("clipped", "signed", "absolute")
HANDED_BACK = ("clipped, handed back", "absolute, handed back")


class AttentionKeeper:
    r"""Hooks on the toy Flux's attention layers keeping, while gradients are on, each call's inputs and its output
    before projection (with its gradient retained)."""

    def __init__(self, transformer):
        self.records = []
        self.handles = []
        for block in transformer.transformer_blocks:
            self.handles.append(block.attn.register_forward_pre_hook(self.keep_inputs, with_kwargs=True))
            self.handles.append(block.attn.to_out[0].register_forward_hook(self.keep_double_output))
        for block in transformer.single_transformer_blocks:
            self.handles.append(block.attn.register_forward_pre_hook(self.keep_inputs, with_kwargs=True))
            self.handles.append(block.attn.register_forward_hook(self.keep_single_output, with_kwargs=True))

    def keep_inputs(self, module, args, kwargs):
        if torch.is_grad_enabled():
            text = kwargs.get("encoder_hidden_states")
            self.records.append(
                dict(
                    module=module,
                    hidden=kwargs["hidden_states"].detach(),
                    text=None if text is None else text.detach(),
                    rotary=kwargs.get("image_rotary_emb"),
                    output=None,
                )
            )

    def keep_double_output(self, module, args, output):  # the image tokens' attention output, before `to_out[0]`
        if torch.is_grad_enabled() and args[0].requires_grad:
            args[0].retain_grad()
            self.records[-1]["output"] = args[0]

    def keep_single_output(self, module, args, kwargs, output):
        if torch.is_grad_enabled() and output.requires_grad:
            output.retain_grad()
            self.records[-1]["output"] = output


@torch.no_grad()
def position_scores(record, text_length: int, variant: str) -> torch.Tensor:
    from diffusers_interpret.tracing.attention import joint_queries_keys, joint_scores

    module, gradient = record["module"], record["output"].grad
    heads = int(module.heads)
    query, key, head_dim = joint_queries_keys(module, record["hidden"], record["text"], record["rotary"], True)
    probabilities = joint_scores(module, query, key, head_dim, slice(text_length, query.shape[1])).softmax(-1)
    probabilities = probabilities[..., :text_length]  # (batch, heads, image tokens, text tokens)
    if record["text"] is not None:
        values = module.add_v_proj(record["text"])
    else:
        values, gradient = module.to_v(record["hidden"])[:, :text_length], gradient[:, text_length:]
    values = values.float().unflatten(-1, (heads, -1)).transpose(1, 2)
    gradient = gradient.float().unflatten(-1, (heads, -1)).transpose(1, 2)
    relevance = probabilities * (gradient @ values.transpose(-1, -2))
    if variant == "clipped":
        relevance = relevance.clamp_min(0)
    elif variant == "absolute":
        relevance = relevance.abs()
    return relevance.mean(1).sum(1)[0]


@torch.no_grad()
def t5_mixing(pipe, prompt: str, length: int) -> torch.Tensor:
    r"""(positions, positions): `||(d h_j / d e_i) e_i||` through the toy's T5, each row normalised to 1 (the hand-back
    `word_attention` makes, for T5 alone), by forward-mode differentiation."""
    import torch.autograd.forward_ad as forward_ad

    from diffusers_interpret.tracing.leaves import EagerAttention

    encoder = pipe.text_encoder_2
    ids = pipe.tokenizer_2(prompt, max_length=length, padding="max_length", truncation=True, return_tensors="pt")
    embeddings = encoder.get_input_embeddings()(ids.input_ids).float()
    tangents = torch.zeros(length, length, embeddings.shape[-1])
    tangents[torch.arange(length), torch.arange(length)] = embeddings[0]
    with EagerAttention([encoder]), forward_ad.dual_level():
        dual = forward_ad.make_dual(embeddings.expand(length, -1, -1).clone(), tangents)
        made = encoder(inputs_embeds=dual).last_hidden_state
        weights = forward_ad.unpack_dual(made).tangent.double().norm(dim=-1).T  # (positions j, inputs i)
    return weights / weights.sum(1, keepdim=True).clamp_min(1e-30)


def word_of_positions(tokenizer, prompt: str, length: int):
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer(prompt, max_length=length, padding="max_length", truncation=True).input_ids
    )
    words, word = [], -1
    for piece in pieces:
        word += piece.startswith("▁")
        words.append(word if piece not in tokenizer.all_special_tokens and word >= 0 else -1)
    return words


def merged_words(scores, words_of, count: int) -> np.ndarray:
    merged = np.full(count, -np.inf)
    for position, word in enumerate(words_of):
        if word >= 0:
            merged[word] = max(merged[word], float(scores[position]))
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=6)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from diffusers_interpret.faithfulness import spearman, word_ablation_effects
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    run = fb.ToyRun(
        argparse.Namespace(
            family="flux", model=None, methods=["grad_x_input"], traced=None, seed=args.seed, deletion_scenes=0
        )
    )
    keeper = AttentionKeeper(run.pipe.transformer)
    rng = np.random.default_rng(args.seed)
    prompts = [sample_scene_spec(rng, 2, order="random").prompt for _ in range(args.num_scenes)]
    rows = ("each word left out (truth)", "grad_x_input", *VARIANTS, *HANDED_BACK)
    first = {row: defaultdict(Counter) for row in rows}
    agreement = defaultdict(list)
    for index, prompt in enumerate(prompts):
        seed = args.seed + index
        image, _ = run.plain(prompt, seed)
        check = check_prompt(image, prompt)
        if not check.correct:
            continue
        words = prompt.split()
        positions, boxes = fb.object_words(prompt), fb.object_boxes(check)
        for side, box in boxes.items():
            colour, shape = positions[side]
            keeper.records.clear()
            output = run.explain("grad_x_input", prompt, seed, box, image)
            records = [r for r in keeper.records if r["output"] is not None and r["output"].grad is not None]
            text_length = int(records[0]["text"].shape[1])
            truth = word_ablation_effects(output, box)
            scores = {"each word left out (truth)": truth, "grad_x_input": fb.word_scores(output)}
            words_of = word_of_positions(run.pipe.tokenizer_2, prompt, text_length)
            mixing = t5_mixing(run.pipe, prompt, text_length)
            own = torch.tensor([word >= 0 for word in words_of], dtype=torch.float64)  # no sinks, as the maps
            for variant in VARIANTS:
                total = sum(position_scores(record, text_length, variant) for record in records).double()
                scores[variant] = merged_words(total, words_of, len(words))
                if f"{variant}, handed back" in HANDED_BACK:
                    handed = (total * own) @ mixing
                    scores[f"{variant}, handed back"] = merged_words(handed, words_of, len(words))
            for row, values in scores.items():
                kind = fb.first_word(values, words, colour, shape)
                first[row][words[shape]]["side" if kind in ("left", "right") else kind] += 1
                if row != rows[0]:
                    agreement[row].append(spearman(values, truth))
            output.release()
        print(f"scene {index + 1}/{len(prompts)} done", file=sys.stderr, flush=True)
    print("| scores | colour first (%) | circle | square | triangle | Spearman vs the truth |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        by_shape = first[row]
        boxes = sum(sum(counts.values()) for counts in by_shape.values())
        cells = []
        for shape in ("circle", "square", "triangle"):
            counts = by_shape[shape]
            other = sum(counts.values()) - counts["colour"] - counts["shape"] - counts["side"]
            cells.append(f"{counts['colour']} / {counts['shape']} / {counts['side']} / {other}")
        colour_first = 100 * sum(counts["colour"] for counts in by_shape.values()) / max(boxes, 1)
        rho = f"{np.median(agreement[row]):.2f}" if agreement[row] else "(1.00)"
        print(f"| {row} | {colour_first:.0f} | {' | '.join(cells)} | {rho} |")


if __name__ == "__main__":
    main()
