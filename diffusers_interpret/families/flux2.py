"""Flux 2 [klein]: a chat LLM (Qwen3) reads the prompt in its chat template; its layers' states, stacked, carry it."""

from typing import Any, Dict, List, Optional, Tuple

import torch
from diffusers import Flux2KleinPipeline

from .base import InputKind, TextEncoderSlot, call_argument, locate_prompt
from .flux import FluxFamily
from .registry import register_family


class Flux2KleinFamily(FluxFamily):
    r"""
    `Flux2KleinPipeline` (FLUX.2 [klein]).

    `encode_prompt` wraps the prompt as a user message in the tokenizer's chat template (Qwen3's, thinking off:
    `<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n`), pads it to
    `max_sequence_length` and runs the causal LLM (`text_encoder`, `Qwen3ForCausalLM`) over it; the hidden states of
    the layers `text_encoder_out_layers` ((9, 18, 27) by default) are stacked on the feature axis into the
    transformer's `encoder_hidden_states`, every position of the template and the padding included. There is no
    pooled vector and no CLIP. Guidance is true classifier-free guidance: with `guidance_scale > 1` (4 by default)
    and a model that is not step-distilled, every step makes two transformer calls, the prompt's first, then the
    negative prompt's; the explanation traces both and attributes the prompt's. Joint attention runs on [text,
    image] (double-stream blocks, then single-stream ones whose query, key, value and MLP projections are one
    layer). Latents are 2x2 patches packed into tokens and normalised by the VAE's batch-norm statistics; the
    pipeline unpacks them itself before its decode.

    Only the tokens of the prompt's own characters are attributed and shown: the template's (role markers, the
    thinking block) and the padding are left out of rankings and word maps, and the attention they take is reported
    (`output.attention_sink_share`). The LLM is causal: a token's state carries the words before it, which
    `word_attention` hands back to the words.
    """

    name = "flux2_klein"
    display_name = "Flux 2 [klein]"
    required_components = ("transformer", "vae", "tokenizer", "text_encoder")
    pipeline_class_names = ("Flux2KleinPipeline",)
    conditioning_names = ("encoder_hidden_states",)
    pooled_name = None

    def input_kind(self, pipeline_class: type) -> Optional[InputKind]:
        return None  # its `image` is optional reference images (not explained yet), not an img2img start

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        if pipeline_kwargs.get("image") is not None:
            raise ValueError(
                "Reference images (`image=`) of Flux 2 [klein] are not explained yet: explain the text-to-image call "
                "without them."
            )

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        if call_kwargs is None:  # a call not seen (`record_cross_attention`): its recorder tells the calls apart
            return 1
        scale = call_argument(pipe, call_kwargs, "guidance_scale")
        return 2 if float(scale) > 1 and not pipe.config.is_distilled else 1

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        from diffusers.models.transformers.transformer_flux2 import Flux2Attention, Flux2ParallelSelfAttention

        kinds = (Flux2Attention, Flux2ParallelSelfAttention)
        return [(name, module) for name, module in denoiser.named_modules() if isinstance(module, kinds)]

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        # As Flux's (the concepts at the first text token's rotary position), with FLUX.2's modulation inputs.
        result = super().concept_block_arguments(arguments, concepts, rows)
        for name in ("temb_mod_img", "temb_mod_txt"):
            value = arguments.get(name)
            if isinstance(value, torch.Tensor) and value.shape[0] == arguments["hidden_states"].shape[0]:
                result[name] = value[rows]
        return result

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [_chat_llm("Qwen3")]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        return chat_template_text(self.tokenizer(pipe, slot), text, enable_thinking=False)

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        return int(call_kwargs.get("max_sequence_length") or 512)

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        layers = call_argument(pipe, call_kwargs, "text_encoder_out_layers")
        embeddings, _ = pipe.encode_prompt(
            prompt=prompts["prompt"],
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=int(call_kwargs.get("max_sequence_length") or 512),
            text_encoder_out_layers=tuple(layers),
        )
        return {"encoder_hidden_states": embeddings}

    # -- an image the user already has (and the redraws that say how much a region depends on the prompt) ----------
    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        # The pipeline's own encoding of a reference image (posterior mode, 2x2 patches, batch-norm normalised),
        # packed.
        vae = pipe.vae
        return pipe._pack_latents(pipe._encode_vae_image(pixels.to(vae.device, vae.dtype), generator=None))

    def draw_noise(self, pipe, latents: torch.Tensor, generator: torch.Generator, size: Tuple[int, int]):
        # As the pipeline: drawn on the patch grid, then packed into tokens.
        rows, columns = (int(side) // (pipe.vae_scale_factor * 2) for side in size)
        noise = torch.randn((latents.shape[0], latents.shape[-1], rows, columns), generator=generator)
        return pipe._pack_latents(noise).to(latents.device, latents.dtype)

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        rows, columns = (int(side) // (pipe.vae_scale_factor * 2) for side in size)
        embeddings = conditioning["encoder_hidden_states"]
        grid = torch.empty(latents.shape[0], latents.shape[-1], rows, columns, device="meta")
        return {
            "hidden_states": latents,
            "timestep": (timestep / 1000).expand(latents.shape[0]).to(latents.dtype),
            "guidance": None,
            "encoder_hidden_states": embeddings,
            "txt_ids": pipe._prepare_text_ids(embeddings).to(latents.device),
            "img_ids": pipe._prepare_latent_ids(grid).to(latents.device),
            "joint_attention_kwargs": call_kwargs.get("attention_kwargs"),
            "return_dict": False,
        }

    def denoiser_in_channels(self, pipe) -> int:
        return int(self.denoiser(pipe).config.in_channels)  # one token is a 2x2 patch of latents

    # -- images ---------------------------------------------------------------------------------------------------
    def decode(self, pipe, latents: torch.Tensor, generator=None, size=None) -> torch.Tensor:
        if latents.dim() == 3:  # packed, normalised (a step's, or [dev]'s final ones): as the pipeline's end of call
            height, width = size if size is not None else self.default_size(pipe)
            rows, columns = (int(side) // (pipe.vae_scale_factor * 2) for side in (height, width))
            grid = torch.empty(latents.shape[0], latents.shape[-1], rows, columns, device="meta")
            ids = pipe._prepare_latent_ids(grid).to(latents.device)
            # Flux2KleinPipeline's own (Flux2Pipeline's takes no size; both scatter the tokens alike).
            latents = Flux2KleinPipeline._unpack_latents_with_ids(latents, ids, rows, columns)
            bn = pipe.vae.bn
            mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps)
            latents = pipe._unpatchify_latents(latents * std.to(latents.device, latents.dtype) + mean)
        # [klein]'s `output_type="latent"` latents are unpacked, de-normalised and unpatchified already.
        return pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0]


def _chat_llm(label: str) -> TextEncoderSlot:
    # FLUX.2's one text encoder: a causal chat LLM reading the prompt inside its template; every position (template,
    # prompt and padding) reaches the transformer's text sequence.
    return TextEncoderSlot(
        "tokenizer", "text_encoder", "prompt", slice(None), sequence_group=0, label=label, template=True, causal=True
    )


def chat_template_text(tokenizer, text: str, **template_arguments) -> Tuple[str, int]:
    r"""
    The text a chat tokenizer reads for the user message `text` (its chat template, with the generation prompt), and
    the character where `text` starts in it.
    """

    def render(content: str) -> str:
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **template_arguments
        )

    return locate_prompt(render, text)


