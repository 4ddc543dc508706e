import os
import shutil
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


@pytest.fixture
def one_thread():
    # One torch thread for the test: the toy models' layers are too small to gain from threads (which stall on a busy
    # 2-core machine), and the behaviour cases were recorded with one thread (the same reduction order, the same
    # rounding).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _find(candidates):
    for candidate in candidates:
        path = shutil.which(candidate) if os.sep not in candidate else candidate
        if path and os.path.exists(path) and os.access(path, os.X_OK):
            return path
    return None


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    # A headless Chromium driven by Selenium; skipped, with the reason, where it or its driver is missing.
    chromium = _find(
        [os.environ.get("CHROMIUM", ""), "/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"]
    )
    chromedriver = _find([os.environ.get("CHROMEDRIVER", ""), "/usr/bin/chromedriver", "chromedriver"])
    if chromium is None or chromedriver is None:
        pytest.skip(
            "No browser found: install Chromium and its driver (Debian: `apt-get install chromium chromium-driver`)."
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("No browser driver: `pip install selenium` to run the browser tests.")

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
