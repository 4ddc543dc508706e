"""PRX: T5Gemma's encoder reads the cleaned prompt; the image's queries attend over [text, image] keys."""

from typing import Any, Dict, List, Optional, Tuple

import torch

from .base import InputKind, JointAttention, PipelineFamily, TextEncoderSlot, call_argument, check_binned_size
from .registry import register_family


class PRXFamily(PipelineFamily):
    r"""
    `PRXPipeline` (Photoroom's PRX).

    The pipeline cleans the prompt (`clean_text`: lower case, URLs, handles and odd punctuation removed; with
    `skip_text_cleaning=True` only mojibake and HTML entities fixed), pads its tokens to `tokenizer_max_length` (the
    tokenizer's own length by default) and runs the encoder of T5Gemma (`text_encoder`, bidirectional) over them, the
    padding masked; the last layer's states are the transformer's `encoder_hidden_states` and the mask its
    `attention_mask`. There is no pooled vector. Each block's attention takes the image's queries over the text's and
    the image's keys in one softmax (the text has no queries and no stream of its own: no concept attention, no text
    relations). Guidance is classifier-free in one batched call ([negative, prompt] rows) when `guidance_scale > 1`
    (4 by default). With `use_resolution_binning` (the default) the pipeline makes the image at the nearest trained
    aspect ratio and resizes it to the size asked for: a size that binning would change is refused (naming the size
    it would make), since the maps and boxes would be of another image than the one shown.

    The pipeline encodes the prompt under `torch.no_grad()`: the explanation runs the same steps (the pipeline's own
    tokenization and cleaning, its text encoder, the same arguments) with a graph. A prompt the cleaning rewrites
    (beyond lower case) is refused, naming the cleaned text: its words would not be the ones the model read.
    """

    name = "prx"
    display_name = "PRX"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("PRXPipeline",)
    denoiser_attribute = "transformer"
    sample_name = "hidden_states"
    conditioning_names = ("encoder_hidden_states",)
    joint_attention = JointAttention(text_first=True, text_queries=False)

    def input_kind(self, pipeline_class: type) -> Optional[InputKind]:
        return None

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def images_per_call(self, pipe, call_kwargs: Dict[str, Any]) -> Optional[int]:
        # PRXPipeline (diffusers 0.42) repeats the timestep for two rows under guidance, whatever the batch: with
        # guidance it makes one image per call.
        return 1 if _guidance(pipe, call_kwargs) > 1 else None

    def check_request(
        self,
        pipe,
        prompts: List[str],
        size: Tuple[Optional[int], Optional[int]],
        pipeline_kwargs: Dict[str, Any],
        generating: bool = True,
    ) -> None:
        count = len(prompts) * int(pipeline_kwargs.get("num_images_per_prompt") or 1)
        if count > 1 and _guidance(pipe, pipeline_kwargs) > 1:
            raise ValueError(
                f"PRXPipeline makes one image per call with guidance (`guidance_scale` > 1): it fails on {count} "
                "(its timestep is repeated for two rows, whatever the batch). Explain one prompt and one image at a "
                "time."
            )
        skip = bool(pipeline_kwargs.get("skip_text_cleaning"))
        for prompt in prompts:
            cleaned = _cleaner(pipe, skip)(prompt)
            if cleaned != (prompt.strip() if skip else prompt.strip().lower()):
                raise ValueError(
                    f"PRX's text cleaning rewrites the prompt {prompt!r} to {cleaned!r}, so the words explained would "
                    "not be the ones the model read: pass the cleaned text as the prompt, or skip_text_cleaning=True."
                )
        self._check_binning(pipe, size, pipeline_kwargs)

    def _check_binning(self, pipe, size: Tuple[Optional[int], Optional[int]], pipeline_kwargs: Dict[str, Any]) -> None:
        # Resolution binning makes the image at another size and resizes it to the size asked for: its maps and
        # boxes would not be the image's. A size that is its own bin (the default square) passes.
        binning = call_argument(pipe, pipeline_kwargs, "use_resolution_binning")
        bins = _aspect_ratio_bins().get(pipe.default_sample_size)
        if not binning or bins is None:
            return  # the pipeline itself refuses binning for a sample size it has no bins for
        default = int(pipe.get_default_resolution())
        asked = (int(size[0] or default), int(size[1] or default))
        check_binned_size(self.display_name, asked, pipe.image_processor.classify_height_width_bin(*asked, bins))

    def latents_size(self, pipe, latents: torch.Tensor) -> Optional[Tuple[int, int]]:
        return None  # with resolution binning the latents are made at another size than the image's

    def read_conditioning(self, pipe, args: tuple, kwargs: dict) -> Dict[str, torch.Tensor]:
        return {"encoder_hidden_states": kwargs["encoder_hidden_states"]}

    def write_conditioning(
        self, pipe, args: tuple, kwargs: dict, values: Dict[str, torch.Tensor]
    ) -> Tuple[tuple, dict]:
        return args, {**kwargs, "encoder_hidden_states": values["encoder_hidden_states"]}

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        from diffusers.models.transformers.transformer_prx import PRXAttention

        return [(name, module) for name, module in denoiser.named_modules() if isinstance(module, PRXAttention)]

    def concept_blocks(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        raise ValueError(
            "`attribution_method='concept_attention'` needs a text stream to carry concept tokens through, which PRX "
            "has not (its text gives keys and values only): use 'word_attention' or 'attention'."
        )

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [TextEncoderSlot("tokenizer", "text_encoder", "prompt", slice(None), label="T5Gemma")]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        # The cleaning keeps the prompt's characters where `check_arguments` lets a prompt through (lower case at
        # most), less its outer spaces.
        skip = bool((call_kwargs or {}).get("skip_text_cleaning"))
        return _cleaner(pipe, skip)(text), len(text) - len(text.lstrip())

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(call_kwargs.get("tokenizer_max_length") or pipe.tokenizer.model_max_length)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        # PRXPipeline._encode_prompt_standard's steps for the prompts alone, with a graph: it runs the encoder under
        # `torch.no_grad()`, which would cut the gradient to the tokens.
        ids, mask = pipe._tokenize_prompts(
            prompts["prompt"],
            device,
            tokenizer_max_length=call_kwargs.get("tokenizer_max_length"),
            skip_text_cleaning=bool(call_kwargs.get("skip_text_cleaning")),
        )
        states = pipe.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)["last_hidden_state"]
        # The mask is not a gradient path: it rides along for `denoiser_arguments` (an existing image's calls).
        return {"encoder_hidden_states": states, "attention_mask": mask}

    # -- an image the user already has ------------------------------------------------------------------------------
    def noised(self, pipe, latents, noise, level):
        sigma = float(level)
        timestep = torch.tensor(sigma * pipe.scheduler.config.num_train_timesteps, device=latents.device)
        return ((1 - sigma) * latents + sigma * noise).to(latents.dtype), timestep

    def predicted_clean(self, pipe, noised, prediction, level):
        return noised - float(level) * prediction  # flow matching: the velocity is noise - clean

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        encoded = vae.encode(pixels.to(vae.device, vae.dtype))
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latent
        scaling, shift = _latent_scale(vae)
        return (latents - shift) * scaling

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows = latents.shape[0]
        mask = conditioning.get("attention_mask")
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand(rows, -1)
        return {
            "hidden_states": latents,
            "timestep": (timestep.float() / pipe.scheduler.config.num_train_timesteps).view(1).repeat(rows),
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "attention_mask": mask,
            "return_dict": False,
        }

    # -- images ---------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        size = int(pipe.get_default_resolution())
        return size, size

    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        # (Resolution binning that would resize the image is refused in `check_arguments`.)
        vae = pipe.vae
        scaling, shift = _latent_scale(vae)
        return vae.decode(latents / scaling + shift, return_dict=False)[0]


def _guidance(pipe, call_kwargs: Dict[str, Any]) -> float:
    scale = call_argument(pipe, call_kwargs, "guidance_scale")
    return float(scale)


def _cleaner(pipe, skip: bool):
    processor = pipe.text_preprocessor
    return processor.basic_clean if skip else processor.clean_text


def _aspect_ratio_bins() -> Dict[int, Any]:
    from diffusers.pipelines.prx.pipeline_prx import ASPECT_RATIO_BINS

    return ASPECT_RATIO_BINS


def _latent_scale(vae) -> Tuple[float, float]:
    # As the pipeline reads them (an AutoencoderDC has no shift).
    return getattr(vae.config, "scaling_factor", 0.18215), getattr(vae.config, "shift_factor", 0.0)


PRX = register_family(PRXFamily())
