r"""
Train the toy ControlNet shipped in `diffusers_interpret/toy/model_controlnet/`, on CPU, for the shipped 32x32 toy.

The control image of a scene is its objects' outlines only (`diffusers_interpret.toy.control.outline_image`: a white
one-pixel boundary of every object's mask on black, no colour). The ControlNet is `ControlNetModel.from_unet(toy
UNet)` with a conditioning embedding that takes 32x32 control images to the 8x8 latent grid (two stride-2 stages; the
toy VAE downsamples by 4). The toy's UNet, VAE and text encoder stay frozen; the loss is the toy's (epsilon
prediction, min-SNR-5 weighting, DDPM noise schedule of Stable Diffusion), with EMA weights for sampling. Prompts are
the scenes' full prompts, except a share that names colours only ("a red object on the left") and a share that is
empty, so that shapes and positions must come from the control image.

At the end, on held-out scenes (a seed used by no training pool), the detector checks the generated images against
the scene's shapes and positions, given the outline control with the full prompt and with a colour-only prompt.

The shipped run (`python scripts/train_toy_controlnet.py`, the defaults: 12k scenes, 7,000 steps of batch 64, AdamW
1e-3 with 200 warm-up steps then cosine to 1e-4, 20% colour-only and 10% empty prompts, EMA 0.999) took 21.4 min of
wall time on a 2-core CPU with one torch thread (20.8 min of training; with 2 threads and the other core busy a step
took 0.5 to 7 s instead of 0.19 s). Check on 40 held-out scenes, fp16 weights, `TOY_CONTROL_CALL` (guidance 2): 92.5%
drawn right (shapes, colours, sides, positions) with full prompts, 85% with colour-only prompts; the toy alone (full
prompts, guidance 4) puts 7.5% of them where the scene has them. The ControlNet is 557,904 parameters, 1.1 MB in fp16.

Usage:

```bash
python scripts/train_toy_controlnet.py                   # train, check, save in fp16
python scripts/train_toy_controlnet.py --skip-training   # check and save the last run's weights again
```
"""

import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_toy_model, next to this script

from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionControlNetPipeline  # noqa: E402
from train_toy_model import (  # noqa: E402
    SCHEDULER_CONFIG,
    atomic_save,
    log,
    lr_lambda,
    round_to_fp16,
    start_run,
    to_tensor,
)

from diffusers_interpret.toy import TOY_GUIDANCE_SCALE, TOY_NUM_INFERENCE_STEPS, load_toy_pipeline  # noqa: E402
from diffusers_interpret.toy.control import (  # noqa: E402
    TOY_CONTROL_CALL,
    color_only_prompt,
    matches_scene,
    outline_image,
)
from diffusers_interpret.toy.scenes import RenderedScene, generate_scenes  # noqa: E402

