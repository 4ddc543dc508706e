"""The last phase of an explainer call: scores and pictures into one output per image."""

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from .attribution import aggregate
from .box import clip_box, draw_box
from .dependence import DependenceMap
from .methods import Scores
from .outputs import ExplanationOutputList, ExplanationStats, GeneratedImages, PixelAttributions, TokenAttributions
from .request import CheckedRequest
from .trace import Trace
from .views.attention_maps import AttentionMaps
from .views.saliency import SaliencyMap


@dataclass(frozen=True)
class Pictures:
    r"""
    What the pipeline itself would show of a call (the explainer's fourth phase).

    Args:
        images (`list`): The images, post-processed as the pipeline does (`output_type`), without the box drawn.
        nsfw (`List[bool]`, *optional*): The safety checker's verdicts (pipelines with one).
        steps (`List[GeneratedImages]`, *optional*): Each image's decoded latents after every denoising step.
    """

    images: Any
    nsfw: Optional[List[bool]] = None
    steps: Optional[List[GeneratedImages]] = None


def _of_image(values: Optional[list], index: int):
    # A `Scores` list's entry for image `index`; methods that explain one image per call give one entry.
    return None if not values else values[min(index, len(values) - 1)]


def fill_scores(
    output, trace: Trace, scores: Optional[Scores], index: int, input_image=None, mask=None, word_merge: str = "sum"
) -> None:
    r"""Set an output's attributions (tokens, pixels, raw gradients, the method's maps and values) from `scores`
    (a word's score merged from its tokens' by `word_merge`, the method's trait)."""
    tokens = trace.prompt_tokens[index]
    output.token_positions = tokens.positions
    output.word_tokens = tokens.word_units()
    output.token_ids = [unit.token_id for unit in tokens.units]
    method_fields = dict(
        word_maps=_of_image(scores.word_maps, index) if scores else None,
        word_map_cell_size=scores.cell_size if scores else None,
        concept_maps=_of_image(scores.concept_maps, index) if scores else None,
        concept_scores=_of_image(scores.concept_scores, index) if scores else None,
        signed_scores=_of_image(scores.signed, index) if scores else None,
        completeness=_of_image(scores.completeness, index) if scores else None,
        ablated_images=_of_image(scores.ablated_images, index) if scores else None,
        probe_projections=_of_image(scores.projections, index) if scores else None,
        method_extras=dict(_of_image(scores.extras, index) or {}) if scores else {},
    )
    for name, value in method_fields.items():
        setattr(output, name, value)
    fill_dependence(output)
    excluded = None if output.attention_maps is None else output.attention_maps.excluded_share
    output.attention_sink_share = None if excluded is None else float(excluded[index].mean())
    if scores is None or scores.tokens[index] is None:
        output.token_attributions = None
        return
    pairs = list(zip(tokens.labels, np.asarray(scores.tokens[index]).tolist()))
    output.token_attributions = TokenAttributions(pairs, encoders=_encoder_labels(trace, tokens.units))
    output.token_gradients = scores.token_gradients[index] if scores.token_gradients else None
    output.token_embeddings = scores.token_embeddings[index] if scores.token_embeddings else None
    output.pooled_share = scores.pooled_share[index] if scores.pooled_share else None
    output.encoder_token_attributions = _per_encoder(trace, output, index)
    output.word_attributions = TokenAttributions(
        tokens.word_scores(np.asarray(scores.tokens[index]).tolist(), merge=word_merge),
        encoders=_word_encoder_labels(trace, tokens),
    )
    fill_dependence(output)
    if hasattr(output, "pixel_attributions"):
        pixels = _of_image(scores.pixels, index)
        output.pixel_gradients = scores.pixel_gradients[index] if scores.pixel_gradients else None
        output.pixel_attributions = None if pixels is None else PixelAttributions(pixels)
        name = "control image" if hasattr(output, "control_dependence") else "input image"
        output.input_saliency_map = None if pixels is None else SaliencyMap(input_image, pixels, mask, name=name)
        output.pixel_completeness = _of_image(scores.pixel_completeness, index)
        if pixels is None and not trace.has_graph:
            warnings.warn(
                f"This explanation reads recorded maps only, with no gradient to the {name}'s pixels: "
                "pixel_attributions is None (explain the box with a new call for them).",
                stacklevel=5,
            )
        elif pixels is None:
            warnings.warn(
                "The traced steps do not reach the input image's pixels (img2img uses the image only at the first "
                "step: trace all steps with n_last_diffusion_steps_to_consider_for_attributions=None): "
                "pixel_attributions is None.",
                stacklevel=5,
            )


def fill_dependence(output) -> None:
    r"""Set `output.prompt_dependence` from its `prompt_dependence_map` and its box, and pass it (with whether the box
    is the whole image) to its token and word attributions, which plot it."""
    changed, box = output.prompt_dependence_map, output.explanation_2d_bounding_box
    output.prompt_dependence = None if changed is None else DependenceMap(changed).share(box)
    if hasattr(output, "control_dependence_map"):
        control = output.control_dependence_map
        output.control_dependence = None if control is None else DependenceMap(control).share(box)
    for attributions in (output.token_attributions, output.word_attributions):
        if attributions is not None:
            attributions.prompt_dependence, attributions.whole_image = output.prompt_dependence, box is None


