r"""
Does the toy Flux carry its words the way real Flux does? Which text path reaches the image, whether T5's states know
which object each word belongs to, what padding does, and what a toy SD3 would cost to train beside it.

`--part text` (default) prints, for the shipped toy Flux (or `--model DIR`, e.g. an earlier run's output):

- causal text path: two-object prompts drawn right (the independent detector) as they are, with the empty prompt's
  pooled CLIP vector in their place, and with the empty prompt's T5 states in their place;
- binding: the cosine between a word's T5 state in "a red circle on the left and a blue square on the right" and in
  the same prompt with the colours swapped (1.0: the state does not depend on the word's object);
- `output.pooled_share` (gradient x input at the encoders' outputs) on three prompts, for comparison;
- padding: for T5 lengths 16 vs 32 and 64 vs 256, the largest pixel change of the image, the Spearman correlation of
  the default method's word scores, and the share of attention left out as sinks.

`--part step-cost` times one training step (forward and backward, batch 32, one thread, median of 15) of the toy Flux
transformer and of a tiny `SD3Transformer2DModel` over the same 64 image tokens with 16+32 and 77+32 text tokens.

    python benchmarks/toy_flux_text_path.py                 # about 40 s
    python benchmarks/toy_flux_text_path.py --part step-cost
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # the training script's builders

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROMPT = "a red circle on the left and a blue square on the right"
SWAPPED = "a blue circle on the left and a red square on the right"
POOLED_PROMPTS = [
    "a red circle on the left",
    "a blue square on the left and a yellow triangle on the right",
    "a green triangle on the right and a red square on the left",
]


def load(model):
    from diffusers import FluxPipeline

    from diffusers_interpret.toy import load_toy_flux_pipeline

    if model is None:
        return load_toy_flux_pipeline()
    pipe = FluxPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def causal_text_path(pipe, num_prompts: int):
    r"""How many of `num_prompts` two-object prompts (seeded) the pipeline draws right, by the detector, as they are,
    with the empty prompt's pooled CLIP vector in place of theirs, and with the empty prompt's T5 states."""
    from diffusers_interpret.toy import TOY_FLUX_CALL
    from diffusers_interpret.toy.detector import check_prompt
    from diffusers_interpret.toy.scenes import sample_scene_spec

    rng = np.random.default_rng(5)
    prompts = [sample_scene_spec(rng, 2, 64, order="random").prompt for _ in range(num_prompts)]
    settings = dict(TOY_FLUX_CALL, output_type="np")
    length = settings["max_sequence_length"]
    empty_states, empty_pooled, _ = pipe.encode_prompt("", "", max_sequence_length=length)
    drawn = {"as they are": 0, "empty prompt's pooled vector": 0, "empty prompt's T5 states": 0}
    for seed, prompt in enumerate(prompts):
        states, pooled, _ = pipe.encode_prompt(prompt, prompt, max_sequence_length=length)
        for name, (t5, clip) in zip(drawn, ((states, pooled), (states, empty_pooled), (empty_states, pooled))):
            embeds = dict(prompt_embeds=t5, pooled_prompt_embeds=clip)
            image = pipe(generator=torch.Generator().manual_seed(seed), **embeds, **settings).images[0]
            drawn[name] += check_prompt(image, prompt).correct
    return drawn


def binding_cosines(pipe):
    def states(prompt):
        ids = pipe.tokenizer_2(prompt, padding="max_length", max_length=16, return_tensors="pt").input_ids
        with torch.no_grad():
            out = torch.nn.functional.normalize(pipe.text_encoder_2(ids)[0][0], dim=-1)
        return out, pipe.tokenizer_2.convert_ids_to_tokens(ids[0])

    (a, tokens_a), (b, tokens_b) = states(PROMPT), states(SWAPPED)
    return {
        word: round(float(a[tokens_a.index(f"▁{word}")] @ b[tokens_b.index(f"▁{word}")]), 4)
        for word in ("red", "blue", "circle", "square")
    }


def pooled_shares(pipe):
    from diffusers_interpret import explainer_for
    from diffusers_interpret.toy import TOY_FLUX_CALL

    explainer = explainer_for(pipe, verbose=False)
    shares = []
    for seed, prompt in enumerate(POOLED_PROMPTS):
        generator = torch.Generator().manual_seed(seed)
        out = explainer(prompt, generator=generator, attribution_method="grad_x_input", **TOY_FLUX_CALL)
        shares.append(round(out.pooled_share, 2))
    return shares


def padding(pipe):
    from scipy.stats import spearmanr

    from diffusers_interpret import explainer_for
    from diffusers_interpret.toy import TOY_FLUX_CALL

    explainer = explainer_for(pipe, verbose=False)
    prompts = POOLED_PROMPTS  # the prompts of tests/test_toy_flux_truth.py's padding test
    rows = {}
    for short, long in ((16, 32), (64, 256)):
        row = {"image max change (of 255)": [], "Spearman of word scores": [], "sink share": []}
        for seed, prompt in enumerate(prompts):
            runs = []  # the default method, as the test
            for length in (short, long):
                settings = dict(TOY_FLUX_CALL, max_sequence_length=length, output_type="np")
                runs.append(explainer(prompt, generator=torch.Generator().manual_seed(seed), **settings))
            row["image max change (of 255)"].append(round(float(np.abs(runs[0].image - runs[1].image).max()) * 255))
            scores = [[score for _, score in run.word_attributions] for run in runs]
            row["Spearman of word scores"].append(round(float(spearmanr(*scores)[0]), 3))
            row["sink share"].append(tuple(round(run.attention_sink_share, 2) for run in runs))
        rows[f"T5 length {short} vs {long}"] = row
    return rows


def step_cost():
    from diffusers import SD3Transformer2DModel
    from train_toy_flux import FluxPipeline, build_transformer

    torch.set_num_threads(1)

    def median_ms(step, repeats=15):
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return round(statistics.median(times) * 1000)

    batch, t, pooled = 32, torch.rand(32), torch.randn(32, 64)
    flux = build_transformer()
    image, text = torch.randn(batch, 64, 16), torch.randn(batch, 32, 64)
    image_ids = FluxPipeline._prepare_latent_image_ids(1, 8, 8, "cpu", torch.float32)

    def flux_step():
        out = flux(
            hidden_states=image,
            timestep=t,
            pooled_projections=pooled,
            encoder_hidden_states=text,
            txt_ids=torch.zeros(32, 3),
            img_ids=image_ids,
            return_dict=False,
        )[0]
        out.square().mean().backward()

    sd3 = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=6,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
        pos_embed_max_size=16,
    )
    latents = torch.randn(batch, 4, 16, 16)
    rows = {"toy Flux (3+3 blocks, 32 text tokens)": median_ms(flux_step)}
    for clip_length in (16, 77):
        states = torch.randn(batch, clip_length + 32, 64)

        def sd3_step(states=states):
            out = sd3(
                hidden_states=latents,
                timestep=t * 1000,
                encoder_hidden_states=states,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
            out.square().mean().backward()

        rows[f"tiny SD3 (6 joint blocks, {clip_length} CLIP + 32 T5 tokens)"] = median_ms(sd3_step)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--part", choices=["text", "step-cost"], default="text")
    parser.add_argument("--model", default=None, help="a toy Flux pipeline folder (default: the shipped one)")
    parser.add_argument("--num-prompts", type=int, default=8, help="two-object prompts of the causal check")
    args = parser.parse_args()
    if args.part == "step-cost":
        for name, ms in step_cost().items():
            print(f"{name}: {ms} ms per training step")
        return
    torch.set_num_threads(1)
    pipe = load(args.model)
    drawn = causal_text_path(pipe, args.num_prompts)
    print(
        "causal text path, two-object prompts drawn right:",
        {k: f"{v} of {args.num_prompts}" for k, v in drawn.items()},
    )
    print("T5 state of a word, cosine across the colour swap:", binding_cosines(pipe))
    print("pooled_share (gradient x input) on three prompts:", pooled_shares(pipe))
    for name, row in padding(pipe).items():
        print(f"{name}: {row}")


if __name__ == "__main__":
    main()
