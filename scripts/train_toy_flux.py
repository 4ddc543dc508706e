r"""
Train the toy Flux model shipped in `diffusers_interpret/toy/model_flux/`, from scratch, on CPU.

The model uses Flux's exact classes (`FluxTransformer2DModel`, `AutoencoderKL`, `CLIPTextModel` for the pooled vector,
`T5EncoderModel` for the tokens, `FlowMatchEulerDiscreteScheduler`, assembled into a `FluxPipeline`) at a tiny size,
on the 64x64 toy scenes of `train_toy_model.py --image-size 64 --prompt-order random` (the same scenes and words):
its VAE and latent pool are reused (16x16x4 latents, packed 2x2 into 8x8 image tokens of 16 channels). The T5
tokenizer is a generated sentencepiece model in which "triangle" is two pieces ("▁tri", "angle"), so that word
merging is part of the ground truth.

Stages (checkpointed in `--work-dir`, so that `--resume` continues them):

1. The VAE and latent pool: copied from `--sd-work-dir` (the 64x64 SD toy's run, `python scripts/train_toy_model.py
   --work-dir runs/toy64 --image-size 64 --prompt-order random`) when it has them; otherwise the shipped 64x64 toy's
   VAE (`diffusers_interpret/toy/model_64/vae`, the one both toys ship) encodes the same scenes afresh.
2. Transformer + T5 + CLIP jointly, rectified flow (x_t = (1 - t) x_0 + t noise, target noise - x_0, t logit-normal),
   10% empty prompts (for true classifier-free guidance at sampling), EMA 0.999, one-object scenes only for the first
   15% of the steps. As in real Flux, the words reach the image through T5 in joint attention: the pooled CLIP vector
   is the prompt's own for only `--pooled-prompt-prob` of the examples (the empty prompt's otherwise), so that it
   cannot carry the scene; T5 is padded to 16 or 32 tokens per step (`--pad-lengths`: diffusers gives T5 no attention
   mask, so the padding is read), so that the model meets more than one padding length. A small head on T5's
   states learns, beside the images, which object's colour, shape and side each colour, shape and side word belongs
   to (`--bind-loss-weight`; the head is not shipped): real T5 arrives pretrained with states that know which noun an
   adjective modifies, and without this the toy's T5 gave a word the same state in every prompt, so the transformer
   (whose text positions are all zero, as in Flux) saw a bag of words and could not bind colours to shapes.
   The learning-rate schedule is 20000 steps long and the run stops at step 10000 (`--stop-at`), where the check
   first read 100%.
3. The pipeline is assembled with the EMA weights, checked for prompt following with the independent detector
   (`negative_prompt=""`, `**TOY_FLUX_CALL`: true CFG 4), and saved in fp16 when rounding costs no accuracy.

Usage:

```bash
python scripts/train_toy_flux.py --work-dir runs/toyflux   # the shipped toy: 10000 steps, 19 min on 2 CPU cores
```

An interrupted run continues with `--resume` (the schedule, EMA and data order are those of an uninterrupted one).
"""

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_toy_model, next to this script

