r"""
What the explainers return for a fixed set of calls on the tiny SD, SDXL, SD3 and Flux pipelines: every method, both
levels, image inputs, re-explanation, batches. `tests/test_behaviour.py` runs the cases and compares them with the
outputs recorded before the re-layout of the data path (`tests/fixtures/behaviour.npz`), so that a change of the
package's structure is shown to change no image and no score.

Record them again (only for an intended change of behaviour, said in the commit):

    python tests/behaviour_cases.py --write

`python tests/behaviour_cases.py` alone says which arrays are not bit-identical to the recorded ones.
"""

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "behaviour.npz"

SD_PROMPT = "a red circle on the left and a blue square on the right"
DIT_PROMPT = "a cute corgi on the left"
BOX = ((2, 4), (14, 20))
DIT_BOX = ((0, 0), (8, 16))
SD_CALL = dict(num_inference_steps=4, get_images_for_all_inference_steps=False, output_type="np")
SD_METHODS = [
    "grad_x_input",
    "max_grad",
    "mean_grad",
    "min_grad",
    "integrated_gradients",
    "smoothgrad",
    "ablation",
    "linearized_ablation",
    "attention",
    "jacobian_norm",
    "word_attention",
]


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _mask(size: int) -> Image.Image:
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 8 : 5 * size // 8] = 255
    return Image.fromarray(mask)


def _array(value) -> np.ndarray:
    # Float32: what the pipelines compute in (a float64 copy of a float32 value is exact, so nothing is lost).
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    return np.asarray(value, dtype=np.float32)


def record(output) -> Dict[str, np.ndarray]:
    r"""The numbers of one explanation output that a re-layout must not change."""
    found = {"image": _array(output.image)}
    if output.token_attributions is not None:
        found["tokens"] = _array(output.token_attributions.scores)
        found["words"] = _array([score for _, score in output.word_attributions])
    if output.token_gradients is not None:
        found["token_gradients"] = _array(output.token_gradients)
    if output.pooled_share is not None:
        found["pooled_share"] = _array(output.pooled_share)
    for name, scores in sorted((output.encoder_token_attributions or {}).items()):
        found[f"encoder_{name}"] = _array(scores.scores)
    if output.attention_maps is not None:
        # The attributed tokens' rows and the rest summed: the padding rows repeat one another.
        maps = _array(output.attention_maps.maps)
        found["attention_maps"] = np.concatenate([maps[:, :16], maps[:, 16:].sum(1, keepdims=True)], axis=1)
    if getattr(output, "pixel_attributions", None) is not None:
        found["pixels"] = _array(output.pixel_attributions)
    extras = output.extras
    for key in ("word_maps", "signed_scores", "completeness", "pixel_completeness", "projections", "cell_size"):
        if extras.get(key) is not None:
            found[key] = _array(extras[key])
    if extras.get("concept_maps") is not None:
        found["concept_maps"] = np.stack([_array(m) for m in extras["concept_maps"].values()])
        found["concept_scores"] = _array(list(extras["concept_scores"].values()))
    found["traced_calls"] = _array(extras["traced_denoiser_calls"])
    return found


def _sd(kind="text2img", **kwargs):
    from diffusers_interpret.testing import make_tiny_pipeline

    return make_tiny_pipeline(kind, sample_size=16, layers_per_block=1, **kwargs)


def _explain(pipe, prompt, seed=0, **kwargs):
    from diffusers_interpret import explainer_for

    return explainer_for(pipe, verbose=False)(prompt, generator=seeded(seed), **kwargs)


