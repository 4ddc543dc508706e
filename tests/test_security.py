"""
Nothing a user types reaches an HTML view as markup or script, and the package writes only where it is told to.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import seeded

import diffusers_interpret
from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.toy import toy_model_available
from diffusers_interpret.views.markup import standalone_page
from diffusers_interpret.views.report import write_report

# Each payload, if it ever ran or became markup, would set window.__pwned, add an element with id "injected", an
# image with src "x", or an inline event handler.
HOSTILE = [
    "</script><script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=2">',
    '" onmouseover="window.__pwned=3" x="',
    "' onfocus='window.__pwned=4' autofocus x='",
    "${window.__pwned=5}",
    "<b id=injected>bold</b>",
    "<!-- <script>window.__pwned=6</script> -->",
    "</style><svg onload=window.__pwned=7>",
    "</textarea><iframe srcdoc='<script>parent.__pwned=8</script>'>",
    "javascript:window.__pwned=9",
    "\u2028\u2029 line separators",
]
# The prompt carries what fits in CLIP's 77 tokens; the titles and settings carry every payload.
PROMPT = "a red circle " + HOSTILE[0] + " <b id=injected> on the left"

CHECK_PAGE = """
const found = [];
if (window.__pwned !== undefined) found.push('script ran: ' + window.__pwned);
if (document.getElementById('injected')) found.push('element injected');
document.querySelectorAll('img[src="x"], iframe, svg[onload]').forEach(e => found.push('element: ' + e.outerHTML));
document.querySelectorAll('*').forEach(e => {
  for (const a of e.attributes) if (a.name.startsWith('on')) found.push('handler ' + a.name + ' on ' + e.tagName);
});
return found;
"""


@pytest.fixture(scope="module")
def outputs(tiny_pipe):
    explainer = StableDiffusionPipelineExplainer(tiny_pipe, verbose=False)
    gradient = explainer(
        PROMPT,
        num_inference_steps=2,
        generator=seeded(0),
        attribution_method="grad_x_input",
        keep_for_reexplanation="graph",
        attention_maps=True,
        explanation_2d_bounding_box=((0, 0), (16, 16)),
    )
    words = explainer(PROMPT, num_inference_steps=2, generator=seeded(0), attribution_method="word_attention")
    return gradient, words


def pages(outputs, directory: Path):
    gradient, words = outputs
    title = " ".join(HOSTILE)
    yield "summary", _save(directory / "summary.html", standalone_page(gradient._repr_html_(), title))
    yield "word summary", _save(directory / "words.html", standalone_page(words._repr_html_(), title))
    yield "slider", gradient.all_images_during_generation.save(directory / "slider.html")
    yield "interactive view", gradient.interactive_view(8, title=title).save(directory / "view.html")
    yield "word interactive view", words.interactive_view(8).save(directory / "word-view.html")
    views = {PROMPT: gradient.interactive_view(8).to_html()}
    settings = {payload: payload for payload in HOSTILE}
    report = write_report(
        [gradient, words], directory / "report", title=title, settings=settings, interactive_views=views
    )
    yield "report", report


def _save(path: Path, page: str) -> Path:
    path.write_text(page, encoding="utf-8")
    return path


def test_hostile_prompts_and_titles_run_nothing_and_inject_nothing(browser, outputs, tmp_path):
    checked = []
    for name, path in pages(outputs, tmp_path):
        page = path.read_text(encoding="utf-8")
        assert name == "slider" or "__pwned" in page, name  # the text is in the page, as text
        browser.get(path.resolve().as_uri())
        found = browser.execute_script(CHECK_PAGE)
        assert found == [], (name, found)
        # The words are shown as text: the visible page holds a payload verbatim.
        assert "window.__pwned=1" in browser.find_element("tag name", "body").text or name == "slider", name
        checked.append(name)
    assert len(checked) == 6


def snapshot(root: Path) -> dict:
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in root.rglob("*")
        if path.is_file()
    }


@pytest.mark.skipif(not toy_model_available(), reason="the shipped toy model's files are missing")
def test_runs_from_a_read_only_install_and_writes_only_where_told(tmp_path):
    # The package as an install lays it out, read-only; the demo and an explanation run from it with an empty home,
    # working and temporary directory, and every file they write lies in the directories they were given.
    site = tmp_path / "site"
    source = Path(diffusers_interpret.__file__).parent
    shutil.copytree(source, site / "diffusers_interpret", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [site, *site.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = snapshot(site)
    home, work, temp, out = (tmp_path / name for name in ("home", "work", "temp", "out"))
    for directory in (home, work, temp):
        directory.mkdir()
    script = f"""
import diffusers_interpret
print(diffusers_interpret.__file__)
from diffusers_interpret.cli import main
assert main(["demo", "--out", {str(out / "demo")!r}, "--steps", "2", "--traced", "1", "--quiet"]) == 0
from diffusers_interpret import explainer_for
from diffusers_interpret.toy import load_toy_pipeline
explainer = explainer_for(load_toy_pipeline(), verbose=False)
output = explainer(
    "a red circle on the left", num_inference_steps=2, attribution_method="grad_x_input",
    keep_for_reexplanation="graph",
)
output.interactive_view(8)
output.token_attributions.plot()
output.all_images_during_generation.gif({str(out / "steps.gif")!r})
"""
    env = dict(
        os.environ,
        PYTHONPATH=str(site),
        HOME=str(home),
        TMPDIR=str(temp),
        MPLCONFIGDIR=str(out / "matplotlib"),
        HF_HOME=str(out / "huggingface"),
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        PYTHONDONTWRITEBYTECODE="1",
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    try:
        assert run.returncode == 0, run.stderr[-3000:]
        assert snapshot(site) == before
        assert run.stdout.splitlines()[0].startswith(str(site))  # it ran the read-only copy
        for directory in (home, work, temp):
            assert list(directory.rglob("*")) == [], directory
        assert (out / "demo" / "report.html").is_file() and (out / "steps.gif").is_file()
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
