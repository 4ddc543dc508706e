"""Maps made at the denoiser's attention grid, given the generated image's own edges (joint bilateral filtering)."""

import math
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .checks import positive_int, positive_number

ArrayLike = Union[np.ndarray, torch.Tensor]


def _guide_tensor(image, size) -> torch.Tensor:
    # The guide image as a float32 (3, H, W) tensor in [0, 1], checked against the maps' size (H, W).
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    elif isinstance(image, (np.ndarray, torch.Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if array.ndim != 3 or array.shape[-1] not in (1, 3):
            raise ValueError(f"`image` must be (H, W, 3) or (H, W, 1), got shape {tuple(array.shape)}.")
        if np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float32) / np.iinfo(array.dtype).max
        else:
            array = array.astype(np.float32)
            if array.size and (array.min() < 0 or array.max() > 1):
                raise ValueError(
                    "A float `image` must be in [0, 1] (as `output_type='np'` gives it); pass uint8 for 0-255."
                )
        array = np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array
    else:
        raise TypeError(f"`image` must be a PIL image or an (H, W, 3) array, got {type(image).__name__}.")
    if tuple(array.shape[:2]) != tuple(size):
        raise ValueError(
            f"`image` is {array.shape[1]}x{array.shape[0]} but the maps are {size[1]}x{size[0]}: pass the image the "
            "maps were made for (e.g. `output.image`)."
        )
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def edge_aware_maps(
    maps: ArrayLike,
    image,
    cell_size: float,
    range_sigma: float = 0.1,
    iterations: int = 2,
    max_elements: int = 2**25,
) -> ArrayLike:
    r"""
    Maps (e.g. attention or word maps upsampled bilinearly from the denoiser's grid) filtered along the generated
    image's own edges: each pixel becomes the average of the map over its neighbourhood, each neighbour weighted by
    its distance (a Gaussian of `cell_size` pixels, one attention cell) and by how alike the two pixels' colours are
    in the image (a Gaussian of `range_sigma` in [0, 1] RGB), repeated `iterations` times (a joint bilateral filter,
    Kopf et al., 2007; Petschnigg et al., 2004). The map's values still come from the model; where a region ends
    comes from the image: a word's attention that falls on most of an object spreads to the whole object and stops at
    its outline instead of fading across an attention cell (4 pixels on the toy model, 8 on SD 1.x/2.x at 512x512, 16
    on SDXL, SD3 and Flux).

    Read with care: the result says which regions of the image the map points at, not that the model attends
    pixel-accurately. On textured images the range weights split regions along colour changes inside one object.

    Args:
        maps (`np.ndarray` or `torch.Tensor`): `(H, W)` or `(N, H, W)` float maps at the image's size.
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): The image the maps belong to, `(H, W, 3)` or `(H,
            W, 1)`: integers (uint8 0-255, ...) or floats in [0, 1].
        cell_size (`float`): Pixels per cell of the finest grid the maps were made at (the spatial Gaussian's sigma;
            [`AttentionMaps`] carries it as `cell_size`).
        range_sigma (`float`, *optional*, defaults to 0.1): How different two colours may be and still share a
            region, in [0, 1] RGB units.
        iterations (`int`, *optional*, defaults to 2): Passes of the filter.
        max_elements (`int`, *optional*, defaults to 2**25): About the largest intermediate tensor, in elements (rows
            are filtered in bands of about this size), for memory.

    Returns:
        The filtered maps, the same shape, kind (`np.ndarray` or `torch.Tensor`), floating dtype and device as
        `maps` (computed in float32 on the CPU).
    """
    positive_number(cell_size, "cell_size")
    positive_number(range_sigma, "range_sigma")
    positive_int(iterations, "iterations", allow_none=False)
    positive_int(max_elements, "max_elements", allow_none=False)
    as_numpy = isinstance(maps, np.ndarray)
    values = torch.from_numpy(np.ascontiguousarray(maps)) if as_numpy else maps
    if not isinstance(values, torch.Tensor) or values.ndim not in (2, 3) or not values.is_floating_point():
        raise ValueError("`maps` must be an (H, W) or (N, H, W) float array or tensor.")
    shape, dtype, device = values.shape, values.dtype, values.device
    values = values.detach().cpu().float().reshape(-1, *shape[-2:])
    count, height, width = values.shape
    guide = _guide_tensor(image, (height, width))

    # Neighbours out to two cells, every half cell (a dilated window): as many per pixel at any image size.
    step = max(1, round(cell_size / 2))
    reach = max(1, math.ceil(2 * cell_size / step))
    radius = reach * step
    side = 2 * reach + 1
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32) * step
    spatial = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * cell_size**2)).reshape(-1, 1)
    padded_guide = F.pad(guide[None], (radius,) * 4, mode="replicate")[0]
    band = max(1, max_elements // (side * side * width * max(count, guide.shape[0])))

    def weights(top: int, bottom: int) -> torch.Tensor:
        # (side*side, rows*width): spatial weight times colour likeness of each neighbour to the centre pixel.
        rows = padded_guide[:, top : bottom + 2 * radius]
        neighbours = F.unfold(rows[None], side, dilation=step).reshape(guide.shape[0], side * side, -1)
        centres = guide[:, top:bottom].reshape(guide.shape[0], 1, -1)
        return spatial * torch.exp(-((neighbours - centres) ** 2).sum(0) / (2 * range_sigma**2))

    bands = [(top, min(height, top + band)) for top in range(0, height, band)]
    # The weights do not change between passes: kept when they fit the memory bound, else made again per band.
    keep = iterations > 1 and side * side * height * width <= max_elements
    band_weights = [weights(top, bottom) for top, bottom in bands] if keep else None
    for _ in range(iterations):
        padded = F.pad(values[None], (radius,) * 4, mode="replicate")[0]
        result = torch.empty_like(values)
        for index, (top, bottom) in enumerate(bands):
            weight = band_weights[index] if band_weights is not None else weights(top, bottom)
            neighbours = F.unfold(padded[None, :, top : bottom + 2 * radius], side, dilation=step)
            neighbours = neighbours.reshape(count, side * side, -1)
            filtered = (neighbours * weight).sum(1) / weight.sum(0)
            result[:, top:bottom] = filtered.reshape(count, bottom - top, width)
        values = result
    values = values.reshape(shape)
    return values.numpy().astype(maps.dtype, copy=False) if as_numpy else values.to(device=device, dtype=dtype)


def image_regions(image, tolerance: float = 0.1) -> np.ndarray:
    r"""
    The image's regions of like colour: pixels joined wherever two 4-neighbours' colours differ by at most `tolerance`
    in every channel ([0, 1] RGB), and joined regions chained (a flood fill). Returns (H, W) integer labels.

    Args:
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): `(H, W, 3)` or `(H, W, 1)`, as
            [`edge_aware_maps`] takes it.
        tolerance (`float`, *optional*, defaults to 0.1): The largest step of colour within a region.
    """
    positive_number(tolerance, "tolerance")
    size = (image.height, image.width) if isinstance(image, Image.Image) else tuple(np.asarray(image).shape[:2])
    guide = _guide_tensor(image, size).numpy()
    height, width = size
    across = np.abs(np.diff(guide, axis=2)).max(0) <= tolerance  # (H, W - 1): joined to the right
    down = np.abs(np.diff(guide, axis=1)).max(0) <= tolerance  # (H - 1, W): joined below
    labels = np.arange(height * width).reshape(height, width)
    while True:
        # Each pixel takes the smallest label among itself and its joined neighbours, then jumps to its label's label.
        new = labels.copy()
        pair = np.minimum(labels[:, 1:], labels[:, :-1])
        new[:, 1:] = np.where(across, np.minimum(new[:, 1:], pair), new[:, 1:])
        new[:, :-1] = np.where(across, np.minimum(new[:, :-1], pair), new[:, :-1])
        pair = np.minimum(labels[1:], labels[:-1])
        new[1:] = np.where(down, np.minimum(new[1:], pair), new[1:])
        new[:-1] = np.where(down, np.minimum(new[:-1], pair), new[:-1])
        new = new.ravel()[new.ravel()].reshape(height, width)
        if np.array_equal(new, labels):
            return labels
        labels = new


def region_maps(maps: ArrayLike, image, tolerance: float = 0.1, above_median: bool = True) -> ArrayLike:
    r"""
    Maps given the image's regions: each map replaced, in each region of like colour ([`image_regions`]), by its mean
    there, and (`above_median`) less its median over the image, floored at 0: what the region holds of the map above
    the level the map has almost everywhere (a word's attention keeps a floor over much of the image). Where the map
    points is the model's; which pixels make up a region is the image's. On images of flat colours (the toy models'
    scenes) the regions are the objects and the background; on photographs a region follows colour, so it can split
    an object along its texture and join neighbours of like colour.

    Args:
        maps (`np.ndarray` or `torch.Tensor`): `(H, W)` or `(N, H, W)` float maps at the image's size.
        image: The image the maps belong to (see [`edge_aware_maps`]).
        tolerance (`float`, *optional*, defaults to 0.1): See [`image_regions`].
        above_median (`bool`, *optional*, defaults to `True`): Subtract each map's median and floor at 0.

    Returns:
        The maps, region by region: the same shape, kind, floating dtype and device as `maps`.
    """
    as_numpy = isinstance(maps, np.ndarray)
    values = torch.from_numpy(np.ascontiguousarray(maps)) if as_numpy else maps
    if not isinstance(values, torch.Tensor) or values.ndim not in (2, 3) or not values.is_floating_point():
        raise ValueError("`maps` must be an (H, W) or (N, H, W) float array or tensor.")
    shape, dtype, device = values.shape, values.dtype, values.device
    flat = values.detach().cpu().double().reshape(-1, shape[-2] * shape[-1]).numpy()
    labels = image_regions(image, tolerance).ravel()
    counts = np.bincount(labels, minlength=labels.size)
    averaged = np.stack(
        [np.bincount(labels, weights=row, minlength=labels.size)[labels] / counts[labels] for row in flat]
    )
    if above_median:
        averaged = np.maximum(averaged - np.median(averaged, axis=1, keepdims=True), 0.0)
    result = torch.from_numpy(averaged.reshape(shape))
    return result.numpy().astype(maps.dtype, copy=False) if as_numpy else result.to(device=device, dtype=dtype)
