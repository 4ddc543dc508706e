"""An explanation at a glance, as a notebook shows an output: the image with its box, the words' bars, the method."""

import html
from typing import List

import numpy as np
from PIL import Image

from ..dependence import bar_opacity, describe_control_dependence, describe_dependence
from .markup import BAR, BAR_TOP, image_to_data_uri

DISPLAY_SIZE = 256


def _picture(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # (C, H, W) tensors as numpy
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8).squeeze())


def explanation_html(output) -> str:
    r"""
    Self-contained HTML of one explanation: the image (with the box drawn, pixelated to at least 256 pixels), the
    prompt, the method and level, and a bar per word (`word_attributions`, else `token_attributions`) in percent of the
    total, in the prompt's order, the top three in bold. Everything is escaped; no script, no ids.
    """
    picture = _picture(output.image)
    scale = max(1, DISPLAY_SIZE // max(picture.size))
    width = picture.width * scale
    shown = f'<img src="{image_to_data_uri(picture)}" style="width:{width}px;image-rendering:pixelated"/>'
    if getattr(output, "num_frames", 0):  # a clip: played, each word's map over it
        shown = output.clip_view().to_html()
    pairs = output.word_attributions or output.token_attributions
    rows = []
    whole = output.explanation_2d_bounding_box is None
    opacity = bar_opacity(output.prompt_dependence, whole)
    if pairs:
        percent = [value for _, value in pairs.normalized]
        largest = max(max(percent), 1e-12)
        for word, value in zip(pairs.labels, percent):  # labelled by encoder where the encoders read two texts
            # The report's bar style: the largest bar dark red, the others red, in percent of the box's total.
            colour = BAR_TOP if value == largest else BAR
            bar = max(0.0, value) / largest * 100
            label = html.escape(str(word))
            rows.append(
                f'<tr><td style="text-align:right;padding-right:6px;font-family:monospace">{label}</td>'
                f'<td style="width:160px"><div style="background:{colour};opacity:{opacity};height:10px;'
                f'width:{bar:.1f}%"></div></td>'
                f'<td style="padding-left:6px;color:#555">{value:.1f}%</td></tr>'
            )
    else:
        rows.append('<tr><td style="color:#555">No attributions (no step was traced).</td></tr>')
    region = html.escape(region_in_words(output))
    how = html.escape(what_was_explained(output))
    dependence = describe_dependence(output.prompt_dependence, whole)
    headline = f'<div style="margin-bottom:6px;font-weight:bold">{html.escape(dependence)}</div>' if dependence else ""
    meaning = html.escape(output.method_summary or "")
    extra = "".join(f"<div style='color:#555'>{html.escape(line)}</div>" for line in readings(output))
    return (
        '<div style="font-family:sans-serif;font-size:13px;display:flex;gap:16px;align-items:flex-start">'
        f"{shown}"
        f'<div><div style="margin-bottom:4px">{html.escape(prompt_in_words(output))}</div>'
        f'<div style="color:#555;margin-bottom:6px">Explaining {region}: {how}</div>{headline}'
        f'<table style="border-collapse:collapse">{"".join(rows)}</table>'
        f'<div style="color:#555;margin-top:4px;max-width:420px">{meaning} Bars: each word\'s share of the '
        f"scores in this region (they add up to 100% in every region).</div>{extra}</div></div>"
    )


def prompt_in_words(output) -> str:
    r"""The prompt as a view's title shows it: with the texts other encoders read, where the call gave them
    ("a red circle; prompt_2: a red circle on the left")."""
    others = getattr(output, "other_prompts", None) or {}
    prompt = str(getattr(output, "prompt", None) or "")
    return "; ".join([prompt] + [f"{name}: {text}" for name, text in others.items()])


def region_in_words(output) -> str:
    r"""What region was explained, in words: "the whole image", "the box ((x0, y0), (x1, y1))"; of a clip, with its
    frames ("the box ... on frames 2 to 4")."""
    box = output.explanation_2d_bounding_box
    frames = getattr(output, "num_frames", 0)
    if not frames:
        return "the whole image" if box is None else f"the box {tuple(map(tuple, box))}"
    span = getattr(output, "explanation_frames", None)
    which = (
        "every frame"
        if span is None
        else f"frames {span[0]} to {span[1] - 1}"
        if span[1] - span[0] > 1
        else (f"frame {span[0]}")
    )
    if box is None:
        return "the whole clip" if span is None else which
    return f"the box {tuple(map(tuple, box))} on {which} of the clip"


LEVELS_IN_WORDS = {
    "token_embeddings": "the words of the prompt, through the text encoder",
    "text_encoder_output": "the text encoder's output at each word",
}


def what_was_explained(output) -> str:
    r"""What was explained and how, in words: the method, what it scores, the denoising steps it read."""
    level = LEVELS_IN_WORDS.get(str(output.attribution_level), str(output.attribution_level))
    steps = output.stats.traced_denoiser_calls if output.stats is not None else 0
    read = f"; {steps} denoiser calls read" if steps else ""
    return f"{output.attribution_method} on {level}{read}."


def readings(output) -> List[str]:
    r"""
    What a reader should know beside the bars, in words.

    Returns:
        `List[str]`: How much of the region depends on a ControlNet's control image (`control_dependence`), how much
        came through the prompt's summary vector rather than its words (`pooled_share`), and how much of the image's
        attention went to text positions that are not the prompt's tokens (`attention_sink_share`); nothing for an
        output without them.
    """
    lines = []
    control = getattr(output, "control_dependence", None)
    if control is not None:
        lines.append(describe_control_dependence(control, output.explanation_2d_bounding_box is None))
    pooled = getattr(output, "pooled_share", None)
    if pooled is not None:
        lines.append(
            f"{100 * pooled:.0f}% of this came through the prompt's summary vector (its pooled text embedding) rather "
            "than through its words."
        )
    sinks = getattr(output, "attention_sink_share", None)
    if sinks is not None:
        lines.append(
            f"{100 * sinks:.0f}% of the image's attention to the text went to positions that are not the prompt's "
            "words (padding, start and end tokens, a chat template's tokens): left out of the maps and the ranking."
        )
    return lines
