r"""
The first phase of an explainer call: its arguments as one typed [`ExplainRequest`] (the front door), checked before
any model runs and resolved into a [`CheckedRequest`] (the method object, the level, the box in pixels, the image
size, each image's prompts, the input image).
"""

import dataclasses
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .attribution import Aggregation, AttributionLevel, parse_attribution_level
from .box import BoxLike, Region, frame_region, normalize_box
from .checks import finite_number, positive_int
from .defaults import DEFAULT_ATTRIBUTION_LEVEL, DEFAULT_NOISE_LEVELS
from .families import InputKind, PipelineFamily
from .families.base import call_argument
from .image_inputs import ExistingImage, ImageInput, as_input_image, image_size
from .memory import memory_check_disabled
from .methods import AttributionMethod, parse_method
from .text import call_texts
from .tracing.attention import attention_recording
from .tracing.run import Recording


@dataclass(frozen=True)
class ExplainRequest:
    r"""
    One explainer call's arguments, as [`BasePipelineExplainer.__call__`] takes them (see there for each); made once
    per call, and replayed with `dataclasses.replace` to explain another region of the same call.

    Args:
        explained_image (*optional*): An image the user already has, explained instead of a generated one
            ([`BasePipelineExplainer.explain_image`]), with `noise_levels` and `noise_seed`.
        pipeline_kwargs (`Dict[str, Any]`): Every other argument of the pipeline's `__call__`, passed through.
    """

    prompt: Union[str, List[str]]
    num_inference_steps: int = 50
    height: Optional[int] = None
    width: Optional[int] = None
    n_last_diffusion_steps_to_consider_for_attributions: Optional[int] = None
    explanation_2d_bounding_box: Optional[BoxLike] = None
    attribution_method: Union[str, Aggregation, AttributionMethod, None] = None
    attribution_level: Union[str, AttributionLevel] = DEFAULT_ATTRIBUTION_LEVEL
    consider_special_tokens: bool = False
    clean_token_prefixes_and_suffixes: bool = True
    get_images_for_all_inference_steps: bool = True
    output_type: str = "pil"
    keep_for_reexplanation: Optional[str] = None
    attention_maps: bool = False
    check_memory: bool = True
    prompt_dependence: bool = True
    init_image: Any = None
    image: Any = None
    mask_image: Any = None
    explained_image: Any = None
    noise_levels: Optional[Sequence[float]] = None
    noise_seed: int = 0
    explanation_frames: Optional[Sequence[int]] = None
    pipeline_kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckedRequest:
    r"""
    An [`ExplainRequest`] checked and resolved, what the later phases read.

    Args:
        request (`ExplainRequest`): The call as given (to run it again).
        prompts (`Dict[str, List[str]]`): Each image's texts by call argument (`"prompt"`, `"prompt_2"`, ...).
        n_traced (`int`, *optional*): Last denoising steps traced (`None`: all, 0: none).
        method (`AttributionMethod`): The attribution method.
        level (`AttributionLevel`): Where tokens are attributed.
        box (`Region`, *optional*): The explained region, in pixels of the picture; `None` for the whole image. For a
            clip, its picture's (the frames laid out top to bottom): the frames' box on each explained frame.
        height (`int`): The image's height.
        width (`int`): The image's width.
        check_memory (`bool`): Whether the memory guard refuses a call that does not fit.
        image_input (`ImageInput`, *optional*): The input image (and mask) of img2img and inpainting calls.
        existing (`ExistingImage`, *optional*): The image explained instead of a generated one.
    """

    request: ExplainRequest
    prompts: Dict[str, List[str]]
    n_traced: Optional[int]
    method: AttributionMethod
    level: AttributionLevel
    box: Optional[Region]
    height: int
    width: int
    check_memory: bool
    image_input: Optional[ImageInput] = None
    existing: Optional[ExistingImage] = None
    num_frames: Optional[int] = None

    @property
    def pipeline_kwargs(self) -> Dict[str, Any]:
        return self.request.pipeline_kwargs

    @property
    def keep(self) -> Optional[str]:
        return self.request.keep_for_reexplanation

    @property
    def output_type(self) -> str:
        return self.request.output_type

    @property
    def step_images(self) -> bool:
        return self.request.get_images_for_all_inference_steps

    @property
    def num_images(self) -> int:
        return len(self.prompts["prompt"])

    @property
    def wants_scores(self) -> bool:
        return self.n_traced != 0

    @property
    def needs_graph(self) -> bool:
        # Image explainers also trace for pixel attributions; a kept graph serves later re-explanations.
        return self.wants_scores and (self.method.needs_graph or self.image_input is not None or self.keep is not None)

    def method_recordings(self) -> List[Recording]:
        r"""What the method needs recorded beside the call (nothing when no step is traced)."""
        return self.method.recordings(call_texts(self.prompts)) if self.wants_scores else []

    def recordings(self) -> List[Recording]:
        r"""Everything the traced run records: the method's recordings, the attention maps the call asks for (over
        every step, unless the method records them over its traced steps), the input image's pixels as a leaf."""
        found = self.method_recordings()
        if self.request.attention_maps and not any(r.name == "attention_maps" for r in found):
            found.append(attention_recording(traced_only=False))
        if self.image_input is not None and self.needs_graph:
            found.append(self.image_input.pixel_recording())
        if self.request.attention_maps and self.image_input is not None and self.image_input.reads_reference:
            from .tracing.self_attention import correspondence_recording

            found.append(correspondence_recording())  # where each region looks in the reference (Flux Kontext)
        return found


