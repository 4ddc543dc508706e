r"""
Cost of an explanation vs a plain generation, on the tiny offline pipelines (64x64 images, 10 steps, CFG 7.5): SD
(`--family sd`), SDXL (`--family sdxl`: two text encoders, the pooled embedding), SD3 (`--family sd3`: CLIP-L, CLIP-G
and T5 into joint attention, text-to-image and img2img) or Flux (`--family flux`: T5 tokens and the pooled CLIP vector,
one transformer call per step; text-to-image and img2img).

Every case runs in a fresh subprocess (so peak RSS is its own): one warm-up, then the median of `--repeats` timed
runs. Printed per case: median seconds, ratio to the plain `pipe()` call measured in the same subprocess, the
"ideal" (plain + the backward pass alone, as measured inside the explainer) and our ratio to it, and peak RSS.

    python benchmarks/bench_explainer.py                 # text-to-image, N = 0, 2, 5, 10, with/without checkpointing
    python benchmarks/bench_explainer.py --repeats 5 --steps 10
    python benchmarks/bench_explainer.py --kind img2img      # or inpaint (9-channel UNet); strength 1.0
    python benchmarks/bench_explainer.py --family sdxl       # the tiny SDXL pipeline (any --kind)
    python benchmarks/bench_explainer.py --family flux       # the tiny Flux pipeline (text2img or img2img)
    python benchmarks/bench_explainer.py --family sd3        # the tiny SD3 pipeline (text2img or img2img)
    python benchmarks/bench_explainer.py --family chroma     # the tiny Chroma pipeline (text2img or img2img)
    python benchmarks/bench_explainer.py --family flux2_klein  # the tiny Flux 2 [klein] pipeline (text2img)
    python benchmarks/bench_explainer.py --family qwenimage  # the tiny Qwen-Image pipeline (text2img)
    python benchmarks/bench_explainer.py --family prx        # the tiny PRX pipeline (text2img)
    python benchmarks/bench_explainer.py --family sana       # the tiny Sana pipeline (text2img)
    python benchmarks/bench_explainer.py --family z_image    # the tiny Z-Image pipeline (text2img)
    python benchmarks/bench_explainer.py --family controlnet_sd --size 32  # ControlNet (also _sdxl, _flux --size 16)
    python benchmarks/bench_explainer.py --family instruct_pix2pix --size 32  # also flux_fill, flux_kontext (16)
    python benchmarks/bench_explainer.py --family wan --size 32  # text-to-video, 9 frames (also cogvideox, ltx, ...)
    python benchmarks/bench_explainer.py --family sd15-size --size 256 --traced 10 --repeats 1 --no-prompt-dependence

`--family sd15-size` builds a UNet and VAE of Stable Diffusion 1.5's size (random weights, `bench_memory_real_size.py`)
for the explanation's time at real size on the CPU; `--size` sets the image size, `--no-prompt-dependence` leaves the
prompt-dependence redraws out (the "ideal" never includes them).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASE_SCRIPT = r"""
import json, resource, statistics, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads({threads})
import numpy as np
from PIL import Image
from diffusers_interpret import explainer_for
from diffusers_interpret.testing import make_tiny_pipeline
from diffusers_interpret.testing.stable_diffusion_xl import make_tiny_sdxl_pipeline
from diffusers_interpret.testing.flux import make_tiny_flux_pipeline
from diffusers_interpret.testing.stable_diffusion_3 import make_tiny_sd3_pipeline
from diffusers_interpret.testing.chroma import make_tiny_chroma_pipeline
from diffusers_interpret.testing.flux2 import make_tiny_flux2_klein_pipeline
from diffusers_interpret.testing.prx import make_tiny_prx_pipeline
from diffusers_interpret.testing.qwenimage import make_tiny_qwenimage_pipeline
from diffusers_interpret.testing.sana import make_tiny_sana_pipeline
from diffusers_interpret.testing.z_image import make_tiny_z_image_pipeline
from diffusers_interpret.testing.controlnet import make_tiny_controlnet_pipeline
from diffusers_interpret.testing.flux_edits import make_tiny_flux_fill_pipeline, make_tiny_flux_kontext_pipeline
from diffusers_interpret.testing.wan import make_tiny_wan_pipeline
from diffusers_interpret.testing.cogvideox import make_tiny_cogvideox_pipeline
from diffusers_interpret.testing.hunyuan_video import TINY_HUNYUAN_TEMPLATE, make_tiny_hunyuan_video_pipeline
from diffusers_interpret.testing.hunyuan_video15 import make_tiny_hunyuan_video15_pipeline
from diffusers_interpret.testing.ltx import make_tiny_ltx_pipeline

