import os
import warnings

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*requires torchvision.*")

from diffusers_interpret.testing import make_tiny_pipeline  # noqa: E402

PROMPT = "a red circle on the left and a blue square on the right"


# Smaller than the benchmark's pipeline (32x32 images, one layer per block) to keep the suite fast on 2 cores.
TINY = dict(sample_size=16, layers_per_block=1)
SIZE = 32


@pytest.fixture(scope="session")
def tiny_pipe():
    return make_tiny_pipeline("text2img", **TINY)


@pytest.fixture(scope="session")
def tiny_pipe64():
    # float64, for finite-difference checks that need far more precision than float32 offers.
    return make_tiny_pipeline("text2img", dtype=torch.float64, **TINY)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