def with_concepts(method, concepts: Optional[Sequence[str]], default_method: str):
    r"""
    The method of an explanation given `concepts`: concept attention with them (where no method, or
    `"concept_attention"`, is named).

    Raises:
        `ValueError`: for concepts beside another method, naming what to pass instead.
    """
    if concepts is None:
        return method
    from .methods import ConceptAttention

    named = default_method if method is None else method
    if isinstance(named, ConceptAttention) or str(named).lower() != "concept_attention" and method is not None:
        raise ValueError(
            "`concepts` are the concepts of `attribution_method='concept_attention'` (SD3, Flux): leave the method "
            "out, name 'concept_attention', or pass `ConceptAttention(concepts=...)` alone."
        )
    return ConceptAttention(concepts=concepts)


def _expand(values: Union[str, List[str], None], batch_size: int, per_prompt: int, name: str) -> Optional[List[str]]:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values] * batch_size
    values = list(values)
    if len(values) != batch_size:
        raise ValueError(
            f"`{name}` has {len(values)} entries but there are {batch_size} prompts: give one per prompt."
        )
    return [value for value in values for _ in range(per_prompt)]


def _refuse_offloading_hooks_of_accelerate(pipe) -> None:
    # accelerate's offloading hooks (`enable_sequential_cpu_offload()`, a `device_map` that offloads layers) move each
    # layer's weights to the device for its call; the explainer cannot have them recomputed in the backward pass as it
    # does diffusers' group offloading, so a traced step would keep every weight on the device. Not tested: `pipe()`
    # itself fails under sequential offload on the CPU with torch 2.13.
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            hook = getattr(module, "_hf_hook", None)
            if any(getattr(h, "offload", False) for h in getattr(hook, "hooks", [hook])):
                raise ValueError(
                    "This pipeline's weights are offloaded by accelerate's hooks (`enable_sequential_cpu_offload()` "
                    "or an offloading `device_map`), which the explainer does not support. Use diffusers' group "
                    "offloading instead, the same memory: `pipe.remove_all_hooks()`, then "
                    "`pipe.transformer.enable_group_offload(onload_device=device, offload_type='leaf_level')` (or "
                    "`pipe.unet`), or `pipe.enable_model_cpu_offload()`."
                )