family, kind, n, ckpt, steps, repeats = {family!r}, {kind!r}, {n!r}, {ckpt!r}, {steps!r}, {repeats!r}
size, dependence = {size!r}, {dependence!r}
if family == "sd15-size":
    sys.path.insert(0, {benchmarks!r})
    from bench_memory_real_size import build_pipeline
    pipe = build_pipeline("sd")
elif family == "sd":
    pipe = make_tiny_pipeline(kind)
elif family == "sdxl":
    pipe = make_tiny_sdxl_pipeline(kind, sample_size=32, layers_per_block=2)
elif family == "flux":
    pipe = make_tiny_flux_pipeline(kind)
elif family == "chroma":
    pipe = make_tiny_chroma_pipeline(kind)
elif family == "flux2_klein":
    pipe = make_tiny_flux2_klein_pipeline()
elif family == "qwenimage":
    pipe = make_tiny_qwenimage_pipeline()
elif family == "prx":
    pipe = make_tiny_prx_pipeline()
elif family == "sana":
    pipe = make_tiny_sana_pipeline()
elif family == "z_image":
    pipe = make_tiny_z_image_pipeline()
elif family.startswith("controlnet_"):
    pipe = make_tiny_controlnet_pipeline(family.split("_")[1])
elif family == "instruct_pix2pix":
    pipe = make_tiny_pipeline("instruct_pix2pix", sample_size=size // 2)
elif family == "flux_fill":
    pipe = make_tiny_flux_fill_pipeline()
elif family == "flux_kontext":
    pipe = make_tiny_flux_kontext_pipeline()
elif family == "wan":
    pipe = make_tiny_wan_pipeline()
elif family == "cogvideox":
    pipe = make_tiny_cogvideox_pipeline()
elif family == "hunyuan_video":
    pipe = make_tiny_hunyuan_video_pipeline()
elif family == "hunyuan_video15":
    pipe = make_tiny_hunyuan_video15_pipeline(guidance_scale=7.5)  # its guider: two transformer calls a step
elif family == "hunyuan_video15_i2v":
    pipe = make_tiny_hunyuan_video15_pipeline(guidance_scale=7.5, kind="image2video")
elif family == "ltx_i2v":
    pipe = make_tiny_ltx_pipeline(kind="image2video")
elif family == "ltx":
    pipe = make_tiny_ltx_pipeline()
else:
    pipe = make_tiny_sd3_pipeline(kind)
prompt = "a red circle on the left and a blue square on the right"
common = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size)
if family in ("flux", "sd3", "chroma", "controlnet_flux", "flux_fill", "flux_kontext"):
    common.update(max_sequence_length=16)
if family == "flux2_klein":
    common.update(max_sequence_length=40)  # the chat template's 14 tokens and the prompt's
if family == "qwenimage":
    common.update(max_sequence_length=24, negative_prompt="blurry", true_cfg_scale=4.0)  # two calls a step
if family == "prx":
    common.update(use_resolution_binning=False)  # the tiny pipeline's sizes have no bin
if family == "sana":
    common.update(use_resolution_binning=False, max_sequence_length=24)
if family == "z_image":
    common.update(max_sequence_length=32)
if family in ("wan", "cogvideox", "hunyuan_video", "ltx", "ltx_i2v"):  # clips of 9 frames (3 latent frames)
    common.update(num_frames=9, max_sequence_length=24, negative_prompt="")  # Wan: two calls a step, CogVideoX: rows
if family == "hunyuan_video":
    common.update(prompt_template=TINY_HUNYUAN_TEMPLATE)  # guidance-distilled: one call a step
if family.startswith("hunyuan_video15"):  # its guider holds the scale; 9 frames are 5 latent frames (2x temporal)
    common = dict(num_inference_steps=steps, height=size, width=size, num_frames=9, negative_prompt="")
rng = np.random.default_rng(0)
picture = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
if family.endswith("_i2v"):  # image-to-video: the clip starts from the picture
    common.update(image=picture)
if family == "hunyuan_video15_i2v":
    del common["height"], common["width"]  # its size is the image's (its target size: --size 16)
if family.startswith("controlnet_"):
    common["control_image" if family == "controlnet_flux" else "image"] = picture
if family == "instruct_pix2pix":
    common.update(image=picture, image_guidance_scale=1.5)
    del common["height"], common["width"]  # its size is the image's
