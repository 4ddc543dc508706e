r"""
The text encoders run with a graph: the pipeline's own `encode_prompt` from leaf token embeddings (or from given
ones) to the conditioning the denoiser reads, and the tracer's conditioning leaves of a traced call.
"""

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..attribution import AttributionLevel
from ..families import PipelineFamily
from ..tracing.leaves import LeafInputEmbeddings, ReplacedInputEmbeddings, input_embeddings
from .layout import EncoderBlock, place, text_layout, token_blocks
from .tokens import TextInputs


@dataclass
class TextEncoding:
    r"""
    The text encoders run with a graph: `conditioning` (the prompt rows of every conditioning tensor the denoiser
    reads) as a function of `token_leaves` (each encoder's input token embeddings, leaves that require grad), laid out
    by `blocks`.
    """

    token_leaves: List[torch.Tensor]
    conditioning: Dict[str, torch.Tensor]
    blocks: List[EncoderBlock] = field(default_factory=list)

    @property
    def slices(self) -> List[slice]:
        return [block.features for block in self.blocks]

    def token_inputs(self) -> TextInputs:
        values = place([leaf.detach().float().cpu() for leaf in self.token_leaves], self.blocks)
        return TextInputs(values, self.slices)

    def token_gradients(
        self, conditioning_gradients: Dict[str, torch.Tensor], retain_graph: bool, batched: bool = False
    ) -> torch.Tensor:
        r"""
        Chain gradients with respect to the conditioning back through the text encoders to the token embeddings:
        (…, images, rows, features) in the layout of `blocks`. With `batched`, the conditioning gradients carry a
        leading batch of vectors (one backward pass for all where autograd can).
        """
        names = [name for name in self.conditioning if name in conditioning_gradients]
        outputs = [self.conditioning[name] for name in names]
        grads = [
            conditioning_gradients[name].to(self.conditioning[name].device, self.conditioning[name].dtype)
            for name in names
        ]
        if batched:
            try:
                found = torch.autograd.grad(
                    outputs, self.token_leaves, grads, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
            except RuntimeError:
                rows = [
                    torch.autograd.grad(outputs, self.token_leaves, [g[k] for g in grads], True, allow_unused=True)
                    for k in range(grads[0].shape[0])
                ]
                found = [
                    torch.stack([row[i] for row in rows]) if rows[0][i] is not None else None
                    for i in range(len(self.token_leaves))
                ]
        else:
            found = torch.autograd.grad(
                outputs, self.token_leaves, grads, retain_graph=retain_graph, allow_unused=True
            )
        parts = []
        for leaf, gradient in zip(self.token_leaves, found):
            shape = (grads[0].shape[0], *leaf.shape) if batched else leaf.shape
            parts.append(torch.zeros(shape) if gradient is None else gradient.float().cpu())
        return place(parts, self.blocks)


def encode_with_graph(
    family: PipelineFamily, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device
) -> TextEncoding:
    r"""The pipeline's own `encode_prompt` with grad on and each text encoder's token embedding output made a leaf."""
    slots = family.text_encoders(pipe)
    leaves: List[List[torch.Tensor]] = [[] for _ in slots]
    scopes = [LeafInputEmbeddings(getattr(pipe, slot.encoder), store) for slot, store in zip(slots, leaves)]
    with torch.enable_grad():
        for scope in scopes:
            scope.__enter__()
        try:
            conditioning = family.encode(pipe, prompts, call_kwargs, device)
        finally:
            for scope in reversed(scopes):
                scope.__exit__(None, None, None)
    if any(len(store) != 1 for store in leaves):
        raise RuntimeError(f"Expected one call of each text encoder, saw {[len(store) for store in leaves]}.")
    token_leaves = [store[0] for store in leaves]
    lengths = [leaf.shape[1] for leaf in token_leaves]
    blocks = text_layout(family, pipe, lengths, AttributionLevel.TOKEN_EMBEDDINGS, call_kwargs)
    return TextEncoding(token_leaves, conditioning, blocks)


def encode_replaced(
    family: PipelineFamily,
    pipe,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    token_embeddings: torch.Tensor,
    blocks: Sequence[EncoderBlock],
) -> Dict[str, torch.Tensor]:
    r"""The pipeline's own `encode_prompt` with each encoder's token embeddings replaced by its block of
    `token_embeddings` (rows, length, features) (the positions before the block's rows, which the pipeline drops after
    encoding, keep their own); the prompts are repeated to the number of rows."""
    slots = family.text_encoders(pipe)
    rows = token_embeddings.shape[0]
    scopes = [
        ReplacedInputEmbeddings(
            getattr(pipe, slot.encoder), token_embeddings[:, block.rows, block.features], positions=block.positions
        )
        for slot, block in zip(slots, blocks)
    ]
    repeated = {name: [texts[0]] * rows for name, texts in prompts.items()}
    for scope in scopes:
        scope.__enter__()
    try:
        return family.encode(pipe, repeated, call_kwargs, token_embeddings.device)
    finally:
        for scope in reversed(scopes):
            scope.__exit__(None, None, None)


def encode_replaced_with_graph(
    family: PipelineFamily,
    pipe,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    token_embeddings: torch.Tensor,
    blocks: Sequence[EncoderBlock],
) -> TextEncoding:
    r"""The pipeline's own `encode_prompt` from the given (1, rows, features) token embeddings (each text encoder's
    in its block of the layout), each encoder's block a leaf that requires grad: the text encoders' graph."""
    leaves = [
        token_embeddings[:, block.rows, block.features].detach().clone().requires_grad_(True) for block in blocks
    ]
    in_rows = [dataclasses.replace(block, positions=None) for block in blocks]  # the leaves hold the rows alone
    with torch.enable_grad():
        conditioning = encode_replaced(family, pipe, prompts, call_kwargs, place(leaves, in_rows), blocks)
    return TextEncoding(leaves, conditioning, in_rows)


def token_embedding_values(
    family: PipelineFamily, pipe, ids: Sequence[Sequence[int]], call_kwargs: Optional[Dict[str, Any]]
) -> torch.Tensor:
    r"""Each encoder's input token embeddings of `ids` (one id row per encoder) in the token-level layout of a call
    with `call_kwargs`: (1, rows, features)."""
    parts = []
    for slot, row in zip(family.text_encoders(pipe), ids):
        layer = input_embeddings(getattr(pipe, slot.encoder))
        with torch.no_grad():
            parts.append(layer(torch.tensor([list(row)], device=layer.weight.device)).detach())
    return place(parts, token_blocks(family, pipe, ids, call_kwargs))


class ConditioningLeaves:
    r"""
    The tracer's `conditioning` for a traced call: at the first traced denoiser call, the prompt rows of the
    denoiser's conditioning become leaves that require grad (`conditioning`, the `text_encoder_output` level's
    inputs). At the `token_embeddings` level the pipeline's own `encode_prompt` runs again with each text encoder's
    token embeddings as leaves (`encoding`, the text encoders' graph to the conditioning), and must give the
    pipeline's values, unless `embeddings` replace the prompt's.

    Args:
        family (`PipelineFamily`): The pipeline's family.
        pipe: The pipeline.
        prompts (`Dict[str, List[str]]`): Each image's texts by call argument.
        call_kwargs (`dict`): The pipeline call's arguments.
        level (`AttributionLevel`): Where tokens are attributed.
        embeddings (`torch.Tensor`, *optional*): (1, rows, features) embeddings at the level to take in place of the
            prompt's (for one image): the input token embeddings in the layout of every text encoder's tokens, or the
            denoiser's `encoder_hidden_states` (the other conditioning tensors stay the prompt's).
        blocks (`Sequence[EncoderBlock]`, *optional*): With token-level `embeddings`, each text encoder's block in
            them.
    """

    def __init__(
        self,
        family: PipelineFamily,
        pipe,
        prompts: Dict[str, List[str]],
        call_kwargs: Dict[str, Any],
        level,
        embeddings: Optional[torch.Tensor] = None,
        blocks: Optional[Sequence[EncoderBlock]] = None,
    ):
        self.family = family
        self.pipe = pipe
        self.prompts = prompts
        self.call_kwargs = call_kwargs
        self.level = AttributionLevel(level)
        self.embeddings = embeddings
        self.blocks = blocks
        self.conditioning: Dict[str, torch.Tensor] = {}
        self.encoding: Optional[TextEncoding] = None

    def __call__(self, prompt_rows: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        device = next(iter(prompt_rows.values())).device
        if self.level is AttributionLevel.TOKEN_EMBEDDINGS and self.embeddings is None:
            self.encoding = encode_with_graph(self.family, self.pipe, self.prompts, self.call_kwargs, device)
            check_same(self.encoding.conditioning, prompt_rows)
            prompt_rows = self._conditioning(self.encoding)
        elif self.level is AttributionLevel.TOKEN_EMBEDDINGS:
            self.encoding = encode_replaced_with_graph(
                self.family, self.pipe, self.prompts, self.call_kwargs, self.embeddings.to(device), self.blocks
            )
            prompt_rows = self._conditioning(self.encoding)
        elif self.embeddings is not None:
            prompt_rows = {**prompt_rows, "encoder_hidden_states": self.embeddings.to(device)}
        self.conditioning = {name: t.detach().clone().requires_grad_(True) for name, t in prompt_rows.items()}
        return self.conditioning

    def _conditioning(self, encoding: TextEncoding) -> Dict[str, torch.Tensor]:
        # The gradient paths alone (an encoding may carry more, e.g. Chroma's attention mask).
        return {name: encoding.conditioning[name] for name in self.family.conditioning_names}


def check_same(conditioning: Dict[str, torch.Tensor], pipeline: Dict[str, torch.Tensor]) -> None:
    r"""The conditioning re-computed for attribution must be the pipeline's (else the prompt was changed)."""
    for name, tensor in pipeline.items():
        mine = conditioning[name]
        scale = tensor.abs().max().clamp_min(1e-6)
        if mine.shape != tensor.shape or (mine.detach() - tensor).abs().max() > 1e-3 * scale:
            raise RuntimeError(
                f"The prompt's `{name}` re-computed for attribution differs from the one the pipeline used (was the "
                "prompt changed by a callback?). Use attribution_level='text_encoder_output'."
            )
