r"""
A mkdocs hook for docstrings written as diffusers writes them.

- Cross-references (``[`ClassName`]``, ``[`~module.function`]``, ``[`Class.method`]``) become links to the API
  reference's entries, on every page; a reference that names nothing documented fails the build (`mkdocs build
  --strict` in CI), naming the page and the reference.
- Argument types (``name (`int`, *optional*, defaults to 50):``) are shown as their markdown reads (`int` as code,
  *optional* in italics), not as one literal code span with its backticks and asterisks.
"""

import html
import os
import re
from pathlib import Path
from typing import Dict, List

from mkdocs.exceptions import PluginError

_REFERENCE = re.compile(r"\[<code>(~?[A-Za-z_][\w.]*)</code>\]")
_ANCHOR = re.compile(r'id="(diffusers_interpret\.[\w.]+)"')
_TYPE = re.compile(r"<code>(`[^<]*?)</code>")
_TICKS = re.compile(r"`([^`]+)`")
_STARS = re.compile(r"\*([^*]+)\*")


def _type_markup(match) -> str:
    text = _TICKS.sub(r"<code>\1</code>", match.group(1))
    return _STARS.sub(r"<em>\1</em>", text)


def on_post_page(output, page, config):
    return _TYPE.sub(_type_markup, output)


def _anchors(site: Path) -> Dict[str, str]:
    # Every documented object's id -> the page (relative to the site) it is on.
    anchors = {}
    for page in site.rglob("*.html"):
        for identifier in _ANCHOR.findall(page.read_text(encoding="utf-8")):
            anchors.setdefault(identifier, page.relative_to(site).as_posix())
    return anchors


def _resolve(name: str, anchors: Dict[str, str]):
    # The documented object a reference names: the id ending with it (".X", or a module's ".X" for "~X").
    target = name.lstrip("~")
    found = sorted(identifier for identifier in anchors if identifier.endswith("." + target))
    if not found:  # "~batch.read_records": the package's module path may be deeper than the name says
        head, _, tail = target.rpartition(".")
        found = sorted(i for i in anchors if i.endswith("." + tail) and (not head or f".{head}." in i + "."))
    return min(found, key=len) if found else None


def on_post_build(config, **kwargs):
    site = Path(config["site_dir"])
    anchors = _anchors(site)
    unresolved: List[str] = []
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if "[<code>" not in text:
            continue

        def link(match, page=page):
            identifier = _resolve(html.unescape(match.group(1)), anchors)
            if identifier is None:
                unresolved.append(f"{page.relative_to(site).as_posix()}: [`{match.group(1)}`]")
                return match.group(0)
            href = os.path.relpath(site / anchors[identifier], page.parent).replace(os.sep, "/")
            shown = match.group(1).lstrip("~").rpartition(".")[2] if match.group(1).startswith("~") else match.group(1)
            return f'<a href="{href}#{identifier}"><code>{shown}</code></a>'

        page.write_text(_REFERENCE.sub(link, text), encoding="utf-8")
    if unresolved:
        raise PluginError(
            "Cross-references that name nothing in the API reference (document the object in docs/api.md, or "
            "write its full name):\n  " + "\n  ".join(sorted(set(unresolved)))
        )
