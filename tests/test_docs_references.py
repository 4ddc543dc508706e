r"""The docs build's cross-reference check (`scripts/docs_cross_references.py`): references become links to the API
reference, and one that names nothing documented fails the build."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
from mkdocs.exceptions import PluginError  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "docs_cross_references.py"


@pytest.fixture()
def hook():
    spec = importlib.util.spec_from_file_location("docs_cross_references", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site(tmp_path, page_text):
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "index.html").write_text(
        '<h3 id="diffusers_interpret.outputs.TokenAttributions">x</h3>'
        '<h3 id="diffusers_interpret.explainer.BasePipelineExplainer.__call__">x</h3>'
        '<h3 id="diffusers_interpret.batch.manifest.read_maps">x</h3>'
    )
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "index.html").write_text(page_text)
    return {"site_dir": str(tmp_path)}


def test_references_become_links(hook, tmp_path):
    config = site(
        tmp_path, "see [<code>TokenAttributions</code>], [<code>__call__</code>], [<code>~batch.read_maps</code>]"
    )
    hook.on_post_build(config)
    text = (tmp_path / "methods" / "index.html").read_text()
    assert (
        '<a href="../api/index.html#diffusers_interpret.outputs.TokenAttributions"><code>TokenAttributions</code></a>'
        in text
    )
    assert "#diffusers_interpret.explainer.BasePipelineExplainer.__call__" in text
    assert '#diffusers_interpret.batch.manifest.read_maps"><code>read_maps</code>' in text
    assert "[<code>" not in text


def test_an_unresolved_reference_fails_the_build(hook, tmp_path):
    config = site(tmp_path, "see [<code>NoSuchThing</code>]")
    with pytest.raises(PluginError, match=r"methods/index.html: \[`NoSuchThing`\]"):
        hook.on_post_build(config)
