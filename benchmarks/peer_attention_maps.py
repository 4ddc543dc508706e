r"""
Maps-only recording, side by side with attention-map-diffusers (issue #30): the time of one pipeline call recording
its image-to-text attention maps over every step, with this library's `record_cross_attention` and with the peer's
`AttentionCapture(relations="image->text", timesteps="all")` (its default "fast" mode: q/k kept, maps computed after),
maps computed, each against a plain call of the same pipeline, on the same tiny offline pipelines, in one process,
median of `--repeats` after a warm-up. Both leave the pipeline's image as it is (checked).

    pip install --no-deps attention-map-diffusers   # the peer (its torchvision is only for saving PNGs)
    python benchmarks/peer_attention_maps.py --repeats 5
    python benchmarks/peer_attention_maps.py --repeats 5 --only "HunyuanVideo 1.5"   # one pipeline's row
"""

import argparse
import statistics
import time

import numpy as np
import torch


def pipelines():
    from diffusers_interpret.testing import make_tiny_pipeline
    from diffusers_interpret.testing.flux import TINY_T5_LENGTH, make_tiny_flux_pipeline

    yield "SD (tiny, 64x64)", make_tiny_pipeline("text2img"), dict(height=64, width=64)
    flux = dict(height=16, width=16, max_sequence_length=TINY_T5_LENGTH)
    yield "Flux (tiny, 16x16)", make_tiny_flux_pipeline("text2img"), flux
    from diffusers_interpret.testing.wan import TINY_WAN_CALL, make_tiny_wan_pipeline

    yield "Wan (tiny, 9x16x16)", make_tiny_wan_pipeline(), dict(TINY_WAN_CALL, negative_prompt="")
    from diffusers_interpret.testing.cogvideox import TINY_COGVIDEOX_CALL, make_tiny_cogvideox_pipeline

    yield "CogVideoX (tiny, 9x16x16)", make_tiny_cogvideox_pipeline(), dict(TINY_COGVIDEOX_CALL, negative_prompt="")
    from diffusers_interpret.testing.hunyuan_video import TINY_HUNYUAN_VIDEO_CALL, make_tiny_hunyuan_video_pipeline

    yield "HunyuanVideo (tiny, 9x16x16)", make_tiny_hunyuan_video_pipeline(), TINY_HUNYUAN_VIDEO_CALL
    from diffusers_interpret.testing.hunyuan_video15 import (
        TINY_HUNYUAN_VIDEO15_CALL,
        make_tiny_hunyuan_video15_pipeline,
    )

    # Its guider at 4: the prompt's call and the negative prompt's each step (both record the prompt's calls alone).
    pipe = make_tiny_hunyuan_video15_pipeline(guidance_scale=4.0)
    yield "HunyuanVideo 1.5 (tiny, 9x16x16)", pipe, TINY_HUNYUAN_VIDEO15_CALL


def cases(pipe, prompt: str, call: dict, capture_class) -> dict:
    # The three runs of one pipeline: plain, recording with this library, recording with the peer (maps computed).
    from diffusers_interpret import record_cross_attention

    def plain():
        output = pipe(prompt, generator=torch.Generator().manual_seed(0), **call)
        return output.frames if hasattr(output, "frames") else output.images

    def ours():
        with record_cross_attention(pipe) as recorder:
            images = plain()
        recorder.maps  # noqa: B018 (the maps built, as a user reads them)
        return images

    def peer():
        with capture_class(pipe, relations="image->text", timesteps="all") as capture:
            images = plain()
        capture.compute()
        return images

    return {"plain": plain, "ours": ours, "peer": peer}


def timed(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="only the pipelines whose name holds this text")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from attention_map_diffusers import AttentionCapture
    except ImportError:
        raise SystemExit(
            "attention-map-diffusers is not installed: pip install --no-deps attention-map-diffusers"
        ) from None

    prompt = "a red circle on the left and a blue square on the right"
    print(
        f"{'pipeline':<30} {'plain s':>8} {'ours s':>8} {'x plain':>8} {'peer s':>8} {'x plain':>8} {'peer/ours':>9}"
    )
    started = time.perf_counter()
    for name, pipe, call in pipelines():
        if args.only is not None and args.only not in name:
            continue
        runs = cases(pipe, prompt, dict(call, num_inference_steps=args.steps, output_type="np"), AttentionCapture)
        reference = runs["plain"]()
        assert np.array_equal(runs["ours"](), reference) and np.array_equal(runs["peer"](), reference)
        t_plain, t_ours, t_peer = (timed(runs[key], args.repeats) for key in ("plain", "ours", "peer"))
        print(
            f"{name:<30} {t_plain:>8.3f} {t_ours:>8.3f} {t_ours / t_plain:>8.2f} {t_peer:>8.3f} "
            f"{t_peer / t_plain:>8.2f} {t_peer / t_ours:>9.2f}"
        )
    print(f"({args.steps} steps, every step recorded, {args.threads} threads, median of {args.repeats}; "
          f"{time.perf_counter() - started:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