def check_inputs(
    request: ExplainRequest, pipe, family: PipelineFamily, input_kind: Optional[InputKind], explainer_name: str
) -> CheckedRequest:
    r"""
    Check an explainer call's arguments and resolve the method, level, box, traced steps, image size and input image,
    before any model runs.

    Args:
        request (`ExplainRequest`): The call.
        pipe: The explained pipeline.
        family (`PipelineFamily`): Its family.
        input_kind (`InputKind`, *optional*): What the explainer's pipelines start from besides the prompt.
        explainer_name (`str`): The explainer's class name, for the messages.

    Raises:
        `ValueError`: for a bad argument, naming it and what to pass instead.
    """
    pipeline_kwargs = request.pipeline_kwargs
    if "prompt_embeds" in pipeline_kwargs:
        raise ValueError("Pass `prompt` (text) instead of `prompt_embeds`: tokens are needed to attribute them.")
    _refuse_offloading_hooks_of_accelerate(pipe)
    family.check_arguments(pipe, pipeline_kwargs)
    keep = request.keep_for_reexplanation
    if keep not in (None, "graph", "latents"):
        raise ValueError(f"`keep_for_reexplanation` must be None, 'graph' or 'latents', got {keep!r}.")
    if not isinstance(request.prompt_dependence, bool):
        raise TypeError(f"`prompt_dependence` must be True or False, got {request.prompt_dependence!r}.")
    if request.output_type not in ("pil", "np", "pt"):
        raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {request.output_type!r}.")
    prompt = request.prompt
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"`prompt` must be a non-empty string or list of non-empty strings, got {prompt!r}.")
    for name in family.prompt_arguments(pipe)[1:]:  # the other encoders' texts (`prompt_2`), read before any tokenizer
        texts = pipeline_kwargs.get(name)
        if texts is not None and not isinstance(texts, str):
            if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) for text in texts):
                raise TypeError(f"`{name}` must be a text or a list of texts, one per prompt, got {texts!r}.")
    _check_special_tokens(pipe, family, prompts)
    _warn_truncated(pipe, family, prompts, pipeline_kwargs)
    height, width = _check_call(request, pipe, family, len(prompts))
    family.check_request(pipe, prompts, (height, width), pipeline_kwargs, request.explained_image is None)
    n_traced = request.n_last_diffusion_steps_to_consider_for_attributions
    if n_traced is not None and (isinstance(n_traced, bool) or not isinstance(n_traced, int) or n_traced < 0):
        raise ValueError(f"`{N_STEPS_ARG}` must be None (all steps) or an integer >= 0, got {n_traced!r}.")
    chosen = request.attribution_method
    method = parse_method(family.default_method if chosen is None else chosen)
    level = parse_attribution_level(request.attribution_level)
    image_input = existing = None
    if request.explained_image is not None:
        existing = _existing_image(request, pipe, family, height, width)
    elif request.noise_levels is not None:
        raise ValueError("`noise_levels` are for an existing image: pass them to `explain_image`.")
    else:
        image_input = _image_input(request, pipe, family, input_kind, explainer_name, height, width)
    source = existing or image_input
    if source is not None:
        height, width = source.height, source.width
    else:
        default_height, default_width = family.default_size(pipe)
        height, width = int(height or default_height), int(width or default_width)
    num_frames = None
    if family.video:
        num_frames = family.clip_frames(pipe, pipeline_kwargs)
        box = frame_region(request.explanation_2d_bounding_box, request.explanation_frames, height, width, num_frames)
    elif request.explanation_frames is not None:
        raise ValueError(
            f"`explanation_frames` is for a clip's frames; {type(pipe).__name__} makes images: leave it out."
        )
    else:
        box = normalize_box(request.explanation_2d_bounding_box, height, width)
    per_prompt = int(pipeline_kwargs.get(family.images_per_prompt_argument) or 1)
    expanded = {"prompt": _expand(prompts, len(prompts), per_prompt, "prompt")}
    for name in family.prompt_arguments(pipe)[1:]:
        if pipeline_kwargs.get(name):  # as the pipelines read it: an empty `prompt_2` is `prompt_2 or prompt`
            expanded[name] = _expand(pipeline_kwargs[name], len(prompts), per_prompt, name)
    if method.needs_concept_maps:
        family.concept_blocks(family.denoiser(pipe))  # raises for UNet families
    if keep is not None and not (method.needs_graph or method.needs_attention_maps or method.needs_concept_maps):
        raise ValueError(
            "`keep_for_reexplanation` needs a gradient method (e.g. 'grad_x_input') or 'attention', not "
            f"{method.name!r}."
        )
    if method.one_image_per_call and n_traced != 0 and len(expanded["prompt"]) != 1:
        raise ValueError(
            f"`attribution_method={method.name!r}` explains one image per call: pass one prompt and "
            "num_images_per_prompt=1 (call the explainer once per image)."
        )
    return CheckedRequest(
        request=request,
        prompts=expanded,
        n_traced=n_traced,
        method=method,
        level=level,
        box=box,
        height=height,
        width=width,
        check_memory=bool(request.check_memory) and not memory_check_disabled(),
        image_input=image_input,
        existing=existing,
        num_frames=num_frames,
    )


