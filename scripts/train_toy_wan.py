r"""
Train the toy Wan video model shipped in `diffusers_interpret/toy/model_wan/`, from scratch, on CPU.

The model uses Wan's exact classes (`AutoencoderKLWan`, `WanTransformer3DModel`, `T5EncoderModel` with a generated
sentencepiece tokenizer in place of UMT5, `FlowMatchEulerDiscreteScheduler`, assembled into a `WanPipeline`) at a
tiny size, on the clips of `diffusers_interpret.toy.clips`: one coloured shape moving left or right across 9 frames
of 32x32, prompts like "a red circle moving right". As in Wan, the words reach the clip only through cross-attention
from every space-time token to T5's states (zeroed after the prompt, as `WanPipeline.encode_prompt` gives them).

Stages (checkpointed in `--work-dir`, so that `--resume` continues them):

1. The VAE: a causal video VAE of Wan's class that halves time after the first frame and quarters each side (9
   frames of 32x32 -> 5 latent frames of 8x8x8), trained on the clips (MSE, a small KL term).
   The object's pixels weigh 5x the background's in the reconstruction loss (its colour must come back exact).
2. The latent pool: clips encoded, normalised per channel (the statistics become the VAE's `latents_mean` and
   `latents_std`, which `WanPipeline` reads to decode).
3. Transformer + T5 jointly, rectified flow (x_t = (1 - t) x_0 + t noise, target noise - x_0, t logit-normal), 10%
   empty prompts (for classifier-free guidance), T5 states padded with zeros to 16 or 32 positions, EMA 0.999. The
   transformer's tokens are the latent frames' 8x8 cells (1x1x1 patches), so its maps are 8x8 per latent frame.
4. The pipeline is assembled with the EMA weights, checked frame by frame with the independent detector
   (`toy.clips.check_clip`), with fp32 weights and rounded to fp16, and saved in fp16 (both checks logged; the
   shipped toy read the same with both).

Usage:

```bash
python scripts/train_toy_wan.py --work-dir runs/toywan
```
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other training scripts, next to this one

from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel  # noqa: E402
from train_toy_flux import build_t5, train_jointly  # noqa: E402
from train_toy_model import atomic_save, encode_in_batches, fit_vae, log, round_to_fp16, start_run  # noqa: E402

from diffusers_interpret.tokenizer import build_sentencepiece_tokenizer  # noqa: E402
from diffusers_interpret.toy.clips import CLIP_WORDS, check_clip, generate_clips  # noqa: E402

T5_LENGTH = 16
LATENT_CHANNELS = 8
VAE_CLIPS_SEED = 11_000
POOL_SEED = 12_000
CHECK_SEED = 13_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/toywan"))
    parser.add_argument("--output-dir", type=Path, default=Path("diffusers_interpret/toy/model_wan"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--vae-batch-size", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--num-clips", type=int, default=6000, help="clips in the latent pool")
    parser.add_argument("--steps", type=int, default=6000, help="steps of the learning-rate schedule")
    parser.add_argument("--stop-at", type=int, default=None, help="stop at this step (the schedule is --steps')")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--empty-prompt-prob", type=float, default=0.1)
    parser.add_argument("--pad-lengths", type=int, nargs="+", default=[T5_LENGTH, 2 * T5_LENGTH])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--time-budget-min", type=float, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--eval-prompts", type=int, default=40)
    return parser.parse_args()


def build_tokenizer():
    return build_sentencepiece_tokenizer(CLIP_WORDS, split_words={}, model_max_length=T5_LENGTH)


def build_vae(latents_mean=None, latents_std=None) -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        scale_factor_temporal=2,
        scale_factor_spatial=4,
        latents_mean=list(latents_mean) if latents_mean is not None else [0.0] * LATENT_CHANNELS,
        latents_std=list(latents_std) if latents_std is not None else [1.0] * LATENT_CHANNELS,
    )


def build_transformer(layers: int = 4, heads: int = 4, head_dim: int = 16) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 1, 1),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=64,
        freq_dim=64,
        ffn_dim=2 * heads * head_dim,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    # (N, F, H, W, 3) uint8 -> (N, 3, F, H, W) in [-1, 1]
    return torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def train_vae(args) -> AutoencoderKLWan:
    path = args.work_dir / "vae.pt"
    vae = build_vae()
    if args.resume and path.exists():
        vae.load_state_dict(torch.load(path, map_location="cpu")["vae"])
        log(args.work_dir, f"VAE: loaded {path}")
        return vae
    clips = generate_clips(4000, seed=VAE_CLIPS_SEED)
    data = to_tensor(np.stack([clip.frames for clip in clips]))

    def loss_terms(batch, recon, posterior):
        # The object's few pixels weigh 5x the background's: its colour must come back exact for the detector.
        background = batch[:, :, :1, :1, :1]  # every clip's corner is background
        weight = 1 + 4 * ((batch - background).abs().sum(dim=1, keepdim=True) > 0.1).float()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        return (weight * (recon - batch).pow(2)).mean() + 1e-4 * kl, F.mse_loss(recon, batch), kl

    # Batches from all but the last 256 clips; the last 64 held out.
    return fit_vae(args, vae, data, data[-64:], loss_terms, draw_from=len(data) - 256)


def build_pool(args, vae: AutoencoderKLWan, tokenizer) -> Dict[str, torch.Tensor]:
    path = args.work_dir / "latents.pt"
    if args.resume and path.exists():
        pool = torch.load(path, map_location="cpu")
        log(args.work_dir, f"Latents: loaded {path}")
        return pool
    start = time.time()
    clips = generate_clips(args.num_clips, seed=POOL_SEED)
    frames = np.stack([clip.frames for clip in clips])
    latents = encode_in_batches(vae, frames, 64, to_tensor)  # (N, C, 5, 8, 8)
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4))
    ids = tokenizer([clip.prompt for clip in clips], padding="max_length", max_length=T5_LENGTH, return_tensors="pt")
    pool = {
        "latents": (latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1),
        "input_ids": ids.input_ids,
        "attention_mask": ids.attention_mask,
        "latents_mean": mean,
        "latents_std": std,
    }
    atomic_save(pool, path)
    log(args.work_dir, f"Latents: {len(clips)} clips in {time.time() - start:.0f} s")
    return pool


def text_states(t5, input_ids: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    # As `WanPipeline.encode_prompt` gives them: T5 with its attention mask, zeros after the prompt, `length` long.
    states = t5(input_ids, attention_mask=mask).last_hidden_state * mask[..., None]
    return F.pad(states, (0, 0, 0, length - states.shape[1]))


def train(args, pool, tokenizer) -> Dict:
    torch.manual_seed(args.seed + 2)
    transformer = build_transformer(args.layers, args.heads, args.head_dim)
    t5 = build_t5(tokenizer)
    latents, ids, masks = pool["latents"], pool["input_ids"], pool["attention_mask"]
    empty = tokenizer([""], padding="max_length", max_length=T5_LENGTH, return_tensors="pt")

    def batch_loss(step, generator):
        idx = torch.randint(len(latents), (args.batch_size,), generator=generator)
        x0 = latents[idx]
        batch_ids, batch_mask = ids[idx].clone(), masks[idx].clone()
        drop = torch.rand(args.batch_size, generator=generator) < args.empty_prompt_prob
        batch_ids[drop], batch_mask[drop] = empty.input_ids, empty.attention_mask
        length = args.pad_lengths[int(torch.randint(len(args.pad_lengths), (1,), generator=generator))]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=generator))  # logit-normal
        noisy = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
        pred = transformer(
            hidden_states=noisy,
            timestep=t * 1000,  # the scheduler's timesteps: sigma x 1000
            encoder_hidden_states=text_states(t5, batch_ids, batch_mask, length),
            return_dict=False,
        )[0]
        return F.mse_loss(pred, noise - x0)

    return train_jointly(args, {"transformer": transformer, "t5": t5}, torch.nn.Identity(), batch_loss)


def assemble(args, vae, tokenizer, states, pool) -> WanPipeline:
    transformer = build_transformer(args.layers, args.heads, args.head_dim)
    t5 = build_t5(tokenizer)
    transformer.load_state_dict(states["transformer"])
    t5.load_state_dict(states["t5"])
    finished_vae = build_vae(pool["latents_mean"].tolist(), pool["latents_std"].tolist())
    finished_vae.load_state_dict(vae.state_dict())
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=t5,
        transformer=transformer,
        vae=finished_vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
    )
    for model in (pipe.vae, pipe.text_encoder, pipe.transformer):
        model.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(args, pipe) -> Dict[str, float]:
    r"""Prompt following of `--eval-prompts` clips drawn at `CHECK_SEED` (new clips; their prompts, of the 24 there
    are, were all seen in training), each from its own noise seed: the named colour in every frame, the named shape
    per frame, moving the named way."""
    from diffusers_interpret.toy import TOY_WAN_CALL

    clips = generate_clips(args.eval_prompts, seed=CHECK_SEED)
    results = []
    for index, clip in enumerate(clips):
        generator = torch.Generator().manual_seed(index)
        frames = pipe(clip.prompt, generator=generator, output_type="np", **TOY_WAN_CALL).frames[0]
        results.append(check_clip(frames, clip.prompt))
    return {
        "clips_correct": float(np.mean([r.correct for r in results])),
        "color_frames": float(np.mean([np.mean(r.color) for r in results])),
        "shape_frames": float(np.mean([np.mean(r.shape) for r in results])),
        "direction": float(np.mean([r.direction for r in results])),
    }


def main() -> None:
    args = parse_args()
    start_run(args)
    tokenizer = build_tokenizer()
    vae = train_vae(args)
    pool = build_pool(args, vae, tokenizer)
    states = train(args, pool, tokenizer)
    pipe = assemble(args, vae, tokenizer, states, pool)
    result = check(args, pipe)
    log(args.work_dir, f"Check, fp32 weights: {json.dumps(result)}")
    round_to_fp16(pipe)
    rounded = check(args, pipe)
    log(args.work_dir, f"Check, fp16-rounded weights: {json.dumps(rounded)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(args.output_dir, safe_serialization=True)
    size = sum(f.stat().st_size for f in args.output_dir.rglob("*") if f.is_file())
    log(args.work_dir, f"Saved to {args.output_dir} ({size / 1e6:.2f} MB) after {states['step']} steps")


if __name__ == "__main__":
    main()