# Seeds of the training pools (distinct from the toy's 1000-3000 and from every test and benchmark seed).
ONE_OBJECT_POOL_SEED = 4_000
TWO_OBJECT_POOL_SEED = 5_000
CHECK_SEED = 6_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/toycontrol"), help="checkpoint and log")
    parser.add_argument("--output-dir", type=Path, default=Path("diffusers_interpret/toy/model_controlnet"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 2 threads crawl when another process shares the 2 cores"
    )
    parser.add_argument(
        "--conditioning-channels", type=int, nargs="+", default=[16, 32, 64], help="one stride-2 stage per step"
    )
    parser.add_argument("--num-one-object", type=int, default=4000)
    parser.add_argument("--num-two-object", type=int, default=8000)
    parser.add_argument("--steps", type=int, default=7000, help="steps of the learning-rate schedule")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--color-only-prob", type=float, default=0.2, help="prompts naming colours and sides only")
    parser.add_argument("--empty-prompt-prob", type=float, default=0.1)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--time-budget-min", type=float, default=30.0, help="stop training after this much wall time")
    parser.add_argument("--skip-training", action="store_true", help="use the EMA weights saved in --work-dir")
    parser.add_argument("--check-scenes", type=int, default=40)
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------------------
# Data


def control_tensor(scenes: List[RenderedScene]) -> torch.Tensor:
    r"""Outline images as the pipeline feeds them to the ControlNet: float `(N, 3, H, W)` in [0, 1]."""
    images = np.stack([np.asarray(outline_image(scene)) for scene in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


@torch.no_grad()
def encode_prompts(pipe, prompts: List[str]) -> torch.Tensor:
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    return torch.cat([pipe.text_encoder(ids[i : i + 512])[0] for i in range(0, len(ids), 512)])


@torch.no_grad()
def build_pool(args: argparse.Namespace, pipe) -> Dict[str, torch.Tensor]:
    r"""Latents, outline controls and the text encoder's states of the full, colour-only and empty prompts."""
    start = time.time()
    scenes = generate_scenes(args.num_one_object, seed=ONE_OBJECT_POOL_SEED, num_objects=1)
    scenes += generate_scenes(args.num_two_object, seed=TWO_OBJECT_POOL_SEED, num_objects=2)
    images = to_tensor(np.stack([s.image for s in scenes]))
    latents = torch.cat([pipe.vae.encode(images[i : i + 256]).latent_dist.mode() for i in range(0, len(images), 256)])
    pool = {
        "latents": latents * pipe.vae.config.scaling_factor,
        "controls": control_tensor(scenes),
        "full": encode_prompts(pipe, [s.prompt for s in scenes]),
        "color_only": encode_prompts(pipe, [color_only_prompt(s) for s in scenes]),
        "empty": encode_prompts(pipe, [""]),
    }
    log(args.work_dir, f"Pool: {len(scenes)} scenes encoded in {time.time() - start:.0f} s")
    return pool


def batch_prompts(pool: Dict[str, torch.Tensor], idx: torch.Tensor, draw: torch.Tensor, args) -> torch.Tensor:
    r"""The prompt states of a batch: full, or (by `draw`, uniform in [0, 1)) colour-only or empty."""
    hidden = pool["full"][idx].clone()
    color_only = draw < args.color_only_prob
    empty = (draw >= args.color_only_prob) & (draw < args.color_only_prob + args.empty_prompt_prob)
    hidden[color_only] = pool["color_only"][idx[color_only]]
    hidden[empty] = pool["empty"]
    return hidden


# ----------------------------------------------------------------------------------------------------------------
# Training


def build_controlnet(unet, channels) -> ControlNetModel:
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(channels))


def train(args: argparse.Namespace, pipe, pool: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    r"""Train the ControlNet against the frozen UNet; returns its EMA state dict."""
    torch.manual_seed(args.seed)
    controlnet = build_controlnet(pipe.unet, args.conditioning_channels).train()
    params = list(controlnet.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.warmup_steps, args.steps, args.min_lr / args.lr)
    )
    ema = [p.detach().clone() for p in params]
    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    snr_all = noise_scheduler.alphas_cumprod / (1 - noise_scheduler.alphas_cumprod)
    num = len(pool["latents"])
    start, running, done = time.time(), None, 0
    for step in (bar := tqdm(range(args.steps), desc="ControlNet")):
        if time.time() - start > args.time_budget_min * 60:
            log(args.work_dir, f"ControlNet: time budget reached at step {step}")
            break
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(num, (args.batch_size,), generator=generator)
        hidden = batch_prompts(pool, idx, torch.rand(args.batch_size, generator=generator), args)
        x0 = pool["latents"][idx]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)
        down, mid = controlnet(
            noisy, t, encoder_hidden_states=hidden, controlnet_cond=pool["controls"][idx], return_dict=False
        )
        pred = pipe.unet(
            noisy, t, encoder_hidden_states=hidden, down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip
        snr = snr_all[t]
        weight = torch.clamp(snr, max=args.snr_gamma) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - min(args.ema_decay, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        if done % 500 == 0:
            minutes = (time.time() - start) / 60
            log(args.work_dir, f"ControlNet: step {done}, loss {running:.4f}, {minutes:.1f} min")
    state = dict(controlnet.state_dict())
    for (name, _), value in zip(controlnet.named_parameters(), ema):
        state[name] = value.clone()
    log(args.work_dir, f"ControlNet: trained {done} steps in {(time.time() - start) / 60:.1f} min")
    return state


# ----------------------------------------------------------------------------------------------------------------
# Check


def assemble(pipe, controlnet: ControlNetModel) -> StableDiffusionControlNetPipeline:
    controlnet.eval().requires_grad_(False)
    names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
    control_pipe = StableDiffusionControlNetPipeline(
        **{name: getattr(pipe, name) for name in names},
        controlnet=controlnet,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    control_pipe.set_progress_bar_config(disable=True)
    return control_pipe


def drawn_share(images, scenes: List[RenderedScene], with_color: bool) -> float:
    return float(np.mean([matches_scene(image, scene, with_color) for image, scene in zip(images, scenes)]))


@torch.no_grad()
def check_control(control_pipe, num_scenes: int, seed: int = CHECK_SEED) -> Dict[str, float]:
    r"""Fractions of held-out scenes drawn with the right shapes and positions (and colours), per prompt kind."""
    scenes = generate_scenes(num_scenes, seed=seed)
    controls = [outline_image(scene) for scene in scenes]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_scenes)]
    results = {}
    for kind, prompts in (
        ("full_prompt", [s.prompt for s in scenes]),
        ("color_only_prompt", [color_only_prompt(s) for s in scenes]),
    ):
        images = control_pipe(prompts, image=controls, generator=generators, output_type="np", **TOY_CONTROL_CALL)
        results[f"{kind}_shape_position"] = drawn_share(images.images, scenes, with_color=False)
        results[f"{kind}_all"] = drawn_share(images.images, scenes, with_color=True)
    return results


@torch.no_grad()
def check_without_control(pipe, num_scenes: int, seed: int = CHECK_SEED) -> Dict[str, float]:
    r"""The same check for the toy pipeline alone (full prompts): how often it draws the scene's positions anyway."""
    scenes = generate_scenes(num_scenes, seed=seed)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_scenes)]
    call = dict(guidance_scale=TOY_GUIDANCE_SCALE, num_inference_steps=TOY_NUM_INFERENCE_STEPS)  # the toy's own
    images = pipe([s.prompt for s in scenes], generator=generators, output_type="np", **call).images
    return {"no_control_full_prompt_shape_position": drawn_share(images, scenes, with_color=False)}