def sd_cases() -> Dict[str, Callable[[], List]]:
    pipe = _sd()
    cases = {}
    for method in SD_METHODS:
        cases[f"sd/{method}"] = lambda method=method: [
            _explain(
                pipe,
                SD_PROMPT,
                attribution_method=method,
                explanation_2d_bounding_box=BOX,
                n_last_diffusion_steps_to_consider_for_attributions=2,
                **SD_CALL,
            )
        ]
    for method in ("grad_x_input", "integrated_gradients", "linearized_ablation", "word_attention"):
        cases[f"sd/{method}/output_level"] = lambda method=method: [
            _explain(
                pipe,
                SD_PROMPT,
                attribution_method=method,
                attribution_level="text_encoder_output",
                explanation_2d_bounding_box=BOX,
                n_last_diffusion_steps_to_consider_for_attributions=2,
                **SD_CALL,
            )
        ]

    def whole_image_checkpointed_with_maps():
        from diffusers_interpret import StableDiffusionPipelineExplainer

        explainer = StableDiffusionPipelineExplainer(pipe, verbose=False, gradient_checkpointing=True)
        return [
            explainer(
                SD_PROMPT, generator=seeded(1), attribution_method="grad_x_input", attention_maps=True, **SD_CALL
            ),
            _explain(pipe, SD_PROMPT, seed=1, **SD_CALL),
        ]

    def reexplained(keep):
        def run():
            first = _explain(
                pipe,
                SD_PROMPT,
                attribution_method="grad_x_input",
                keep_for_reexplanation=keep,
                n_last_diffusion_steps_to_consider_for_attributions=2,
                explanation_2d_bounding_box=BOX,
                **SD_CALL,
            )
            again = first.explain(((16, 0), (32, 32)))
            other = first.explain(((0, 16), (32, 32)), attribution_method="max_grad")
            first.release()
            return [first, again, other]

        return run

    def attention_reexplained():
        first = _explain(pipe, SD_PROMPT, explanation_2d_bounding_box=BOX, **SD_CALL)
        return [first, first.explain(((16, 0), (32, 32))), first.explain(None, attribution_method="attention")]

    def batch():
        outputs = _explain(
            pipe,
            [SD_PROMPT, "a green square on the left"],
            attribution_method="grad_x_input",
            num_images_per_prompt=2,
            n_last_diffusion_steps_to_consider_for_attributions=1,
            explanation_2d_bounding_box=BOX,
            **SD_CALL,
        )
        return list(outputs)

    def region_grid():
        first = _explain(
            pipe, SD_PROMPT, attribution_method="grad_x_input", keep_for_reexplanation="graph",
            n_last_diffusion_steps_to_consider_for_attributions=1, **SD_CALL,
        )  # fmt: skip
        grid = first.region_grid(16)
        first.release()
        return [first, {"grid": grid}]

    cases["sd/checkpointed_and_default"] = whole_image_checkpointed_with_maps
    cases["sd/reexplain_graph"] = reexplained("graph")
    cases["sd/reexplain_latents"] = reexplained("latents")
    cases["sd/reexplain_attention"] = attention_reexplained
    cases["sd/batch"] = batch
    cases["sd/region_grid"] = region_grid

    img2img, inpaint = _sd("img2img"), _sd("inpaint")
    for name, image_pipe, extra in (
        ("img2img", img2img, {}),
        ("inpaint", inpaint, {"mask_image": _mask(32)}),
    ):
        for method in ("grad_x_input", "integrated_gradients", "word_attention"):
            cases[f"sd_{name}/{method}"] = lambda image_pipe=image_pipe, extra=extra, method=method: [
                _explain(
                    image_pipe,
                    SD_PROMPT,
                    image=_image(32),
                    strength=0.75,
                    attribution_method=method,
                    explanation_2d_bounding_box=BOX,
                    **SD_CALL,
                    **extra,
                )
            ]
    return cases


def sdxl_cases() -> Dict[str, Callable[[], List]]:
    from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline

    pipe = make_tiny_sdxl_pipeline("text2img")
    cases = {}
    for method in ("grad_x_input", "word_attention", "attention", "linearized_ablation", "ablation"):
        for level in ("token_embeddings", "text_encoder_output"):
            cases[f"sdxl/{method}/{level}"] = lambda method=method, level=level: [
                _explain(
                    pipe,
                    SD_PROMPT,
                    attribution_method=method,
                    attribution_level=level,
                    explanation_2d_bounding_box=BOX,
                    n_last_diffusion_steps_to_consider_for_attributions=2,
                    **SD_CALL,
                )
            ]
    cases["sdxl/prompt_2"] = lambda: [
        _explain(pipe, SD_PROMPT, prompt_2="a green triangle", attribution_method="grad_x_input", **SD_CALL)
    ]
    image_pipe = make_tiny_sdxl_pipeline("img2img")
    cases["sdxl_img2img/grad_x_input"] = lambda: [
        _explain(image_pipe, SD_PROMPT, image=_image(32), strength=0.75, attribution_method="grad_x_input", **SD_CALL)
    ]
    return cases


