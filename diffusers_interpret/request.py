"""The first phase of an explainer call: check its inputs before any model runs, and resolve them."""

import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from .attribution import AttributionLevel, parse_attribution_level
from .box import normalize_box
from .checks import finite_number, positive_int
from .image_inputs import ImageInput
from .memory import memory_check_disabled
from .methods import AttributionMethod, parse_method

N_STEPS_ARG = "n_last_diffusion_steps_to_consider_for_attributions"


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


@dataclass
class ExplainRequest:
    r"""One explainer call's checked inputs."""

    prompt: Union[str, List[str]]
    prompts: Dict[str, List[str]]  # by call argument ("prompt", "prompt_2"), one text per image
    n_traced: Optional[int]
    method: AttributionMethod
    level: AttributionLevel
    box: Any
    height: int
    width: int
    output_type: str
    keep: Optional[str]
    attention_maps: bool
    check_memory: bool
    step_images: bool
    consider_special_tokens: bool
    clean_tokens: bool
    image_input: Optional[ImageInput]
    arguments: Dict[str, Any] = field(default_factory=dict)  # the call's own arguments, to run it again

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

    @property
    def records_attention(self) -> bool:
        return self.attention_maps or (self.wants_scores and self.method.needs_attention_maps)


def check_inputs(explainer, prompt, arguments: Dict[str, Any]) -> ExplainRequest:
    r"""
    Check an explainer call's arguments (as `explainer(prompt, ...)` takes them, in a dict) and resolve the method,
    level, box, traced steps and input image, before any model runs.

    Raises:
        `ValueError`: for a bad argument, naming it and what to pass instead.
    """
    pipeline_kwargs = {k: arguments.pop(k) for k in list(arguments) if k not in EXPLAINER_ARGUMENTS}
    if "prompt_embeds" in pipeline_kwargs:
        raise ValueError("Pass `prompt` (text) instead of `prompt_embeds`: tokens are needed to attribute them.")
    explainer.family.check_arguments(explainer.pipe, pipeline_kwargs)
    keep = arguments["keep_for_reexplanation"]
    if keep not in (None, "graph", "latents"):
        raise ValueError(f"`keep_for_reexplanation` must be None, 'graph' or 'latents', got {keep!r}.")
    output_type = arguments["output_type"]
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"`prompt` must be a non-empty string or list of non-empty strings, got {prompt!r}.")
    _check_special_tokens(explainer, prompts)
    _warn_truncated(explainer, prompts, pipeline_kwargs)
    _check_call(explainer, arguments, pipeline_kwargs, len(prompts))
    n_traced = arguments[N_STEPS_ARG]
    if n_traced is not None and (isinstance(n_traced, bool) or not isinstance(n_traced, int) or n_traced < 0):
        raise ValueError(f"`{N_STEPS_ARG}` must be None (all steps) or an integer >= 0, got {n_traced!r}.")
    chosen = arguments["attribution_method"]
    method = parse_method(explainer.family.default_method if chosen is None else chosen)
    level = parse_attribution_level(arguments["attribution_level"])
    image_input = _image_input(explainer, arguments)
    if image_input is not None:
        height, width = image_input.height, image_input.width
    else:
        default_height, default_width = explainer.family.default_size(explainer.pipe)
        height, width = int(arguments["height"] or default_height), int(arguments["width"] or default_width)
    box = normalize_box(arguments["explanation_2d_bounding_box"], height, width)
    per_prompt = int(pipeline_kwargs.get("num_images_per_prompt") or 1)
    expanded = {"prompt": _expand(prompts, len(prompts), per_prompt, "prompt")}
    for name in ("prompt_2", "prompt_3"):
        if pipeline_kwargs.get(name) is not None:
            expanded[name] = _expand(pipeline_kwargs[name], len(prompts), per_prompt, name)
    if method.needs_concept_maps:
        explainer.family.concept_blocks(explainer.family.denoiser(explainer.pipe))  # raises for UNet families
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
    return ExplainRequest(
        prompt=prompt,
        prompts=expanded,
        n_traced=n_traced,
        method=method,
        level=level,
        box=box,
        height=height,
        width=width,
        output_type=output_type,
        keep=keep,
        attention_maps=arguments["attention_maps"],
        check_memory=bool(arguments.get("check_memory", True)) and not memory_check_disabled(),
        step_images=arguments["get_images_for_all_inference_steps"],
        consider_special_tokens=arguments["consider_special_tokens"],
        clean_tokens=arguments["clean_token_prefixes_and_suffixes"],
        image_input=image_input,
        arguments=dict(arguments, **pipeline_kwargs),
    )


