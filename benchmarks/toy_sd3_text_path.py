r"""
Which copy of the words the toy SD3 draws from: its text sequence holds every word twice (the two CLIPs' penultimate
states side by side, then T5's states), as real SD3's does, and real SD3 draws from either (it runs without T5).

Measured causally: seeded two-object prompts are generated from the prompt's own encoding and from encodings with one
part replaced (the CLIP tokens zeroed, T5's tokens zeroed as the pipeline does when it has no T5, the empty prompt's
pooled vector, both copies zeroed), and the independent detector says which images show the scene the prompt names.
Then the default method's word scores: how much of each word's score comes through each encoder's copy.

    python benchmarks/toy_sd3_text_path.py                  # about a minute
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import numpy as np  # noqa: E402
import torch  # noqa: E402

CONDITIONS = ("as they are", "CLIP tokens zeroed", "T5 tokens zeroed", "empty prompt's pooled vector", "both zeroed")


def causal_text_path(pipe, num_prompts: int):
    r"""How many of `num_prompts` seeded two-object prompts the pipeline draws right (by the detector) under each of
    `CONDITIONS`."""
    from diffusers_interpret.toy import TOY_SD3_CALL
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    rng = np.random.default_rng(5)
    prompts = [sample_scene_spec(rng, 2, 64, order="random").prompt for _ in range(num_prompts)]
    settings = dict(TOY_SD3_CALL, output_type="np")
    length, clip_length = settings.pop("max_sequence_length"), pipe.tokenizer_max_length
    _, _, empty_pooled, _ = pipe.encode_prompt(
        "", "", "", do_classifier_free_guidance=False, max_sequence_length=length
    )
    drawn = dict.fromkeys(CONDITIONS, 0)
    for seed, prompt in enumerate(prompts):
        states, _, pooled, _ = pipe.encode_prompt(
            prompt, prompt, prompt, do_classifier_free_guidance=False, max_sequence_length=length
        )
        clip_zeroed, t5_zeroed = states.clone(), states.clone()
        clip_zeroed[:, :clip_length] = 0
        t5_zeroed[:, clip_length:] = 0
        variants = (
            (states, pooled),
            (clip_zeroed, pooled),
            (t5_zeroed, pooled),
            (states, empty_pooled),
            (torch.zeros_like(states), pooled),
        )
        for name, (sequence, vector) in zip(CONDITIONS, variants):
            image = pipe(
                prompt_embeds=sequence,
                pooled_prompt_embeds=vector,
                max_sequence_length=length,
                generator=torch.Generator().manual_seed(seed),
                **settings,
            ).images[0]
            drawn[name] += check_prompt(image, prompt).correct
    return drawn


def encoder_shares(pipe, num_prompts: int):
    r"""The default method's whole-image scores, split by encoder: the share of the content words' total that comes
    through the CLIP tokens (one unit over CLIP-L's and CLIP-G's features) and through T5's pieces."""
    from diffusers_interpret import explainer_for
    from diffusers_interpret.toy import TOY_SD3_CALL
    from diffusers_interpret.toy.scenes import COLORS, SHAPES, sample_scene_spec

    explainer = explainer_for(pipe, verbose=False)
    rng = np.random.default_rng(6)
    shares = []
    for seed in range(num_prompts):
        prompt = sample_scene_spec(rng, 2, 64, order="random").prompt
        out = explainer(prompt, generator=torch.Generator().manual_seed(seed), **TOY_SD3_CALL)
        totals = {}
        tokens = out.token_attributions
        for (token, score), encoder in zip(tokens, tokens.encoders):
            if token in COLORS + SHAPES + ("triangle", "tri", "angle"):
                totals[encoder] = totals.get(encoder, 0.0) + float(score)
        whole = sum(totals.values())
        shares.append({encoder: round(total / whole, 2) for encoder, total in totals.items()})
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--num-prompts", type=int, default=8, help="two-object prompts of the causal check")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from diffusers_interpret.toy import load_toy_sd3_pipeline

    pipe = load_toy_sd3_pipeline()
    drawn = causal_text_path(pipe, args.num_prompts)
    print("two-object prompts drawn right:", {k: f"{v} of {args.num_prompts}" for k, v in drawn.items()})
    print("content words' score by encoder (default method, whole image):", encoder_shares(pipe, 4))


if __name__ == "__main__":
    main()
