"""Attention maps as pictures: heatmaps, overlays and panels per token."""

from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..tracing.maps import AttentionMapsData


def check_colormap(cmap) -> None:
    r"""Raise a `ValueError` naming `cmap` unless it is the name of a matplotlib colormap."""
    from matplotlib import colormaps

    if not isinstance(cmap, str) or cmap not in colormaps:
        raise ValueError(f"`cmap` must be the name of a matplotlib colormap (e.g. 'jet', 'viridis'), got {cmap!r}.")


def colorize(values: np.ndarray, cmap: str = "jet") -> Image.Image:
    r"""
    An RGB image of a 2D array in [0, 1] through a matplotlib colormap.

    Args:
        values (`np.ndarray`): (H, W) array with values in [0, 1].
        cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
    """
    from matplotlib import colormaps

    check_colormap(cmap)
    rgba = colormaps[cmap](np.clip(values, 0.0, 1.0))
    return Image.fromarray((rgba[..., :3] * 255.0 + 0.5).astype(np.uint8), mode="RGB")


class AttentionMaps(AttentionMapsData):
    r"""
    Cross-attention maps of generated images, one per image and token (see [`AttentionMapsData`] for the data), with
    their pictures: `heatmap`, `overlay` and `plot`.
    """

    def heatmap(self, position: int, image_index: int = 0, cmap: str = "jet") -> Image.Image:
        r"""
        The normalized map of one token as an RGB image of the image's size.

        Args:
            position (`int`): Index of the token in the padded token sequence.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
        """
        return colorize(self.for_token(position, image_index), cmap=cmap)

    def overlay(
        self, image: Image.Image, position: int, image_index: int = 0, alpha: float = 0.5, cmap: str = "jet"
    ) -> Image.Image:
        r"""
        The heatmap of one token blended over `image`.

        Args:
            image (`PIL.Image.Image`): The generated image (resized to the maps' size if it differs).
            position (`int`): Index of the token in the padded token sequence.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            alpha (`float`, *optional*, defaults to 0.5): Weight of the heatmap (0 shows only the image).
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
        """
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"`alpha` must be a number in [0, 1], got {alpha!r}.")
        if not isinstance(image, Image.Image):
            raise TypeError(f"`image` must be a PIL image (e.g. `output.image`), got {type(image).__name__}.")
        height, width = self.size
        base = image.convert("RGB")
        if base.size != (width, height):
            base = base.resize((width, height), Image.BILINEAR)
        return Image.blend(base, self.heatmap(position, image_index, cmap=cmap), float(alpha))

    def plot(
        self,
        image: Image.Image,
        positions: Sequence[int],
        labels: Optional[Sequence[str]] = None,
        image_index: int = 0,
        alpha: float = 0.5,
        cmap: str = "jet",
        title: Optional[str] = None,
    ):
        r"""
        One panel per token: the image, then each token's map overlaid on it, with a colour bar (each map is scaled
        from its own minimum, 0, to its own maximum, 1).

        Args:
            image (`PIL.Image.Image`): The generated image.
            positions (`Sequence[int]`): Token positions in the padded token sequence.
            labels (`Sequence[str]`, *optional*): Panel titles, one per position; `"token {position}"` otherwise.
            image_index (`int`, *optional*, defaults to 0): Which image of the batch.
            alpha (`float`, *optional*, defaults to 0.5): Weight of the heatmaps.
            cmap (`str`, *optional*, defaults to `"jet"`): Name of a matplotlib colormap.
            title (`str`, *optional*): The figure's title.

        Returns:
            The `matplotlib.figure.Figure`.
        """
        import matplotlib.pyplot as plt

        from .markup import plain_text

        positions = list(positions)
        labels = list(labels) if labels is not None else [f"token {p}" for p in positions]
        if len(labels) != len(positions):
            raise ValueError(f"Got {len(labels)} labels for {len(positions)} positions.")
        fig, axes = plt.subplots(1, len(positions) + 1, figsize=(2.2 * (len(positions) + 1) + 0.6, 2.8), squeeze=False)
        axes = axes[0]
        axes[0].imshow(image)
        axes[0].set_title("image")
        for ax, position, label in zip(axes[1:], positions, labels):
            ax.imshow(self.overlay(image, position, image_index=image_index, alpha=alpha, cmap=cmap))
            ax.set_title(plain_text(label))
        for ax in axes:
            ax.axis("off")
        mappable = plt.cm.ScalarMappable(cmap=cmap)
        mappable.set_clim(0, 1)
        fig.colorbar(mappable, ax=list(axes), fraction=0.02, pad=0.01, label="attention (map's min to max)")
        if title:
            fig.suptitle(plain_text(title))
        plt.close(fig)  # returned, not left to pyplot: a notebook displays it once, as the cell's result
        return fig
