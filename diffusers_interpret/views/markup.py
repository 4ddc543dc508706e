"""Self-contained HTML: images inlined as base64, no files beside it, everything escaped."""

import base64
import html
import io
import json
import uuid
from typing import Optional, Sequence

from PIL import Image

from ..progress import in_notebook

# One bar style for every view (report cards, notebook card, interactive view, `.plot()`): red, the largest dark red.
BAR, BAR_TOP = "#d62728", "#8b0000"
# matplotlib's "jet" (the maps' colour map) as a CSS gradient, for the legends under the overlays.
JET_GRADIENT = "linear-gradient(to right,#00007f,#0000ff,#007fff,#00ffff,#7fff7f,#ffff00,#ff7f00,#ff0000,#7f0000)"


def colour_legend(text: str, width: int = 120) -> str:
    r"""A small HTML colour scale (jet, low to high) with `text` around it (`{scale}` marks where it goes)."""
    scale = (
        f'<span style="display:inline-block;width:{width}px;height:8px;vertical-align:middle;'
        f'background:{JET_GRADIENT}"></span>'
    )
    return text.format(scale=scale)


def plain_text(text: str) -> str:
    r"""`text` as matplotlib should draw it: as written, never as mathtext (a prompt with two `$` is not math)."""
    return str(text).replace("$", r"\$")


def image_to_data_uri(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def json_for_script(value) -> str:
    """JSON that is safe inside a `<script>` element, whatever strings it holds (no `</script>` can close it)."""
    return (
        json.dumps(value)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def image_slider_html(
    images: Sequence[Image.Image], labels: Optional[Sequence[str]] = None, width: Optional[int] = None
) -> str:
    r"""
    A self-contained HTML slider over `images`: one `<img>`, a range input and a few lines of inline JavaScript.

    Works inline in Jupyter, Colab and VS Code notebooks and as a saved file: the images are inlined as data URIs.
    """
    if not images:
        return "<div>No images.</div>"
    uid = "di-" + uuid.uuid4().hex[:12]
    uris = [image_to_data_uri(image) for image in images]
    labels = list(labels) if labels is not None else [f"step {i + 1}/{len(images)}" for i in range(len(images))]
    display_width = width or max(256, images[0].width)
    last = len(images) - 1
    return f"""<div id="{uid}" style="font-family:sans-serif;display:inline-block">
<img id="{uid}-img" src="{uris[-1]}" style="width:{int(display_width)}px;image-rendering:pixelated;display:block"/>
<input id="{uid}-range" type="range" min="0" max="{last}" value="{last}" step="1"
 style="width:{int(display_width)}px"/>
<div id="{uid}-label" style="font-size:12px">{html.escape(labels[-1])}</div>
<script>
(function() {{
  var uris = {json_for_script(uris)};
  var labels = {json_for_script(labels)};
  var range = document.getElementById("{uid}-range");
  range.addEventListener("input", function() {{
    document.getElementById("{uid}-img").src = uris[this.value];
    document.getElementById("{uid}-label").textContent = labels[this.value];
  }});
}})();
</script>
</div>"""


def standalone_page(markup: str, title: str) -> str:
    r"""A whole HTML page around `markup` (nothing else needed beside it)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        f'<link rel="icon" href="data:,"/><title>{html.escape(title)}</title></head>\n'
        f"<body>\n{markup}\n</body></html>\n"
    )


def show_html(markup: str, what: str) -> None:
    r"""
    Display HTML once: inline in a notebook; elsewhere (a script, a terminal) written to a new temporary page whose
    path is printed, since nothing can be displayed there. Returns `None`, so a notebook shows it exactly once.
    """
    if in_notebook():
        from IPython.display import HTML, display

        display(HTML(markup))
        return None
    import tempfile

    handle, name = tempfile.mkstemp(prefix="diffusers-interpret-", suffix=".html")
    with open(handle, "w", encoding="utf-8") as file:
        file.write(standalone_page(markup, what))
    print(f"Not in a notebook: the {what} is saved to {name} (open it in a browser).")
    return None


def show_figure(figure, what: str) -> None:
    r"""Display a matplotlib figure once: inline in a notebook; elsewhere saved to a new temporary PNG whose path is
    printed. Returns `None`."""
    if in_notebook():
        from IPython.display import display

        display(figure)
        return None
    import tempfile

    handle, name = tempfile.mkstemp(prefix="diffusers-interpret-", suffix=".png")
    with open(handle, "wb") as file:
        figure.savefig(file, format="png", dpi=100)
    print(f"Not in a notebook: the {what} is saved to {name}.")
    return None
