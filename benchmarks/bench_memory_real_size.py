r"""
Peak memory of an explanation at real model size, on the CPU: does gradient checkpointing stop the growth?

The pipeline is built offline from configs, with random weights (float32, eval mode, frozen): a UNet of Stable
Diffusion 1.5's size (860M parameters) with SD's VAE, a 2-layer CLIP text encoder of hidden size 768 (not what is
measured) and a tokenizer from `build_word_tokenizer()`, DDIM, no safety checker. With `--family sdxl`: a UNet of
SDXL base's size (2.6B parameters) in a `StableDiffusionXLPipeline` with two small CLIP text encoders, if it fits.

Each case runs once in its own fresh subprocess (`nice -n 10`, one at a time), which builds the pipeline from the same
seed, records its RSS once built ("loaded"), runs the case with the same generator seed and reports its peak RSS
(`ru_maxrss`). The table shows the peak's growth over the loaded model, and its ratio to the plain `pipe()` call's:

- plain: `pipe(prompt, num_inference_steps=S, height=size, width=size, guidance_scale=7.5, output_type="np")`;
- explain with `attribution_method="grad_x_input"`, every step traced (`N = all`) and one (`N = 1`), each without and
  with `gradient_checkpointing=True` (no per-step images: `get_images_for_all_inference_steps=False`).

The verdict compares the growth from N = 1 to N = all traced steps without and with checkpointing.

    python benchmarks/bench_memory_real_size.py                   # SD 1.5 size, 256x256, 3 steps
    python benchmarks/bench_memory_real_size.py --steps 2         # 2 to 4 steps
    python benchmarks/bench_memory_real_size.py --family sdxl     # SDXL size (skipped if memory is short)
"""

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time

PROMPT = "a cute corgi with the eiffel tower in the background"
GUIDANCE_SCALE = 7.5
SEED = 0
GB = 1024**3
# Memory a plain float32 SDXL-size call may use at most (the weights, plus activations and the allocator's slack).
SDXL_MEMORY_LIMIT_GB = 20.0


# -- the models (in the subprocess) ---------------------------------------------------------------------------------
def _scheduler():
    from diffusers_interpret.testing import tiny_scheduler  # DDIM with SD's betas

    return tiny_scheduler()


def _vae(scaling_factor):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=scaling_factor,
    )


def _text_encoder(tokenizer, hidden_size, projection_dim=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_attention_heads=hidden_size // 64,
        num_hidden_layers=2,
        max_position_embeddings=77,
        layer_norm_eps=1e-05,
        hidden_act="quick_gelu",
        vocab_size=len(tokenizer),
        projection_dim=projection_dim or hidden_size,
    )
    return CLIPTextModelWithProjection(config) if projection_dim else CLIPTextModel(config)


def sd15_unet_config():
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def sdxl_unet_config():
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_embed_type_num_heads=64,
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    )


def unet_parameter_count(family):
    # Counted on the meta device: nothing is allocated.
    import torch
    from diffusers import UNet2DConditionModel

    config = sdxl_unet_config() if family == "sdxl" else sd15_unet_config()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return sum(p.numel() for p in unet.parameters())