def _check_call(request: ExplainRequest, pipe, family: PipelineFamily, num_prompts: int):
    # What diffusers would otherwise answer deep inside the scheduler or the latents' reshape, named here. Returns
    # the image size asked for, or made by user-given latents.
    pipeline_kwargs = request.pipeline_kwargs
    _check_known(pipe, pipeline_kwargs)
    for switch in dataclasses.fields(ExplainRequest):
        value = getattr(request, switch.name)
        if switch.type is bool and not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"`{switch.name}` must be True or False, got {value!r}.")
    positive_int(request.num_inference_steps, "num_inference_steps", allow_none=False)
    positive_int(request.height, "height")
    positive_int(request.width, "width")
    per_prompt = family.images_per_prompt_argument
    positive_int(pipeline_kwargs.get(per_prompt), per_prompt)
    generator = pipeline_kwargs.get("generator")
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            f"`generator` must be a torch.Generator (e.g. `torch.Generator().manual_seed(0)`) or a list of them, got "
            f"{generator!r}."
        )
    num_images = num_prompts * int(pipeline_kwargs.get(per_prompt) or 1)
    if isinstance(generator, list) and len(generator) != num_images:
        raise ValueError(
            f"`generator` is a list of {len(generator)} generators for {num_images} images: give one per image "
            "(prompts x num_images_per_prompt), or a single generator."
        )
    for name in ("callback_on_step_end", "callback"):
        if pipeline_kwargs.get(name) is not None and not callable(pipeline_kwargs[name]):
            raise ValueError(f"`{name}` must be callable, got {pipeline_kwargs[name]!r}.")
    for name in ("guidance_scale", "true_cfg_scale", "eta", "guidance_rescale"):
        if name in pipeline_kwargs:
            finite_number(pipeline_kwargs[name], name)
    if "max_sequence_length" in pipeline_kwargs:  # a length of 0 reached T5 as an obscure einsum error
        positive_int(pipeline_kwargs["max_sequence_length"], "max_sequence_length")
    negative = pipeline_kwargs.get("negative_prompt")
    if negative is not None and not (
        isinstance(negative, str)
        or (isinstance(negative, (list, tuple)) and all(isinstance(n, str) for n in negative))
    ):
        raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {negative!r}.")
    for name in family.negative_prompt_arguments(pipe):
        given = pipeline_kwargs.get(name)
        if isinstance(given, (list, tuple)) and len(given) != num_prompts:
            raise ValueError(
                f"`{name}` is a list of {len(given)} for {num_prompts} prompt(s): give one text, or one per prompt."
            )
    factor = _size_multiple(pipe, family)
    for name in ("height", "width"):
        value = getattr(request, name)
        if value is not None and factor and value % factor:
            raise ValueError(
                f"`{name}` must be a multiple of {factor} for this pipeline, got {value}: e.g. "
                f"{max(factor, round(value / factor) * factor)}."
            )
    strength = pipeline_kwargs.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}.")
        if int(request.num_inference_steps * strength) < 1:
            raise ValueError(
                f"`strength={strength}` of `num_inference_steps={request.num_inference_steps}` leaves no "
                "denoising step: raise one of them."
            )
    height, width = request.height, request.width
    latents = pipeline_kwargs.get("latents")
    if latents is not None and not isinstance(latents, torch.Tensor):
        raise ValueError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
    size = family.latents_size(pipe, latents) if latents is not None else None
    if size is not None:
        if any(a is not None and a != b for a, b in zip((height, width), size)):
            raise ValueError(
                f"`latents` make a {size[1]}x{size[0]} (width x height) image, not the {width}x{height} asked: "
                "pass matching `height` and `width`, or leave them out."
            )
        height, width = size
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Explaining needs autograd and inference mode turns it off: call the explainer outside "
            "`torch.inference_mode()` (`torch.no_grad()` around it is fine)."
        )
    return height, width