if family == "flux_fill":
    mask = np.zeros((size, size), np.uint8); mask[size // 4 : 3 * size // 4, : size // 2] = 255
    common.update(image=picture, mask_image=Image.fromarray(mask))
if family == "flux_kontext":
    common.update(image=picture, _auto_resize=False, max_area=size * size)
if kind != "text2img":
    common["image"] = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    common["strength"] = 1.0  # every step runs, as in text-to-image
if kind == "inpaint":
    mask = np.zeros((64, 64), np.uint8); mask[16:48, 16:48] = 255
    common["mask_image"] = Image.fromarray(mask)
def plain():
    pipe(prompt=prompt, generator=torch.Generator().manual_seed(0), **common)

explainer = explainer_for(pipe, verbose=False, gradient_checkpointing=ckpt)
backward = []
def explain():
    out = explainer(prompt, generator=torch.Generator().manual_seed(0), get_images_for_all_inference_steps=False,
                    n_last_diffusion_steps_to_consider_for_attributions=n, attribution_method="grad_x_input",
                    prompt_dependence=dependence, **common)
    backward.append(out.stats.backward_seconds)

def timed(fn):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return statistics.median(times)

if n == "plain":
    result = dict(seconds=timed(plain), plain=None, backward=0.0)
else:
    t_plain = timed(plain)
    backward.clear()
    result = dict(seconds=timed(explain), plain=t_plain, backward=statistics.median(backward[1:] or backward))
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(result))
"""


def run_case(family, kind, n, ckpt, steps, repeats, threads, size=64, dependence=True):
    code = CASE_SCRIPT.format(
        family=family, kind=kind, n=n, ckpt=ckpt, steps=steps, repeats=repeats, threads=threads, size=size,
        dependence=dependence, benchmarks=str(Path(__file__).resolve().parent),
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {kind} N={n} ckpt={ckpt} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--traced", type=int, nargs="+", default=[0, 2, 5, 10])
    parser.add_argument("--kind", default="text2img", choices=["text2img", "img2img", "inpaint"])
    parser.add_argument(
        "--family",
        default="sd",
        choices=[
            "sd",
            "sdxl",
            "sd3",
            "flux",
            "chroma",
            "flux2_klein",
            "qwenimage",
            "prx",
            "sana",
            "z_image",
            "controlnet_sd",
            "controlnet_sdxl",
            "controlnet_flux",
            "instruct_pix2pix",
            "flux_fill",
            "flux_kontext",
            "wan",
            "cogvideox",
            "hunyuan_video",
            "hunyuan_video15",
            "hunyuan_video15_i2v",
            "ltx",
            "ltx_i2v",
            "sd15-size",
        ],
    )
    parser.add_argument("--size", type=int, default=64, help="image size")
    parser.add_argument("--no-prompt-dependence", action="store_true")
    parser.add_argument("--no-checkpointing-cases", action="store_true", help="only the checkpointed cases")
    args = parser.parse_args()
    extra = dict(size=args.size, dependence=not args.no_prompt_dependence)

    started = time.time()
    plain = run_case(args.family, args.kind, "plain", False, args.steps, args.repeats, args.threads, **extra)
    name = "SD 1.5-size" if args.family == "sd15-size" else f"tiny {args.family}"
    print(
        f"{name} {args.kind} pipeline, {args.size}x{args.size}, {args.steps} steps, CFG 7.5, {args.threads} threads,"
        f" median of {args.repeats}, prompt dependence {'off' if args.no_prompt_dependence else 'on'}"
    )
    print(f"plain pipe(): {plain['seconds']:.3f} s, peak RSS {plain['peak_rss_mb']:.0f} MB\n")
    header = f"{'N':>3} {'ckpt':>5} {'explain s':>10} {'x plain':>8} {'ideal s':>8} {'x ideal':>8}"
    header += f" {'peak RSS MB':>12} {'x plain RSS':>12}"
    print(header)
    print("-" * len(header))
    for n in args.traced:
        for ckpt in (True,) if args.no_checkpointing_cases else (False, True):
            r = run_case(args.family, args.kind, n, ckpt, args.steps, args.repeats, args.threads, **extra)
            ideal = r["plain"] + r["backward"]
            print(
                f"{n:>3} {str(ckpt):>5} {r['seconds']:>10.3f} {r['seconds'] / r['plain']:>8.2f} {ideal:>8.3f} "
                f"{r['seconds'] / ideal:>8.2f} {r['peak_rss_mb']:>12.0f}"
                f" {r['peak_rss_mb'] / plain['peak_rss_mb']:>12.2f}"
            )
    print(
        f"\n(total {time.time() - started:.0f} s; 'ideal' = plain + the explainer's own backward pass, same process)"
    )


if __name__ == "__main__":
    main()
