r"""
A clip's player: its frames played in the page (no GIF, no video file), with a word's map over them. Self-contained
HTML (frames and maps inlined), for notebooks, the report and a saved file.
"""

import html
import uuid
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from .markup import image_to_data_uri, json_for_script, show_html, standalone_page
from .summary import prompt_in_words

# Overlays are kept at most this wide (the maps are smooth: the browser stretches them over the frame).
OVERLAY_WIDTH = 96


def overlay_frames(maps: np.ndarray, scale: float) -> List[Image.Image]:
    r"""One word's (frames, H, W) map as RGBA frames in matplotlib's jet colour map, `scale` the value shown at full
    colour (one scale for every word, so that a word read little stays dim)."""
    from matplotlib import colormaps

    frames, height, width = maps.shape
    step = max(1, int(np.ceil(width / OVERLAY_WIDTH)))
    values = np.clip(maps[:, ::step, ::step] / max(scale, 1e-12), 0, 1)
    colours = (colormaps["jet"](values) * 255).round().astype(np.uint8)
    return [Image.fromarray(colour, "RGBA") for colour in colours]


def frame_data_uri(frame: Image.Image) -> str:
    # Frames of real clips are large: JPEG above 128 pixels (the tiny and toy clips stay exact, as PNG).
    return image_to_data_uri(frame.convert("RGB"), "PNG" if max(frame.size) <= 128 else "JPEG")


def clip_player_html(
    frames: Sequence[Image.Image],
    overlays: Optional[Dict[str, List[Image.Image]]] = None,
    fps: float = 8.0,
    width: Optional[int] = None,
    labels: Optional[Sequence[str]] = None,
) -> str:
    r"""
    A self-contained HTML player of `frames`: play and pause, a slider over the frames, and a button per word of
    `overlays` (each word's map, one RGBA image per frame) that lays its map over the playing clip.

    Args:
        frames (`Sequence[PIL.Image.Image]`): The clip's frames.
        overlays (`Dict[str, List[PIL.Image.Image]]`, *optional*): Per word, its map's frames.
        fps (`float`, *optional*, defaults to 8): Frames per second when playing.
        width (`int`, *optional*): Display width in pixels (at least 256 by default, pixelated).
        labels (`Sequence[str]`, *optional*): A label per frame (`"frame 3 (of 0 to 8)"` by default: frames are
            counted from 0, as `explanation_frames` counts them).
    """
    if not frames:
        return "<div>No frames.</div>"
    uid = "di-clip-" + uuid.uuid4().hex[:12]
    count = len(frames)
    display_width = int(width or max(256, frames[0].width))
    display_height = int(round(display_width * frames[0].height / frames[0].width))
    uris = [frame_data_uri(frame) for frame in frames]
    words = {word: [image_to_data_uri(image) for image in images] for word, images in (overlays or {}).items()}
    labels = list(labels) if labels is not None else [f"frame {k} (of 0 to {count - 1})" for k in range(count)]
    buttons = "".join(
        f'<button type="button" data-word="{k}" style="margin:2px">{html.escape(word)}</button>'
        for k, word in enumerate(words)
    )
    if words:
        buttons = '<button type="button" data-word="-1" style="margin:2px;font-weight:bold">no map</button>' + buttons
    delay = max(20, int(round(1000 / max(float(fps), 0.1))))
    return f"""<div id="{uid}" style="font-family:sans-serif;font-size:12px;display:inline-block">
<div style="position:relative;width:{display_width}px;height:{display_height}px">
<img id="{uid}-frame" src="{uris[0]}" alt="frame 1"
 style="position:absolute;left:0;top:0;width:{display_width}px;height:{display_height}px;image-rendering:pixelated"/>
<img id="{uid}-map" alt="" style="position:absolute;left:0;top:0;width:{display_width}px;height:{display_height}px;
 opacity:0.5;display:none"/>
</div>
<div style="margin-top:4px"><button type="button" id="{uid}-play">play</button>
<input id="{uid}-range" type="range" min="0" max="{count - 1}" value="0" step="1"
 style="width:{max(80, display_width - 60)}px;vertical-align:middle"/></div>
<div id="{uid}-label">{html.escape(labels[0])}</div>
<div id="{uid}-words">{buttons}</div>
<script>
(function() {{
  var frames = {json_for_script(uris)};
  var labels = {json_for_script(labels)};
  var words = {json_for_script(list(words.values()))};
  var root = document.getElementById("{uid}");
  var frame = document.getElementById("{uid}-frame"), map = document.getElementById("{uid}-map");
  var range = document.getElementById("{uid}-range"), play = document.getElementById("{uid}-play");
  var label = document.getElementById("{uid}-label");
  var word = -1, timer = null;
  function show(k) {{
    range.value = k; frame.src = frames[k]; label.textContent = labels[k];
    if (word >= 0) {{ map.src = words[word][k]; map.style.display = "block"; }} else {{ map.style.display = "none"; }}
  }}
  range.addEventListener("input", function() {{ show(parseInt(this.value)); }});
  play.addEventListener("click", function() {{
    if (timer !== null) {{ clearInterval(timer); timer = null; play.textContent = "play"; return; }}
    play.textContent = "pause";
    timer = setInterval(function() {{ show((parseInt(range.value) + 1) % frames.length); }}, {delay});
  }});
  root.querySelectorAll("[data-word]").forEach(function(button) {{
    button.addEventListener("click", function() {{
      word = parseInt(this.getAttribute("data-word"));
      root.querySelectorAll("[data-word]").forEach(function(b) {{ b.style.fontWeight = "normal"; }});
      this.style.fontWeight = "bold";
      show(parseInt(range.value));
    }});
  }});
}})();
</script>
</div>"""


