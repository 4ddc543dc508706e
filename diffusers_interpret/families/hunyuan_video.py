"""HunyuanVideo: Llama reads the prompt inside a template, CLIP's pooled vector the modulation; Flux-like blocks."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import JointAttention, TextEncoderSlot, TransformerFamily, call_argument
from .registry import register_family
from .video import VideoFamily


class HunyuanFamily(VideoFamily):
    r"""
    What HunyuanVideo 1.0 and 1.5 share: dual-stream blocks attending over [video, text] (the video's tokens rotated),
    the negative prompt's transformer call (where guidance makes one) after the prompt's, a VAE whose latents are
    scaled by its `scaling_factor`, and concept attention through the dual-stream blocks' text stream, the concepts
    embedded by the transformer's token refiner.
    """

    joint_attention = JointAttention(text_first=False)

    def size_multiple(self, pipe) -> Optional[int]:
        return int(pipe.vae_scale_factor_spatial) * int(self.denoiser(pipe).config.patch_size)

    def is_prompt_call(self, pipe, call_index: int, calls_per_step: int) -> bool:
        return call_index % calls_per_step == 0  # the prompt's call first, then the negative prompt's

    def positive_rows(self, pipe, batch_size: int) -> slice:
        return slice(0, batch_size)

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode() * vae.config.scaling_factor

    # -- concept attention: the dual-stream blocks' text stream carries the concepts --------------------------------
    def concept_blocks(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return TransformerFamily.concept_blocks(self, denoiser)  # the dual-stream ones (as Flux's)

    def concept_embeddings(self, denoiser, states: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        # As the transformer embeds its text: its token refiner (`context_embedder`) on each concept as a text of one
        # token, conditioned on the call's timestep and that token.
        count = int(states.shape[0])
        refiner = denoiser.context_embedder
        tokens = states.to(dtype=next(refiner.parameters()).dtype)[:, None]
        mask = torch.ones(count, 1, dtype=torch.long, device=states.device)
        return refiner(tokens, kwargs["timestep"].flatten()[:1].expand(count), mask)[:, 0]

    def concept_stream(self, output) -> torch.Tensor:
        return output[1]  # the blocks return (video, text)


class HunyuanVideoFamily(HunyuanFamily):
    r"""
    `HunyuanVideoPipeline`.

    `encode_prompt` puts the prompt in the call's `prompt_template` (by default a long instruction and Llama 3's chat
    markers), runs the Llama text encoder (`text_encoder`, causal) over it padded to `max_sequence_length` (256) plus
    the template's `crop_start` tokens, keeps the states two layers before the last and crops the first `crop_start`
    positions (the instruction): the transformer's token refiner and its blocks read the rest with its mask. CLIP
    (`text_encoder_2`, on `prompt_2`, which defaults to `prompt`) gives the pooled vector of the modulation. The
    transformer is guidance-distilled (a guidance embedding, one call a step); with `true_cfg_scale > 1` and a
    negative prompt the pipeline makes a second, separate call per step for it. Its dual-stream blocks attend over
    [video, text] (the video's positions rotated), its single-stream blocks over the same joined sequence.

    Only the tokens of the prompt's own characters are attributed (the template's, the ones the crop keeps included,
    and the padding never are; their attention is reported as the sink share). The clip is explained as one picture
    of its frames ([`VideoFamily`]); the VAE makes one frame of the first latent frame, then four of each.
    """

    name = "hunyuan_video"
    display_name = "HunyuanVideo"
    required_components = (
        "transformer",
        "vae",
        "tokenizer",
        "text_encoder",
        "tokenizer_2",
        "text_encoder_2",
        "video_processor",
    )
    pipeline_class_names = ("HunyuanVideoPipeline",)
    conditioning_names = ("encoder_hidden_states", "pooled_projections")
    pooled_name = "pooled_projections"

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        # Before anything reads the template (the prompt's tokens are found in it).
        template = _template(pipe, pipeline_kwargs)
        if not isinstance(template, dict) or "{}" not in str(template.get("template", "")):
            raise ValueError(
                "`prompt_template` must be a dict whose 'template' holds the prompt's place as '{}' (and optionally "
                f"its 'crop_start'), got {template!r}."
            )

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        kwargs = call_kwargs or {}
        negative = kwargs.get("negative_prompt") is not None or kwargs.get("negative_prompt_embeds") is not None
        return 2 if float(call_argument(pipe, kwargs, "true_cfg_scale")) > 1 and negative else 1

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        # The dual- and single-stream blocks' attention (not the token refiner's, over the text alone).
        layers = [(f"transformer_blocks.{k}.attn", block.attn) for k, block in enumerate(denoiser.transformer_blocks)]
        single = denoiser.single_transformer_blocks
        return layers + [(f"single_transformer_blocks.{k}.attn", block.attn) for k, block in enumerate(single)]

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # The concepts in the text's place; the mask over [video, text] becomes one over [video, concepts], all kept.
        result = super().concept_block_arguments(arguments, concepts, rows)
        video = result["hidden_states"]
        keys = int(video.shape[1]) + int(concepts.shape[1])
        result["attention_mask"] = torch.ones(video.shape[0], 1, 1, keys, dtype=torch.bool, device=video.device)
        return result

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot(
                "tokenizer", "text_encoder", "prompt", slice(None), label="Llama", template=True, causal=True
            ),
            TextEncoderSlot("tokenizer_2", "text_encoder_2", "prompt_2", None, sequence_group=1, label="CLIP"),
        ]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        if slot.encoder != "text_encoder":
            return text, 0
        template = str(_template(pipe, call_kwargs or {})["template"])
        return template.format(text), template.index("{}")

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        if slot.encoder != "text_encoder":
            return int(self.tokenizer(pipe, slot).model_max_length)
        length = int(call_argument(pipe, call_kwargs, "max_sequence_length"))
        return length + _crop_start(pipe, _template(pipe, call_kwargs))

    def kept_positions(self, pipe, slot: TextEncoderSlot, length: int, call_kwargs: Dict[str, Any]):
        if slot.encoder != "text_encoder":
            return None
        return list(range(_crop_start(pipe, _template(pipe, call_kwargs)), length))

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, pooled, mask = pipe.encode_prompt(
            prompt=prompts["prompt"],
            prompt_2=prompts.get("prompt_2"),
            prompt_template=_template(pipe, call_kwargs),
            num_videos_per_prompt=1,
            device=device,
            max_sequence_length=int(call_argument(pipe, call_kwargs, "max_sequence_length")),
        )
        # The mask is not a gradient path: it rides along for `denoiser_arguments`.
        return {"encoder_hidden_states": embeddings, "pooled_projections": pooled, "encoder_attention_mask": mask}

    # -- the clip -------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        return int(call_argument(pipe, {}, "height")), int(call_argument(pipe, {}, "width"))

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        vae = pipe.vae
        video = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return video.flatten(2, 3)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        guidance = None
        if self.denoiser(pipe).config.guidance_embeds:
            scale = float(call_argument(pipe, call_kwargs, "guidance_scale"))
            guidance = torch.full([rows], scale, dtype=latents.dtype, device=latents.device) * 1000.0
        mask = conditioning.get("encoder_attention_mask")
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand(rows, -1)
        return {
            "hidden_states": latents,
            "timestep": timestep.expand(rows).to(latents.dtype),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "encoder_attention_mask": mask,
            "pooled_projections": conditioning["pooled_projections"],
            "guidance": guidance,
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }


def _template(pipe, call_kwargs: Dict[str, Any]):
    return call_argument(pipe, call_kwargs, "prompt_template")


def _crop_start(pipe, template: Dict[str, Any]) -> int:
    # As `_get_llama_prompt_embeds` finds it: the template's own, else its tokens (padded as the pipeline pads them)
    # less the end marker and the prompt's place.
    crop = template.get("crop_start")
    if crop is not None:
        return int(crop)
    ids = pipe.tokenizer(template["template"], padding="max_length", return_tensors="pt").input_ids
    return int(ids.shape[-1]) - 2


HUNYUAN_VIDEO = register_family(HunyuanVideoFamily())
