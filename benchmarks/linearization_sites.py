r"""
Where is removing a word nonlinear? The numbers behind docs/explore.md "Agreeing with ablation" (issue #11).

Fresh two-object prompts (drawn from `--seed`) that the toy model draws correctly (the independent detector says so),
one box around each object as the detector places it, noise seeds `--noise-seed + i`, every step traced.

`--part stability`: measured ablation (each word replaced by padding, the image generated again from the same noise,
L2 change inside the box) against itself with details a reader would not care about changed: L1 instead of L2, the
box grown by 2 or shrunk by 1 pixel, the "empty" prompt's tokens instead of padding. Median Spearman over the boxes.

`--part sites`: median Spearman of each score with measured ablation, word by word:

- the library's `grad_x_input`, `jacobian_norm` (4 / 32 probes) and `word_attention`;
- `word_attention` with each text position's cross-attention weighted by the norm of what it writes, `‖W_o v_j‖`
  (Kobayashi et al., 2020), per layer, averaged over heads;
- ablation linearized at the token embeddings, `‖J_e (e_pad - e_i)‖` (random projections);
- ablation linearized only through the denoising (`linearized_ablation`, 4 / 32 probes): the text encoder's change
  `Δc_i` exact, `‖J_c Δc_i‖`;
- the same with the gradient of the box's pixel sum instead of random projections, `abs(∇_c sum_box · Δc_i)`.

    python benchmarks/linearization_sites.py --part stability --num-scenes 10
    python benchmarks/linearization_sites.py --part sites --num-scenes 8
"""

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # faithfulness

import numpy as np  # noqa: E402
import torch  # noqa: E402
from faithfulness import object_boxes, word_scores, word_units  # noqa: E402

from diffusers_interpret.methods import (  # noqa: E402
    AttributionMethod,
    JacobianNorm,
    LinearizedAblation,
    Scores,
    WordAttention,
)


@dataclass
class EmbeddingLinearizedAblation(AttributionMethod):
    r"""`‖J_e (e_pad - e_i)‖`: removing token i to first order from the token embeddings (text encoder included)."""

    n_probes: int = 4
    seed: int = 0
    name = "embedding_linearized_ablation"
    needs_graph = True
    one_image_per_call = True

    def attribute(self, trace, target) -> Scores:
        image = target.image(trace.decoded)
        generator = torch.Generator().manual_seed(self.seed)
        probes = torch.randn((self.n_probes, *image.shape), generator=generator) * target.mask(image)
        gradients = trace.vector_jacobian_products(target, probes)[:, 0].float()  # (probes, positions, features)
        inputs = trace.text_inputs()
        context = trace.regeneration
        change = (context.baseline("pad") - context.inputs)[0].float()
        scores = []
        for unit in trace.prompt_tokens[0].units:
            features = inputs.unit_features(unit)
            projection = (gradients[:, unit.position, features] * change[unit.position, features]).sum(-1)
            scores.append(float(projection.pow(2).mean().sqrt()))
        return Scores(tokens=[np.array(scores)])


@dataclass
class BoxSumLinearizedAblation(AttributionMethod):
    r"""`abs(∇_c sum_box · Δc_i)`: as `linearized_ablation`, with the box's pixel sum's gradient as the only probe."""

    name = "box_sum_linearized_ablation"
    needs_graph = True
    one_image_per_call = True

    def attribute(self, trace, target) -> Scores:
        context = trace.regeneration
        image = target.image(trace.decoded)
        probes = target.mask(image)[None].expand(1, *image.shape).float()
        gradients = trace.conditioning_vector_jacobian_products(target, probes)
        rows = context.replaced_units([[index] for index in range(len(context.units))], "pad")
        with torch.no_grad():
            prompt = context.conditioning(context.inputs)
            replaced = context.conditioning(rows)
        total = torch.zeros(len(context.units))
        for name, gradient in gradients.items():
            if name in replaced:
                change = (replaced[name].float() - prompt[name].float()).cpu().flatten(1)
                total += change @ gradient[0, 0].flatten().float()
        return Scores(tokens=[total.abs().double().numpy()])