def main() -> None:
    args = parse_args()
    start_run(args)
    total_start = time.time()
    pipe = load_toy_pipeline()
    state_path = args.work_dir / "controlnet_ema.pt"
    if args.skip_training:
        state = torch.load(state_path, map_location="cpu")
    else:
        state = train(args, pipe, build_pool(args, pipe))
        atomic_save(state, state_path)
    controlnet = build_controlnet(pipe.unet, args.conditioning_channels)
    controlnet.load_state_dict(state)
    control_pipe = assemble(pipe, controlnet)
    round_to_fp16(control_pipe)  # the check reads the weights as shipped
    results = {**check_control(control_pipe, args.check_scenes), **check_without_control(pipe, args.check_scenes)}
    log(args.work_dir, f"Check on {args.check_scenes} held-out scenes (seed {CHECK_SEED}), fp16 weights: {results}")
    controlnet.to(torch.float16).save_pretrained(args.output_dir, safe_serialization=True)
    size = sum(f.stat().st_size for f in args.output_dir.rglob("*") if f.is_file())
    minutes = (time.time() - total_start) / 60
    log(args.work_dir, f"Saved the ControlNet in fp16 to {args.output_dir} ({size} bytes); run: {minutes:.1f} min")


if __name__ == "__main__":
    main()
