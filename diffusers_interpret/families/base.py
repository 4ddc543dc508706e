"""What a pipeline family must say about its pipelines: the only code that knows a pipeline's shape."""

import inspect
from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

from ..defaults import DEFAULT_ATTRIBUTION_METHOD


class InputKind(str, Enum):
    r"""What a pipeline starts from besides the prompt: an input image (img2img), an image and a mask (inpainting),
    or a control image read by a ControlNet. Text-to-image pipelines have none (`None`)."""

    IMAGE = "image"
    INPAINT = "inpaint"
    CONTROL = "control"


@dataclass(frozen=True)
class JointAttention:
    r"""
    How a transformer's joint attention lays out its sequence: the text tokens and the image tokens attend to one
    another in one softmax.

    Args:
        text_first (`bool`): `[text, image]` (Flux) rather than `[image, text]` (SD3).
        sinks_left_out (`bool`, *optional*, defaults to `True`): The text positions that are not the prompt's own
            tokens (padding, end and template tokens) draw much of the image's attention without carrying the words
            (attention sinks): the recorded maps leave them out of each layer's and head's softmax (the image's keys
            and the prompt's tokens share it, as if the sinks were not there), and record the share they took.
        text_queries (`bool`, *optional*, defaults to `True`): The text has queries of its own (a text stream that
            attends and is updated); `False` where only the image's queries attend over [text, image] keys (PRX).
    """

    text_first: bool
    sinks_left_out: bool = True
    text_queries: bool = True


@dataclass(frozen=True)
class TextEncoderSlot:
    r"""
    One text encoder that conditions the image, and where its output lands.

    Args:
        tokenizer (`str`): The pipeline attribute of its tokenizer (e.g. `"tokenizer_2"`).
        encoder (`str`): The pipeline attribute of the encoder (e.g. `"text_encoder_2"`).
        prompt_argument (`str`): The call argument whose text it reads (`"prompt"`, `"prompt_2"`, `"prompt_3"`).
        feature_slice (`slice`, *optional*): Its features in the denoiser's `encoder_hidden_states` (SDXL concatenates
            encoders on the feature axis); `None` for an encoder that conditions through a pooled vector only (Flux's
            CLIP).
        sequence_group (`int`, *optional*, defaults to 0): Encoders of one group share token positions (rows) and sit
            side by side on the feature axis; groups follow one another on the sequence axis, in order (SD3: CLIP-L
            and CLIP-G in group 0, T5 in group 1).
        label (`str`, *optional*, defaults to `"CLIP"`): What a reader calls it (`"T5"`, `"CLIP-G"`): the label of
            its tokens where a view shows each encoder's tokens.
        template (`bool`, *optional*, defaults to `False`): The encoder reads the prompt inside a chat template (the
            family's `encoder_text`): only the tokens of the prompt's own characters are attributed, the template's
            (role markers, system message, thinking block) and the padding never are.
        causal (`bool`, *optional*, defaults to `False`): The encoder is causal (an LLM): its state at a position
            depends on the tokens up to it only (what `word_attention`'s hand-back of positions to words uses).
        pad_to_longest (`bool`, *optional*, defaults to `False`): The pipeline pads a batch's token sequences to the
            longest of them (at most `token_length`), not to a fixed length (Qwen-Image).
        masked_padding (`bool`, *optional*, defaults to `False`): The pipeline gives the encoder its attention mask
            and keeps no state of the padding (Wan sets them to zeros): the padding tokens feed no position the
            denoiser reads (what `word_attention`'s hand-back of positions to words uses).
    """

    tokenizer: str
    encoder: str
    prompt_argument: str
    feature_slice: Optional[slice]
    sequence_group: int = 0
    label: str = "CLIP"
    template: bool = False
    causal: bool = False
    pad_to_longest: bool = False
    masked_padding: bool = False


