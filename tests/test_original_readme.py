"""The original 0.5.0 README's code blocks, unchanged, on today's diffusers, transformers and torch.

The blocks are read from `tests/compat/README_0.5.0.md` (a copy of the original README) and run in order in one
namespace. Only what the machine lacks is swapped in, outside the code: `from_pretrained` returns a tiny pipeline of
SD 1.4's shape (random weights; VAE factor 8 and 64x64 latents, so the default image is 512x512 and the README's box
fits; attention only below the top resolution, so 512x512 and 448x448 run in seconds on a CPU: the shipped toy's
full-resolution self-attention does not), `.to("cuda")` stays on the CPU where there is no GPU, and `requests.get`
returns a toy scene (or a half mask) instead of downloading. Lines starting with `>>>` run as expressions (their
printed values are the original model's).
"""

import io
import re
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusers_interpret.testing import freeze, make_tiny_components, tiny_vae
from diffusers_interpret.toy import render_scene, sample_scene_spec

README = Path(__file__).parent / "compat" / "README_0.5.0.md"


def code_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    runnable = []
    for block in blocks:
        if block.lstrip().startswith(">>>"):
            block = "\n".join(line[4:] for line in block.splitlines() if line.startswith((">>> ", "... ")))
        runnable.append(block)
    return runnable


@pytest.fixture
def offline_world(monkeypatch, tmp_path):
    import diffusers
    import requests

    components = make_tiny_components(sample_size=64, layers_per_block=1)
    vae = tiny_vae(
        0,
        256,  # the config's sample size is twice this: 512
        block_out_channels=[16, 16, 16, 16],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        norm_num_groups=8,
    )
    freeze(vae)
    components["vae"] = vae

    def from_pretrained(cls, *args, **kwargs):
        pipe = cls(**components, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    for name in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"):
        monkeypatch.setattr(getattr(diffusers, name), "from_pretrained", classmethod(from_pretrained))
    original_to = diffusers.DiffusionPipeline.to

    def to(self, *args, **kwargs):
        if args and args[0] == "cuda" and not torch.cuda.is_available():
            return self
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.DiffusionPipeline, "to", to)

    def get(url, *args, **kwargs):
        if "mask" in url:
            picture = np.zeros((64, 64, 3), np.uint8)
            picture[:, :32] = 255
            picture = Image.fromarray(picture)
        else:
            picture = Image.fromarray(render_scene(sample_scene_spec(0, image_size=64)).image)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return types.SimpleNamespace(content=buffer.getvalue(), status_code=200)

    monkeypatch.setattr(requests, "get", get)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_original_readme_runs_unchanged(offline_world):
    blocks = code_blocks()
    assert len(blocks) >= 12  # text-to-image, img2img and inpainting examples
    namespace = {}
    for index, block in enumerate(blocks):
        try:
            exec(compile(block, f"README block {index}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README block {index} failed:\n{block}") from error
        output = namespace.get("output")
        if output is None:
            continue
        for pairs in (output.token_attributions, output.token_attributions.normalized):
            assert all(isinstance(t, str) and np.isfinite(s) for t, s in pairs)
        assert sum(s for _, s in output.token_attributions.normalized) == pytest.approx(100, abs=0.01)
    # The last example (inpainting): pixel attributions of the 448x448 init image as today's inpainting pipeline
    # processes it (resized to the model's default 512x512, as `pipe(...)` does), a GIF written where it was asked.
    assert namespace["output"].pixel_attributions.shape == (512, 512)
    assert namespace["output"].pixel_attributions.normalized.sum() == pytest.approx(100, rel=1e-3)
    assert (offline_world / "diffusion_process.gif").is_file()
