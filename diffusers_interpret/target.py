r"""
What is explained: a box of the output image. Box -> mask -> the pipeline's [0, 1] image -> the box's pixel sum,
vector-Jacobian products of its pixels, or its change from a reference image. The one half-precision guard.
"""

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch

from .box import Box, box_mask

_NOT_FINITE = (
    "The gradient with respect to {name} is not finite ({dtype}). Load the pipeline in float32, explain fewer "
    "steps, or on CUDA call the explainer inside `torch.nn.attention.sdpa_kernel(SDPBackend.MATH)` (the fused "
    "attention kernels' half-precision backward can overflow)."
)


def half_precision_scale(dtype: torch.dtype, values_summed: float) -> float:
    r"""In half precision, the factor to scale a target by before a backward pass (divided out after): 1 / sqrt of the
    number of values summed, so that neither the sum's gradient overflows nor each value's seed gradient sinks into
    float16's subnormal range (1 / values did at 512 px: 2.5e-6, and the float16 ranking came out reversed); 1
    otherwise."""
    if dtype in (torch.float16, torch.bfloat16):
        return 1.0 / math.sqrt(max(1.0, values_summed))
    return 1.0


@dataclass
class Target:
    r"""
    A box of the output image, and how decoded images become the pipeline's [0, 1] images.

    Args:
        box (`((x0, y0), (x1, y1))`, *optional*): The explained region; `None` for the whole image.
        to_unit_image (`Callable`): Decoded [-1, 1] images -> the pipeline's [0, 1] images (clamp included), keeping
            the graph (the family's `unit_image`).
    """

    box: Optional[Box]
    to_unit_image: Callable[[torch.Tensor], torch.Tensor]

    def image(self, decoded: torch.Tensor) -> torch.Tensor:
        return self.to_unit_image(decoded)

    def mask(self, image: torch.Tensor) -> torch.Tensor:
        return box_mask(self.box, image.shape[-2], image.shape[-1], device=image.device, dtype=torch.float32)

    def gradients(
        self, decoded: torch.Tensor, inputs: Dict[str, torch.Tensor], retain_graph: bool = False
    ) -> Dict[str, torch.Tensor]:
        r"""
        One backward pass of the box's pixel sum over every image (images are independent in the batch, so each
        image's gradient lands in its own rows), to each of `inputs` that requires grad and is reached. Float32, CPU.
        """
        image = self.image(decoded)
        mask = self.mask(image)
        scale = half_precision_scale(decoded.dtype, float(mask.sum()) * image.shape[1])
        target = (image.float() * mask).sum() * scale
        inputs = {name: tensor for name, tensor in inputs.items() if tensor is not None and tensor.requires_grad}
        found = torch.autograd.grad(target, list(inputs.values()), allow_unused=True, retain_graph=retain_graph)
        result = {}
        for name, gradient in zip(inputs, found):
            if gradient is None:  # the traced steps do not reach this input
                continue
            result[name] = self._checked(gradient.float() / scale, name, decoded.dtype).detach().cpu()
        return result

    def vector_jacobian_products(
        self, decoded: torch.Tensor, inputs: Dict[str, torch.Tensor], vectors: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        r"""
        `vectors[k]^T d(image)/d(input)` for every k (vectors are image-shaped, e.g. masks or masked random probes),
        float32 on the CPU, shape (k, *input.shape), keeping the graph. All in one batched backward pass where
        autograd can (`is_grads_batched`), one pass per vector otherwise (e.g. through checkpointed steps).
        """
        image = self.image(decoded)
        scale = half_precision_scale(decoded.dtype, float(vectors[0].abs().sum()))
        vectors = (vectors * scale).to(image.dtype)
        names = [name for name, tensor in inputs.items() if tensor is not None and tensor.requires_grad]
        leaves = [inputs[name] for name in names]
        try:
            found = torch.autograd.grad(
                image, leaves, vectors, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:
            rows = [torch.autograd.grad(image, leaves, v, retain_graph=True, allow_unused=True) for v in vectors]
            found = [None if rows[0][i] is None else torch.stack([row[i] for row in rows]) for i in range(len(names))]
        result = {}
        for name, gradient in zip(names, found):
            if gradient is not None:
                result[name] = self._checked(gradient.float() / scale, name, decoded.dtype).detach().cpu()
        return result

    def change(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        r"""L2 norm, over the box's pixels and channels, of each [0, 1] image's difference from `reference`."""
        difference = (images.float() - reference.float().to(images.device)) * self.mask(images)
        return torch.linalg.vector_norm(difference.flatten(1), dim=1)

    @staticmethod
    def _checked(gradient: torch.Tensor, name: str, dtype: Any) -> torch.Tensor:
        if not torch.isfinite(gradient).all():
            raise FloatingPointError(_NOT_FINITE.format(name=name, dtype=dtype))
        return gradient
