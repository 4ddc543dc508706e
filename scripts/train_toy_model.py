r"""
Train the toy Stable Diffusion model shipped in `diffusers_interpret/toy/model/`, from scratch, on CPU.

The model uses Stable Diffusion's exact classes (`AutoencoderKL`, `UNet2DConditionModel`, `CLIPTextModel`,
`CLIPTokenizer`, `DPMSolverMultistepScheduler`, assembled into a `StableDiffusionPipeline`) at a tiny size: 32x32
images of one or two coloured shapes (see `diffusers_interpret.toy.scenes`), 8x8x4 latents.

Stages (each checkpointed in `--work-dir`, so that `--resume` skips or continues them):

1. VAE (`AutoencoderKL`, factor 4) on rendered scenes; its `scaling_factor` is set to 1 / std of the latents.
2. A pool of latents of 6k one-object and 6k two-object scenes.
3. UNet + CLIP text encoder jointly: epsilon prediction with min-SNR-5 weighting, 10% empty prompts (for
   classifier-free guidance), EMA 0.999, one-object scenes only for the first 15% of the steps, AdamW with warm-up and
   cosine decay.
4. The pipeline is assembled with the EMA weights, checked for prompt following with the independent detector (in
   fp32 and with weights rounded to fp16), and saved with `save_pretrained(..., safe_serialization=True)` in fp16 when
   the rounding costs no accuracy, else in fp32.

Usage:

```bash
python scripts/train_toy_model.py --work-dir runs/toy --output-dir diffusers_interpret/toy/model
python scripts/train_toy_model.py --resume              # continue an interrupted run
python scripts/train_toy_model.py --resume --unet-steps 0 --skip-training  # only assemble, check and save
```
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusers_interpret.tokenizer import DEFAULT_WORDS, build_vocab_and_merges, build_word_tokenizer
from diffusers_interpret.toy.scenes import IMAGE_SIZE, ORDERS, SCENE_WORDS, generate_scenes

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
}
TOKENIZER_MAX_LENGTH = 16
TOKENIZER_WORDS = list(dict.fromkeys(list(SCENE_WORDS) + list(DEFAULT_WORDS)))
# Seeds of the training scene pools; benchmarks and tests use other seeds.
VAE_SCENES_SEED = 1_000
ONE_OBJECT_POOL_SEED = 2_000
TWO_OBJECT_POOL_SEED = 3_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--work-dir", type=Path, default=Path("runs/toy"), help="checkpoints and logs")
    parser.add_argument("--output-dir", type=Path, default=Path("diffusers_interpret/toy/model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--image-size", type=int, default=IMAGE_SIZE, help="32 (the default toy) or 64 (16x16 latents)"
    )
    parser.add_argument(
        "--prompt-order",
        choices=ORDERS,
        default="left_first",
        help="which object two-object prompts name first; 'random' makes the side words necessary",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 2 threads crawl when another process shares the 2 cores"
    )
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work-dir")
    parser.add_argument("--vae-steps", type=int, default=300)
    parser.add_argument("--vae-batch-size", type=int, default=32)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--num-one-object", type=int, default=6000, help="one-object scenes in the latent pool")
    parser.add_argument("--num-two-object", type=int, default=6000, help="two-object scenes in the latent pool")
    parser.add_argument("--unet-steps", type=int, default=7000, help="steps of the learning-rate schedule")
    parser.add_argument("--unet-levels", type=int, default=2, help="UNet levels, every one with cross-attention")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--one-object-fraction", type=float, default=0.15, help="first steps on one-object scenes")
    parser.add_argument("--empty-prompt-prob", type=float, default=0.1)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument(
        "--time-budget-min",
        type=float,
        default=None,
        help="stop UNet training after this many minutes of wall time (all resumed runs together)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--skip-training", action="store_true", help="use the UNet checkpoint as it is")
    parser.add_argument("--eval-prompts", type=int, default=40, help="fresh prompts per kind for the final check")
    parser.add_argument("--guidance-scale", type=float, default=4.0)
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--dtype", choices=("auto", "fp16", "fp32"), default="auto", help="dtype of saved weights")
    return parser.parse_args()


# ----------------------------------------------------------------------------------------------------------------
# Model definitions


def build_tokenizer() -> CLIPTokenizer:
    return build_word_tokenizer(TOKENIZER_WORDS, model_max_length=TOKENIZER_MAX_LENGTH)


def build_vae(image_size: int = IMAGE_SIZE) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
    )


def build_unet(image_size: int = IMAGE_SIZE, levels: int = 2) -> UNet2DConditionModel:
    # The shipped toys have two levels. A third (64x64: coarsest grid 4x4 instead of 8x8) was tried for the 64x64 toy
    # (docs/toy_model.md): more two-object scenes right in the training check, not on the benchmark's scenes.
    return UNet2DConditionModel(
        sample_size=image_size // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32,) + (64,) * (levels - 1),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels,
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def to_tensor(images: np.ndarray) -> torch.Tensor:
    r"""`uint8` `(N, H, W, 3)` images to float `(N, 3, H, W)` in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def encode_in_batches(vae, pictures: np.ndarray, batch_size: int, to_pixels=to_tensor) -> torch.Tensor:
    r"""The mode of the VAE's posterior for `uint8` pictures (images, or clips with `to_pixels` for them), encoded
    `batch_size` at a time."""
    latents = []
    vae.eval()
    with torch.no_grad():
        for i in tqdm(range(0, len(pictures), batch_size), desc="Encoding"):
            latents.append(vae.encode(to_pixels(pictures[i : i + batch_size])).latent_dist.mode())
    return torch.cat(latents)