def _size_multiple(pipe, family: PipelineFamily) -> Optional[int]:
    # The multiple an image side must be, as the pipeline checks it: the VAE's cell times the transformer's patch
    # (SD3) or the 2x2 packing (Flux); the UNet pipelines ask for a multiple of 8 whatever their VAE.
    factor = getattr(pipe, "vae_scale_factor", None)
    if family.size_multiple(pipe) or not factor:
        return family.size_multiple(pipe)
    config = family.denoiser(pipe).config
    if family.denoiser_in_channels(pipe) != family.latent_channels(pipe):
        return int(factor) * 2
    if getattr(config, "patch_size", None):
        return int(factor) * int(config.patch_size)
    return math.lcm(int(factor), 8)


def _check_known(pipe, pipeline_kwargs: Dict[str, Any]) -> None:
    # The pipelines' `**kwargs` only catch deprecated callback arguments: anything else would be silently ignored.
    parameters = inspect.signature(type(pipe).__call__).parameters
    unknown = sorted(set(pipeline_kwargs) - set(parameters) - {"callback", "callback_steps"})
    if unknown:
        raise TypeError(
            f"{type(pipe).__name__} takes no argument {', '.join(f'`{name}`' for name in unknown)}: see its "
            "`__call__` for the arguments it takes (every one passes through the explainer unchanged)."
        )


def _check_special_tokens(pipe, family: PipelineFamily, prompts) -> None:
    # A special token typed as text would be read as that token (CLIP's end-of-text cuts the prompt there) and could
    # not be attributed as words: refused, rather than silently cut.
    for slot in family.text_encoders(pipe):
        tokenizer = family.tokenizer(pipe, slot)
        special = [t for t in getattr(tokenizer, "all_special_tokens", []) if len(t) > 1]
        found = sorted({t for t in special for p in prompts if t in p})
        if found:
            raise ValueError(
                f"`prompt` contains the text of the tokenizer's special token(s) {', '.join(found)}, which the "
                "tokenizer reads as that token, not as words (CLIP's end-of-text ends the prompt there): remove it "
                "or spell it differently."
            )


def _warn_truncated(pipe, family: PipelineFamily, prompts, pipeline_kwargs: Dict[str, Any]) -> None:
    # The pipelines cut a prompt at its text encoder's length: say which words the model (and so the explanation)
    # never sees.
    for slot in family.text_encoders(pipe):
        tokenizer = family.tokenizer(pipe, slot)
        if tokenizer is None or getattr(pipe, slot.encoder, None) is None:
            continue
        length = family.token_length(pipe, slot, pipeline_kwargs)
        room = length - tokenizer.num_special_tokens_to_add()
        texts = pipeline_kwargs.get(slot.prompt_argument) or prompts
        for text in [texts] if isinstance(texts, str) else texts:
            if slot.template:  # the template's tokens before the prompt take their room first (truncation cuts after)
                full, start = family.encoder_text(pipe, slot, text, pipeline_kwargs)
                arguments = family.tokenizer_arguments(pipe, slot, full)
                before = len(tokenizer(full[:start], **arguments).input_ids)
                room = length - before
                if room < 1:
                    # The call's `max_sequence_length` and the length read differ by what the family adds (a
                    # template's cropped part): the advice is in the argument's terms.
                    asked = int(call_argument(pipe, pipeline_kwargs, "max_sequence_length"))
                    needed = before + len(tokenizer.tokenize(text)) - (length - asked)
                    default = call_argument(pipe, {}, "max_sequence_length")
                    cropped = (
                        f"; {slot.label} reads {length - asked} positions more, which the pipeline crops"
                        if length != asked
                        else ""
                    )
                    raise ValueError(
                        f"`max_sequence_length={asked}` leaves no room for the prompt: the chat template takes "
                        f"{before} tokens before it. Use at least {needed} (the pipeline's default is {default}"
                        f"{cropped})."
                    )
            tokens = tokenizer.tokenize(text)
            _check_rows_kept(pipe, family, slot, text, pipeline_kwargs)
            if len(tokens) > room:
                cut = " ".join(tokenizer.convert_tokens_to_string(tokens[room:]).replace("</w>", " ").split())
                warnings.warn(
                    f"`{slot.prompt_argument}` is {len(tokens)} tokens long and {slot.tokenizer} keeps {room}: the "
                    f"words {cut!r} are cut by the pipeline, so the model does not see them and they are not "
                    "attributed.",
                    stacklevel=5,
                )


