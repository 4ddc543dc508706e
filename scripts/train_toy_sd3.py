r"""
Train the toy Stable Diffusion 3 model shipped in `diffusers_interpret/toy/model_sd3/`, from scratch, on CPU.

The model uses SD3's exact classes (`SD3Transformer2DModel`, `AutoencoderKL`, two `CLIPTextModelWithProjection`s
standing for CLIP-L and CLIP-G, `T5EncoderModel`, `FlowMatchEulerDiscreteScheduler`, assembled into a
`StableDiffusion3Pipeline`) at a tiny size, on the toy Flux's 64x64 scenes and latents (`train_toy_flux.py`: the same
VAE, latent pool, prompts in either order and T5 tokenizer, in which "triangle" is two pieces). As in SD3, the text
sequence the transformer reads is the two CLIPs' penultimate states side by side (24 + 32 channels, zero-padded to
T5's 64) followed by T5's states: every word of the prompt is in the sequence twice, once per tokenizer, which is what
makes merging words across encoders part of the ground truth. The two CLIPs' pooled vectors, concatenated, go to the
timestep embedding.

Stages (checkpointed in `--work-dir`, so that `--resume` continues them):

1. The VAE and latent pool: as for the toy Flux (copied from `--sd-work-dir` when it has them, else the shipped 64x64
   toy's VAE encodes the scenes afresh).
2. Transformer + the three text encoders jointly, rectified flow as SD3 (x_t = (1 - t) x_0 + t noise, target
   noise - x_0, t logit-normal, the transformer told 1000 t), 10% empty prompts (for classifier-free guidance), EMA
   0.999, one-object scenes only for the first 15% of the steps. Recipe of the toy Flux where the two agree: the
   pooled vector is the prompt's own for only `--pooled-prompt-prob` of the examples, T5 is padded to 16 or 32
   tokens, and a small head (not shipped) teaches T5's word states which object they describe (`--bind-loss-weight`;
   without it the toy Flux's T5 gave a word the same state in every prompt). As SD3 was trained, each text encoder's
   sequence is dropped (zeros) independently (`--encoder-drop-prob`), so that the words must be readable from the
   CLIPs' copy and from T5's copy alike.
3. The pipeline is assembled with the EMA weights, checked for prompt following with the independent detector
   (`**TOY_SD3_CALL`: classifier-free guidance 4 against the empty prompt), and saved in fp16.

Usage:

```bash
python scripts/train_toy_sd3.py --work-dir runs/toysd3
```

An interrupted run continues with `--resume`.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Dict

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other training scripts, next to this one

from diffusers import (  # noqa: E402
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from train_toy_flux import (  # noqa: E402
    T5_LENGTH,
    bind_loss,
    binding_labels,
    build_t5,
    build_t5_tokenizer,
    joint_training_parser,
    scene_prompts,
    train_jointly,
    vae_and_latents,
)
from train_toy_model import (  # noqa: E402
    TOKENIZER_MAX_LENGTH,
    build_tokenizer,
    log,
    round_to_fp16,
    start_run,
    write_tokenizer_files,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from diffusers_interpret.toy import TOY_SD3_CALL  # noqa: E402
from diffusers_interpret.toy.scenes import COLORS, SHAPES  # noqa: E402

CLIP_WIDTHS = (24, 32)  # CLIP-L and CLIP-G stand-ins; side by side they are zero-padded to T5's width, as in SD3
JOINT_WIDTH = 64


def parse_args() -> argparse.Namespace:
    parser = joint_training_parser(__doc__.split("\n\n")[1], "runs/toysd3", "diffusers_interpret/toy/model_sd3")
    parser.add_argument(
        "--encoder-drop-prob",
        type=float,
        default=0.2,
        help="probability that one text encoder's sequence is zeroed for an example (each encoder independently)",
    )
    parser.add_argument("--layers", type=int, default=6, help="joint transformer blocks")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=16)
    return parser.parse_args()


def build_clip(tokenizer, width: int) -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TOKENIZER_MAX_LENGTH,
            projection_dim=JOINT_WIDTH // 2,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_transformer(layers: int = 6, heads: int = 4, head_dim: int = 16) -> SD3Transformer2DModel:
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=JOINT_WIDTH,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=JOINT_WIDTH,
        out_channels=4,
        pos_embed_max_size=16,
    )


def text_conditioning(clips, t5, clip_ids, t5_ids, keep):
    r"""
    What `StableDiffusion3Pipeline.encode_prompt` gives the transformer, from token ids: the CLIPs' penultimate states
    side by side, zero-padded to T5's width, followed by T5's states; the CLIPs' projected pooled vectors side by side.
    `keep` (batch, 3) zeroes an encoder's sequence for the examples it is False for.
    """
    states, pooled = [], []
    for clip, ids in zip(clips, clip_ids):
        out = clip(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out.text_embeds)
    for k in range(2):
        states[k] = states[k] * keep[:, k, None, None]
    clip_states = F.pad(torch.cat(states, dim=-1), (0, JOINT_WIDTH - sum(CLIP_WIDTHS)))
    t5_states = t5(t5_ids)[0]
    sequence = torch.cat([clip_states, t5_states * keep[:, 2, None, None]], dim=-2)
    return sequence, torch.cat(pooled, dim=-1), t5_states


def train(args, pool, clip_tokenizer, t5_tokenizer) -> Dict:
    torch.manual_seed(args.seed + 2)
    transformer = build_transformer(args.layers, args.heads, args.head_dim)
    clips = [build_clip(clip_tokenizer, width) for width in CLIP_WIDTHS]
    t5 = build_t5(t5_tokenizer)
    models = {"transformer": transformer, "clip_l": clips[0], "clip_g": clips[1], "t5": t5}
    bind_head = torch.nn.Linear(t5.config.d_model, len(COLORS) + len(SHAPES) + 2)  # trained, not shipped
    latents = pool["latents"]  # (N, 4, 16, 16)
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
        keep = (torch.rand(args.batch_size, 3, generator=generator) >= args.encoder_drop_prob).float()
        ids5[drop] = empty_t5
        ids5 = F.pad(ids5, (0, length - T5_LENGTH), value=t5_tokenizer.pad_token_id)
        # The sequence reads the prompt's CLIP tokens; the pooled vector is the empty prompt's for most examples.
        idsc[drop] = empty_clip
        idsc_pooled = idsc.clone()
        idsc_pooled[pooled_empty] = empty_clip
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(args.batch_size, generator=generator))  # logit-normal
        noisy = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        sequence, _, t5_states = text_conditioning(clips, t5, [idsc, idsc], ids5, keep)
        pooled = torch.cat([clip(idsc_pooled).text_embeds for clip in clips], dim=-1)
        pred = transformer(
            hidden_states=noisy,
            timestep=t * 1000,
            encoder_hidden_states=sequence,
            pooled_projections=pooled,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        if args.bind_loss_weight > 0:
            targets = bind_targets[idx].clone()
            targets[drop] = -100
            loss = loss + args.bind_loss_weight * bind_loss(bind_head, t5_states, targets)
        return loss

    return train_jointly(args, models, bind_head, batch_loss)


def assemble(args, vae, clip_tokenizer, t5_tokenizer, states) -> StableDiffusion3Pipeline:
    transformer = build_transformer(args.layers, args.heads, args.head_dim)
    clips = [build_clip(clip_tokenizer, width) for width in CLIP_WIDTHS]
    t5 = build_t5(t5_tokenizer)
    for name, model in (("transformer", transformer), ("clip_l", clips[0]), ("clip_g", clips[1]), ("t5", t5)):
        model.load_state_dict(states[name])
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
        vae=vae,
        text_encoder=clips[0],
        tokenizer=clip_tokenizer,
        text_encoder_2=clips[1],
        tokenizer_2=clip_tokenizer,
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
        transformer=transformer,
    )
    for model in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.transformer):
        model.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check(args, pipe) -> Dict[str, float]:
    from diffusers_interpret.toy.detector import evaluate_prompt_following

    call = dict(TOY_SD3_CALL)
    steps, guidance = call.pop("num_inference_steps"), call.pop("guidance_scale")
    return evaluate_prompt_following(
        pipe,
        num_prompts=args.eval_prompts,
        guidance_scale=guidance,
        num_inference_steps=steps,
        seed=777,
        order="random",
        pipeline_kwargs=call,
    )


def main() -> None:
    args = parse_args()
    start_run(args)
    clip_tokenizer, t5_tokenizer = build_tokenizer(), build_t5_tokenizer()
    vae, pool = vae_and_latents(args, clip_tokenizer)
    states = train(args, pool, clip_tokenizer, t5_tokenizer)
    pipe = assemble(args, vae, clip_tokenizer, t5_tokenizer, states)
    round_to_fp16(pipe)
    result = check(args, pipe)
    log(args.work_dir, f"Check, fp16-rounded weights: {json.dumps(result)}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(args.output_dir, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        write_tokenizer_files(args.output_dir / name)
    size = sum(f.stat().st_size for f in args.output_dir.rglob("*") if f.is_file())
    log(args.work_dir, f"Saved to {args.output_dir} ({size / 1e6:.2f} MB) after {states['step']} steps")


if __name__ == "__main__":
    main()