FLUX2_KLEIN = register_family(Flux2KleinFamily())


class Flux2DevFamily(Flux2KleinFamily):
    r"""
    `Flux2Pipeline` (FLUX.2 [dev]).

    As [klein], with another encoder: Mistral Small 3 (`Mistral3ForConditionalGeneration`, through its processor's
    chat template) reads the prompt as a user message after the pipeline's system message
    (`<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]{prompt}[/INST]`, padded to `max_sequence_length`), and the states of
    its layers `text_encoder_out_layers` ((10, 20, 30)) are stacked into the transformer's text. FLUX.2 [dev] is
    guidance-distilled: one transformer call per step, `guidance_scale` (4 by default) entering as the guidance
    embedding. Only the prompt's own tokens are attributed: the system message, the instruction markers and the
    padding never are, and the attention they take is reported. Caption upsampling (`caption_upsample_temperature`)
    rewrites the prompt with the LLM before the call and is refused.
    """

    name = "flux2_dev"
    display_name = "Flux 2 [dev]"
    pipeline_class_names = ("Flux2Pipeline",)

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        super().check_arguments(pipe, pipeline_kwargs)
        if pipeline_kwargs.get("caption_upsample_temperature"):
            raise ValueError(
                "Caption upsampling (`caption_upsample_temperature`) rewrites the prompt with the text encoder before "
                "the image is made, so the words explained would not be the ones the model read: explain without it "
                "(or explain the upsampled caption itself)."
            )

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        return 1  # guidance-distilled: the guidance scale is an input of the one call

    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        return [_chat_llm("Mistral 3")]

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        processor = getattr(pipe, slot.tokenizer)  # the processor (or tokenizer) whose template the pipeline renders

        def render(content: str) -> str:
            messages = format_input(prompts=[content], system_message=pipe.system_message)[0]
            return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

        return locate_prompt(render, text)

    def tokenizer_arguments(self, pipe, slot: TextEncoderSlot, text: str) -> Dict[str, Any]:
        # A chat template's text is tokenized without adding special tokens (its `<s>` is in the text).
        return {"add_special_tokens": False}

    def denoiser_arguments(self, pipe, latents, timestep, conditioning, size, call_kwargs) -> Dict[str, Any]:
        arguments = super().denoiser_arguments(pipe, latents, timestep, conditioning, size, call_kwargs)
        scale = call_argument(pipe, call_kwargs, "guidance_scale")
        arguments["guidance"] = torch.full(
            [latents.shape[0]], float(scale), device=latents.device, dtype=torch.float32
        )
        return arguments


FLUX2_DEV = register_family(Flux2DevFamily())
