"""Saliency maps of init-image pixel attributions: scaled before any colour map, masked areas greyed."""

from typing import Optional

import numpy as np
from PIL import Image

from .attention_maps import check_colormap
from .markup import show_figure


class SaliencyMap:
    r"""
    Pixel attributions of an input image, as pictures.

    Args:
        image (`PIL.Image.Image`): The input image, at the pipeline's processing size.
        attributions (`np.ndarray`): (H, W) non-negative scores.
        mask (`np.ndarray`, *optional*): (H, W) boolean inpainting mask (True where the image is repainted).
        name (`str`, *optional*, defaults to `"input image"`): What the image is, in the pictures' titles (`"control
            image"` for a ControlNet's).
    """

    def __init__(
        self,
        image: Image.Image,
        attributions: np.ndarray,
        mask: Optional[np.ndarray] = None,
        name: str = "input image",
    ):
        if not isinstance(image, Image.Image):
            raise TypeError(f"`image` must be a PIL image, got {type(image).__name__}.")
        self.image = image.convert("RGB")
        self.attributions = np.asarray(attributions, dtype=np.float32)
        if self.attributions.shape != (image.height, image.width):
            raise ValueError(
                f"`attributions` must have the image's shape {(image.height, image.width)} (height, width), got "
                f"{self.attributions.shape}."
            )
        self.mask = None if mask is None else np.asarray(mask, dtype=bool)
        self.name = name
        if self.mask is not None and self.mask.shape != self.attributions.shape:
            raise ValueError(f"`mask` must have the image's shape {self.attributions.shape}, got {self.mask.shape}.")

    def scaled(self) -> np.ndarray:
        """Attributions rescaled to [0, 1] by their maximum (all zeros stay zeros)."""
        peak = float(self.attributions.max()) if self.attributions.size else 0.0
        return self.attributions / peak if peak > 0 else np.zeros_like(self.attributions)

    def heatmap(self, cmap: str = "jet", apply_mask: bool = True) -> Image.Image:
        r"""The scaled attributions through a matplotlib colour map, as a PIL image (masked area grey)."""
        import matplotlib

        check_colormap(cmap)
        rgb = matplotlib.colormaps[cmap](self.scaled())[..., :3]
        if apply_mask and self.mask is not None:
            rgb[self.mask] = 0.5
        return Image.fromarray((rgb * 255).round().astype(np.uint8))

    def overlay(self, cmap: str = "jet", image_weight: float = 0.5, apply_mask: bool = True) -> Image.Image:
        r"""
        The heatmap blended over the image, as a PIL image (for saving).

        Args:
            cmap (`str`, *optional*, defaults to `"jet"`): A matplotlib colour map name.
            image_weight (`float`, *optional*, defaults to 0.5): Weight of the image in the blend, in [0, 1].
            apply_mask (`bool`, *optional*, defaults to `True`): Grey out the inpainting mask's area.
        """
        if not 0 <= image_weight <= 1:
            raise ValueError(f"`image_weight` must be in [0, 1], got {image_weight}.")
        image = np.asarray(self.image, dtype=np.float32) / 255
        heat = np.asarray(self.heatmap(cmap, apply_mask=False), dtype=np.float32) / 255
        blend = image_weight * image + (1 - image_weight) * heat
        if apply_mask and self.mask is not None:
            blend[self.mask] = 0.5 * blend[self.mask] + 0.25
        return Image.fromarray((blend * 255).round().astype(np.uint8))

    def plot(self, cmap: str = "jet", image_weight: float = 0.5, apply_mask: bool = True, title: Optional[str] = None):
        r"""Three panels (image, attributions, overlay) as a matplotlib figure, with a colour bar and an optional
        `title`."""
        import matplotlib.pyplot as plt

        from .markup import plain_text

        fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
        panels = [
            (self.image, self.name),
            (self.heatmap(cmap, apply_mask), "pixel attributions"),
            (self.overlay(cmap, image_weight, apply_mask), "overlay"),
        ]
        for ax, (picture, name) in zip(axes, panels):
            ax.imshow(picture)
            ax.set_title(name)
            ax.axis("off")
        mappable = plt.cm.ScalarMappable(cmap=cmap)
        mappable.set_array(self.scaled())
        fig.colorbar(mappable, ax=axes[1], fraction=0.046, pad=0.04, label="scaled attribution")
        if title:
            fig.suptitle(plain_text(title))
        fig.tight_layout()
        plt.close(fig)  # returned, not left to pyplot: a notebook displays it once, as the cell's result
        return fig

    def show(
        self, cmap: str = "jet", image_weight: float = 0.5, apply_mask: bool = True, title: Optional[str] = None
    ) -> None:
        r"""
        Show image / attributions / overlay once: inline in a notebook; elsewhere saved to a temporary PNG whose path
        is printed (`.plot()` returns the figure to save or place yourself).

        Args:
            cmap (`str`, *optional*, defaults to `"jet"`): A matplotlib colour map name.
            image_weight (`float`, *optional*, defaults to 0.5): Weight of the image in the overlay, in [0, 1].
            apply_mask (`bool`, *optional*, defaults to `True`): Grey out the inpainting mask's area.
            title (`str`, *optional*): The figure's title.
        """
        show_figure(self.plot(cmap, image_weight, apply_mask, title), "saliency map")

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.overlay().save(buffer, format="PNG")
        return buffer.getvalue()
