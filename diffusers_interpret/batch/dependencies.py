"""The batch extra's packages (accelerate, pyarrow, datasets), imported on first use with an install hint."""

import importlib

INSTALL_HINT = 'pip install "diffusers-interpret[batch]"'


def require(module: str):
    r"""
    Import `module` (one of the `batch` extra's packages), or raise an `ImportError` that says how to install it.

    Args:
        module (`str`): The module's name, e.g. `"pyarrow.parquet"`.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"explaining many prompts needs {module.split('.')[0]}: {INSTALL_HINT}") from error