def _check_call(explainer, arguments: Dict[str, Any], pipeline_kwargs: Dict[str, Any], num_prompts: int) -> None:
    # What diffusers would otherwise answer deep inside the scheduler or the latents' reshape, named here.
    _check_known(explainer.pipe, pipeline_kwargs)
    for name in SWITCHES:
        value = arguments.get(name, True)
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    positive_int(arguments["num_inference_steps"], "num_inference_steps", allow_none=False)
    for name in ("height", "width"):
        positive_int(arguments[name], name)
    positive_int(pipeline_kwargs.get("num_images_per_prompt"), "num_images_per_prompt")
    generator = pipeline_kwargs.get("generator")
    generators = generator if isinstance(generator, list) else [generator]
    if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
        raise ValueError(
            f"`generator` must be a torch.Generator (e.g. `torch.Generator().manual_seed(0)`) or a list of them, got "
            f"{generator!r}."
        )
    num_images = num_prompts * int(pipeline_kwargs.get("num_images_per_prompt") or 1)
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
    negative = pipeline_kwargs.get("negative_prompt")
    if negative is not None and not (
        isinstance(negative, str)
        or (isinstance(negative, (list, tuple)) and all(isinstance(n, str) for n in negative))
    ):
        raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {negative!r}.")
    strength = pipeline_kwargs.get("strength")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}.")
        if int(arguments["num_inference_steps"] * strength) < 1:
            raise ValueError(
                f"`strength={strength}` of `num_inference_steps={arguments['num_inference_steps']}` leaves no "
                "denoising step: raise one of them."
            )
    latents = pipeline_kwargs.get("latents")
    if latents is not None and not isinstance(latents, torch.Tensor):
        raise ValueError(f"`latents` must be a torch.Tensor, got {type(latents).__name__}.")
    if isinstance(latents, torch.Tensor) and explainer.family.attention_kind == "cross" and latents.ndim != 4:
        raise ValueError(
            f"`latents` must be (batch, channels, height / {explainer.pipe.vae_scale_factor}, width / "
            f"{explainer.pipe.vae_scale_factor}), got shape {tuple(latents.shape)}."
        )
    factor = getattr(explainer.pipe, "vae_scale_factor", None)
    if (
        isinstance(latents, torch.Tensor)
        and latents.ndim == 4
        and factor
        and explainer.family.attention_kind == "cross"
    ):
        size = (int(latents.shape[-2]) * factor, int(latents.shape[-1]) * factor)
        asked = (arguments["height"], arguments["width"])
        if any(a is not None and a != b for a, b in zip(asked, size)):
            raise ValueError(
                f"`latents` make a {size[1]}x{size[0]} (width x height) image, not the {asked[1]}x{asked[0]} asked: "
                "pass matching `height` and `width`, or leave them out."
            )
        arguments["height"], arguments["width"] = size
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Explaining needs autograd and inference mode turns it off: call the explainer outside "
            "`torch.inference_mode()` (`torch.no_grad()` around it is fine)."
        )


def _check_known(pipe, pipeline_kwargs: Dict[str, Any]) -> None:
    # The pipelines' `**kwargs` only catch deprecated callback arguments: anything else would be silently ignored.
    parameters = inspect.signature(type(pipe).__call__).parameters
    unknown = sorted(set(pipeline_kwargs) - set(parameters) - {"callback", "callback_steps"})
    if unknown:
        raise TypeError(
            f"{type(pipe).__name__} takes no argument {', '.join(f'`{name}`' for name in unknown)}: see its "
            "`__call__` for the arguments it takes (every one passes through the explainer unchanged)."
        )


