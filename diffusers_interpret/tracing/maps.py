r"""
What the attention recorders record: cross- (or joint-) attention maps per token, and concept maps. Data only: the
pictures of them are drawn by `views/`.
"""

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..edge_aware import edge_aware_maps


def _normalize01(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros_like(array, dtype=np.float32)
    return (array - low) / (high - low)


@dataclass
class AttentionMapsData:
    r"""
    Cross-attention maps of generated images, one per image and token: what an attention recorder records (the
    pictures of them are [`~views.attention_maps.AttentionMaps`]'s).

    Args:
        maps (`torch.Tensor`):
            Float32 tensor of shape (num_images, num_tokens, H, W): attention probabilities averaged over heads, the
            recorded layers (each upsampled bilinearly to the image size) and the recorded steps. At each pixel the
            maps of all tokens sum to 1. `num_tokens` is the text encoder's sequence length (77 for CLIP), padding
            included; position 0 is the start token.
        per_step (`torch.Tensor`, *optional*):
            Float32 tensor of shape (num_steps, num_images, num_tokens, H, W), the same maps for each recorded step
            (only with `keep_per_step=True`); `per_step.mean(0)` equals `maps`.
        steps (`List[int]`): Indices of the recorded denoiser calls, in order.
        layers (`List[str]`): Names of the recorded cross-attention layers (as in `unet.attn_processors`).
        cell_size (`float`, *optional*): Pixels per cell of the finest attention grid recorded (what
            [`~AttentionMaps.edge_aware`] filters over).
        excluded_share (`torch.Tensor`, *optional*): (num_images, H, W), for the transformer families: at each pixel,
            the share of the image's attention to text that went to text positions other than the prompt's own
            tokens (padding, end and template tokens: attention sinks), averaged like the maps. Those positions are
            left out of `maps`: at each layer and head they were taken out of the softmax (the image's own keys and
            the prompt's tokens share it), so the other positions' maps are 0 and at each pixel the prompt tokens'
            maps sum to the share of attention the pixel pays the prompt rather than the image (1 for a
            cross-attention, whose keys are the text's alone).
        per_layer (`Dict[str, torch.Tensor]`, *optional*): With `keep_per_layer=True`: each recorded layer's own
            maps, (steps, num_images, num_tokens, h, w) at the layer's own attention grid (not upsampled), by layer
            name, over the heads chosen; `maps` is their upsampled mean over layers and steps.
    """

    maps: torch.Tensor
    per_step: Optional[torch.Tensor] = None
    steps: Optional[List[int]] = None
    layers: Optional[List[str]] = None
    cell_size: Optional[float] = None
    excluded_share: Optional[torch.Tensor] = None
    per_layer: Optional[Dict[str, torch.Tensor]] = None

    @property
    def num_images(self) -> int:
        return int(self.maps.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.maps.shape[1])

    @property
    def size(self) -> Tuple[int, int]:
        r"""The image size `(height, width)` of the maps."""
        return int(self.maps.shape[2]), int(self.maps.shape[3])

    def rows(self, image_index: int, positions: Sequence[int]) -> torch.Tensor:
        r"""The maps of image `image_index` at token `positions`, (len(positions), H, W); zeros for a position past
        the maps' tokens (a token that conditions through a pooled vector only, e.g. Flux's CLIP tokens)."""
        maps = self.maps[image_index]
        out = maps.new_zeros((len(positions), *maps.shape[1:]))
        inside = [k for k, position in enumerate(positions) if position < maps.shape[0]]
        if inside:
            out[inside] = maps[[positions[k] for k in inside]]
        return out

    def of_image(self, image_index: int) -> "AttentionMapsData":
        r"""
        The maps of one image of the batch.

        Args:
            image_index (`int`): Which image of the batch (negative counts from the end).

        Returns:
            Maps of the same class, of that image only (its `per_step` and `per_layer` too, when kept).
        """
        self._check_index("image_index", image_index, self.num_images)
        index = slice(image_index, image_index + 1 if image_index != -1 else None)
        per_step = None if self.per_step is None else self.per_step[:, index]
        excluded = None if self.excluded_share is None else self.excluded_share[index]
        per_layer = None if self.per_layer is None else {k: v[:, index] for k, v in self.per_layer.items()}
        return dataclasses.replace(
            self, maps=self.maps[index], per_step=per_step, excluded_share=excluded, per_layer=per_layer
        )

    def edge_aware(
        self, images, positions: Optional[Sequence[int]] = None, range_sigma: float = 0.1, iterations: int = 2
    ) -> "AttentionMapsData":
        r"""
        The maps given the generated images' own edges ([`edge_aware_maps`]): each token's attention spreads over the
        region of like colours it falls on and stops at the region's outline, instead of fading across an attention
        cell. The values come from the model, the outlines from the image; the raw maps stay in `self`.

        Args:
            images (`PIL.Image.Image` or `List[PIL.Image.Image]`): The generated image(s), one per image of the maps:
                `output.image` for one prompt; for one output of a batch,
                `output.attention_maps.of_image(output.image_index).edge_aware(output.image)`.
            positions (`Sequence[int]`, *optional*): Only these token positions are filtered (the others are copied
                as they are), for speed at large sizes; all tokens by default. Filtering all tokens keeps each pixel's
                maps summing to 1; filtering some does not.
            range_sigma (`float`, *optional*, defaults to 0.1): How different two colours ([0, 1] RGB) may be and
                still share a region.
            iterations (`int`, *optional*, defaults to 2): Passes of the filter.

        Returns:
            New maps of the same class (without `per_step`), whose pictures show the filtered maps
            (`excluded_share` stays as recorded).
        """
        if self.cell_size is None:
            raise ValueError("These maps do not know their attention grid: set `cell_size` (pixels per cell) first.")
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(images) != self.num_images:
            raise ValueError(
                f"Got {len(images)} image(s) for maps of {self.num_images}: pass one per image (`outputs.images`), "
                "or take one image's maps first: `maps.of_image(output.image_index).edge_aware(output.image)`."
            )
        positions = list(range(self.num_tokens)) if positions is None else list(positions)
        for position in positions:
            self._check_index("position", position, self.num_tokens)
        maps = self.maps.clone()
        for index, image in enumerate(images if positions else []):
            filtered = edge_aware_maps(self.maps[index, positions], image, self.cell_size, range_sigma, iterations)
            maps[index, positions] = filtered.to(maps.dtype)
        return dataclasses.replace(self, maps=maps, per_step=None, per_layer=None)

    @staticmethod
    def _check_index(name: str, value: int, count: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer, got {value!r}.")
        if not -count <= value < count:
            raise IndexError(f"`{name}` {value} is out of range: there are {count}.")

    def _check(self, position: int, image_index: int) -> None:
        self._check_index("position", position, self.num_tokens)
        self._check_index("image_index", image_index, self.num_images)

    def for_token(self, position: int, image_index: int = 0) -> np.ndarray:
        r"""
        The map of one token, min-max normalized to [0, 1] (all zeros for a constant map).

        Args:
            position (`int`): Index of the token in the padded token sequence (0 is the start token).
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.

        Returns:
            `np.ndarray` of shape (H, W), float32.
        """
        self._check(position, image_index)
        return _normalize01(self.maps[image_index, position].detach().cpu().float().numpy())

    def for_tokens(self, positions: Sequence[int], image_index: int = 0) -> np.ndarray:
        r"""
        The summed map of several tokens (a word's pieces, every encoder's), min-max normalized to [0, 1].

        Args:
            positions (`Sequence[int]`): Indices of the tokens in the padded token sequence.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.

        Returns:
            `np.ndarray` of shape (H, W), float32.
        """
        for position in positions:
            self._check(position, image_index)
        summed = self.maps[image_index, list(positions)].sum(0) if positions else self.maps[image_index, 0] * 0
        return _normalize01(summed.detach().cpu().float().numpy())


@dataclass
class ConceptMaps:
    r"""
    Where each concept is in the image.

    Args:
        concepts (`List[str]`): The concepts, in the order of `maps`' concept axis.
        maps (`torch.Tensor`): (images, concepts, height, width), at the image's size; at each pixel a distribution
            over the concepts (the softmax across concepts).
        steps (`List[int]`): The denoiser calls recorded.
        layers (`List[str]`): The blocks whose attention outputs were compared.
        cell_size (`float`, *optional*): Pixels per cell of the transformer's image-token grid.
    """

    concepts: List[str]
    maps: torch.Tensor
    steps: List[int]
    layers: List[str]
    cell_size: Optional[float] = None

    def for_concept(self, concept: str, image_index: int = 0) -> torch.Tensor:
        r"""The (height, width) map of one concept."""
        if concept not in self.concepts:
            raise KeyError(f"{concept!r} is not one of the recorded concepts {self.concepts}.")
        return self.maps[image_index, self.concepts.index(concept)]