def build_pipeline(family):
    r"""The pipeline of `family`, random weights from a fixed seed (the same in every subprocess), frozen, fp32."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

    from diffusers_interpret.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer()
    torch.manual_seed(SEED)
    if family == "sd":
        components = dict(
            unet=UNet2DConditionModel(**sd15_unet_config()),
            vae=_vae(0.18215),
            text_encoder=_text_encoder(tokenizer, 768),
            tokenizer=tokenizer,
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            image_encoder=None,
        )
        pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
    else:
        components = dict(
            unet=UNet2DConditionModel(**sdxl_unet_config()),
            vae=_vae(0.13025),
            text_encoder=_text_encoder(tokenizer, 768),
            text_encoder_2=_text_encoder(tokenizer, 1280, projection_dim=1280),
            tokenizer=tokenizer,
            tokenizer_2=build_word_tokenizer(),
            scheduler=_scheduler(),
            image_encoder=None,
            feature_extractor=None,
        )
        pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)  # built in float32, the default dtype
    pipe.set_progress_bar_config(disable=True)
    return pipe


def current_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def run_case(args):
    r"""One case, in this (fresh) process; prints `RESULT {json}`."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    import diffusers_interpret

    pipe = build_pipeline(args.family)
    gc.collect()
    loaded, peak_loading = current_rss_bytes(), peak_rss_bytes()
    common = dict(
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        guidance_scale=GUIDANCE_SCALE,
        generator=torch.Generator().manual_seed(SEED),
        output_type="np",
    )
    started = time.perf_counter()
    if args.case == "plain":
        image = pipe(PROMPT, **common).images[0]
        extras = {}
    else:
        explainer_class = (
            diffusers_interpret.StableDiffusionPipelineExplainer
            if args.family == "sd"
            else diffusers_interpret.StableDiffusionXLPipelineExplainer
        )
        explainer = explainer_class(pipe, verbose=False, gradient_checkpointing=args.checkpointing)
        output = explainer(
            PROMPT,
            n_last_diffusion_steps_to_consider_for_attributions=None if args.traced == 0 else args.traced,
            attribution_method="grad_x_input",
            get_images_for_all_inference_steps=False,
            **common,
        )
        image = output.image
        extras = {"backward_seconds": output.stats.backward_seconds}
    seconds = time.perf_counter() - started
    result = dict(
        seconds=seconds,
        loaded_gb=loaded / GB,
        peak_loading_gb=peak_loading / GB,
        peak_gb=peak_rss_bytes() / GB,
        image_mean=float(image.mean()),
        **extras,
    )
    print("RESULT " + json.dumps(result), flush=True)


# -- the driver ----------------------------------------------------------------------------------------------------
def mem_available_gb():
    try:
        import psutil

        return psutil.virtual_memory().available / GB
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    return float("nan")