def _dit_cases(family: str, pipe, image_pipe, length: int, methods) -> Dict[str, Callable[[], List]]:
    call = dict(height=16, width=16, num_inference_steps=3, max_sequence_length=length, output_type="np")
    call["get_images_for_all_inference_steps"] = False
    cases = {}
    for method in methods:
        for level in ("token_embeddings", "text_encoder_output"):
            cases[f"{family}/{method}/{level}"] = lambda method=method, level=level: [
                _explain(
                    pipe,
                    DIT_PROMPT,
                    attribution_method=method,
                    attribution_level=level,
                    explanation_2d_bounding_box=DIT_BOX,
                    **call,
                )
            ]
    cases[f"{family}/concept_attention/concepts"] = lambda: [
        _explain(pipe, DIT_PROMPT, attribution_method=_concepts(), explanation_2d_bounding_box=DIT_BOX, **call)
    ]
    cases[f"{family}_img2img/grad_x_input"] = lambda: [
        _explain(image_pipe, DIT_PROMPT, image=_image(16), strength=0.5, attribution_method="grad_x_input", **call)
    ]
    return cases


def _concepts():
    from diffusers_interpret.methods import ConceptAttention

    return ConceptAttention(concepts=["dog", "sky"])


def sd3_cases() -> Dict[str, Callable[[], List]]:
    from diffusers_interpret.testing.stable_diffusion_3 import TINY_SD3_T5_LENGTH, make_tiny_sd3_pipeline

    methods = ("grad_x_input", "word_attention", "concept_attention", "attention", "ablation", "linearized_ablation")
    pipe, image_pipe = make_tiny_sd3_pipeline("text2img"), make_tiny_sd3_pipeline("img2img")
    return _dit_cases("sd3", pipe, image_pipe, TINY_SD3_T5_LENGTH, methods)


def flux_cases() -> Dict[str, Callable[[], List]]:
    from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline

    methods = ("grad_x_input", "word_attention", "concept_attention", "attention", "linearized_ablation")
    pipe, image_pipe = make_tiny_flux_pipeline("text2img"), make_tiny_flux_pipeline("img2img")
    cases = _dit_cases("flux", pipe, image_pipe, TINY_T5_LENGTH, methods)
    call = dict(height=16, width=16, num_inference_steps=3, max_sequence_length=TINY_T5_LENGTH, output_type="np")
    cases["flux/true_cfg"] = lambda: [
        _explain(
            pipe,
            DIT_PROMPT,
            negative_prompt="a dog",
            true_cfg_scale=2.0,
            attribution_method="grad_x_input",
            get_images_for_all_inference_steps=False,
            n_last_diffusion_steps_to_consider_for_attributions=1,
            **call,
        )
    ]
    return cases


FAMILIES = {"sd": sd_cases, "sdxl": sdxl_cases, "sd3": sd3_cases, "flux": flux_cases}


def run_family(name: str) -> Dict[str, np.ndarray]:
    r"""Every case of a family, flattened to `case/output index/quantity` -> array."""
    torch.manual_seed(0)
    flat = {}
    for case, make in FAMILIES[name]().items():
        for index, output in enumerate(make()):
            found = {k: _array(v) for k, v in output.items()} if isinstance(output, dict) else record(output)
            for quantity, value in found.items():
                flat[f"{case}/{index}/{quantity}"] = value
    return flat


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"record the cases into {FIXTURE}")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    flat = {}
    for name in FAMILIES:
        flat.update(run_family(name))
    if args.write:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(FIXTURE, **flat)
        print(f"{len(flat)} arrays written to {FIXTURE}")
        return 0
    recorded = np.load(FIXTURE)
    missing = sorted(set(recorded.files) ^ set(flat))
    differ = [key for key in sorted(set(recorded.files) & set(flat)) if not np.array_equal(recorded[key], flat[key])]
    for key in differ:
        print(f"{key}: largest difference {np.abs(recorded[key] - flat[key]).max():.3g}")
    print(f"{len(flat)} arrays: {len(differ)} differ from the recorded ones, {len(missing)} missing on one side")
    return int(bool(differ or missing))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
