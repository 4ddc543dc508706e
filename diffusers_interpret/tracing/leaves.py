"""Scoped hooks that make a pipeline's inputs leaves of the autograd graph, or replace them."""

from typing import Dict, List, Optional

import torch

from .scoped import ScopedHooks


def input_embeddings(text_encoder: torch.nn.Module) -> torch.nn.Module:
    r"""The token embedding layer a text encoder's forward pass calls: T5's encoder stack has its own module (tied to
    the model's `shared` weights, so hooks on `get_input_embeddings()` would never fire)."""
    stack = getattr(text_encoder, "encoder", None)
    if stack is not None and hasattr(stack, "get_input_embeddings") and hasattr(stack, "embed_tokens"):
        return stack.get_input_embeddings()
    return text_encoder.get_input_embeddings()


class LeafInputEmbeddings(ScopedHooks):
    r"""
    Within the block, every output of the text encoder's input (token) embedding layer is replaced by a leaf tensor
    that requires grad, appended to `store`; the text encoder then runs on from it, keeping its graph.
    """

    def __init__(self, text_encoder: torch.nn.Module, store: List[torch.Tensor]):
        super().__init__()
        self.layer = input_embeddings(text_encoder)
        self.store = store

    def _install(self) -> None:
        self.hook_forward(self.layer, self._leaf, with_kwargs=False)

    def _leaf(self, module, args, output):
        leaf = output.detach().requires_grad_(True)
        self.store.append(leaf)
        return leaf


class ReplacedInputEmbeddings(ScopedHooks):
    r"""Within the block, the text encoder's token embedding layer returns `embeddings` (same shape) instead; with
    `positions`, its own embeddings with those positions' replaced by `embeddings`' (one row of it per position)."""

    def __init__(self, text_encoder: torch.nn.Module, embeddings: torch.Tensor, positions=None):
        super().__init__()
        self.layer = input_embeddings(text_encoder)
        self.embeddings = embeddings
        self.positions = None if positions is None else list(positions)

    def _install(self) -> None:
        self.hook_forward(self.layer, self._replace, with_kwargs=False)

    def _replace(self, module, args, output):
        length = output.shape[-2] if self.positions is None else len(self.positions)
        if (output.shape[0], length, output.shape[-1]) != tuple(self.embeddings.shape):
            raise RuntimeError(
                f"Replacement token embeddings have shape {tuple(self.embeddings.shape)}, the text encoder made "
                f"{tuple(output.shape)}" + ("." if self.positions is None else f" ({length} positions replaced).")
            )
        if self.positions is None:
            return self.embeddings.to(output.dtype)
        index = torch.tensor(self.positions, device=output.device)
        return output.index_copy(1, index, self.embeddings.to(output.dtype))


class LeafPreprocessedImage(ScopedHooks):
    r"""
    Within the block, the image processor's `preprocess` returns its usual tensor (bit-identical values) plus a
    zero-valued term that carries the gradient to a leaf: the [0, 1] pixels of the preprocessed image (first call
    only), which `result()` gives. The override is an instance attribute, deleted on exit.
    """

    def __init__(self, image_processor):
        super().__init__()
        self.image_processor = image_processor
        self.pixels: Optional[torch.Tensor] = None

    def result(self) -> Optional[torch.Tensor]:
        r"""The pixels' leaf, (1, 3, H, W) in [0, 1] (`None` where the pipeline preprocessed no RGB image)."""
        return self.pixels

    def _install(self) -> None:
        self.pixels = None
        original = self.image_processor.preprocess

        def preprocess(*args, **kwargs):
            processed = original(*args, **kwargs)
            if self.pixels is not None or processed.shape[1] != 3:
                return processed
            with torch.enable_grad():
                if not self.image_processor.config.do_normalize:  # a ControlNet's processor keeps [0, 1] values
                    self.pixels = processed.detach().float().requires_grad_(True)
                    return processed + (self.pixels - self.pixels.detach()).to(processed.dtype)
                self.pixels = ((processed.detach().float() + 1) / 2).requires_grad_(True)
                normalized = self.pixels * 2 - 1
                return processed + (normalized - normalized.detach()).to(processed.dtype)

        self.override(self.image_processor, "preprocess", preprocess)


class EagerAttention(ScopedHooks):
    r"""
    Within the block, the given transformers models compute attention with an explicit softmax (`"eager"`), then go
    back to the implementation they had. Forward-mode differentiation has no rule for the fused scaled-dot-product
    kernels.
    """

    def __init__(self, models):
        super().__init__()
        self.models = list(models)
        self._previous = []

    def _install(self) -> None:
        for model in self.models:
            self._previous.append((model, model.config._attn_implementation))
            model.set_attn_implementation("eager")

    def _remove(self) -> None:
        for model, previous in reversed(self._previous):
            model.set_attn_implementation(previous)
        self._previous = []


class Float32Compute(ScopedHooks):
    r"""
    Within the block, every half-precision (float16, bfloat16) module of the given models computes in float32: its own
    weights are cast up before its forward pass and back after it (exactly: every float16 and bfloat16 value is a
    float32 value), and its floating-point inputs are cast up. Forward-mode differentiation needs it: a float16 layer
    norm's tangent overflows where the variance is small (padding positions), and CUDA's layer norm gives a float32
    tangent to a float16 output, which the next float16 linear layer rejects. Weights are set back on exit, even
    after an exception.
    """

    HALF = (torch.float16, torch.bfloat16)

    def __init__(self, models):
        super().__init__()
        self.models = list(models)
        self._original: Dict[int, tuple] = {}

    def _install(self) -> None:
        for model in self.models:
            for module in model.modules():
                if any(t.dtype in self.HALF for t in self._own_tensors(module)):
                    self.hook_forward_pre(module, self._up)
                    self.hook_forward(module, self._down, with_kwargs=False)

    def _remove(self) -> None:
        for tensor, dtype in self._original.values():
            tensor.data = tensor.data.to(dtype)
        self._original = {}

    @staticmethod
    def _own_tensors(module):
        tensors = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        return [t for t in tensors if t.is_floating_point()]

    def _up(self, module, args, kwargs):
        for tensor in self._own_tensors(module):
            if tensor.dtype in self.HALF:
                self._original[id(tensor)] = (tensor, tensor.dtype)
                tensor.data = tensor.data.float()

        def up(value):
            is_half = isinstance(value, torch.Tensor) and value.dtype in self.HALF
            return value.float() if is_half else value

        return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

    def _down(self, module, args, output):
        for tensor in self._own_tensors(module):
            if id(tensor) in self._original:
                tensor.data = tensor.data.to(self._original.pop(id(tensor))[1])
        return None