def _check_rows_kept(pipe, family: PipelineFamily, slot, text: str, pipeline_kwargs: Dict[str, Any]) -> None:
    # A pipeline that cuts the encoder's states after encoding (Qwen-Image's `max_sequence_length`) would drop the
    # prompt's last words and the template's end from the model's text: refused, naming the length that keeps them.
    kept = family.text_rows_kept(pipe, slot, pipeline_kwargs)
    if kept is None:
        return
    full, _ = family.encoder_text(pipe, slot, text, pipeline_kwargs)
    tokenizer = family.tokenizer(pipe, slot)
    length = len(tokenizer(full, **family.tokenizer_arguments(pipe, slot, full)).input_ids)
    positions = family.kept_positions(pipe, slot, length, pipeline_kwargs)
    rows = length if positions is None else len(positions)
    if rows > kept:
        raise ValueError(
            f"The prompt in its template is {rows} tokens long and `max_sequence_length={kept}` keeps {kept}: the "
            f"model would not see the prompt's end. Use `max_sequence_length={rows}` or more, or a shorter prompt."
        )


def _image_input(
    request: ExplainRequest,
    pipe,
    family: PipelineFamily,
    input_kind: Optional[InputKind],
    explainer_name: str,
    height: Optional[int],
    width: Optional[int],
) -> Optional[ImageInput]:
    init_image, image, mask_image = request.init_image, request.image, request.mask_image
    name = type(pipe).__name__
    if input_kind is None:
        if init_image is not None or image is not None or mask_image is not None:
            # A family whose text-to-image call takes an image of another kind (Flux 2's reference images) says why.
            family.check_arguments(pipe, {"image": image if image is not None else init_image})
            if family.video:
                raise ValueError(
                    f"{explainer_name} explains text-to-video calls, which take no input image: explain an "
                    "image-to-video pipeline (e.g. `WanImageToVideoPipeline`, through `explainer_for(pipe)`) for one."
                )
            raise ValueError(
                f"{explainer_name} explains text-to-image calls: use the img2img or inpainting explainer "
                "(or `explainer_for(pipe)`) for an input image."
            )
        return None
    argument, processor = family.input_image(pipe)
    if input_kind is InputKind.CONTROL:
        init_image, image = None, _control_image(request, name, argument, init_image, image, mask_image)
    if init_image is not None and image is not None:
        raise ValueError("Pass the input image once: as `image=` (or as the legacy `init_image=`), not both.")
    if init_image is None and image is None:
        raise ValueError(f"{name} needs an input image: pass `image=` (or `init_image=`).")
    if input_kind is InputKind.INPAINT and mask_image is None:
        raise ValueError(f"{name} needs `mask_image=` (white where to repaint).")
    if input_kind is not InputKind.INPAINT and mask_image is not None:
        raise ValueError(
            f"{explainer_name} takes no `mask_image`: use the inpainting explainer with an inpainting pipeline."
        )
    # Some pipelines size the image by the call's `height`/`width` (resizing the input to the model's default
    # without them); the others by the input image alone.
    sized_by_call = "height" in inspect.signature(type(pipe).__call__).parameters
    if not sized_by_call:
        for size_name, value in (("height", height), ("width", width)):
            if value is not None:
                raise ValueError(
                    f"{name} takes its size from the input image, not `{size_name}=`: resize the image instead."
                )
    chosen = init_image if init_image is not None else image
    num_prompts = 1 if isinstance(request.prompt, str) else len(request.prompt)
    for given, given_name in ((chosen, argument), (mask_image, "mask_image")):
        if isinstance(given, (list, tuple)) and len(given) not in (1, num_prompts):
            raise ValueError(
                f"`{given_name}` is a list of {len(given)} images for {num_prompts} prompt(s): give one image, or one "
                "per prompt."
            )
    if sized_by_call:
        default_height, default_width = family.default_size(pipe)
        height, width = height or default_height, width or default_width
    else:  # a pipeline that sizes the clip by the image's aspect ratio (HunyuanVideo 1.5) says its size
        chosen = as_input_image(chosen, argument)  # once: `ImageInput.make` finds it converted
        first = chosen[0] if isinstance(chosen, list) else chosen
        size = family.input_size(pipe, first) if isinstance(first, Image.Image) else None
        height, width = size if size is not None else (height, width)
    made = ImageInput.make(pipe, chosen, mask_image, height, width, argument, processor, family.reads_reference)
    given = image_size(made.image)
    if input_kind is InputKind.CONTROL and given is not None and tuple(given) != (made.height, made.width):
        warnings.warn(
            f"`{argument}` is {given[1]}x{given[0]} (width x height): the pipeline resizes it to the image's "
            f"{made.width}x{made.height}; its pixel attributions are of the resized control image.",
            stacklevel=4,
        )
    return made


