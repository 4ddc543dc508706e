"""Self-contained HTML: images inlined as base64, no files beside it, everything escaped."""

import base64
import html
import io
import json
import uuid
from typing import Optional, Sequence

from PIL import Image


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


def display_html(markup: str):
    """Show HTML inline when running under IPython; return the `IPython.display.HTML` object either way."""
    from IPython.display import HTML, display

    obj = HTML(markup)
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            display(obj)
    except ImportError:  # pragma: no cover - IPython is a dependency
        pass
    return obj