def _encoder_labels(trace, units) -> Optional[List[str]]:
    # Each token's encoder(s), where the tokens of several encoders are listed one after the other (a word can then
    # appear twice); `None` where every token is scored over the same encoders.
    slots = trace.family.text_encoders(trace.pipe)
    labels = [_label(slots, unit.encoders) for unit in units]
    return labels if len(set(labels)) > 1 else None


def _label(slots, encoders) -> str:
    # Encoders as a view names them: "T5", "CLIP-L+CLIP-G".
    return "+".join(slots[k].label for k in encoders)


def _word_encoder_labels(trace, tokens) -> Optional[List[str]]:
    # Each word's encoder(s), where the encoders read different texts (`prompt_2` given apart from `prompt`): the
    # words of each text are listed one after the other; `None` where every encoder reads the prompt.
    texts, of_words = tokens.text_encoders(), tokens.word_texts()
    if len(set(of_words)) < 2:  # one text has words: nothing to tell apart
        return None
    slots = trace.family.text_encoders(trace.pipe)
    return [_label(slots, texts[t]) for t in of_words]


def _per_encoder(trace, output, index: int) -> Optional[Dict[str, TokenAttributions]]:
    # Each text encoder's own scores: a unit of its own keeps its score; a unit it shares with other encoders (SDXL's,
    # SD3's CLIP-L and CLIP-G) is scored again over its features of the raw gradients (gradient methods only).
    slots = trace.family.text_encoders(trace.pipe)
    units = trace.prompt_tokens[index].units
    if len(slots) < 2:
        return None
    has_gradients = output.token_gradients is not None and output.token_embeddings is not None
    slices = trace.text_inputs().slices if has_gradients else None
    result = {}
    for k, slot in enumerate(slots):
        pairs = []
        for row, (unit, (label, score)) in enumerate(zip(units, output.token_attributions)):
            if k not in unit.encoders:
                continue
            if unit.encoders == (k,):
                pairs.append((label, score))
                continue
            if not has_gradients:
                pairs = None
                break
            features = slices[k]
            value = aggregate(
                output.token_gradients[row : row + 1, features],
                output.token_embeddings[row : row + 1, features],
                output.attribution_method,
                dim=-1,
            )
            pairs.append((label, float(value[0])))
        if pairs:
            result[slot.encoder] = TokenAttributions(pairs, encoders=[slot.label] * len(pairs))
    return result or None


def assemble_outputs(
    output_class: type,
    request: CheckedRequest,
    trace: Trace,
    scores: Optional[Scores],
    pictures: Pictures,
    stats: ExplanationStats,
    session,
    dependence: Optional[List[DependenceMap]] = None,
    control_dependence: Optional[List[DependenceMap]] = None,
) -> ExplanationOutputList:
    r"""One output per image of the call, in the pipeline's order."""
    outputs = ExplanationOutputList()
    image_input = request.image_input
    input_image = image_input.picture() if image_input is not None else None
    mask = image_input.mask() if image_input is not None else None
    leaf = trace.pixels
    if input_image is not None and leaf is not None and tuple(leaf.shape[-2:]) != input_image.size[::-1]:
        # The pipeline sized the input image itself (Flux Kontext's reference): shown as it processed it.
        input_image = _leaf_picture(leaf)
    attention_maps = None if trace.attention_maps is None else AttentionMaps(**vars(trace.attention_maps))
    for index in range(request.num_images):
        image = pictures.images[index]
        if request.output_type == "pil":
            image = draw_box(image, request.box)
        output = output_class(
            image=image,
            nsfw_content_detected=None if pictures.nsfw is None else bool(pictures.nsfw[index]),
            all_images_during_generation=None if pictures.steps is None else pictures.steps[index],
            explanation_2d_bounding_box=request.box,
            prompt=request.prompts["prompt"][index],
            other_prompts={
                name: texts[index]
                for name, texts in request.prompts.items()
                if name != "prompt" and texts[index] != request.prompts["prompt"][index]
            },
            attribution_method=request.method.name,
            attribution_level=request.level.value,
            method_summary=request.method.summary,
            attention_maps=attention_maps,
            stats=stats,
            session=session,
            image_index=index,
        )
        if request.num_frames is not None:  # a clip: its frames, and the box of each explained frame
            asked, size = request.request, (request.height, request.width)
            output.num_frames, output.frame_size = request.num_frames, size
            output.explanation_2d_bounding_box, output.explanation_frames, output.explained_region = clip_box(
                asked.explanation_2d_bounding_box, asked.explanation_frames, *size, request.num_frames
            )
        if dependence is not None:
            output.prompt_dependence_map = dependence[index].changed
        if control_dependence is not None:
            output.control_dependence_map = control_dependence[index].changed
        if image_input is not None:
            output.input_image = input_image
            output.correspondence = trace.correspondence
            if hasattr(output, "mask"):
                output.mask = mask
        fill_scores(output, trace, scores, index, input_image, mask, request.method.word_merge)
        outputs.append(output)
    return outputs


def reexplained(output, trace: Trace, scores: Optional[Scores], box, method, clean_image, input_image=None, mask=None):
    r"""A copy of `output` explaining `box` with `method`'s new `scores`."""
    image = clean_image
    if hasattr(image, "convert"):
        image = draw_box(image, box)
    new = dataclasses.replace(
        output, image=image, explanation_2d_bounding_box=box, attribution_method=method.name,
        method_summary=method.summary,
    )  # fmt: skip
    fill_scores(new, trace, scores, output.image_index, input_image, mask, method.word_merge)
    return new


def _leaf_picture(pixels):
    from PIL import Image

    array = pixels[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255).round().astype("uint8"))
