"""
An independent computation of a box's gradient to one text encoder's token embeddings, for the families whose prompt
goes through one encoder: the pipeline's own `__call__` with grad, the embedding layer's output for the given ids
replaced by a leaf (the explainer's tracing, leaves and layout not involved); and the central difference of the
pipeline's own images along a direction of those embeddings.
"""

import torch


def box_sum(images: torch.Tensor, box) -> torch.Tensor:
    r"""The sum of the first image's pixels in `box` ((x0, y0), (x1, y1))."""
    (x0, y0), (x1, y1) = box
    return images[0, :, y0:y1, x0:x1].sum()


def pictures(output) -> torch.Tensor:
    r"""A pipeline output's images (`output_type="pt"`), a video pipeline's clips as pictures of their frames laid out
    top to bottom ((clips, frames, 3, H, W) -> (clips, 3, frames x H, W))."""
    if hasattr(output, "frames"):
        return output.frames.permute(0, 2, 1, 3, 4).flatten(2, 3)
    return output.images


def leaf_gradient(pipe, embed: torch.nn.Module, ids: torch.Tensor, box, seed: int = 0, **call) -> torch.Tensor:
    r"""d box_sum / d (the output of `embed` for `ids`), through `pipe(**call)` run with grad from seed `seed`."""
    leaf = {}

    def replace(module, args, output):
        if torch.equal(args[0], ids):
            leaf["e"] = output.detach().clone().requires_grad_(True)
            return leaf["e"]
        return output

    handle = embed.register_forward_hook(replace)
    try:
        with torch.enable_grad():
            run = type(pipe).__call__.__wrapped__
            images = pictures(run(pipe, generator=torch.Generator().manual_seed(seed), output_type="pt", **call))
            return torch.autograd.grad(box_sum(images, box), leaf["e"])[0]
    finally:
        handle.remove()


def central_difference(
    pipe, embed: torch.nn.Module, ids: torch.Tensor, direction: torch.Tensor, eps: float, box, seed: int = 0, **call
) -> float:
    r"""(box_sum(e + eps u) - box_sum(e - eps u)) / (2 eps) of `pipe(**call)`'s own images, `u` the unit `direction`
    added to the output of `embed` for `ids`."""
    unit = direction / direction.norm()

    def shifted(sign: int) -> float:
        def add(module, args, output):
            return output + sign * eps * unit if torch.equal(args[0], ids) else output

        handle = embed.register_forward_hook(add)
        try:
            images = pictures(pipe(generator=torch.Generator().manual_seed(seed), output_type="pt", **call))
            return float(box_sum(images, box))
        finally:
            handle.remove()

    return (shifted(1) - shifted(-1)) / (2 * eps)
