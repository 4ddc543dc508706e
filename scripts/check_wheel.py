r"""
Build the wheel (`python -m build`) and check what a user installing it gets: the package and its shipped toy models,
installed from the wheel alone into a fresh virtual environment, running the demo and an explanation there (not from
the checkout).

    python scripts/check_wheel.py
"""

import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import sys
from pathlib import Path
import diffusers_interpret
where = Path(diffusers_interpret.__file__).resolve()
assert where.is_relative_to(Path(sys.prefix).resolve()), where
import torch
from diffusers_interpret import StableDiffusionPipelineExplainer
from diffusers_interpret.toy import load_toy_flux_pipeline, load_toy_pipeline, load_toy_sd3_pipeline
from diffusers_interpret.toy import load_toy_controlnet_pipeline, load_toy_wan_pipeline
pipe = load_toy_pipeline()
load_toy_pipeline(resolution=64)
load_toy_flux_pipeline()
load_toy_sd3_pipeline()
load_toy_controlnet_pipeline()
load_toy_wan_pipeline()
out = StableDiffusionPipelineExplainer(pipe, verbose=False)(
    "a red circle on the left", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
)
assert out.word_attributions and out.image.size == (32, 32)
print("installed from the wheel:", where.parent, diffusers_interpret.__version__)
"""


def run(*command, **kwargs):
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run(sys.executable, "-m", "build", "--wheel", "--outdir", folder / "dist", ROOT, stdout=subprocess.DEVNULL)
        (wheel,) = (folder / "dist").glob("diffusers_interpret-*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        for model in ("model", "model_64", "model_flux", "model_sd3", "model_controlnet", "model_wan"):
            prefix = f"diffusers_interpret/toy/{model}/"
            assert any(n.startswith(prefix) and n.endswith(".safetensors") for n in names), f"no weights in {prefix}"
        assert not any(n.startswith(("tests/", "benchmarks/", "scripts/")) for n in names)
        venv = folder / "venv"
        run(sys.executable, "-m", "venv", venv)
        python, cli = venv / "bin" / "python", venv / "bin" / "diffusers-interpret"
        # The pinned CPU torch first (an unpinned one would pull a CUDA build), then the wheel and its dependencies.
        run(python, "-m", "pip", "install", "--quiet", "torch==2.13.0")
        run(python, "-m", "pip", "install", "--quiet", wheel)
        env = {"HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
        run(cli, "demo", "--out", folder / "report", "--quiet", env=env, cwd=folder)
        assert (folder / "report" / "report.html").is_file()
        run(python, "-c", CHECK, env=env, cwd=folder)
        size = wheel.stat().st_size / 1e6
        print(f"{wheel.name}: {size:.1f} MB, {len(names)} files; checked in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
