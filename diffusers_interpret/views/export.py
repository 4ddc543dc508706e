"""An explanation's maps as files: one NPZ of arrays, a JSON of the settings that made them, a PNG per word."""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
from PIL import Image

from .attention_maps import check_colormap, colorize

MAPS_FILE, SETTINGS_FILE = "maps.npz", "maps.json"


def export_maps(
    output, folder: Union[str, Path], cmap: str = "jet", alpha: float = 0.5, pictures: bool = True
) -> Dict[str, Path]:
    r"""
    Write one explained image's maps to `folder` (created if needed), with the settings that made them.

    - `maps.npz`: `word_maps` (tokens, H, W), aligned with `tokens`, where the method made them; `words` (words, H, W):
      each word's map, the sum of its tokens' maps (where the word is read; its score, in `maps.json`, is the method's
      merge of its tokens' scores: the most-read piece for the attention methods); `attention_maps` (text positions,
      H, W) and `attention_excluded_share` (H, W) where attention was recorded; `concept_<name>` (H, W) for each
      concept map; `prompt_dependence_map` (H, W).
    - `maps.json`: the prompt (and `other_prompts`, the texts other encoders read), method, level, box, tokens (label,
      position, score), words (text, score, token indices; `encoder` where the encoders read different texts),
      the recorded steps and layers, the maps' cell size, the image size, the call's settings (steps, size, traced
      steps, guidance and the other pipeline arguments that are plain values), the pipeline's class and this
      library's version; and which array of `maps.npz` holds what.
    - `word-<k>-<word>.png` (with `pictures`): each word's map over the image, every word on one colour scale (the
      largest value of any word's map), so that a word read weakly everywhere looks weak.

    Args:
        output (`BaseExplanationOutput`): The explanation.
        folder (`str` or `Path`): Where to write.
        cmap (`str`, *optional*, defaults to `"jet"`): Matplotlib colormap of the pictures.
        alpha (`float`, *optional*, defaults to 0.5): Weight of the map over the image in the pictures.
        pictures (`bool`, *optional*, defaults to `True`): Write the PNG pictures too.

    Returns:
        `Dict[str, Path]`: the files written, by name.
    """
    check_colormap(cmap)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
    arrays = _arrays(output)
    if not arrays:
        raise ValueError(
            "This explanation has no maps to export: use a method that makes them ('word_attention', "
            "'concept_attention', 'attention') or `attention_maps=True`."
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {MAPS_FILE: folder / MAPS_FILE, SETTINGS_FILE: folder / SETTINGS_FILE}
    np.savez_compressed(written[MAPS_FILE], **arrays)
    settings = _settings(output, arrays)
    written[SETTINGS_FILE].write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if pictures and "words" in arrays:
        base = _picture(_unmarked_image(output))
        # One scale for every word (the largest value of any): a word read weakly everywhere looks weak, not as red
        # as the word the region is about.
        top = float(arrays["words"].max()) if arrays["words"].size else 0.0
        words = output.word_attributions.labels if output.word_attributions else []  # "a (T5)" where texts differ
        for k, word in enumerate(words):
            name = f"word-{k:02d}-{_slug(word)}.png"
            written[name] = folder / name
            _overlay(base, arrays["words"][k], top, cmap, float(alpha)).save(written[name])
    return written


def _arrays(output) -> Dict[str, np.ndarray]:
    arrays: Dict[str, np.ndarray] = {}
    if output.word_maps is not None:
        word_maps = np.asarray(output.word_maps, dtype=np.float32)
        arrays["word_maps"] = word_maps
        arrays["words"] = (
            np.stack([word_maps[group].sum(0) for group in output.word_tokens])
            if output.word_tokens
            else (np.zeros((0, *word_maps.shape[1:]), np.float32))
        )
    maps = output.attention_maps
    if maps is not None:
        index = output.image_index if maps.maps.shape[0] > output.image_index else 0
        arrays["attention_maps"] = maps.maps[index].float().numpy()
        if getattr(maps, "excluded_share", None) is not None:
            arrays["attention_excluded_share"] = maps.excluded_share[index].float().numpy()
    for name, concept in (output.concept_maps or {}).items():
        arrays[f"concept_{name}"] = np.asarray(concept, dtype=np.float32)
    if output.prompt_dependence_map is not None:
        arrays["prompt_dependence_map"] = np.asarray(output.prompt_dependence_map, dtype=np.float32)
    return arrays


def _settings(output, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    from .. import __version__

    tokens = [
        {"label": label, "position": int(position), "score": float(score)}
        for (label, score), position in zip(output.token_attributions or [], output.token_positions)
    ]
    words = [
        {"word": word, "score": float(score), "tokens": [int(i) for i in group]}
        for (word, score), group in zip(output.word_attributions or [], output.word_tokens)
    ]
    encoders = getattr(output.word_attributions, "encoders", None)
    for word, encoder in zip(words, encoders or []):  # where the encoders read different texts
        word["encoder"] = encoder
    maps = output.attention_maps
    image = _picture(output.image)
    settings: Dict[str, Any] = {
        "prompt": output.prompt,
        "other_prompts": dict(getattr(output, "other_prompts", None) or {}),
        "method": output.attribution_method,
        "level": output.attribution_level,
        "box": None
        if output.explanation_2d_bounding_box is None
        else [list(c) for c in output.explanation_2d_bounding_box],
        "image_size": [image.height, image.width],
        "tokens": tokens,
        "words": words,
        "attention": None
        if maps is None
        else {
            "steps": None if maps.steps is None else [int(s) for s in maps.steps],
            "layers": maps.layers,
            "cell_size": maps.cell_size,
            "sink_share": output.attention_sink_share,
        },
        "word_map_cell_size": output.word_map_cell_size,
        "prompt_dependence": output.prompt_dependence,
        "call": _call_settings(output),
        "arrays": {name: list(array.shape) for name, array in arrays.items()},
        "diffusers_interpret": __version__,
    }
    return settings


def _call_settings(output) -> Optional[Dict[str, Any]]:
    # The call's plain settings (numbers, strings, booleans, lists of them), where the output kept its session.
    session = getattr(output, "session", None)
    checked = getattr(session, "request", None)
    request = getattr(checked, "request", None)
    if request is None or not dataclasses.is_dataclass(request):
        return None
    values: Dict[str, Any] = {}
    for name, value in {**{f.name: getattr(request, f.name) for f in dataclasses.fields(request)},
                        **request.pipeline_kwargs}.items():  # fmt: skip
        if name in ("pipeline_kwargs", "prompt") or not _plain(value):
            continue
        values[name] = list(value) if isinstance(value, tuple) else value
    explainer = getattr(session, "explainer", None)
    if explainer is not None:
        values["pipeline"] = type(explainer.pipe).__name__
    return values


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _unmarked_image(output):
    # The image without the explained box drawn on it, where the output kept its session.
    images = getattr(getattr(output, "session", None), "images", None)
    if images is not None and len(images) > output.image_index:
        return images[output.image_index]
    return output.image


def _picture(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _overlay(base: Image.Image, values: np.ndarray, top: float, cmap: str, alpha: float) -> Image.Image:
    normalized = values / top if top > 0 else values
    heat = colorize(normalized, cmap=cmap)
    if heat.size != base.size:
        heat = heat.resize(base.size, Image.BILINEAR)
    return Image.blend(base, heat, alpha)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "word"


__all__: List[str] = ["export_maps"]
