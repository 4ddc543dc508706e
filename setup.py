import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
# The version lives in one place: the package's __init__.py.
version = re.search(r'^__version__ = "([^"]+)"', (here / "diffusers_interpret" / "__init__.py").read_text(), re.M)[1]
# `diffusers-interpret batch` / `explain_dataset`: processes, Parquet shards, saved datasets as input.
BATCH_REQUIREMENTS = ["accelerate>=0.26", "pyarrow>=12", "datasets>=2.14"]
QUANTIZATION_REQUIREMENTS = ["torchao>=0.12", "gguf>=0.10", "bitsandbytes>=0.48"]
# PRXPipeline cleans every prompt with ftfy (diffusers imports it only where it is installed).
PRX_REQUIREMENTS = ["ftfy>=6"]
requirements = [line.strip() for line in (here / "requirements.txt").read_text().splitlines() if line.strip()]

setup(
    name="diffusers-interpret",
    version=version,
    description="Explain the images made by 🤗 diffusers pipelines: token and pixel attributions, attention maps",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "scripts")),
    include_package_data=True,
    package_data={
        "diffusers_interpret": [
            "toy/model/**/*",
            "toy/model/*",
            "toy/model_64/**/*",
            "toy/model_64/*",
            "toy/model_flux/**/*",
            "toy/model_flux/*",
            "toy/model_sd3/**/*",
            "toy/model_sd3/*",
            "toy/model_controlnet/**/*",
            "toy/model_controlnet/*",
            "toy/model_wan/**/*",
            "toy/model_wan/*",
        ]
    },
    install_requires=requirements,
    extras_require={
        "batch": BATCH_REQUIREMENTS,
        "test": ["pytest>=7", "scipy>=1.10", "ruff>=0.5", "selenium>=4.10", "nbconvert>=7", "ipykernel>=6", "h5py>=3"]
        + BATCH_REQUIREMENTS
        + QUANTIZATION_REQUIREMENTS
        + PRX_REQUIREMENTS,
        # diffusers' quantization backends that run on the CPU (tests/test_quantization.py).
        "quantization": QUANTIZATION_REQUIREMENTS,
        "prx": PRX_REQUIREMENTS,
        # `segmentation.imagenet_segmentation` reads ImageNet-Segmentation's MATLAB v7.3 file.
        "segmentation": ["h5py>=3"],
        "docs": ["mkdocs-material>=9.5", "mkdocstrings[python]>=0.25"],
        "release": ["build>=1"],
    },
    entry_points={"console_scripts": ["diffusers-interpret=diffusers_interpret.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