def lr_lambda(step: int, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log(work_dir: Path, message: str) -> None:
    tqdm.write(message)
    with open(work_dir / "train_log.txt", "a") as f:
        f.write(message + "\n")


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: VAE


def start_run(args: argparse.Namespace) -> None:
    r"""What every toy's training run does first: its torch threads, denormals flushed (tiny models' small values
    otherwise slow the CPU), its work folder, and its arguments logged there."""
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    log(args.work_dir, f"Arguments: {json.dumps({k: str(v) for k, v in vars(args).items()})}")


def fit_vae(args: argparse.Namespace, vae, data: torch.Tensor, checked: torch.Tensor, loss_terms, draw_from=None):
    r"""
    Train a toy's VAE (an image's or a video's) and save it to `args.work_dir / "vae.pt"`: `args.vae_steps` AdamW
    steps at `args.vae_lr` (a tenth of them warm-up, then cosine to a tenth), random batches of `args.vae_batch_size`
    rows of `data` (of its first `draw_from` rows, all by default), each encoded, a posterior sample decoded and
    `loss_terms(batch, recon, posterior)` -> `(loss, mse, kl)` minimised; then the posterior mode's reconstruction
    MSE of the rows `checked` logged and saved beside the weights.
    """
    torch.manual_seed(args.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.vae_steps // 10, args.vae_steps, 0.1)
    )
    generator = torch.Generator().manual_seed(args.seed + 1)
    vae.train()
    start = time.time()
    for _ in (bar := tqdm(range(args.vae_steps), desc="VAE")):
        batch = data[torch.randint(draw_from or len(data), (args.vae_batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        loss, mse, kl = loss_terms(batch, recon, posterior)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}")
    vae.eval()
    with torch.no_grad():
        mse = F.mse_loss(vae.decode(vae.encode(checked).latent_dist.mode()).sample, checked).item()
    log(args.work_dir, f"VAE: {args.vae_steps} steps in {time.time() - start:.0f} s, reconstruction MSE {mse:.4f}")
    atomic_save({"vae": vae.state_dict(), "mse": mse}, args.work_dir / "vae.pt")
    return vae


def train_vae(args: argparse.Namespace, images: np.ndarray) -> AutoencoderKL:
    path = args.work_dir / "vae.pt"
    vae = build_vae(args.image_size)
    if args.resume and path.exists():
        vae.load_state_dict(torch.load(path, map_location="cpu")["vae"])
        log(args.work_dir, f"VAE: loaded {path}")
        return vae

    def loss_terms(batch, recon, posterior):
        mse = F.mse_loss(recon, batch)
        kl = posterior.kl().mean() / batch[0].numel()
        return mse + 1e-4 * kl, mse, kl

    return fit_vae(args, vae, to_tensor(images), to_tensor(images[-256:]), loss_terms)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: latent pool


def build_latent_pool(
    args: argparse.Namespace, vae: AutoencoderKL, tokenizer: CLIPTokenizer
) -> Dict[str, torch.Tensor]:
    path = args.work_dir / "latents.pt"
    if args.resume and path.exists():
        pool = torch.load(path, map_location="cpu")
        vae.register_to_config(scaling_factor=float(pool["scaling_factor"]))
        log(args.work_dir, f"Latents: loaded {path}")
        return pool
    start = time.time()
    size, order = args.image_size, args.prompt_order
    scenes = generate_scenes(args.num_one_object, seed=ONE_OBJECT_POOL_SEED, num_objects=1, image_size=size)
    scenes += generate_scenes(
        args.num_two_object, seed=TWO_OBJECT_POOL_SEED, num_objects=2, image_size=size, order=order
    )
    images = np.stack([s.image for s in scenes])
    latents = encode_in_batches(vae, images, 256)
    scaling_factor = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling_factor)
    input_ids = tokenizer(
        [s.prompt for s in scenes], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    pool = {
        "latents": latents * scaling_factor,
        "input_ids": input_ids,
        "num_objects": torch.tensor([len(s.objects) for s in scenes]),
        "scaling_factor": torch.tensor(scaling_factor),
    }
    atomic_save(pool, path)
    log(
        args.work_dir,
        f"Latents: {len(scenes)} scenes in {time.time() - start:.0f} s, scaling factor {scaling_factor:.4f}",
    )
    return pool


# ----------------------------------------------------------------------------------------------------------------
# Stage 3: UNet + text encoder


def train_unet(
    args: argparse.Namespace, pool: Dict[str, torch.Tensor], tokenizer: CLIPTokenizer
) -> Dict[str, Dict[str, torch.Tensor]]:
    r"""Returns the EMA state dicts `{"unet": ..., "text_encoder": ...}`."""
    path = args.work_dir / "unet.pt"
    torch.manual_seed(args.seed + 2)
    unet = build_unet(args.image_size, args.unet_levels)
    text_encoder = build_text_encoder(tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.warmup_steps, args.unet_steps, args.min_lr / args.lr)
    )
    ema = [p.detach().clone() for p in params]
    step, elapsed = 0, 0.0
    if args.resume and path.exists():
        state = torch.load(path, map_location="cpu")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema = state["ema"]
        step, elapsed = state["step"], state["elapsed"]
        log(args.work_dir, f"UNet: resumed from step {step} ({elapsed / 60:.1f} min trained)")

    def save() -> None:
        atomic_save(
            {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "ema": ema,
                "step": step,
                "elapsed": elapsed,
            },
            path,
        )

    noise_scheduler = DDPMScheduler(**SCHEDULER_CONFIG)
    alphas_cumprod = noise_scheduler.alphas_cumprod
    snr_all = alphas_cumprod / (1 - alphas_cumprod)
    latents, input_ids = pool["latents"], pool["input_ids"]
    one_object = torch.nonzero(pool["num_objects"] == 1).squeeze(1)
    empty_ids = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    one_object_steps = int(args.one_object_fraction * args.unet_steps)
    budget = None if args.time_budget_min is None else args.time_budget_min * 60

    unet.train()
    text_encoder.train()
    session_start, session_elapsed_start = time.time(), elapsed
    bar = tqdm(total=args.unet_steps, initial=step, desc="UNet")
    running = None
    while step < args.unet_steps and not args.skip_training:
        if budget is not None and elapsed >= budget:
            log(args.work_dir, f"UNet: time budget reached at step {step}")
            break
        # Every random draw of a step depends only on the seed and the step, so resumed runs are identical.
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        if step < one_object_steps:
            idx = one_object[torch.randint(len(one_object), (args.batch_size,), generator=generator)]
        else:
            idx = torch.randint(len(latents), (args.batch_size,), generator=generator)
        x0 = latents[idx]
        ids = input_ids[idx].clone()
        drop = torch.rand(args.batch_size, generator=generator) < args.empty_prompt_prob
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (args.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, t)

        hidden = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=hidden).sample
        snr = snr_all[t]
        weight = torch.clamp(snr, max=args.snr_gamma) / snr
        loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        elapsed = session_elapsed_start + time.time() - session_start
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{schedule.get_last_lr()[0]:.1e}", min=f"{elapsed / 60:.1f}")
        if step % args.checkpoint_every == 0:
            save()
            log(args.work_dir, f"UNet: step {step}, loss {running:.4f}, {elapsed / 60:.1f} min")
    bar.close()
    save()
    log(args.work_dir, f"UNet: stopped at step {step} after {elapsed / 60:.1f} min of training")

    # Map the EMA tensors (ordered like `params`) back to state-dict names.
    named = [n for n, _ in unet.named_parameters()] + [n for n, _ in text_encoder.named_parameters()]
    n_unet = len(list(unet.parameters()))
    unet_state = dict(unet.state_dict())
    text_state = dict(text_encoder.state_dict())
    for i, name in enumerate(named):
        if i < n_unet:
            unet_state[name] = ema[i].clone()
        else:
            text_state[name] = ema[i].clone()
    return {"unet": unet_state, "text_encoder": text_state, "step": step, "elapsed": elapsed}


# ----------------------------------------------------------------------------------------------------------------
# Stage 4: assemble, check, save


def assemble_pipeline(
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    states: Dict[str, Dict[str, torch.Tensor]],
    image_size: int,
    unet_levels: int = 2,
) -> StableDiffusionPipeline:
    unet = build_unet(image_size, unet_levels)
    unet.load_state_dict(states["unet"])
    text_encoder = build_text_encoder(tokenizer)
    text_encoder.load_state_dict(states["text_encoder"])
    scheduler = DPMSolverMultistepScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for model in (pipe.vae, pipe.text_encoder, pipe.unet):
        model.eval()
        model.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_tokenizer_files(tokenizer_dir: Path) -> None:
    r"""
    Also write `vocab.json` and `merges.txt`, so that the slow `CLIPTokenizer` of older transformers (which ignores
    `tokenizer.json`) loads the same tokenizer.
    """
    vocab, merges = build_vocab_and_merges(TOKENIZER_WORDS)
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (tokenizer_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def round_to_fp16(pipe) -> None:
    r"""Round every weight to fp16 and back to fp32, in place (what saving in fp16 and loading in fp32 does)."""
    with torch.no_grad():
        for model in [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]:
            for tensor in list(model.parameters()) + list(model.buffers()):
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())


def check_prompt_following(args: argparse.Namespace, pipe: StableDiffusionPipeline) -> Dict[str, float]:
    from diffusers_interpret.toy.detector import evaluate_prompt_following

    return evaluate_prompt_following(
        pipe,
        num_prompts=args.eval_prompts,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        seed=777,
        order=args.prompt_order,
    )


def main() -> None:
    args = parse_args()
    start_run(args)
    total_start = time.time()

    tokenizer = build_tokenizer()
    vae_images = np.stack([s.image for s in generate_scenes(4096, seed=VAE_SCENES_SEED, image_size=args.image_size)])
    vae = train_vae(args, vae_images)
    pool = build_latent_pool(args, vae, tokenizer)
    states = train_unet(args, pool, tokenizer)

    pipe = assemble_pipeline(vae, tokenizer, states, args.image_size, args.unet_levels)
    results: List[Dict] = []
    fp32 = check_prompt_following(args, pipe)
    log(args.work_dir, f"Check, fp32 weights: {json.dumps(fp32)}")
    dtype = args.dtype
    if dtype != "fp32":
        round_to_fp16(pipe)
        fp16 = check_prompt_following(args, pipe)
        log(args.work_dir, f"Check, fp16-rounded weights: {json.dumps(fp16)}")
        keys = ("one_object_color_side", "two_object_color_side", "one_object_shape", "two_object_shape")
        holds = all(fp16[k] >= fp32[k] - 0.025 for k in keys)
        if dtype == "auto":
            dtype = "fp16" if holds else "fp32"
        if dtype == "fp32":  # rounding lost accuracy: back to the exact weights
            pipe = assemble_pipeline(vae, tokenizer, states, args.image_size, args.unet_levels)
        results.append(fp16)
    if dtype == "fp16":
        pipe.to(torch.float16)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.output_dir, safe_serialization=True)
    write_tokenizer_files(args.output_dir / "tokenizer")
    size = sum(f.stat().st_size for f in args.output_dir.rglob("*") if f.is_file())
    log(
        args.work_dir,
        f"Saved the pipeline in {dtype} to {args.output_dir} ({size / 1e6:.2f} MB) after {states['step']} UNet steps "
        f"({states['elapsed'] / 60:.1f} min of UNet training); this run: {(time.time() - total_start) / 60:.1f} min",
    )


if __name__ == "__main__":
    main()
