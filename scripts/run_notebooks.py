r"""
Run the notebooks in `notebooks/` from a fresh kernel, offline, on the shipped toy models.

    python scripts/run_notebooks.py           # run them and store their outputs in place (what is committed)
    python scripts/run_notebooks.py --check   # run them into a temporary folder: CI's check that they still run
    python scripts/run_notebooks.py video     # only notebooks/video.ipynb
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes", "kernels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write the executed notebooks to a temporary folder")
    parser.add_argument("names", nargs="*", help="run only these notebooks (names without .ipynb; default: all)")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    # The stored outputs are what a reader sees: not this machine's paths in tqdm's advice to install ipywidgets,
    # nor transformers' note that torchvision is missing (both about the machine that ran them, not the library).
    env.update(PYTHONWARNINGS="ignore:IProgress not found", TRANSFORMERS_VERBOSITY="error")
    with tempfile.TemporaryDirectory() as scratch:
        # Nor the notes importing torchao or bitsandbytes (when installed) prints: their kernels not loading on this
        # machine (with paths, or offline), torch's note on its enums, diffusers' on its tensor classes.
        startup = Path(scratch) / "ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True)
        quiet = [f"logging.getLogger({name!r}).setLevel(logging.ERROR)" for name in QUIET_LOGGERS]
        (startup / "00-quiet.py").write_text("\n".join(["import logging", *quiet]) + "\n")
        env["DIFFUSERS_VERBOSITY"] = "error"
        env["IPYTHONDIR"] = str(startup.parents[1])
        notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
        unknown = set(args.names) - {notebook.stem for notebook in notebooks}
        if unknown:
            parser.error(f"no such notebooks in notebooks/: {', '.join(sorted(unknown))}")
        for notebook in [n for n in notebooks if not args.names or n.stem in args.names]:
            started = time.perf_counter()
            where = ["--output-dir", scratch] if args.check else ["--inplace"]
            command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", *where]
            command += ["--ExecutePreprocessor.timeout=900", "--log-level=WARN", notebook.name]
            subprocess.run(command, check=True, cwd=NOTEBOOKS, env=env)
            print(f"{notebook.name}: ran in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