def _control_image(request: ExplainRequest, name: str, argument: str, init_image, image, mask_image):
    # A ControlNet pipeline's control image, under the pipeline's own argument name (`image=` for Stable Diffusion's,
    # `control_image=` for Flux's, which stays among the pipeline's arguments).
    if mask_image is not None:
        raise ValueError(f"{name} takes no `mask_image`: it is not an inpainting pipeline.")
    if argument == "control_image":
        if image is not None or init_image is not None:
            raise ValueError(
                f"{name} reads its control image from `control_image=`; it takes no input image to start from "
                "(`image=` / `init_image=`)."
            )
        image = request.pipeline_kwargs.get("control_image")
    elif init_image is not None:
        raise ValueError(f"{name} reads its control image from `image=`, not `init_image=` (it starts from noise).")
    if image is None:
        raise ValueError(
            f"{name} needs a control image: pass `{argument}=` (the edges, depth or pose its ControlNet reads)."
        )
    return image


def _existing_image(
    request: ExplainRequest, pipe, family: PipelineFamily, height: Optional[int], width: Optional[int]
) -> ExistingImage:
    # An image explained instead of a generated one: nothing of a generation may be asked for beside it.
    for name in ("init_image", "image", "mask_image"):
        if getattr(request, name) is not None:
            raise ValueError(f"`{name}` is for generating from an input image: `explain_image` takes its image alone.")
    if request.pipeline_kwargs.get("latents") is not None:
        raise ValueError("`latents` start a generation: `explain_image` encodes its image instead; leave them out.")
    if request.keep_for_reexplanation == "latents":
        raise ValueError(
            "`keep_for_reexplanation='latents'` replays a generation's untraced steps, which an existing image has "
            "none of: use 'graph'."
        )
    if family.control_models(pipe):
        raise ValueError(
            f"{type(pipe).__name__} reads a control image beside the prompt: explain an existing image with the "
            "same model's pipeline without its ControlNet (e.g. `StableDiffusionPipeline(**{k: v for k, v in "
            "pipe.components.items() if k != 'controlnet'})`), or explain a generation with its control image."
        )
    if family.reads_input_image_latents:
        raise ValueError(
            f"{type(pipe).__name__} edits an input image: explain an edit by making it, `explainer(prompt, "
            "image=...)` (the image it starts from is an input of the call)."
        )
    if family.denoiser_reads_mask(pipe):
        channels = int(family.denoiser(pipe).config.in_channels)
        raise ValueError(
            f"{type(pipe).__name__}'s denoiser reads {channels} channels (an inpainting model, which also reads a "
            "mask): explain an existing image with the text-to-image pipeline of the same model."
        )
    levels = DEFAULT_NOISE_LEVELS if request.noise_levels is None else request.noise_levels
    return ExistingImage.make(pipe, request.explained_image, height, width, levels, request.noise_seed)


N_STEPS_ARG = "n_last_diffusion_steps_to_consider_for_attributions"
