"""The last phase of an explainer call: scores and pictures into one output per image."""

import dataclasses
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from .attribution import aggregate
from .box import draw_box
from .outputs import ExplanationOutputList, PixelAttributions, TokenAttributions
from .views.saliency import SaliencyMap


def fill_scores(output, trace, scores, index: int, input_image=None, mask: Optional[np.ndarray] = None) -> None:
    r"""Set an output's attributions (tokens, pixels, raw gradients, method extras) from a method's `scores`."""
    tokens = trace.prompt_tokens[index]
    output.extras["token_positions"] = tokens.positions
    output.token_ids = [unit.token_id for unit in tokens.units]
    if scores is None or scores.tokens[index] is None:
        output.token_attributions = None
        return
    output.token_attributions = TokenAttributions(list(zip(tokens.labels, np.asarray(scores.tokens[index]).tolist())))
    output.token_gradients = scores.token_gradients[index] if scores.token_gradients else None
    output.token_embeddings = scores.token_embeddings[index] if scores.token_embeddings else None
    output.pooled_share = scores.pooled_share[index] if scores.pooled_share else None
    output.encoder_token_attributions = _per_encoder(trace, output, index)
    output.word_attributions = TokenAttributions(tokens.word_scores(np.asarray(scores.tokens[index]).tolist()))
    if scores.extras:
        output.extras.update(scores.extras[min(index, len(scores.extras) - 1)])
    if hasattr(output, "pixel_attributions"):
        pixels = scores.pixels[min(index, len(scores.pixels) - 1)] if scores.pixels else None
        output.pixel_gradients = scores.pixel_gradients[index] if scores.pixel_gradients else None
        output.pixel_attributions = None if pixels is None else PixelAttributions(pixels)
        output.input_saliency_map = None if pixels is None else SaliencyMap(input_image, pixels, mask)
        if pixels is None:
            warnings.warn(
                "The traced steps do not reach the input image's pixels (img2img uses the image only at the first "
                "step: trace all steps with n_last_diffusion_steps_to_consider_for_attributions=None): "
                "pixel_attributions is None.",
                stacklevel=5,
            )


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
            result[slot.encoder] = TokenAttributions(pairs)
    return result or None


def assemble_outputs(
    explainer, request, trace, scores, images, nsfw, step_images: Optional[List[Any]], session
) -> ExplanationOutputList:
    r"""One output per image of the call, in the pipeline's order."""
    outputs = ExplanationOutputList()
    image_input = request.image_input
    input_image = image_input.picture() if image_input is not None else None
    mask = image_input.mask() if image_input is not None else None
    for index in range(request.num_images):
        image = images[index]
        if request.output_type == "pil":
            image = draw_box(image, request.box)
        output = explainer.output_class(
            image=image,
            nsfw_content_detected=None if nsfw is None else bool(nsfw[index]),
            all_images_during_generation=None if step_images is None else step_images[index],
            explanation_2d_bounding_box=request.box,
            prompt=request.prompts["prompt"][index],
            attribution_method=request.method.name,
            attribution_level=request.level.value,
            attention_maps=trace.attention_maps,
            session=session,
            image_index=index,
        )
        if image_input is not None:
            output.input_image = input_image
            if hasattr(output, "mask"):
                output.mask = mask
        output.extras["method_summary"] = request.method.summary
        fill_scores(output, trace, scores, index, input_image, mask)
        outputs.append(output)
    return outputs


def reexplained(output, trace, scores, box, method, clean_image, input_image=None, mask=None):
    r"""A copy of `output` explaining `box` with `method`'s new `scores`."""
    image = clean_image
    if hasattr(image, "convert"):
        image = draw_box(image, box)
    new = dataclasses.replace(output, image=image, explanation_2d_bounding_box=box, attribution_method=method.name)
    new.extras = dict(output.extras, method_summary=method.summary)
    fill_scores(new, trace, scores, output.image_index, input_image, mask)
    return new