def layer_maps(pipe, prompt, seed, common, record_cross_attention):
    r"""Per cross-attention layer: its maps over the generation, `‖W_o v_j‖` per text position (Kobayashi)."""
    layers = [name[: -len(".processor")] for name in pipe.unet.attn_processors if name.endswith("attn2.processor")]
    with torch.no_grad():
        conditioning = pipe.encode_prompt(prompt, pipe.device, 1, False)[0][0].float()
    per_layer = []
    for name in layers:
        attention = pipe.unet.get_submodule(name)
        with torch.no_grad():
            values = attention.to_v(conditioning.to(attention.to_v.weight.dtype)).float()
            width = values.shape[-1] // attention.heads
            out_weight = attention.to_out[0].weight.float()
            heads = [slice(h * width, (h + 1) * width) for h in range(attention.heads)]
            norms = torch.stack([(values[:, h] @ out_weight[:, h].T).norm(dim=-1) for h in heads]).mean(0)
        with record_cross_attention(pipe, layers=[name]) as recorder:
            pipe(prompt, generator=torch.Generator().manual_seed(seed), **common)
        per_layer.append((recorder.maps.maps[0].double(), norms.double()))
    return per_layer


def weighted_attention_word_scores(output, box, per_layer, weighted):
    r"""`word_attention`'s scores rebuilt from per-layer maps, each text position weighted by its value norm or not."""
    trace = output.session.trace
    maps = sum(m * (norms if weighted else torch.ones_like(norms))[:, None, None] for m, norms in per_layer)
    maps = maps / len(per_layer)
    mixing = trace.token_mixing(0)
    columns = [mixing.column(unit) for unit in trace.prompt_tokens[0].units]
    words = torch.einsum("jhw,jc->chw", maps, mixing.weights[:, columns].double())
    scores = WordAttention.scores_from_word_maps(words, trace.target(box))
    return np.array([scores[group].sum() for group in word_units(output)])