from diffusers import (  # noqa: E402
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from train_toy_model import (  # noqa: E402
    ONE_OBJECT_POOL_SEED,
    TWO_OBJECT_POOL_SEED,
    atomic_save,
    build_latent_pool,
    build_text_encoder,
    build_tokenizer,
    build_vae,
    log,
    lr_lambda,
    round_to_fp16,
    start_run,
    write_tokenizer_files,
)
from transformers import T5Config, T5EncoderModel  # noqa: E402

from diffusers_interpret.tokenizer import build_sentencepiece_tokenizer  # noqa: E402
from diffusers_interpret.toy import TOY_FLUX_CALL  # noqa: E402
from diffusers_interpret.toy.scenes import COLORS, SCENE_WORDS, SHAPES, sample_scene_spec  # noqa: E402

IMAGE_SIZE = 64
T5_LENGTH = 16
SPLIT_WORDS = {"triangle": ("▁tri", "angle")}


def joint_training_parser(description: str, work_dir: str, output_dir: str) -> argparse.ArgumentParser:
    r"""The arguments of `train_jointly` and of the data, shared by the toy Flux's and the toy SD3's training scripts;
    each script adds its model's."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work-dir", type=Path, default=Path(work_dir))
    parser.add_argument("--sd-work-dir", type=Path, default=Path("runs/toy64"), help="VAE and latents of the SD toy")
    parser.add_argument("--output-dir", type=Path, default=Path(output_dir))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--steps", type=int, default=20000, help="steps of the learning-rate schedule")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--one-object-fraction", type=float, default=0.15)
    parser.add_argument("--empty-prompt-prob", type=float, default=0.1)
    parser.add_argument(
        "--pooled-prompt-prob",
        type=float,
        default=0.1,
        help="share of examples whose pooled CLIP vector is their prompt's (the empty prompt's otherwise)",
    )
    parser.add_argument(
        "--pad-lengths",
        type=int,
        nargs="+",
        default=[T5_LENGTH, 2 * T5_LENGTH],
        help="T5 sequence lengths drawn per step (the prompt padded to it), so that `max_sequence_length` only pads",
    )
    parser.add_argument(
        "--bind-loss-weight",
        type=float,
        default=0.1,
        help="weight of a loss that makes each T5 state name its object's colour, shape and side (0: none)",
    )
    parser.add_argument(
        "--bind-targets",
        choices=("object", "side"),
        default="object",
        help="what a word's state is taught: its object's colour, shape and side, or only its object's side",
    )
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--stop-at", type=int, default=10000, help="stop at this step (the schedule is --steps')")
    parser.add_argument("--time-budget-min", type=float, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--eval-prompts", type=int, default=40)
    return parser


def parse_args() -> argparse.Namespace:
    parser = joint_training_parser(__doc__.split("\n\n")[1], "runs/toyflux", "diffusers_interpret/toy/model_flux")
    parser.add_argument("--layers", type=int, default=3, help="dual-stream blocks")
    parser.add_argument("--single-layers", type=int, default=3, help="single-stream blocks")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument(
        "--drop-side-prob",
        type=float,
        default=0.0,
        help="share of two-object examples whose T5 prompt leaves out one object's side, the other object's side "
        "saying where both are (CLIP's prompt, when the pooled vector is the prompt's, keeps both sides)",
    )
    return parser.parse_args()


def build_t5_tokenizer():
    return build_sentencepiece_tokenizer(SCENE_WORDS, split_words=SPLIT_WORDS, model_max_length=T5_LENGTH)


def build_t5(tokenizer) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )


def build_transformer(layers: int = 3, single_layers: int = 3, heads: int = 4, head_dim: int = 16):
    # RoPE axes (Flux's index, row, column): even, summing to the head's size ([4, 6, 6] for 16, as shipped).
    axis = head_dim * 3 // 8 // 2 * 2
    rope = [head_dim - 2 * axis, axis, axis]
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=layers,
        num_single_layers=single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        guidance_embeds=False,
        axes_dims_rope=rope,
    )


def scene_prompts(num_one: int, num_two: int):
    # The prompts of the SD toy's latent pool, in its order (rendering consumes no randomness).
    rng = np.random.default_rng(ONE_OBJECT_POOL_SEED)
    prompts = [sample_scene_spec(rng, 1, IMAGE_SIZE).prompt for _ in range(num_one)]
    rng = np.random.default_rng(TWO_OBJECT_POOL_SEED)
    prompts += [sample_scene_spec(rng, 2, IMAGE_SIZE, order="random").prompt for _ in range(num_two)]
    return prompts


def phrase_objects(prompt: str):
    r"""The (colour, shape, side) indices of each phrase's object of a full prompt ("a C S on the SIDE and ...")."""
    objects = []
    for phrase in prompt.split(" and "):
        words = phrase.split()
        objects.append((COLORS.index(words[1]), SHAPES.index(words[2]), ("left", "right").index(words[5])))
    return objects


def without_side(prompt: str, phrase: int) -> str:
    r"""`prompt` with the side of its phrase `phrase` left out ("a red circle and a blue square on the right")."""
    phrases = prompt.split(" and ")
    phrases[phrase] = " ".join(phrases[phrase].split()[:3])
    return " and ".join(phrases)


def binding_labels(prompts, t5_tokenizer, targets: str = "object", objects=None) -> torch.Tensor:
    # Per T5 token of each prompt (padded to T5_LENGTH): for the pieces of a phrase's colour, shape and side words
    # ("a C S on the SIDE"), the colour, shape and side of that phrase's object; -100 for the function words, the end
    # token and padding. Real T5 comes pretrained with states that know which noun an adjective modifies; the toy's
    # T5, trained only through the image, learned none (a word's state was the same in any prompt). With
    # `targets="side"` only the side is taught (colour and shape -100): a word's state says which object it belongs
    # to, and carries no other word's meaning. `objects` (each prompt's `phrase_objects`, by default read off the
    # prompt) gives the objects of prompts whose phrases lack their side (`without_side`).
    labels = torch.full((len(prompts), T5_LENGTH, 3), -100, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        pieces = []
        known = phrase_objects(prompt) if objects is None else objects[row]
        for position, phrase in enumerate(prompt.split(" and ")):
            target = known[position]
            for word in ([] if position == 0 else ["and"]) + phrase.split():
                count = len(t5_tokenizer(word, add_special_tokens=False).input_ids)
                pieces += [target if word in COLORS + SHAPES + ("left", "right") else None] * count
        for i, target in enumerate(pieces[: T5_LENGTH - 1]):
            if target is not None:
                labels[row, i] = torch.tensor(target)
    if targets == "side":
        labels[..., :2] = -100
    return labels


def pack(latents: torch.Tensor) -> torch.Tensor:
    return FluxPipeline._pack_latents(latents, latents.shape[0], latents.shape[1], latents.shape[2], latents.shape[3])


def train_jointly(args, models: Dict[str, torch.nn.Module], bind_head: torch.nn.Module, batch_loss) -> Dict:
    r"""
    The training loop of the toy Flux and the toy SD3: `models` (their order is the EMA's and the checkpoint's) and
    the binding head trained together by AdamW on `batch_loss(step, generator)`, with the learning-rate schedule,
    gradient clipping, EMA, checkpoints in `args.work_dir / "transformer.pt"` (`--resume` continues them), the time
    budget and `--stop-at`. Returns the models' EMA weights by name, and the step and minutes trained.
    """
    path = args.work_dir / "transformer.pt"
    params = [p for model in models.values() for p in model.parameters()]
    optimizer = torch.optim.AdamW(params + list(bind_head.parameters()), lr=args.lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, args.warmup_steps, args.steps, args.min_lr / args.lr)
    )
    ema = [p.detach().clone() for p in params]
    step, elapsed = 0, 0.0
    if args.resume and path.exists():
        state = torch.load(path, map_location="cpu")
        for name, model in models.items():
            model.load_state_dict(state[name])
        if "bind_head" in state:
            bind_head.load_state_dict(state["bind_head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        ema, step, elapsed = state["ema"], state["step"], state["elapsed"]
        log(args.work_dir, f"Transformer: resumed from step {step} ({elapsed / 60:.1f} min trained)")

    def save():
        atomic_save(
            dict(
                {name: model.state_dict() for name, model in models.items()},
                bind_head=bind_head.state_dict(),
                optimizer=optimizer.state_dict(),
                schedule=schedule.state_dict(),
                ema=ema,
                step=step,
                elapsed=elapsed,
            ),
            path,
        )

    budget = None if args.time_budget_min is None else args.time_budget_min * 60
    for model in models.values():
        model.train()
    started, elapsed_start, running = time.time(), elapsed, None
    bar = tqdm(total=args.steps, initial=step, desc="Transformer")
    while step < args.steps and not args.skip_training:
        if args.stop_at is not None and step >= args.stop_at:
            break
        if budget is not None and elapsed >= budget:
            log(args.work_dir, f"Transformer: time budget reached at step {step}")
            break
        loss = batch_loss(step, torch.Generator().manual_seed(args.seed * 1_000_003 + step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        step += 1
        elapsed = elapsed_start + time.time() - started
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", min=f"{elapsed / 60:.1f}")
        if step % args.checkpoint_every == 0:
            save()
            log(args.work_dir, f"Transformer: step {step}, loss {running:.4f}, {elapsed / 60:.1f} min")
    bar.close()
    save()
    log(args.work_dir, f"Transformer: stopped at step {step} after {elapsed / 60:.1f} min of training")
    # The EMA weights, copied into the models so that tied weights (T5's shared embedding) stay one tensor.
    states, weights = {}, iter(ema)
    for name, model in models.items():
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(next(weights))
        states[name] = {key: value.clone() for key, value in model.state_dict().items()}
    states.update(step=step, elapsed=elapsed)
    return states


def bind_loss(bind_head, t5_states, targets) -> torch.Tensor:
    r"""The binding head's cross-entropies (colour, shape and side of each T5 state's object: `binding_labels`),
    averaged over the kinds taught (a kind whose labels are all -100 is not)."""
    logits = bind_head(t5_states[:, :T5_LENGTH]).split([len(COLORS), len(SHAPES), 2], dim=-1)
    taught = [k for k in range(3) if (targets[..., k] != -100).any()]
    losses = [F.cross_entropy(logits[k].flatten(0, 1), targets[..., k].flatten()) for k in taught]
    return sum(losses) / max(len(losses), 1)


def train(args, pool, clip_tokenizer, t5_tokenizer) -> Dict:
    torch.manual_seed(args.seed + 2)
    transformer = build_transformer(args.layers, args.single_layers, args.heads, args.head_dim)
    t5, clip = build_t5(t5_tokenizer), build_text_encoder(clip_tokenizer)
    bind_head = torch.nn.Linear(t5.config.d_model, len(COLORS) + len(SHAPES) + 2)  # trained, not shipped
    latents = pack(pool["latents"])  # (N, 64 tokens, 16)
    grid = int(math.isqrt(latents.shape[1]))
    img_ids = FluxPipeline._prepare_latent_image_ids(1, grid, grid, "cpu", torch.float32)
    prompts = scene_prompts(int((pool["num_objects"] == 1).sum()), int((pool["num_objects"] == 2).sum()))
    t5_ids = t5_tokenizer(prompts, padding="max_length", max_length=T5_LENGTH, truncation=True, return_tensors="pt")
    bind_targets = binding_labels(prompts, t5_tokenizer, args.bind_targets)
    clip_ids = pool["input_ids"]
    empty_t5 = t5_tokenizer([""], padding="max_length", max_length=T5_LENGTH, return_tensors="pt").input_ids
    empty_clip = clip_tokenizer(
        [""], padding="max_length", max_length=clip_ids.shape[1], return_tensors="pt"
    ).input_ids
    one_object = torch.nonzero(pool["num_objects"] == 1).squeeze(1)
    one_object_steps = int(args.one_object_fraction * args.steps)
    if args.drop_side_prob > 0:  # each two-object prompt with its first (row 0) or second (row 1) side left out
        two = pool["num_objects"] == 2
        sideless_ids = t5_ids.input_ids.expand(2, -1, -1).clone()
        sideless_targets = bind_targets.expand(2, -1, -1, -1).clone()
        rows = torch.nonzero(two).squeeze(1).tolist()
        objects = [phrase_objects(prompts[row]) for row in rows]
        for phrase in range(2):
            texts = [without_side(prompts[row], phrase) for row in rows]
            tokens = t5_tokenizer(texts, padding="max_length", max_length=T5_LENGTH, truncation=True)
            sideless_ids[phrase, rows] = torch.tensor(tokens.input_ids)
            sideless_targets[phrase, rows] = binding_labels(texts, t5_tokenizer, args.bind_targets, objects)

    def batch_loss(step, generator):
        if step < one_object_steps:
            idx = one_object[torch.randint(len(one_object), (args.batch_size,), generator=generator)]
        else:
            idx = torch.randint(len(latents), (args.batch_size,), generator=generator)
        x0 = latents[idx]
        ids5, idsc = t5_ids.input_ids[idx].clone(), clip_ids[idx].clone()
        length = args.pad_lengths[int(torch.randint(len(args.pad_lengths), (1,), generator=generator))]
        drop = torch.rand(args.batch_size, generator=generator) < args.empty_prompt_prob
        pooled_empty = torch.rand(args.batch_size, generator=generator) >= args.pooled_prompt_prob
        targets = bind_targets[idx].clone()
        if args.drop_side_prob > 0:
            sideless = (torch.rand(args.batch_size, generator=generator) < args.drop_side_prob) & two[idx]
            phrase = torch.randint(2, (args.batch_size,), generator=generator)
            ids5[sideless] = sideless_ids[phrase[sideless], idx[sideless]]
            targets[sideless] = sideless_targets[phrase[sideless], idx[sideless]]
        ids5[drop], idsc[drop | pooled_empty] = empty_t5, empty_clip
        ids5 = F.pad(ids5, (0, length - T5_LENGTH), value=t5_tokenizer.pad_token_id)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=generator))  # logit-normal
        noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        text_states = t5(ids5)[0]
        pred = transformer(
            hidden_states=noisy,
            timestep=t,
            pooled_projections=clip(idsc).pooler_output,
            encoder_hidden_states=text_states,
            txt_ids=torch.zeros(length, 3),
            img_ids=img_ids,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        if args.bind_loss_weight > 0:
            targets[drop] = -100
            loss = loss + args.bind_loss_weight * bind_loss(bind_head, text_states, targets)
        return loss

    return train_jointly(args, {"transformer": transformer, "t5": t5, "clip": clip}, bind_head, batch_loss)


def assemble(args, vae, clip_tokenizer, t5_tokenizer, states) -> FluxPipeline:
    transformer = build_transformer(args.layers, args.single_layers, args.heads, args.head_dim)
    t5, clip = build_t5(t5_tokenizer), build_text_encoder(clip_tokenizer)
    transformer.load_state_dict(states["transformer"])
    t5.load_state_dict(states["t5"])
    clip.load_state_dict(states["clip"])
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    for model in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        model.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(args, pipe) -> Dict[str, float]:
    from diffusers_interpret.toy.detector import evaluate_prompt_following

    call = dict(TOY_FLUX_CALL)
    steps = call.pop("num_inference_steps")
    return evaluate_prompt_following(
        pipe, num_prompts=args.eval_prompts, num_inference_steps=steps, seed=777, order="random", pipeline_kwargs=call
    )


def vae_and_latents(args, clip_tokenizer):
    # The 64x64 SD toy's VAE and latent pool: from its run when there is one, else from the VAE both toys ship.
    vae = build_vae(IMAGE_SIZE)
    if all((args.sd_work_dir / name).exists() for name in ("vae.pt", "latents.pt")):
        for name in ("vae.pt", "latents.pt"):
            if not (args.work_dir / name).exists():
                shutil.copy(args.sd_work_dir / name, args.work_dir / name)
    if not (args.work_dir / "vae.pt").exists():
        from diffusers import AutoencoderKL

        from diffusers_interpret.toy import TOY_MODEL_DIR

        shipped = AutoencoderKL.from_pretrained(TOY_MODEL_DIR.with_name("model_64") / "vae", torch_dtype=torch.float32)
        atomic_save({"vae": shipped.state_dict()}, args.work_dir / "vae.pt")
        log(args.work_dir, "VAE: the shipped 64x64 toy's")
    vae.load_state_dict(torch.load(args.work_dir / "vae.pt", map_location="cpu")["vae"])
    if (args.work_dir / "latents.pt").exists():
        pool = torch.load(args.work_dir / "latents.pt", map_location="cpu")
    else:
        pool_args = argparse.Namespace(
            work_dir=args.work_dir, resume=False, image_size=IMAGE_SIZE, prompt_order="random",
            num_one_object=6000, num_two_object=6000,
        )  # fmt: skip
        pool = build_latent_pool(pool_args, vae, clip_tokenizer)
    vae.register_to_config(scaling_factor=float(pool["scaling_factor"]), shift_factor=0.0)
    return vae, pool


def main() -> None:
    args = parse_args()
    start_run(args)
    clip_tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    vae, pool = vae_and_latents(args, clip_tokenizer)
    states = train(args, pool, clip_tokenizer, t5_tokenizer)
    pipe = assemble(args, vae, clip_tokenizer, t5_tokenizer, states)
    round_to_fp16(pipe)  # saved in fp16 (the SD toys lost no accuracy to the rounding); checked as saved
    result = check(args, pipe)
    log(args.work_dir, f"Check, fp16-rounded weights: {json.dumps(result)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(args.output_dir, safe_serialization=True)
    write_tokenizer_files(args.output_dir / "tokenizer")
    size = sum(f.stat().st_size for f in args.output_dir.rglob("*") if f.is_file())
    log(args.work_dir, f"Saved to {args.output_dir} ({size / 1e6:.2f} MB) after {states['step']} steps")


if __name__ == "__main__":
    main()
