"""HunyuanVideo 1.5: Qwen2.5-VL reads the prompt in a chat template; the transformer reorders each row's text."""

import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import TextEncoderSlot, locate_prompt
from .hunyuan_video import HunyuanFamily
from .registry import register_family


class HunyuanVideo15Family(HunyuanFamily):
    r"""
    `HunyuanVideo15Pipeline` (text-to-video).

    `encode_prompt` puts the prompt in Qwen2.5-VL's chat template after the pipeline's system message, pads it to
    `tokenizer_max_length` (1000) positions past the template's first `prompt_template_encode_start_idx` (108: the
    system message and the user's role marker), runs the text model (`text_encoder`) with its mask, keeps the states
    two layers before the last and crops those 108 positions. ByT5 (`text_encoder_2`) reads only the prompt's quoted
    text (`"..."`, for glyphs; zeros and an empty mask otherwise). The transformer refines the Qwen states, and then,
    row by row, lays out its text as [image tokens that count, ByT5's, Qwen's, then the masked ones of each]: a Qwen
    position's place in the attention layers' text depends on its row's masks (`text_key_columns`). Its dual-stream
    blocks attend over [video, text] (only the video rotated), with the text's mask. Guidance is the pipeline's guider
    (`ClassifierFreeGuidance`): with a scale other than 1, a second, separate transformer call per step for the
    negative prompt, the prompt's first.

    Only the Qwen tokens of the prompt's own characters are attributed (the chat template's after the crop, the
    padding and ByT5's glyph bytes never are; the template's attention is reported as the sink share, ByT5's stays in
    each softmax as the image's keys do). The clip is explained as one picture of its frames ([`VideoFamily`]); the
    transformer also reads zeros for a first frame's latents and mask beside the noised latents (text-to-video), which
    `denoiser_arguments` gives it as the pipeline does.
    """

    name = "hunyuan_video15"
    display_name = "HunyuanVideo 1.5"
    required_components = (
        "transformer",
        "vae",
        "tokenizer",
        "text_encoder",
        "tokenizer_2",
        "text_encoder_2",
        "guider",
        "video_processor",
    )
    pipeline_class_names = ("HunyuanVideo15Pipeline",)

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        from diffusers.guiders import ClassifierFreeGuidance

        guider = pipe.guider
        if type(guider) is not ClassifierFreeGuidance:
            raise ValueError(
                f"HunyuanVideo 1.5 is explained with a `ClassifierFreeGuidance` guider, not {type(guider).__name__}: "
                "load the pipeline with `guider=ClassifierFreeGuidance(guidance_scale=...)`."
            )
        videos = pipeline_kwargs.get("num_videos_per_prompt")
        if videos is not None and videos != 1:
            raise ValueError(
                f"`num_videos_per_prompt={videos!r}`: HunyuanVideo 1.5's pipeline makes its text-to-video image "
                "embeddings for one clip a prompt (diffusers 0.42 fails on more): explain one clip a prompt, with "
                "several prompts or seeds for more."
            )
        if float(guider._start) != 0.0 or float(guider._stop) != 1.0:
            raise ValueError(
                f"The guider guides only from {guider._start} to {guider._stop} of the steps, so the transformer "
                "calls per step change along the call: use a guider that guides every step (`start=0.0, stop=1.0`)."
            )

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        guider = pipe.guider
        neutral = 0.0 if guider.use_original_formulation else 1.0
        return 2 if guider._enabled and not math.isclose(guider.guidance_scale, neutral) else 1

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        return [(f"transformer_blocks.{k}.attn", block.attn) for k, block in enumerate(denoiser.transformer_blocks)]

    def text_key_columns(self, pipe, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        # As `HunyuanVideo15Transformer3DModel.forward` lays out each row's text: [valid image, valid ByT5, valid
        # Qwen, masked image, masked ByT5, masked Qwen]; the image tokens count only when some image embedding is not
        # zero (image-to-video).
        qwen = kwargs["encoder_attention_mask"].bool()
        glyphs = kwargs["encoder_attention_mask_2"].bool()
        image = kwargs["image_embeds"]
        image_length = int(image.shape[1])
        image_valid = 0 if bool(torch.all(image == 0)) else image_length
        length_2 = int(glyphs.shape[1])
        columns = torch.empty(qwen.shape, dtype=torch.long)
        for row in range(qwen.shape[0]):
            valid = qwen[row].cpu()
            before = image_valid + int(glyphs[row].sum())
            count = int(valid.sum())
            columns[row, valid] = before + torch.arange(count)
            columns[row, ~valid] = image_length + length_2 + count + torch.arange(int((~valid).sum()))
        return columns

    # -- concept attention: the dual-stream blocks' text stream carries the concepts --------------------------------
    def concept_embeddings(self, denoiser, states: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        # As the transformer embeds its Qwen text: the token refiner, then the Qwen condition-type embedding.
        refined = super().concept_embeddings(denoiser, states, args, kwargs)
        kind = torch.zeros(int(states.shape[0]), dtype=torch.long, device=states.device)
        return refined + denoiser.cond_type_embed(kind)

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # The concepts in the text's place, every one of them unmasked; the video's rotary embedding as it is.
        result = super().concept_block_arguments(arguments, concepts, rows)
        result["attention_mask"] = torch.ones(concepts.shape[:2], dtype=torch.bool, device=concepts.device)
        return result

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot(
                "tokenizer", "text_encoder", "prompt", slice(None), label="Qwen2.5-VL", template=True, causal=True
            )
        ]

    def negative_prompt_arguments(self, pipe) -> Tuple[str, ...]:
        return ("negative_prompt",)

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import format_text_input

        tokenizer = self.tokenizer(pipe, slot)

        def render(content: str) -> str:
            messages = format_text_input([content], pipe.system_message)[0]  # an empty prompt is read as " "
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        return locate_prompt(render, text)

    def tokenizer_arguments(self, pipe, slot: TextEncoderSlot, text: str) -> Dict[str, Any]:
        return {"add_special_tokens": False}  # the chat template's text holds its markers

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(pipe.tokenizer_max_length) + int(pipe.prompt_template_encode_start_idx)

    def kept_positions(self, pipe, slot: TextEncoderSlot, length: int, call_kwargs: Dict[str, Any]) -> List[int]:
        return list(range(int(pipe.prompt_template_encode_start_idx), length))

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        texts = prompts["prompt"]
        embeddings, mask, glyphs, glyph_mask = pipe.encode_prompt(
            prompt=texts, device=device, batch_size=len(texts), num_videos_per_prompt=1
        )
        # The masks and ByT5's states are no gradient path to the prompt's words: they ride along for
        # `denoiser_arguments`.
        return {
            "encoder_hidden_states": embeddings,
            "encoder_attention_mask": mask,
            "encoder_hidden_states_2": glyphs,
            "encoder_attention_mask_2": glyph_mask,
        }

    # -- the clip -------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        # As the pipeline's call without `height` and `width`: the size of its aspect ratio nearest its target size.
        width, height = pipe.default_aspect_ratio
        size = pipe.video_processor.calculate_default_height_width(height, width, pipe.target_size)
        return int(size[0]), int(size[1])

    def denoiser_in_channels(self, pipe) -> int:
        # The noised latents, a first frame's latents and its mask side by side; for text-to-video the last two are
        # zeros, which `denoiser_arguments` gives as the pipeline does: the transformer denoises a clip alone.
        return int(self.denoiser(pipe).config.in_channels)

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # One clip at a time: the VAE's causal attention mask has one row, and SDPA refuses it for a batch of two
        # (diffusers 0.42).
        vae = pipe.vae
        scaled = latents.to(vae.dtype) / vae.config.scaling_factor
        video = torch.cat([vae.decode(clip, return_dict=False)[0] for clip in scaled.split(1)])
        return video.flatten(2, 3)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        frames, height, width = latents.shape[2:]
        zeros = torch.zeros_like(latents)
        first_frame_mask = latents.new_zeros(rows, 1, frames, height, width)
        image_embeds = latents.new_zeros(rows, int(pipe.vision_num_semantic_tokens), int(pipe.vision_states_dim))

        def per_row(name):
            value = conditioning[name]
            return value.expand(rows, *value.shape[1:]) if value.shape[0] == 1 else value

        return {
            "hidden_states": torch.cat([latents, zeros, first_frame_mask], dim=1),
            "image_embeds": image_embeds,
            "timestep": timestep.expand(rows).to(latents.dtype),
            "encoder_hidden_states": per_row("encoder_hidden_states"),
            "encoder_attention_mask": per_row("encoder_attention_mask"),
            "encoder_hidden_states_2": per_row("encoder_hidden_states_2"),
            "encoder_attention_mask_2": per_row("encoder_attention_mask_2"),
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }


class HunyuanVideo15ImageToVideoFamily(HunyuanVideo15Family):
    r"""
    `HunyuanVideo15ImageToVideoPipeline` (HunyuanVideo 1.5 image-to-video): as [`HunyuanVideo15Family`], and the input
    image. The pipeline sizes the clip by the image (the size of its aspect ratio nearest the transformer's target
    size, the image cropped to it) and reads it twice: its VAE latents as the first latent frame beside the noised
    latents (with a mask of that frame), and SigLIP's tokens of it, which the transformer lays first in each row's text
    (they count: image-to-video). The input image's **pixel attributions** come through the VAE's path: SigLIP's
    processor works on the image outside torch, so its tokens carry no gradient to the pixels (the words'
    attributions include them: they are part of each traced call). The prompt dependence is not measured (the
    transformer reads the first frame's latents beside the noised ones, which a redraw of the clip alone has not).
    """

    name = "hunyuan_video15_i2v"
    display_name = "HunyuanVideo 1.5 image-to-video"
    required_components = (*HunyuanVideo15Family.required_components, "image_encoder", "feature_extractor")
    pipeline_class_names = ("HunyuanVideo15ImageToVideoPipeline",)

    def input_size(self, pipe, image) -> Tuple[int, int]:
        # As the pipeline's call: the size of the image's aspect ratio nearest the target size, the image cropped and
        # resized to it. Only an image already at that size is taken, so that its pixel attributions lie on it.
        width, height = image.size
        size = pipe.video_processor.calculate_default_height_width(height, width, pipe.target_size)
        made = int(size[0]), int(size[1])
        if made != (height, width):
            raise ValueError(
                f"{self.display_name} crops and resizes a {width}x{height} (width x height) image to {made[1]}x"
                f"{made[0]} (its target size {pipe.target_size}): give the image at {made[1]}x{made[0]}, so that its "
                "pixel attributions lie on the image it reads."
            )
        return made

    def denoiser_in_channels(self, pipe) -> int:
        # The transformer reads the first frame's latents and mask beside the noised latents: no redraw of a clip
        # alone (the prompt dependence is not measured).
        return self.latent_channels(pipe)


HUNYUAN_VIDEO15 = register_family(HunyuanVideo15Family())
HUNYUAN_VIDEO15_I2V = register_family(HunyuanVideo15ImageToVideoFamily())