def run_subprocess(args, case, traced=0, checkpointing=False):
    command = [sys.executable, os.path.abspath(__file__), "--case", case, "--family", args.family]
    command += ["--steps", str(args.steps), "--size", str(args.size), "--traced", str(traced)]
    if checkpointing:
        command.append("--checkpointing")
    if shutil.which("nice"):
        command = ["nice", "-n", "10", *command]
    proc = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        # Reported, not raised: the other cases still run (a case killed with SIGKILL ran out of memory, most likely).
        killed = " (SIGKILL: out of memory?)" if proc.returncode == -9 else ""
        print(f"  FAILED, exit {proc.returncode}{killed}:\n{proc.stderr[-3000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT ") :])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, choices=[2, 3, 4], help="denoising steps (default 3)")
    parser.add_argument("--size", type=int, default=256, help="image height and width in pixels (default 256)")
    parser.add_argument("--family", default="sd", choices=["sd", "sdxl"], help="SD 1.5-size or SDXL-size UNet")
    parser.add_argument("--case", choices=["plain", "explain"], help=argparse.SUPPRESS)
    parser.add_argument("--traced", type=int, default=0, help=argparse.SUPPRESS)  # 0: every step
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args)
        return

    started = time.time()
    import torch

    import diffusers_interpret

    n_params = unet_parameter_count(args.family)
    weights_gb = n_params * 4 / GB
    available = mem_available_gb()
    print(
        f"{args.family} family: UNet of {n_params / 1e6:.0f}M parameters ({weights_gb:.2f} GB in float32), "
        f"{args.size}x{args.size}, {args.steps} steps, CFG {GUIDANCE_SCALE}, seed {SEED}, "
        f"{torch.get_num_threads()} threads, MemAvailable {available:.1f} GB"
    )
    explain = True
    if args.family == "sdxl":
        # A plain call holds the weights (UNet, VAE, text encoders) plus activations: budget 1.3x the UNet + 1.5 GB.
        need = 1.3 * weights_gb + 1.5
        limit = min(SDXL_MEMORY_LIMIT_GB, available)
        if need > limit:
            print(f"SKIPPED: a plain fp32 SDXL-size call needs about {need:.1f} GB; {limit:.1f} GB may be used.")
            return
        if not hasattr(diffusers_interpret, "StableDiffusionXLPipelineExplainer"):
            print("diffusers_interpret has no StableDiffusionXLPipelineExplainer yet: measuring the plain call only.")
            explain = False

    cases = [("plain", 0, False)]
    if explain:
        # N = all (0 here), then N = 1, each without and with checkpointing.
        cases += [("explain", 0, False), ("explain", 0, True), ("explain", 1, False), ("explain", 1, True)]
    results = {}
    for case, traced, checkpointing in cases:
        label = "plain" if case == "plain" else f"explain N={traced or 'all'} ckpt={checkpointing}"
        print(f"  {label}: running", flush=True)
        r = results[case, traced, checkpointing] = run_subprocess(args, case, traced, checkpointing)
        if r is not None:
            print(
                f"  {label}: {r['seconds']:.0f} s, peak {r['peak_gb']:.2f} GB (loaded {r['loaded_gb']:.2f},"
                f" peak while loading {r['peak_loading_gb']:.2f})",
                flush=True,
            )

    plain = results["plain", 0, False]
    if plain is None:
        print("The plain call failed: nothing to compare.")
        return
    plain_increase = plain["peak_gb"] - plain["loaded_gb"]
    header = (
        f"\n{'case':<8} {'traced':>6} {'ckpt':>5} {'time s':>7} {'loaded GB':>9} {'peak GB':>8} "
        f"{'peak-loaded GB':>14} {'x plain incr':>12}"
    )
    print(header)
    print("-" * (len(header) - 1))
    for (case, traced, checkpointing), r in results.items():
        n = "-" if case == "plain" else str(args.steps if traced == 0 else traced)
        if r is None:
            print(f"{case:<8} {n:>6} {'yes' if checkpointing else 'no':>5}  failed")
            continue
        increase = r["peak_gb"] - r["loaded_gb"]
        print(
            f"{case:<8} {n:>6} {'yes' if checkpointing else 'no':>5} {r['seconds']:>7.1f} {r['loaded_gb']:>9.2f} "
            f"{r['peak_gb']:>8.2f} {increase:>14.2f} {increase / plain_increase:>12.2f}"
        )

    if explain and None in results.values():
        print("\nVERDICT: not computed: a case failed.")
    elif explain:

        def increase(traced, checkpointing):
            r = results["explain", traced, checkpointing]
            return r["peak_gb"] - r["loaded_gb"]

        growth_plain = increase(0, False) - increase(1, False)
        growth_ckpt = increase(0, True) - increase(1, True)
        print(
            f"\nGrowth of the peak from N=1 to N={args.steps} traced steps: {growth_plain:+.2f} GB without "
            f"checkpointing, {growth_ckpt:+.2f} GB with it."
        )
        # Checkpointing keeps each traced step's inputs only (kilobytes), so its growth should be noise: under 10% of
        # the growth without it, which itself must be measurable (0.25 GB) for the comparison to mean anything.
        if growth_plain < 0.25:
            print("VERDICT: inconclusive: without checkpointing the peak does not grow measurably with traced steps.")
        elif growth_ckpt <= 0.1 * growth_plain:
            print(
                "VERDICT: holds: with checkpointing the peak no longer grows with the number of traced steps "
                f"({growth_ckpt:+.2f} GB vs {growth_plain:+.2f} GB without)."
            )
        else:
            print(
                "VERDICT: does NOT hold: with checkpointing the peak still grows with the number of traced steps "
                f"({growth_ckpt:+.2f} GB vs {growth_plain:+.2f} GB without)."
            )
    print(f"\n(total {time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