def contact_sheet(picture: Image.Image, num_frames: int, most: int = 16) -> Image.Image:
    r"""A clip's picture (its frames top to bottom) as a grid of at most `most` of its frames, evenly spaced (the
    first and the last among them), in rows of up to four: a still of the whole clip."""
    height = picture.height // num_frames
    chosen = sorted(
        {round(k * (num_frames - 1) / max(1, min(most, num_frames) - 1)) for k in range(min(most, num_frames))}
    )
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    sheet = Image.new("RGB", (columns * picture.width, rows * height), "white")
    for index, frame in enumerate(chosen):
        tile = picture.crop((0, frame * height, picture.width, (frame + 1) * height))
        sheet.paste(tile, ((index % columns) * picture.width, (index // columns) * height))
    return sheet


class ClipView:
    r"""
    The player of an explained clip (`output.clip_view()`): shown inline in a notebook, `save(path)` writes it as a
    page, `to_html()` gives its markup.
    """

    def __init__(self, markup: str, title: str):
        self.markup = markup
        self.title = title

    def to_html(self) -> str:
        return self.markup

    def _repr_html_(self) -> str:
        return self.markup

    def show(self) -> None:
        show_html(self.markup, self.title)

    def save(self, path) -> str:
        r"""Write the player as a self-contained page; returns the path."""
        with open(path, "w", encoding="utf-8") as file:
            file.write(standalone_page(self.markup, self.title))
        return str(path)


def word_frame_maps(output) -> Dict[str, np.ndarray]:
    r"""Each word's (frames, H, W) map of a video explanation: its tokens' word maps (or attention maps) summed, in
    the prompt's order; empty where the call recorded no maps."""
    if output.word_maps is not None:
        maps = [np.asarray(values) for values in output.word_maps]
    elif output.attention_maps is not None:
        # Tokens past the recorded maps (a pooled vector's, e.g. HunyuanVideo's CLIP) have none.
        recorded = np.asarray(output.attention_maps.maps[output.image_index])
        maps = [recorded[p] if p < len(recorded) else None for p in output.token_positions]
    else:
        return {}
    result = {}
    words = output.word_attributions.labels if output.word_attributions else []  # "a (T5)" where texts differ
    for word, tokens in zip(words, output.word_tokens):
        found = [maps[t] for t in tokens if maps[t] is not None]
        if not found:
            continue
        key, n = word, 2
        while key in result:  # a word said twice keeps both
            key, n = f"{word} ({n})", n + 1
        result[key] = output.frame_maps(np.sum(found, axis=0))
    return result


def clip_view(output, fps: float = 8.0, width: Optional[int] = None) -> ClipView:
    r"""The player of a video explanation: its frames (the box drawn on the explained ones), each word's map over
    them (one colour scale for every word)."""
    maps = word_frame_maps(output)
    scale = max((float(m.max()) for m in maps.values()), default=1.0)
    overlays = {word: overlay_frames(m, scale) for word, m in maps.items()}
    frames = [frame if isinstance(frame, Image.Image) else _as_picture(frame) for frame in output.frames]
    markup = clip_player_html(frames, overlays, fps=fps, width=width)
    return ClipView(markup, f"{prompt_in_words(output)}: the clip and its words' maps")


def _as_picture(frame) -> Image.Image:
    array = np.asarray(frame, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    return Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8))