class PipelineFamily:
    r"""
    The seam between the explainers and one family of diffusers pipelines.

    A family answers, for its pipelines: which module is the denoiser and where its call carries the latent sample and
    the prompt's conditioning; which tokenizers and text encoders condition the image and where their outputs land;
    the classifier-free-guidance row layout; denoiser calls per step; the default image size; how latents are decoded
    and the image post-processed; and which attention layers to record. Everything else (tracing, targets, methods,
    outputs, views) is shared by all families.

    Subclasses set `pipeline_class_names` and override what differs, and register an instance with
    `register_family`; `family_for(pipe)` picks one by class. A family file is the whole of a family's support: the
    explainers of its pipelines are made from the registry (`explainer_for(pipe)`).
    """

    name: str = ""
    display_name: str = ""
    # Class names of the pipelines of this family (matched against the pipeline's class and its bases).
    pipeline_class_names: Tuple[str, ...] = ()
    # Components an explained pipeline of this family must have.
    required_components: Tuple[str, ...] = ("unet", "vae", "tokenizer", "text_encoder", "encode_prompt")
    denoiser_attribute: str = "unet"
    # The denoiser call's argument that carries the latent sample (its first positional argument where not named).
    sample_name: str = "sample"
    # Names of the denoiser call's conditioning tensors that carry the prompt (in `read_conditioning`'s order).
    conditioning_names: Tuple[str, ...] = ("encoder_hidden_states",)
    # The attribution method used when a call names none (chosen per family by benchmarks/faithfulness.py).
    default_method: str = DEFAULT_ATTRIBUTION_METHOD
    # The conditioning tensor that carries a pooled text embedding (its share of the gradient is reported), if any.
    pooled_name: Optional[str] = None
    # The denoiser reads a reference image's tokens after the generated ones in its joint-attention sequence (Flux
    # Kontext): `reference_grid` and `reference_positions` say where; correspondence maps can be recorded.
    reads_reference: bool = False
    # The denoiser reads an input image's latents beside the noised ones, which `denoiser_arguments` adds from the
    # call's `image` (InstructPix2Pix): the redraws of the prompt dependence can be made, an existing image cannot be
    # explained alone.
    reads_input_image_latents: bool = False
    # The layers of `self_attention_layers` read the text in their sequence (joint attention); `False` where they
    # read the image's tokens alone (Wan's self-attention beside its cross-attention).
    self_attention_reads_text: bool = True
    # The call argument of the number of images made of each prompt (`"num_videos_per_prompt"` for video pipelines).
    images_per_prompt_argument: str = "num_images_per_prompt"
    # The pipeline makes clips: a clip is explained as one picture of its frames laid out top to bottom (the decode
    # lays them out so), and its attention maps are made per frame
    # (`attention_frames`, `attention_image_size`, `upsample_attention`).
    video: bool = False
    # `None`: the denoiser reads the text through UNet cross-attention layers (recorded through their processors);
    # a `JointAttention`: through a transformer's joint attention (recorded beside the layers `attention_layers`
    # locates).
    joint_attention: Optional[JointAttention] = None

    # -- which pipelines ------------------------------------------------------------------------------------------
    def input_kind(self, pipeline_class: type) -> Optional[InputKind]:
        r"""What a pipeline class starts from besides the prompt, read from its call's signature: a `mask_image`
        makes it inpainting, an `image` img2img."""
        parameters = inspect.signature(pipeline_class.__call__).parameters
        if "mask_image" in parameters:
            return InputKind.INPAINT
        if "image" in parameters:
            return InputKind.IMAGE
        return None

    def input_size(self, pipe, image) -> Optional[Tuple[int, int]]:
        r"""The (height, width) a pipeline that takes no `height`/`width` makes of the input `image` (a PIL image),
        where it is not the image's own size as the image processor rounds it (`None`)."""
        return None

    def input_image(self, pipe) -> Tuple[str, str]:
        r"""The pipeline call's argument of its input image, and the pipeline's attribute of the image processor that
        preprocesses it."""
        return "image", "image_processor"

    # -- the denoiser call ----------------------------------------------------------------------------------------
    def denoiser(self, pipe) -> torch.nn.Module:
        return getattr(pipe, self.denoiser_attribute)

    def check_arguments(self, pipe, pipeline_kwargs: Dict[str, Any]) -> None:
        r"""Raise a `ValueError` for a pipeline argument the explanation of this family does not support."""

    def check_request(
        self,
        pipe,
        prompts: List[str],
        size: Tuple[Optional[int], Optional[int]],
        pipeline_kwargs: Dict[str, Any],
        generating: bool = True,
    ) -> None:
        r"""Raise a `ValueError` for a call (its prompts, its image `size` as (height, width), its other arguments)
        the explanation of this family cannot give, once the arguments are checked; `generating` is `False` for an
        image the user already has (no pipeline call is made)."""

    def size_multiple(self, pipe) -> Optional[int]:
        r"""The multiple an image side must be, where the pipeline asks for another than its VAE's and patches' (Sana:
        32); `None` where those decide."""
        return None

    def latents_size(self, pipe, latents: torch.Tensor) -> Optional[Tuple[int, int]]:
        r"""
        The (height, width) of the image that user-given `latents` make, or `None` where the latents do not carry it
        (packed latents).

        Raises:
            `ValueError`: for latents of another layout than the pipeline's, naming the layout it takes.
        """
        factor = getattr(pipe, "vae_scale_factor", None)
        if latents.ndim != 4:
            raise ValueError(
                f"`latents` must be (batch, channels, height / {factor}, width / {factor}), got shape "
                f"{tuple(latents.shape)}."
            )
        channels = int(getattr(self.denoiser(pipe).config, "in_channels", latents.shape[1]))
        expected = min(channels, self.denoiser_in_channels(pipe))  # an inpainting UNet reads the mask's beside
        if int(latents.shape[1]) != expected:
            raise ValueError(
                f"`latents` have {int(latents.shape[1])} channels; this pipeline's latents have {expected}: give "
                f"(batch, {expected}, height / {factor}, width / {factor})."
            )
        if not factor:
            return None
        return int(latents.shape[-2]) * factor, int(latents.shape[-1]) * factor

    def images_per_call(self, pipe, call_kwargs: Dict[str, Any]) -> Optional[int]:
        r"""The most images one call of the pipeline with `call_kwargs` can make (`None`: any number); regenerations
        of more rows are made in calls of that many."""
        return None

    def calls_per_step(self, pipe, call_kwargs: Optional[Dict[str, Any]] = None) -> int:
        r"""Denoiser calls per denoising step of a call with `call_kwargs` (the pipeline's call arguments)."""
        return 1

    def read_sample(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return kwargs[self.sample_name] if self.sample_name in kwargs else args[0]

    def write_sample(self, args: tuple, kwargs: dict, sample: torch.Tensor) -> Tuple[tuple, dict]:
        if self.sample_name in kwargs:
            return args, {**kwargs, self.sample_name: sample}
        return (sample, *args[1:]), kwargs

    def read_conditioning(self, pipe, args: tuple, kwargs: dict) -> Dict[str, torch.Tensor]:
        hidden = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]
        return {"encoder_hidden_states": hidden}

    def write_conditioning(
        self, pipe, args: tuple, kwargs: dict, values: Dict[str, torch.Tensor]
    ) -> Tuple[tuple, dict]:
        hidden = values["encoder_hidden_states"]
        if "encoder_hidden_states" in kwargs:
            return args, {**kwargs, "encoder_hidden_states": hidden}
        return (*args[:2], hidden, *args[3:]), kwargs

    def output_latents(self, output) -> torch.Tensor:
        r"""The final latents of the pipeline's call made with `output_type="latent"`."""
        return output.images

    def denoiser_output(self, output) -> torch.Tensor:
        return output[0] if isinstance(output, tuple) else output.sample

    def with_denoiser_output(self, output, tensor: torch.Tensor):
        if isinstance(output, tuple):
            return (tensor, *output[1:])
        output.sample = tensor
        return output

    def control_models(self, pipe) -> List[torch.nn.Module]:
        r"""Models the pipeline calls before the denoiser in each step, whose outputs the denoiser reads (a
        ControlNet): traced with the denoiser call they precede, and given the same prompt conditioning. Only for
        models whose conditioning arguments (`read_conditioning` of their call) are the prompt's own: SD3's
        ControlNets, which may read zeros for the pooled vector or no text at all, would need a reading of their
        own before they can be listed."""
        return []

    def control_rows(self, pipe, batch_size: int, control_kwargs: dict) -> slice:
        r"""The rows of a control model's batch (of `batch_size`) that carry the prompt, given its call's keyword
        arguments."""
        return self.positive_rows(pipe, batch_size)

    def is_prompt_call(self, pipe, call_index: int, calls_per_step: int) -> bool:
        r"""Whether denoiser call `call_index` (from 0) reads the explained prompt (not, e.g., a separate
        negative-prompt call of true classifier-free guidance)."""
        return True

    def attention_grid(self, args: tuple, kwargs: dict) -> Tuple[int, int]:
        r"""The (height, width) grid of the denoiser call's image queries (the latent grid of a UNet)."""
        sample = self.read_sample(args, kwargs)
        return int(sample.shape[-2]), int(sample.shape[-1])

    def attention_grid_scale(self, pipe) -> int:
        r"""Image pixels per cell of `attention_grid`, on each side."""
        return int(getattr(pipe, "vae_scale_factor", 8))

    def attention_frames(self, args: tuple, kwargs: dict) -> Optional[int]:
        r"""The latent frames of a video denoiser call (whose `attention_grid` lays them out top to bottom); `None`
        for an image."""
        return None

    def attention_image_size(self, pipe, grid: Tuple[int, int], frames: Optional[int]) -> Tuple[int, int]:
        r"""The (height, width) of the picture that maps recorded on `grid` (of `frames` latent frames) cover."""
        scale = self.attention_grid_scale(pipe)
        return grid[0] * scale, grid[1] * scale

    def upsample_attention(
        self, pipe, grids: torch.Tensor, size: Tuple[int, int], frames: Optional[int]
    ) -> torch.Tensor:
        r"""Maps (rows, tokens, h, w) of one layer grid upsampled to the picture's `size`: bilinearly
        (`align_corners=False`); a video family upsamples each latent frame and shows it on the frames made of it."""
        return F.interpolate(grids, size=size, mode="bilinear", align_corners=False)

    def attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        r"""The joint-attention layers to record (families with a `joint_attention`), by module name."""
        raise NotImplementedError

    def self_attention_layers(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        r"""The layers where the image's tokens attend to one another (`record_self_attention`) in a family with a
        `joint_attention`: its joint-attention layers (their image-to-image block), unless it has layers of their
        own (Wan's `attn1`, `self_attention_reads_text = False`)."""
        return self.attention_layers(denoiser)

    def text_embedder(self, denoiser) -> torch.nn.Module:
        r"""The denoiser's own projection of text states into its text stream (what concept tokens are made with)."""
        return denoiser.context_embedder

    def joint_layout(
        self, denoiser, tokens: int, text_length: int, latent_size: Optional[Tuple[int, int]]
    ) -> Optional[Tuple[slice, slice]]:
        r"""The image queries' and the text's positions in a joint-attention layer's sequence of `tokens` positions,
        where they are not simply [text, image] or [image, text] by `joint_attention.text_first` (`None`)."""
        return None

    def text_key_columns(self, pipe, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
        r"""For each position of a denoiser call's text (`encoder_hidden_states`), its place in the text its attention
        layers read, (batch, text positions), from the call's arguments; `None` where the layers read the text in its
        order (every family but HunyuanVideo 1.5, whose transformer lays out each row's text by its masks)."""
        return None

    def concept_blocks(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        r"""The dual-stream blocks (a text stream with its own weights beside the image stream) that concept tokens
        are carried through, by module name (the `"concept_attention"` method)."""
        raise ValueError(
            f"`attribution_method='concept_attention'` needs a text stream to carry concept tokens through, which "
            f"{self.display_name} pipelines have not (it is for SD3, Flux, Chroma, Flux 2, Qwen-Image and "
            "HunyuanVideo): use 'word_attention' or 'attention'."
        )

    def positive_rows(self, pipe, batch_size: int) -> slice:
        r"""The rows of the denoiser's batch that carry the prompt: with classifier-free guidance the pipelines
        concatenate [negative, positive]."""
        if getattr(pipe, "do_classifier_free_guidance", False) and batch_size % 2 == 0:
            return slice(batch_size // 2, batch_size)
        return slice(0, batch_size)

    # -- text -----------------------------------------------------------------------------------------------------
    def text_encoders(self, pipe) -> List[TextEncoderSlot]:
        raise NotImplementedError

    def prompt_arguments(self, pipe) -> Tuple[str, ...]:
        r"""The call arguments whose texts the text encoders read (`"prompt"` first, then e.g. `"prompt_2"`)."""
        names = [slot.prompt_argument for slot in self.text_encoders(pipe)]
        return tuple(dict.fromkeys(["prompt", *names]))

    def negative_prompt_arguments(self, pipe) -> Tuple[str, ...]:
        r"""The call arguments of the negative prompts that go with `prompt_arguments` (`"negative_prompt"`, ...)."""
        return tuple(f"negative_{name}" for name in self.prompt_arguments(pipe))

    def tokenizer(self, pipe, slot: TextEncoderSlot):
        r"""`slot`'s tokenizer (the tokenizer inside a processor, where the pipeline holds a processor)."""
        from transformers import ProcessorMixin

        held = getattr(pipe, slot.tokenizer, None)
        return held.tokenizer if isinstance(held, ProcessorMixin) else held

    def tokenizer_arguments(self, pipe, slot: TextEncoderSlot, text: str) -> Dict[str, Any]:
        r"""Arguments the pipeline tokenizes `slot`'s text `text` with, beside padding and truncation."""
        return {}

    def encoder_text(
        self, pipe, slot: TextEncoderSlot, text: str, call_kwargs: Optional[Dict[str, Any]] = None
    ) -> Tuple[str, int]:
        r"""The text `slot`'s tokenizer reads for the prompt `text` in a call with `call_kwargs` (inside a chat
        template where the slot has one, cleaned where the pipeline cleans it), and the character where `text` starts
        in it."""
        return text, 0

    def token_length(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> int:
        r"""The length the pipeline pads `slot`'s token sequence to (cuts it at, for a `pad_to_longest` slot)."""
        return int(self.tokenizer(pipe, slot).model_max_length)

    def text_rows_kept(self, pipe, slot: TextEncoderSlot, call_kwargs: Dict[str, Any]) -> Optional[int]:
        r"""The most positions of `slot`'s states (of `kept_positions`) the pipeline keeps for the denoiser, where it
        cuts them after encoding (Qwen-Image's `max_sequence_length`); `None` where it cuts the tokens."""
        return None

    def kept_positions(
        self, pipe, slot: TextEncoderSlot, length: int, call_kwargs: Dict[str, Any]
    ) -> Optional[Sequence[int]]:
        r"""The positions of `slot`'s `length` token states that the denoiser reads, in order, where the pipeline keeps
        some only (Qwen-Image drops its template's prefix; Sana keeps the first and the last ones); `None`: all. The
        others are never attributed."""
        return None

    def encode(self, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device) -> Dict[str, Any]:
        r"""
        The prompt rows of the denoiser's conditioning, made by the pipeline's own `encode_prompt` (no guidance, one
        image per prompt), keyed by `conditioning_names`; other entries (e.g. an attention mask) may ride along for
        `denoiser_arguments`, and are no gradient path.

        Args:
            prompts (`Dict[str, List[str]]`): The texts by call argument (`"prompt"`, `"prompt_2"`).
            call_kwargs (`dict`): The pipeline call's arguments (for `clip_skip` and the LoRA scale).
        """
        raise NotImplementedError

    # -- images ---------------------------------------------------------------------------------------------------
    def default_size(self, pipe) -> Tuple[int, int]:
        sample_size = self.denoiser(pipe).config.sample_size
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        return sample_size[0] * pipe.vae_scale_factor, sample_size[1] * pipe.vae_scale_factor

    def decode(self, pipe, latents: torch.Tensor, generator=None, size: Optional[Tuple[int, int]] = None):
        r"""The pipeline's own decode of final latents to a [-1, 1] image tensor, keeping the graph; `size` is the
        image's (height, width), for families whose latents do not carry it (Flux's packed latents)."""
        raise NotImplementedError

    def image_processor(self, pipe):
        r"""The pipeline's processor of its output images (`image_processor`; a video pipeline's `video_processor`)."""
        return pipe.image_processor

    def postprocess(self, pipe, decoded: torch.Tensor, output_type: str) -> Tuple[Any, Optional[List[bool]]]:
        r"""The pipeline's own post-processing (safety checker, watermark) of a detached decoded image: `(images,
        nsfw flags or None)`."""
        return self.image_processor(pipe).postprocess(decoded, output_type=output_type), None

    def unit_image(self, pipe, decoded: torch.Tensor) -> torch.Tensor:
        r"""The pipeline's [0, 1] output image (`postprocess(output_type="pt")`, clamp included), with the graph."""
        processor = self.image_processor(pipe)
        return processor.postprocess(decoded, output_type="pt", do_denormalize=[True] * len(decoded))

    # -- an image the user already has ------------------------------------------------------------------------------
    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        r"""
        An image's latents as the denoiser reads them: the pipeline's VAE posterior's mode, scaled as the pipeline's
        img2img scales them (and packed where the family packs latents).

        Args:
            pixels (`torch.Tensor`): (images, 3, H, W) in [-1, 1], as the pipeline's image processor makes them.
        """
        vae = pipe.vae
        latents = retrieve_latents(vae.encode(pixels.to(vae.device, vae.dtype)), sample_mode="argmax")
        return latents * vae.config.scaling_factor

    def clip_pixels(self, pipe, pictures: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        r"""The pixels `encode_image` reads of explained pictures (rows, 3, H, W) of images of `size`: the same (a
        video family: each picture's frames, laid out top to bottom, as a clip (rows, 3, frames, height, width))."""
        return pictures

    def draw_noise(self, pipe, latents: torch.Tensor, generator: torch.Generator, size: Tuple[int, int]):
        r"""Standard Gaussian noise for `latents`, drawn on the CPU from `generator` as the pipeline draws its noise
        (alike on every device)."""
        return torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)

    def vae_shapes(
        self, pipe, images: int, size: Tuple[int, int], sample: Optional[torch.Tensor] = None
    ) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        r"""The shapes of the VAE's latents and of its pixels for `images` images of `size` (height, width), made
        by denoiser calls on `sample` (what a video family reads the frames from)."""
        factor = int(getattr(pipe, "vae_scale_factor", 8))
        height, width = size
        return (images, self.latent_channels(pipe), height // factor, width // factor), (images, 3, height, width)

    def latent_channels(self, pipe) -> int:
        r"""The channels of the VAE's latents."""
        return int(pipe.vae.config.latent_channels)

    def denoiser_in_channels(self, pipe) -> int:
        r"""The channels the denoiser reads for an image's latents alone (an inpainting denoiser reads more)."""
        return self.latent_channels(pipe)

    def denoiser_reads_mask(self, pipe) -> bool:
        r"""Whether the denoiser reads more than an image's latents (an inpainting model: the mask and the masked
        image beside them), so that it cannot denoise an image alone."""
        return int(self.denoiser(pipe).config.in_channels) != self.denoiser_in_channels(pipe)

    def noised(
        self, pipe, latents: torch.Tensor, noise: torch.Tensor, level: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""
        `latents` noised to `level` of the schedule (0: clean, 1: pure noise) as the scheduler's training noised
        them, and the timestep the denoiser is called with: for a denoising-diffusion schedule, timestep
        `round(level * (num_train_timesteps - 1))` and `sqrt(a) x + sqrt(1 - a) noise` with `a` its
        `alphas_cumprod`.
        """
        alpha, timestep = self._alpha(pipe, level)
        noised = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        return noised.to(latents.dtype), torch.tensor(timestep, device=latents.device)

    def predicted_clean(self, pipe, noised: torch.Tensor, prediction: torch.Tensor, level: float) -> torch.Tensor:
        r"""The clean latents the denoiser's `prediction` at `level` implies (by the scheduler's prediction type)."""
        alpha, _ = self._alpha(pipe, level)
        kind = pipe.scheduler.config.prediction_type
        if kind == "epsilon":
            return (noised - (1 - alpha).sqrt() * prediction) / alpha.sqrt()
        if kind == "v_prediction":
            return alpha.sqrt() * noised - (1 - alpha).sqrt() * prediction
        if kind == "sample":
            return prediction
        raise ValueError(f"Explaining an existing image needs a known prediction type, not {kind!r}.")

    def _alpha(self, pipe, level: float) -> Tuple[torch.Tensor, int]:
        scheduler = pipe.scheduler
        timestep = int(round(float(level) * (scheduler.config.num_train_timesteps - 1)))
        return scheduler.alphas_cumprod[timestep].double(), timestep

    def denoiser_arguments(
        self,
        pipe,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        conditioning: Dict[str, torch.Tensor],
        size: Tuple[int, int],
        call_kwargs: Dict[str, Any],
    ) -> Dict[str, Any]:
        r"""
        The keyword arguments of one denoiser call on `latents` at `timestep` with the prompt's `conditioning` (by
        `conditioning_names`), as the pipeline's own loop makes them without guidance: what an existing image's
        explanation calls the denoiser with.
        """
        return {
            "sample": latents,
            "timestep": timestep,
            "encoder_hidden_states": conditioning["encoder_hidden_states"],
            "cross_attention_kwargs": call_kwargs.get("cross_attention_kwargs"),
            "return_dict": False,
        }


class TransformerFamily(PipelineFamily):
    r"""
    What the DiT families (SD3, Flux) share: a `transformer` called with keyword arguments only, the latent sample in
    `hidden_states`, the prompt in `encoder_hidden_states` and a pooled text vector in `pooled_projections`, joint
    attention, and the default size `default_sample_size * vae_scale_factor`.
    """

    denoiser_attribute = "transformer"
    sample_name = "hidden_states"
    conditioning_names = ("encoder_hidden_states", "pooled_projections")
    pooled_name = "pooled_projections"
    joint_attention = JointAttention(text_first=True)

    def latents_size(self, pipe, latents: torch.Tensor) -> Optional[Tuple[int, int]]:
        return None  # packed (tokens, channels) latents, or spatial ones: the call's `height` and `width` decide

    def encode_image(self, pipe, pixels: torch.Tensor) -> torch.Tensor:
        vae = pipe.vae
        latents = retrieve_latents(vae.encode(pixels.to(vae.device, vae.dtype)), sample_mode="argmax")
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def noised(
        self, pipe, latents: torch.Tensor, noise: torch.Tensor, level: float
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        r"""Flow matching: `(1 - level) x + level noise`, at the timestep `level * num_train_timesteps` (as the
        flow-matching scheduler's `scale_noise` and its timesteps)."""
        sigma = float(level)
        noised = (1 - sigma) * latents + sigma * noise
        timestep = torch.tensor(sigma * pipe.scheduler.config.num_train_timesteps, device=latents.device)
        return noised.to(latents.dtype), timestep

    def predicted_clean(self, pipe, noised: torch.Tensor, prediction: torch.Tensor, level: float) -> torch.Tensor:
        return noised - float(level) * prediction  # the velocity is noise - clean

    def read_conditioning(self, pipe, args: tuple, kwargs: dict) -> Dict[str, torch.Tensor]:
        return {name: kwargs[name] for name in self.conditioning_names}

    def write_conditioning(
        self, pipe, args: tuple, kwargs: dict, values: Dict[str, torch.Tensor]
    ) -> Tuple[tuple, dict]:
        return args, {**kwargs, **{name: values[name] for name in self.conditioning_names}}

    def default_size(self, pipe) -> Tuple[int, int]:
        size = pipe.default_sample_size * pipe.vae_scale_factor
        return size, size

    def concept_blocks(self, denoiser) -> List[Tuple[str, torch.nn.Module]]:
        # SD3's last block (`context_pre_only`) has no text-stream output: nothing to compare, nothing to carry on.
        return [
            (f"transformer_blocks.{index}", block)
            for index, block in enumerate(denoiser.transformer_blocks)
            if not getattr(block, "context_pre_only", False)
        ]

    def concept_embeddings(self, denoiser, states: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        r"""The concept tokens in the transformer's text stream, (concepts, features), for its call with `args` and
        `kwargs`: the family's `text_embedder` on `states` (each concept's text-encoder states)."""
        embedder = self.text_embedder(denoiser)
        return embedder(states.to(dtype=next(embedder.parameters()).dtype))

    def concept_stream(self, output) -> torch.Tensor:
        r"""The text stream's output of a dual-stream block's call (Flux's, SD3's and Qwen-Image's blocks return
        (text, image))."""
        return output[0]

    def attention_output_projections(self, block) -> Tuple[torch.nn.Module, torch.nn.Module]:
        r"""The output projections of a dual-stream block's attention, (image stream, text stream): their inputs are
        the attention outputs (heads concatenated) that concept attention compares."""
        return block.attn.to_out[0], block.attn.to_add_out

    def concept_block_arguments(
        self, arguments: Dict[str, Any], concepts: torch.Tensor, rows: slice
    ) -> Dict[str, Any]:
        r"""The arguments of a dual-stream block's call with the concept tokens in place of the text stream, for the
        prompt rows `rows` of the batch."""
        result = {**arguments, "hidden_states": arguments["hidden_states"][rows], "encoder_hidden_states": concepts}
        if "temb" in arguments:  # FLUX.2's blocks take their modulation under other names
            result["temb"] = arguments["temb"][rows]
        return result


def check_binned_size(name: str, asked: Tuple[int, int], made) -> None:
    r"""Refuse a size that a pipeline's resolution binning makes at another size (`made`) and resizes: the maps and
    boxes would be of another image than the one shown."""
    made = tuple(int(side) for side in made)
    if made != tuple(asked):
        raise ValueError(
            f"{name} makes a {asked[0]}x{asked[1]} (height x width) image at {made[0]}x{made[1]} and resizes it "
            f"(`use_resolution_binning`): explain it at `height={made[0]}, width={made[1]}`, or pass "
            "`use_resolution_binning=False`."
        )


def call_argument(pipe, call_kwargs: Dict[str, Any], name: str):
    r"""A pipeline call's argument `name`: as `call_kwargs` gives it (unless `None`), else the pipeline's own default
    (read from its `__call__`, so that the explanation follows the installed diffusers)."""
    value = call_kwargs.get(name)
    return value if value is not None else inspect.signature(type(pipe).__call__).parameters[name].default


def locate_prompt(render, text: str) -> Tuple[str, int]:
    r"""`render(text)` (the prompt inside a family's template), and the character where `text` starts in it: found by
    rendering once more around a marker (a private-use character no template adds), so that a system message holding
    the same words cannot be taken for it."""
    full, probe = render(text), render("\ue000")
    start = probe.find("\ue000")
    if start < 0 or full[start : start + len(text)] != text:
        start = full.rfind(text)
    return full, max(start, 0)
