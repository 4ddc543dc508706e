"""Sana: Gemma 2 reads the prompt after a long instruction; a linear-attention DiT reads it by cross-attention."""

import inspect
from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import InputKind, PipelineFamily, TextEncoderSlot, call_argument, check_binned_size
from .registry import register_family


class SanaFamily(PipelineFamily):
    r"""
    `SanaPipeline`.

    `encode_prompt` lower-cases the prompt, puts the pipeline's `complex_human_instruction` (a long instruction to
    enrich the prompt, ending in "User Prompt: ") before it, pads the tokens to the instruction's length plus
    `max_sequence_length` - 2 and runs the causal LLM (`text_encoder`, Gemma 2) over them; of its last layer's states
    it keeps the first position (`<bos>`) and the last `max_sequence_length` - 1 (the instruction's end, the prompt and
    the padding), which the transformer reads with their mask through the cross-attention of each block (its
    self-attention over the image is linear attention). The negative prompt is read without the instruction. Guidance
    is classifier-free in one batched call ([negative, prompt] rows) when `guidance_scale > 1` (4.5 by default). With
    `use_resolution_binning` (the default) the pipeline makes the image at the nearest trained aspect ratio and resizes
    it: a size that binning would change is refused (naming the size it would make).

    Only the tokens of the prompt's own characters are attributed (the instruction's and the padding never); the
    words are shown as typed (the model reads them lower-cased). The LLM is causal: a token's state carries the words
    before it, which `word_attention` hands back to the words. `clean_caption=True` (which rewrites the prompt) is
    refused.
    """

    name = "sana"
    display_name = "Sana"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("SanaPipeline",)
    denoiser_attribute = "transformer"
    sample_name = "hidden_states"
    conditioning_names = ("encoder_hidden_states",)

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
        if pipeline_kwargs.get("clean_caption"):
            raise ValueError(
                "`clean_caption=True` rewrites the prompt before it is encoded, so the words explained would not be "
                "the ones the model read: explain without it."
            )
        if call_argument(pipe, pipeline_kwargs, "use_resolution_binning"):
            bins = _aspect_ratio_bins(int(self.denoiser(pipe).config.sample_size))
            if bins is not None:
                asked = tuple(int(side or default) for side, default in zip(size, self.default_size(pipe)))
                check_binned_size(
                    self.display_name, asked, pipe.image_processor.classify_height_width_bin(*asked, bins)
                )

    def size_multiple(self, pipe) -> Optional[int]:
        return 32  # `SanaPipeline.check_inputs`

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [
            TextEncoderSlot(
                "tokenizer", "text_encoder", "prompt", slice(None), label="Gemma 2", template=True, causal=True
            )
        ]

    def tokenizer_arguments(self, pipe, slot: TextEncoderSlot, text: str) -> Dict[str, Any]:
        return {"padding_side": "right"}  # as `encode_prompt` sets the tokenizer before it tokenizes

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        # The pipeline's `_text_preprocessing` without caption cleaning: lower case, outer spaces stripped (character
        # for character, so the prompt's words keep their places).
        instruction = _instruction(pipe, call_kwargs or {})
        return instruction + text.lower().strip(), len(instruction) - (len(text) - len(text.lstrip()))

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        length = call_argument(pipe, call_kwargs, "max_sequence_length")
        instruction = _instruction(pipe, call_kwargs)
        if not instruction:
            return int(length)
        return len(self.tokenizer(pipe, slot).encode(instruction)) + int(length) - 2

    def kept_positions(self, pipe, slot: TextEncoderSlot, length: int, call_kwargs: Dict[str, Any]) -> List[int]:
        # `encode_prompt`'s `select_index`: the first position and the last `max_sequence_length` - 1.
        kept = int(call_argument(pipe, call_kwargs, "max_sequence_length"))
        return [0, *range(length - kept + 1, length)]

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        embeddings, mask, _, _ = pipe.encode_prompt(
            prompts["prompt"],
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=device,
            clean_caption=False,
            max_sequence_length=int(call_argument(pipe, call_kwargs, "max_sequence_length")),
            complex_human_instruction=_instructions(pipe, call_kwargs),
            lora_scale=(call_kwargs.get("attention_kwargs") or {}).get("scale"),
        )
        # The mask is not a gradient path: it rides along for `denoiser_arguments` (an existing image's calls).
        return {"encoder_hidden_states": embeddings, "encoder_attention_mask": mask}

    # -- an image the user already has ------------------------------------------------------------------------------
    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        return vae.encode(pixels.to(vae.device, vae.dtype)).latent * vae.config.scaling_factor

    def noised(self, pipe, latents, noise, level):
        # Flow matching, as the pipeline's scheduler: `(1 - level) x + level noise` at timestep `level` x 1000.
        sigma = float(level)
        timestep = torch.tensor(sigma * pipe.scheduler.config.num_train_timesteps, device=latents.device)
        return ((1 - sigma) * latents + sigma * noise).to(latents.dtype), timestep

    def predicted_clean(self, pipe, noised, prediction, level):
        if prediction.shape[1] == 2 * noised.shape[1]:  # a learned variance: the pipeline keeps the first half
            prediction = prediction.chunk(2, dim=1)[0]
        return noised - float(level) * prediction  # the velocity is noise - clean

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        mask = conditioning.get("encoder_attention_mask")
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand(rows, -1)
        scale = self.denoiser(pipe).config.timestep_scale
        return {
            "hidden_states": latents,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "encoder_attention_mask": mask,
            "timestep": (timestep * scale).expand(rows),
            "attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }

    # -- images ---------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        parameters = inspect.signature(type(pipe).__call__).parameters  # the pipeline's own (1024 x 1024)
        return int(parameters["height"].default), int(parameters["width"].default)

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # (Resolution binning that would resize the image is refused in `check_request`.)
        vae = pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def _aspect_ratio_bins(sample_size: int):
    # The pipeline's own choice of bins by the transformer's sample size (others it refuses itself).
    from diffusers.pipelines.sana import pipeline_sana as module

    names = {128: "ASPECT_RATIO_4096_BIN", 64: "ASPECT_RATIO_2048_BIN", 32: "ASPECT_RATIO_1024_BIN"}
    names[16] = "ASPECT_RATIO_512_BIN"
    return getattr(module, names[sample_size]) if sample_size in names else None


def _instructions(pipe, call_kwargs: Dict[str, Any]):
    # The call's `complex_human_instruction` as given (`None` or `[]` means none), else the pipeline's own.
    if "complex_human_instruction" in call_kwargs:
        return call_kwargs["complex_human_instruction"]
    return inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default


def _instruction(pipe, call_kwargs: Dict[str, Any]) -> str:
    lines = _instructions(pipe, call_kwargs)
    return "\n".join(lines) if lines else ""


SANA = register_family(SanaFamily())
