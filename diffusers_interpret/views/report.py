r"""
One self-contained HTML report (plus PNG files) from a list of explanation outputs.

The report inlines everything: images are data URIs, the step slider's script is inline and its data is JSON that no
string can break out of (`json_for_script`), and every text (prompts, tokens, settings) goes through `html.escape`.
The file can be mailed or opened from anywhere; nothing needs to lie beside it. The same images and plots are also
written as PNG files into the report's directory, for use elsewhere.
"""

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from PIL import Image

from ..dependence import DEPENDS_THRESHOLD, bar_opacity, describe_dependence
from .clip import contact_sheet
from .markup import BAR, BAR_TOP, colour_legend, image_slider_html, image_to_data_uri
from .summary import prompt_in_words, readings, region_in_words, what_was_explained

REPORT_FILE_NAME = "report.html"
_DISPLAY_WIDTH = 256

_CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
table.settings td { padding: 1px 10px 1px 0; font-size: 13px; }
p.method { font-size: 14px; max-width: 900px; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px; }
.card h3 { font-size: 14px; margin: 0 0 6px 0; }
.meta { font-size: 12px; color: #555; margin-bottom: 6px; }
img.pixelated { image-rendering: pixelated; display: block; }
table.bars { border-collapse: collapse; font-size: 12px; }
table.bars td { padding: 1px 4px; }
table.bars td.token { text-align: right; font-family: monospace; }
table.bars td.value { text-align: right; color: #555; }
.bar { height: 12px; background: BAR_COLOUR; }
.bar.top { background: BAR_TOP_COLOUR; }
.dependence { font-size: 13px; font-weight: bold; margin: 6px 0; max-width: 320px; }
.meaning { font-size: 12px; color: #555; margin-top: 4px; max-width: 320px; }
.note { font-size: 12px; color: #555; }
""".replace("BAR_TOP_COLOUR", BAR_TOP).replace("BAR_COLOUR", BAR)

# The heatmaps' colour scale (matplotlib's jet, as the overlays are drawn).
_COLOUR_LEGEND = colour_legend('<div class="meta">low {scale} high</div>')


@dataclass
class _Written:
    # Paths written next to the report (relative to its directory), for the caller.
    files: List[Path] = field(default_factory=list)


def _as_pil(image: Any) -> Optional[Image.Image]:
    # An output image as PIL: PIL as is, an (H, W, C) float array in [0, 1] or uint8, or a (C, H, W) tensor.
    if image is None:
        return None
    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            image = np.transpose(image, (1, 2, 0))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def _slug(text: str, max_length: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug[:max_length].strip("_") or "prompt"


def describe_box(box) -> str:
    r"""A box as text: `"whole image"`, or `"box (x0, y0)-(x1, y1)"`."""
    if box is None:
        return "whole image"
    (x0, y0), (x1, y1) = box
    return f"box ({x0}, {y0})-({x1}, {y1})"


def token_bars_html(token_attributions, max_rows: int = 77, opacity: float = 1.0) -> str:
    r"""
    HTML/CSS bars of token attributions in percent (no script, no image; tokens escaped).

    Args:
        token_attributions (`TokenAttributions`, *optional*): The `(token, score)` pairs; `None` gives a note.
        max_rows (`int`, *optional*, defaults to 77): Show at most this many tokens.
        opacity (`float`, *optional*, defaults to 1): Opacity of the bars (a box that depends little on the prompt
            has them faded, [`~dependence.bar_opacity`]).
    """
    if token_attributions is None or len(token_attributions) == 0:
        return '<div class="note">No token attributions (no denoising step was traced).</div>'
    labels = getattr(token_attributions, "labels", None) or token_attributions.tokens
    pairs = [(label, value) for label, (_, value) in zip(labels, token_attributions.normalized)][:max_rows]
    peak = max((value for _, value in pairs), default=0.0)
    rows = []
    for token, value in pairs:
        width = 0.0 if peak <= 0 else 200.0 * value / peak
        top = " top" if peak > 0 and value == peak else ""
        rows.append(
            f'<tr><td class="token">{html.escape(token)}</td>'
            f'<td><div class="bar{top}" style="width:{width:.1f}px"></div></td>'
            f'<td class="value">{value:.1f}%</td></tr>'
        )
    style = "" if opacity >= 1 else f' style="opacity:{opacity}"'
    return f'<table class="bars"{style}>' + "".join(rows) + "</table>"


def _word_bars(output: Any) -> str:
    # The prompt's words once (every tokenizer's pieces of a word merged); each encoder's tokens one click away,
    # labelled, where they are not the words themselves.
    words, tokens = getattr(output, "word_attributions", None), output.token_attributions
    whole = getattr(output, "explanation_2d_bounding_box", None) is None
    opacity = bar_opacity(getattr(output, "prompt_dependence", None), whole)
    if not words or tokens is None:
        return token_bars_html(tokens, opacity=opacity)
    if tokens.tokens == words.tokens and getattr(tokens, "encoders", None) is None:
        return token_bars_html(words, opacity=opacity)
    return (
        token_bars_html(words, opacity=opacity)
        + '<details><summary class="meta">each text encoder\'s tokens</summary>'
        + token_bars_html(tokens, opacity=opacity)
        + "</details>"
    )


def _img_tag(image: Image.Image, alt: str, width: int = _DISPLAY_WIDTH) -> str:
    return (
        f'<img class="pixelated" src="{image_to_data_uri(image)}" alt="{html.escape(alt)}" '
        f'style="width:{int(width)}px"/>'
    )


def _save_png(image: Image.Image, out_dir: Path, name: str, written: _Written) -> None:
    path = out_dir / name
    image.save(path, format="PNG")
    written.files.append(path)


def _save_figure(fig, out_dir: Path, name: str, written: _Written) -> None:
    import matplotlib.pyplot as plt

    path = out_dir / name
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    written.files.append(path)


def _group_by_prompt(outputs: Sequence[Any]) -> List[List[Any]]:
    # Outputs of the same prompt, in the order of the prompts' first appearance.
    groups: Dict[str, List[Any]] = {}
    for output in outputs:
        groups.setdefault(prompt_in_words(output), []).append(output)
    return list(groups.values())


def _explanation_card(
    output: Any,
    prefix: str,
    out_dir: Path,
    written: _Written,
    save_plots: bool,
    display_width: int,
    show_image: bool = True,
) -> str:
    box = getattr(output, "explanation_2d_bounding_box", None)
    clip = bool(getattr(output, "num_frames", 0))
    label = region_in_words(output) if clip else describe_box(box)
    image = _as_pil(output.image)
    parts = [f"<h3>{html.escape(label)}</h3>"]
    if getattr(output, "attribution_method", None) and output.stats.denoiser_calls:
        parts.append(f'<div class="meta">{html.escape(what_was_explained(output))}</div>')
    if image is not None:
        _save_png(image, out_dir, f"{prefix}_image.png", written)
        if clip:  # a clip (its picture saved): played, each word's map over it
            parts.append(output.clip_view(width=display_width).to_html())
        elif show_image:
            parts.append(_img_tag(image, f"the image, {label} outlined in red", display_width))
        else:
            parts.append('<div class="meta">The image is the denoising steps\' last (beside).</div>')
    dependence = describe_dependence(getattr(output, "prompt_dependence", None), box is None)
    if dependence:
        parts.append(f'<div class="dependence">{html.escape(dependence)}</div>')
    parts.append(_word_bars(output))
    parts.append(
        '<div class="meaning">Bars: each word\'s share of the scores in this region (they add up to 100% in every '
        "region; the darkest is the largest).</div>"
    )
    if save_plots and output.token_attributions is not None and len(output.token_attributions):
        fig = output.token_attributions.plot(title=f"{output.prompt} ({label})")
        _save_figure(fig, out_dir, f"{prefix}_tokens.png", written)
    for line in readings(output):
        parts.append(f'<div class="meta">{html.escape(line)}</div>')
    saliency = getattr(output, "input_saliency_map", None)
    if saliency is not None:
        overlay = saliency.overlay()
        _save_png(overlay, out_dir, f"{prefix}_saliency.png", written)
        _save_png(saliency.image, out_dir, f"{prefix}_input.png", written)
        name = html.escape(getattr(saliency, "name", "input image"))
        parts.append(f'<div class="meta">{name} / pixel attributions (scaled to their maximum)</div>')
        parts.append(_COLOUR_LEGEND)
        parts.append(
            '<div class="row">'
            + _img_tag(saliency.image, name, display_width // 2)
            + _img_tag(overlay, f"pixel attributions of the {name}", display_width // 2)
            + "</div>"
        )
        if save_plots:
            _save_figure(saliency.plot(), out_dir, f"{prefix}_saliency_plot.png", written)
    return '<div class="card">' + "".join(parts) + "</div>"


def write_report(
    outputs: Sequence[Any],
    out_dir: Union[str, Path],
    title: str = "diffusers-interpret report",
    settings: Optional[Dict[str, Any]] = None,
    file_name: str = REPORT_FILE_NAME,
    save_plots: bool = True,
    display_width: int = _DISPLAY_WIDTH,
    interactive_views: Optional[Dict[str, str]] = None,
) -> Path:
    r"""
    Write one self-contained HTML report of explanations, and their images and plots as PNG files.

    Outputs are grouped by prompt (in order of first appearance). For each prompt the report shows the denoising
    steps as a slider (when the outputs hold them) and, for each explanation of that prompt (the whole image, a box,
    ...), the image with its box drawn in red, the token attributions as bars and, for img2img / inpainting outputs,
    the saliency map of the input image.

    Args:
        outputs (`Sequence[BaseExplanationOutput]`):
            Explanation outputs (e.g. of [`StableDiffusionPipelineExplainer`]); an `ExplanationOutputList` works too.
        out_dir (`str` or `Path`): Directory to write into (created if missing).
        title (`str`, *optional*, defaults to `"diffusers-interpret report"`): Title of the page.
        settings (`Dict[str, Any]`, *optional*): Shown as a table at the top (model, steps, seed, ...).
        file_name (`str`, *optional*, defaults to `"report.html"`): Name of the HTML file.
        save_plots (`bool`, *optional*, defaults to `True`):
            Also write matplotlib bar charts (`.plot()`) of the token attributions as PNG files.
        display_width (`int`, *optional*, defaults to 256): Display width of the images in the page, in pixels
            (small images are scaled up, pixelated).
        interactive_views (`Dict[str, str]`, *optional*):
            Per prompt, the HTML of an interactive view (`output.interactive_view().to_html()`), shown in the
            prompt's section.

    Returns:
        `Path`: The path of the HTML file. PNG files are named `p{prompt}_{slug}_e{explanation}_*.png`.
    """
    outputs = list(outputs)
    if not outputs:
        raise ValueError("`outputs` is empty: nothing to report.")
    wrong = [type(o).__name__ for o in outputs if not (hasattr(o, "token_attributions") and hasattr(o, "image"))]
    if wrong:
        raise TypeError(f"`outputs` must hold explanation outputs (a flat list of them), got {', '.join(wrong)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = _Written()
    body = [f"<h1>{html.escape(title)}</h1>"]
    if settings:
        rows = "".join(
            f"<tr><td>{html.escape(str(key))}</td><td>{html.escape(str(value))}</td></tr>"
            for key, value in settings.items()
        )
        body.append(f'<table class="settings">{rows}</table>')
    methods = list(dict.fromkeys(str(getattr(o, "attribution_method", "") or "") for o in outputs))
    summaries = {str(o.attribution_method): o.method_summary for o in outputs}
    for method in filter(None, methods):
        summary = html.escape(summaries.get(method, ""))
        body.append(f'<p class="method"><strong>method {html.escape(method)}</strong>: {summary}</p>')
    body.append(
        '<p class="note">Each card explains one region of the image, outlined in red (on the region\'s own border '
        "pixels). Its first line says how much the region depends on the prompt at all: the share of it the model "
        f"redraws differently without the prompt (a box at {100 * DEPENDS_THRESHOLD:.0f}% or more depends on it; "
        "below, its bars fade with it). "
        "The bars say which words shape what the prompt does there, as shares that add up to 100% in every "
        "region.</p>"
    )
    for p_index, group in enumerate(_group_by_prompt(outputs), start=1):
        prompt = str(getattr(group[0], "prompt", None) or "")
        prefix = f"p{p_index:02d}_{_slug(prompt)}"
        body.append(f"<h2>{html.escape(prompt_in_words(group[0]))}</h2>")
        row = []
        steps = next((o.all_images_during_generation for o in group if o.all_images_during_generation), None)
        frames = getattr(group[0], "num_frames", 0)
        if steps and frames:  # a clip's steps: a still of its frames at each step
            steps = [contact_sheet(picture, frames) for picture in steps]
        if steps:
            row.append(
                '<div class="card"><h3>denoising steps</h3>' + image_slider_html(steps, width=display_width) + "</div>"
            )
            _save_png(steps[-1], out_dir, f"{prefix}_final.png", written)
        for e_index, output in enumerate(group, start=1):
            # The whole image's card leaves the picture to the steps' card, which ends on it.
            show = not (steps and getattr(output, "explanation_2d_bounding_box", None) is None) or bool(
                getattr(output, "num_frames", 0)
            )
            card = _explanation_card(output, f"{prefix}_e{e_index}", out_dir, written, save_plots, display_width, show)
            row.append(card)
        body.append('<div class="row">' + "".join(row) + "</div>")
        view = (interactive_views or {}).get(prompt)
        if view:
            body.append(
                '<h3>interactive: drag a box on the image, click a token</h3><div class="card">' + view + "</div>"
            )
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8"/>\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    path = out_dir / file_name
    path.write_text(page, encoding="utf-8")
    return path