def ablation_variants(output, box):
    r"""Measured ablation's box change per word: L2 (the truth), L1, box grown 2 / shrunk 1 px, "empty" baseline."""
    context = output.session.trace.regeneration
    units = context.tokens.word_units()
    with torch.no_grad():
        reference = context.box_images(context.generate(context.inputs))
        padded = context.box_images(context.generate(context.replaced_units(units, "pad"))) - reference
        empty = context.box_images(context.generate(context.replaced_units(units, "empty"))) - reference
    (x0, y0), (x1, y1) = box
    size = reference.shape[-1]

    def crop(change, grow):
        return change[..., max(0, y0 - grow) : min(size, y1 + grow), max(0, x0 - grow) : min(size, x1 + grow)]

    def l2(change, grow=0):
        return crop(change, grow).flatten(1).norm(dim=1).numpy()

    return l2(padded), {
        "L1 instead of L2": crop(padded, 0).abs().flatten(1).sum(1).numpy(),
        "box grown 2 px": l2(padded, 2),
        "box shrunk 1 px": l2(padded, -1),
        '"empty" tokens instead of padding': l2(empty),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["stability", "sites"], default="sites")
    parser.add_argument("--num-scenes", type=int, default=8, help="correctly drawn scenes to use")
    parser.add_argument("--seed", type=int, default=77, help="seed of the prompts")
    parser.add_argument("--noise-seed", type=int, default=500, help="scene i is generated from noise seed this + i")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers_interpret import StableDiffusionPipelineExplainer, record_cross_attention
    from diffusers_interpret.faithfulness import spearman, word_ablation_effects
    from diffusers_interpret.toy import (
        TOY_GUIDANCE_SCALE,
        TOY_NUM_INFERENCE_STEPS,
        TOY_PROMPT_ORDERS,
        load_toy_pipeline,
    )
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    pipe = load_toy_pipeline(resolution=32)
    explainer = StableDiffusionPipelineExplainer(pipe, verbose=False)
    common = dict(num_inference_steps=TOY_NUM_INFERENCE_STEPS, guidance_scale=TOY_GUIDANCE_SCALE, output_type="np")
    methods = {
        "`grad_x_input` (token embeddings)": ("grad_x_input", "token_embeddings"),
        "`jacobian_norm`, 4 probes": (JacobianNorm(4), "token_embeddings"),
        "`jacobian_norm`, 32 probes": (JacobianNorm(32), "token_embeddings"),
        "`word_attention`": ("word_attention", "token_embeddings"),
        "ablation linearized at the token embeddings, 4 probes": (EmbeddingLinearizedAblation(4), "token_embeddings"),
        "the same, 32 probes": (EmbeddingLinearizedAblation(32), "token_embeddings"),
        "`linearized_ablation` (Δc exact), 4 probes": (LinearizedAblation(4), "token_embeddings"),
        "`linearized_ablation` (Δc exact), 32 probes": (LinearizedAblation(32), "token_embeddings"),
        "the same with the box sum's gradient": (BoxSumLinearizedAblation(), "token_embeddings"),
    }
    rebuilt = "`word_attention` rebuilt from per-layer maps (a check: must match the row above)"
    kobayashi = "`word_attention` with each position weighted by its value norm (Kobayashi et al.)"
    order = list(methods)
    order[order.index("`word_attention`") + 1 : order.index("`word_attention`") + 1] = [rebuilt, kobayashi]
    results = {name: [] for name in order} if args.part == "sites" else {}
    rng = np.random.default_rng(args.seed)
    kept = boxes = 0
    start = time.perf_counter()
    for index in range(20 * args.num_scenes):
        if kept >= args.num_scenes:
            break
        prompt = sample_scene_spec(rng, 2, order=TOY_PROMPT_ORDERS[32]).prompt
        seed = args.noise_seed + index
        image = pipe(prompt, generator=torch.Generator().manual_seed(seed), **common).images[0]
        check = check_prompt(image, prompt)
        if not check.correct:
            continue
        kept += 1
        if args.part == "sites":
            per_layer = layer_maps(pipe, prompt, seed, common, record_cross_attention)
        for box in object_boxes(check).values():
            boxes += 1

            def explain(method, level, prompt=prompt, seed=seed, box=box):
                return explainer(
                    prompt,
                    generator=torch.Generator().manual_seed(seed),
                    explanation_2d_bounding_box=box,
                    attribution_method=method,
                    attribution_level=level,
                    get_images_for_all_inference_steps=False,
                    **common,
                )

            if args.part == "stability":
                truth, variants = ablation_variants(explain("word_attention", "token_embeddings"), box)
                for name, scores in variants.items():
                    results.setdefault(name, []).append(spearman(scores, truth))
                continue
            truth = None
            for name, (method, level) in methods.items():
                output = explain(method, level)
                if truth is None:
                    truth = word_ablation_effects(output, box)
                    for weighted, row in ((False, rebuilt), (True, kobayashi)):
                        scores = weighted_attention_word_scores(output, box, per_layer, weighted)
                        results.setdefault(row, []).append(spearman(scores, truth))
                results.setdefault(name, []).append(spearman(word_scores(output), truth))
        print(f"{kept} scenes, {boxes} boxes, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    print(f"\n{kept} scenes, {boxes} object boxes, 32x32 toy, prompt seed {args.seed}, noise {args.noise_seed}+i")
    print(f"| {'ablation changed by' if args.part == 'stability' else 'scores'} | median Spearman vs ablation |")
    print("|---|---|")
    for name, values in results.items():
        print(f"| {name} | {np.nanmedian(values):.2f} |")


if __name__ == "__main__":
    main()
