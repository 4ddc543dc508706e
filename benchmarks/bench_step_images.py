r"""
What `get_images_for_all_inference_steps=True` (the 0.5.0 default, kept) costs now that step images are decoded when
first looked at: a maps-only explanation (`word_attention`, no prompt dependence) with the step images kept and not
looked at, without them, and with them looked at (every step decoded), on the tiny test pipelines of each family and
on the shipped toy; medians of interleaved runs.

    python benchmarks/bench_step_images.py            # about a minute
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

import torch  # noqa: E402

from diffusers_interpret import explainer_for  # noqa: E402
from diffusers_interpret.testing import make_tiny_pipeline  # noqa: E402
from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline  # noqa: E402
from diffusers_interpret.toy import TOY_MODELS  # noqa: E402

PROMPT = "a red circle on the left and a blue square on the right"


def cases():
    toy = TOY_MODELS["toy"]
    yield "toy SD 32x32, 20 steps", toy.load(), dict(toy.call)
    yield "tiny SD 64x64, 10 steps", make_tiny_pipeline(), dict(num_inference_steps=10)
    flux = make_tiny_flux_pipeline()
    yield (
        "tiny Flux 64x64, 10 steps",
        flux,
        dict(num_inference_steps=10, max_sequence_length=TINY_T5_LENGTH, height=64, width=64),
    )


def main():
    torch.set_num_threads(2)
    for name, pipe, call in cases():
        explainer = explainer_for(pipe, verbose=False)
        base = dict(generator=None, prompt_dependence=False, **call)

        def run(steps: bool, look: bool, explainer=explainer, base=base):
            output = explainer(PROMPT, **{**base, "generator": torch.Generator().manual_seed(0)},
                               get_images_for_all_inference_steps=steps)  # fmt: skip
            if look:
                list(output.all_images_during_generation)

        variants = {"without step images": (False, False), "kept, not looked at": (True, False),
                    "kept and looked at": (True, True)}  # fmt: skip
        times = {key: [] for key in variants}
        run(True, True)  # warm-up
        for _ in range(5):
            for key, (steps, look) in variants.items():
                started = time.perf_counter()
                run(steps, look)
                times[key].append(time.perf_counter() - started)
        base_time = statistics.median(times["without step images"])
        cells = ", ".join(
            f"{key} {statistics.median(v):.3f} s ({statistics.median(v) / base_time:.2f}x)" for key, v in times.items()
        )
        print(f"{name:28s} {cells}")


if __name__ == "__main__":
    main()
