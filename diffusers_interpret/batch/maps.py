"""Per-token maps stored compactly: downsampled to a small square, float16 bytes in the row, and read back."""

from typing import Any, Dict, Mapping, Optional

import numpy as np


def compact_maps(output, size: int) -> Optional[Dict[str, Any]]:
    r"""
    The output's per-token maps (`output.word_maps`, `(tokens, H, W)`, from the `word_attention` and concept
    methods) averaged down to `size` x `size` (never up), as `{"maps": float16 bytes, "map_shape": [tokens, h, w]}`;
    `None` for methods without maps.
    """
    maps = getattr(output, "word_maps", None)
    if maps is None:
        return None
    import torch

    values = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    height, width = values.shape[-2:]
    target = (min(size, height), min(size, width))
    small = torch.nn.functional.adaptive_avg_pool2d(values[None], target)[0].numpy().astype(np.float16)
    return {"maps": small.tobytes(), "map_shape": list(small.shape)}


def read_maps(row: Mapping[str, Any]) -> Optional[np.ndarray]:
    r"""
    A row's per-token maps as a `(tokens, h, w)` float16 array (aligned with its `tokens`), or `None` when it has
    none. `row` is a row of the output as a dict or a pandas row.
    """
    data, shape = row.get("maps"), row.get("map_shape")
    if data is None or shape is None:
        return None
    return np.frombuffer(data, dtype=np.float16).reshape([int(value) for value in shape])
