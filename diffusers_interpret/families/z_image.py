"""Z-Image: Qwen3 reads the prompt in its chat template; one stream of [image, text] tokens, each padded to 32."""

import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import InputKind, JointAttention, PipelineFamily, TextEncoderSlot, call_argument
from .flux2 import chat_template_text
from .registry import register_family

# The transformer pads the image's and the text's tokens each to a multiple of this (diffusers' SEQ_MULTI_OF).
_PADDED_TO = 32


class ZImageFamily(PipelineFamily):
    r"""
    `ZImagePipeline` (Z-Image and Z-Image-Turbo).

    `encode_prompt` wraps the prompt as a user message in the tokenizer's chat template (Qwen3's, thinking on: nothing
    after the assistant's marker), pads it to `max_sequence_length` (512) and runs the causal LLM (`text_encoder`,
    Qwen3) over it; the second-to-last layer's states of the tokens that are not padding are the prompt's caption, one
    tensor of its own length per image. The transformer (S3-DiT) takes lists: each image's latents and caption; it
    refines the image's and the caption's tokens apart, pads each to a multiple of 32 (the caption with a learned pad
    token) and runs its main layers over one stream of [image, caption] tokens. Guidance is classifier-free in one call
    (the prompts' captions, then the negative prompts') when `guidance_scale > 0` (5 by default; Z-Image-Turbo runs
    at 0). The pipeline calls the transformer at `1 - t` and takes the negative of its output: its loop, untouched.

    Only the tokens of the prompt's own characters are attributed and shown: the template's (role markers) and the
    caption's padding never are, and the attention they take is reported (`output.attention_sink_share`). The maps are
    the main layers' image queries over the caption's keys (the refiners see one kind of token only). There is no text
    stream of its own (no concept attention). `cfg_truncation` below 1 (guidance switched off for the last steps) is
    not explained yet and is refused.
    """

    name = "z_image"
    display_name = "Z-Image"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("ZImagePipeline",)
    denoiser_attribute = "transformer"
    conditioning_names = ("encoder_hidden_states",)
    joint_attention = JointAttention(text_first=False)

    def input_kind(self, pipeline_class: type) -> Optional[InputKind]:
        return None

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_request(
        self,
        pipe,
        prompts: List[str],
        size: Tuple[Optional[int], Optional[int]],
        pipeline_kwargs: Dict[str, Any],
        generating: bool = True,
    ) -> None:
        truncation = call_argument(pipe, pipeline_kwargs, "cfg_truncation")
        if (
            truncation is not None
            and float(truncation) < 1
            and float(call_argument(pipe, pipeline_kwargs, "guidance_scale")) > 0
        ):
            raise ValueError(
                "`cfg_truncation` below 1 switches guidance off for the last steps, which the explanation does not "
                "follow yet: explain with cfg_truncation=1.0 (the default)."
            )

    def latents_size(self, pipe, latents: torch.Tensor) -> Optional[Tuple[int, int]]:
        factor = pipe.vae_scale_factor
        if latents.ndim != 4:
            raise ValueError(
                f"`latents` must be (batch, channels, height / {factor}, width / {factor}), got shape "
                f"{tuple(latents.shape)}."
            )
        return int(latents.shape[-2]) * factor, int(latents.shape[-1]) * factor

    def read_sample(self, args: tuple, kwargs: dict) -> torch.Tensor:
        # One (channels, frames, height, width) tensor per image, stacked.
        return torch.stack(list(kwargs["x"] if "x" in kwargs else args[0]))

    def write_sample(self, args: tuple, kwargs: dict, sample: torch.Tensor) -> Tuple[tuple, dict]:
        if "x" in kwargs:
            return args, {**kwargs, "x": list(sample.unbind(0))}
        return (list(sample.unbind(0)), *args[1:]), kwargs

    def positive_rows(self, pipe, batch_size: int) -> slice:
        # With guidance the pipeline lists the prompts' rows first, then the negative prompts'.
        if getattr(pipe, "do_classifier_free_guidance", False) and batch_size % 2 == 0:
            return slice(0, batch_size // 2)
        return slice(0, batch_size)

    def read_conditioning(self, pipe, args: tuple, kwargs: dict) -> Dict[str, torch.Tensor]:
        # The captions, one of its own length per row, as one tensor: every row padded with zeros (or cut) to the
        # longest of the prompts' captions. `write_conditioning` hands each prompt's row back at its own length and
        # the negative prompts' captions back as they were.
        captions = list(kwargs["cap_feats"] if "cap_feats" in kwargs else args[2])
        rows = self.positive_rows(pipe, len(captions))
        length = max(int(c.shape[0]) for c in captions[rows])
        return {"encoder_hidden_states": torch.stack([_fitted(c, length) for c in captions])}

    def write_conditioning(
        self, pipe, args: tuple, kwargs: dict, values: Dict[str, torch.Tensor]
    ) -> Tuple[tuple, dict]:
        captions = list(kwargs["cap_feats"] if "cap_feats" in kwargs else args[2])
        rows = self.positive_rows(pipe, len(captions))
        written = values["encoder_hidden_states"]
        made = [written[i, : captions[i].shape[0]] if i in range(*rows.indices(len(captions))) else captions[i]
                for i in range(len(captions))]  # fmt: skip
        if "cap_feats" in kwargs:
            return args, {**kwargs, "cap_feats": made}
        return (*args[:2], made, *args[3:]), kwargs

    def denoiser_output(self, output) -> torch.Tensor:
        return torch.stack(list(output[0] if isinstance(output, tuple) else output.sample))

    def with_denoiser_output(self, output, tensor: torch.Tensor):
        if isinstance(output, tuple):
            return (list(tensor.unbind(0)), *output[1:])
        output.sample = list(tensor.unbind(0))
        return output

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        # The main layers (one stream of image and caption); the refiners each see one kind of token.
        return [(f"layers.{index}.attention", layer.attention) for index, layer in enumerate(denoiser.layers)]

    def joint_layout(
        self, denoiser, tokens: int, text_length: int, latent_size: Optional[Tuple[int, int]]
    ) -> Optional[Tuple[slice, slice]]:
        # [image tokens padded to a multiple of 32, caption tokens padded to a multiple of 32]: the image's own tokens
        # are the queries, the caption's first `text_length` the text.
        patch = int(denoiser.config.all_patch_size[0])
        image = (latent_size[0] // patch) * (latent_size[1] // patch)
        start = -(-image // _PADDED_TO) * _PADDED_TO
        return slice(0, image), slice(start, start + text_length)

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot(
                "tokenizer",
                "text_encoder",
                "prompt",
                slice(None),
                label="Qwen3",
                template=True,
                causal=True,
                pad_to_longest=True,
            )
        ]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        return chat_template_text(self.tokenizer(pipe, slot), text, enable_thinking=True)

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(call_argument(pipe, call_kwargs, "max_sequence_length"))

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        # The pipeline's own encoding, its padding cut to the longest prompt's tokens (a causal LLM's states of the
        # tokens before the padding do not depend on it): one row per prompt, each caption padded with zeros to the
        # longest (as `read_conditioning` lays the captions out).
        slot = self.text_encoders(pipe)[0]
        tokenizer = self.tokenizer(pipe, slot)
        cap = int(call_argument(pipe, call_kwargs, "max_sequence_length"))
        longest = max(len(tokenizer(self.encoder_text(pipe, slot, p)[0]).input_ids) for p in prompts["prompt"])
        captions, _ = pipe.encode_prompt(
            prompt=list(prompts["prompt"]),
            device=device,
            do_classifier_free_guidance=False,
            max_sequence_length=min(cap, longest),
        )
        length = max(int(c.shape[0]) for c in captions)
        lengths = torch.tensor([int(c.shape[0]) for c in captions])
        # The lengths are not a gradient path: they ride along for `denoiser_arguments` (an existing image's calls).
        return {"encoder_hidden_states": torch.stack([_fitted(c, length) for c in captions]), "lengths": lengths}

    # -- an image the user already has ------------------------------------------------------------------------------
    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def noised(self, pipe, latents, noise, level):
        # Flow matching, as the pipeline's scheduler: `(1 - level) x + level noise` at timestep `level` x 1000.
        sigma = float(level)
        timestep = torch.tensor(sigma * pipe.scheduler.config.num_train_timesteps, device=latents.device)
        return ((1 - sigma) * latents + sigma * noise).to(latents.dtype), timestep

    def predicted_clean(self, pipe, noised, prediction, level):
        # The transformer's output (one frame per image) is the negative of the velocity (noise - clean): the
        # pipeline negates it.
        return noised + float(level) * prediction.squeeze(2)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        captions = conditioning["encoder_hidden_states"]
        lengths = conditioning.get("lengths")
        lengths = [captions.shape[1]] * captions.shape[0] if lengths is None else [int(n) for n in lengths]
        rows = latents.shape[0]
        made = [captions[min(i, captions.shape[0] - 1), : lengths[min(i, len(lengths) - 1)]] for i in range(rows)]
        return {
            "x": list(latents.unsqueeze(2).unbind(0)),
            "t": ((1000 - timestep) / 1000).expand(rows).to(latents.dtype),
            "cap_feats": made,
            "joint_attention_kwargs": call_kwargs.get("joint_attention_kwargs"),
            "return_dict": False,
        }

    # -- images ---------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        parameters = inspect.signature(type(pipe).__call__).parameters
        height, width = parameters["height"].default, parameters["width"].default
        size = 1024 if height is None else int(height)  # the pipeline's own default
        return size, (size if width is None else int(width))

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        latents = latents.to(vae.dtype)
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


def _fitted(caption: torch.Tensor, length: int) -> torch.Tensor:
    # A (tokens, features) caption cut or padded with zeros to `length` tokens.
    if caption.shape[0] >= length:
        return caption[:length]
    return torch.cat([caption, caption.new_zeros(length - caption.shape[0], caption.shape[1])])


Z_IMAGE = register_family(ZImageFamily())