def _check_special_tokens(explainer, prompts) -> None:
    # A special token typed as text would be read as that token (CLIP's end-of-text cuts the prompt there) and could
    # not be attributed as words: refused, rather than silently cut.
    for slot in explainer.family.text_encoders(explainer.pipe):
        tokenizer = getattr(explainer.pipe, slot.tokenizer, None)
        special = [t for t in getattr(tokenizer, "all_special_tokens", []) if len(t) > 1]
        found = sorted({t for t in special for p in prompts if t in p})
        if found:
            raise ValueError(
                f"`prompt` contains the text of the tokenizer's special token(s) {', '.join(found)}, which the "
                "tokenizer reads as that token, not as words (CLIP's end-of-text ends the prompt there): remove it "
                "or spell it differently."
            )


def _warn_truncated(explainer, prompts, pipeline_kwargs: Dict[str, Any]) -> None:
    # The pipelines cut a prompt at its text encoder's length: say which words the model (and so the explanation)
    # never sees.
    pipe = explainer.pipe
    for slot in explainer.family.text_encoders(pipe):
        tokenizer = getattr(pipe, slot.tokenizer, None)
        if tokenizer is None or getattr(pipe, slot.encoder, None) is None:
            continue
        room = explainer.family.token_length(pipe, slot, pipeline_kwargs) - tokenizer.num_special_tokens_to_add()
        texts = pipeline_kwargs.get(slot.prompt_argument) or prompts
        for text in [texts] if isinstance(texts, str) else texts:
            tokens = tokenizer.tokenize(text)
            if len(tokens) > room:
                cut = " ".join(tokenizer.convert_tokens_to_string(tokens[room:]).replace("</w>", " ").split())
                warnings.warn(
                    f"`{slot.prompt_argument}` is {len(tokens)} tokens long and {slot.tokenizer} keeps {room}: the "
                    f"words {cut!r} are cut by the pipeline, so the model does not see them and they are not "
                    "attributed.",
                    stacklevel=5,
                )


def _image_input(explainer, arguments: Dict[str, Any]) -> Optional[ImageInput]:
    init_image, image, mask_image = arguments["init_image"], arguments["image"], arguments["mask_image"]
    name = type(explainer.pipe).__name__
    if explainer.input_kind is None:
        if init_image is not None or image is not None or mask_image is not None:
            raise ValueError(
                f"{type(explainer).__name__} explains text-to-image calls: use the img2img or inpainting explainer "
                "(or `explainer_for(pipe)`) for an input image."
            )
        return None
    if init_image is not None and image is not None:
        raise ValueError("Pass the input image once: as `image=` (or as the legacy `init_image=`), not both.")
    if init_image is None and image is None:
        raise ValueError(f"{name} needs an input image: pass `image=` (or `init_image=`).")
    if explainer.input_kind == "inpaint" and mask_image is None:
        raise ValueError(f"{name} needs `mask_image=` (white where to repaint).")
    if explainer.input_kind != "inpaint" and mask_image is not None:
        raise ValueError(
            f"{type(explainer).__name__} takes no `mask_image`: use the inpainting explainer with an inpainting "
            "pipeline."
        )
    # Some pipelines size the image by the call's `height`/`width` (resizing the input to the model's default
    # without them); the others by the input image alone.
    sized_by_call = "height" in inspect.signature(type(explainer.pipe).__call__).parameters
    if not sized_by_call:
        for size_name in ("height", "width"):
            if arguments[size_name] is not None:
                raise ValueError(
                    f"{name} takes its size from the input image, not `{size_name}=`: resize the image instead."
                )
    chosen = init_image if init_image is not None else image
    height, width = arguments["height"], arguments["width"]
    if sized_by_call:
        default_height, default_width = explainer.family.default_size(explainer.pipe)
        height, width = height or default_height, width or default_width
    return ImageInput.make(explainer.pipe, chosen, mask_image, height, width)


SWITCHES = (
    "consider_special_tokens",
    "clean_token_prefixes_and_suffixes",
    "get_images_for_all_inference_steps",
    "attention_maps",
    "check_memory",
)

EXPLAINER_ARGUMENTS = frozenset(
    (
        "num_inference_steps",
        "height",
        "width",
        N_STEPS_ARG,
        "explanation_2d_bounding_box",
        "attribution_method",
        "attribution_level",
        "consider_special_tokens",
        "clean_token_prefixes_and_suffixes",
        "get_images_for_all_inference_steps",
        "output_type",
        "keep_for_reexplanation",
        "attention_maps",
        "check_memory",
        "init_image",
        "image",
        "mask_image",
    )
)
