r"""
The prompt's side of the data path: tokens and the units they are scored as, and the text encoders run with a graph
from the input token embeddings (or from their outputs) to the conditioning the denoiser reads.

A family may condition on several text encoders (SDXL: CLIP-L and CLIP-G, on the feature axis). Their token
embeddings at one position are treated as one vector, the concatenation of every encoder's (`TextInputs.slices`
says which features are whose). When every encoder tokenizes its text into the same tokens (SDXL with `prompt_2`
unset or equal to `prompt`), a token is one unit scored over all its features; otherwise each encoder's tokens are
units of their own, scored over that encoder's features.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch

from .tracing.leaves import EagerAttention, LeafInputEmbeddings, ReplacedInputEmbeddings


def clean_token(token: str) -> str:
    """A BPE token as text: CLIP's end-of-word marker `</w>` removed (as a suffix, not as a set of characters)."""
    return token[: -len("</w>")] if token.endswith("</w>") else token


@dataclass(frozen=True)
class TokenUnit:
    r"""
    What one attribution score is for: a token position and the features of it that are scored.

    Args:
        label (`str`): The token as text.
        position (`int`): Its position in the padded token sequence.
        token_id (`int`): Its id (in the first of `encoders`' tokenizer).
        encoders (`Tuple[int, ...]`): Indices of the text encoders whose features are scored.
    """

    label: str
    position: int
    token_id: int
    encoders: Tuple[int, ...]


@dataclass
class PromptTokens:
    r"""The tokens of one image's prompt, per text encoder, and the units they are scored as."""

    ids: List[List[int]]
    tokens: List[List[str]]
    units: List[TokenUnit]

    @property
    def positions(self) -> List[int]:
        return [unit.position for unit in self.units]

    @property
    def labels(self) -> List[str]:
        return [unit.label for unit in self.units]


def attributed_positions(ids: Sequence[int], tokenizer, consider_special_tokens: bool) -> List[int]:
    r"""Positions of a padded id sequence that are attributed: the prompt's tokens (and start/end ones if asked)."""
    ids = list(ids)
    eos = tokenizer.eos_token_id
    end = ids.index(eos) if eos in ids else len(ids)
    start = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
    if consider_special_tokens:
        return list(range(0, min(end + 1, len(ids))))
    return list(range(start, end))


def tokenize(
    family, pipe, prompts: Dict[str, List[str]], consider_special_tokens: bool, clean: bool
) -> List[PromptTokens]:
    r"""The tokens of every image's prompt(s) as the pipeline's own tokenizers make them, and their units."""
    slots = family.text_encoders(pipe)
    per_encoder = []
    for slot in slots:
        tokenizer = getattr(pipe, slot.tokenizer)
        texts = prompts.get(slot.prompt_argument) or prompts["prompt"]
        if hasattr(pipe, "maybe_convert_prompt"):
            texts = pipe.maybe_convert_prompt(texts, tokenizer)
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
        per_encoder.append((tokenizer, ids))
    result = []
    for image in range(len(per_encoder[0][1])):
        ids = [encoder_ids[image] for _, encoder_ids in per_encoder]
        tokens = [tokenizer.convert_ids_to_tokens(row) for (tokenizer, _), row in zip(per_encoder, ids)]
        labels = [[clean_token(t) if clean else t for t in row] for row in tokens]
        positions = [
            attributed_positions(row, tokenizer, consider_special_tokens)
            for (tokenizer, _), row in zip(per_encoder, ids)
        ]
        same = all(positions[k] == positions[0] for k in range(len(ids))) and all(
            [labels[k][p] for p in positions[k]] == [labels[0][p] for p in positions[0]] for k in range(len(ids))
        )
        if same:
            units = [TokenUnit(labels[0][p], p, ids[0][p], tuple(range(len(ids)))) for p in positions[0]]
        else:
            units = [TokenUnit(labels[k][p], p, ids[k][p], (k,)) for k in range(len(ids)) for p in positions[k]]
        result.append(PromptTokens(ids=ids, tokens=tokens, units=units))
    return result


@dataclass
class TextInputs:
    r"""
    The prompt's embeddings at the attribution level, every text encoder's features side by side.

    Args:
        values (`torch.Tensor`): (images, sequence length, features), detached.
        slices (`List[slice]`): Each text encoder's features in `values`.
    """

    values: torch.Tensor
    slices: List[slice]

    def unit_features(self, unit: TokenUnit) -> List[int]:
        width = self.values.shape[-1]
        return [i for k in unit.encoders for i in range(width)[self.slices[k]]]


@dataclass
class TextEncoding:
    r"""
    The text encoders run with a graph: `conditioning` (the prompt rows of every conditioning tensor the denoiser
    reads) as a function of `token_leaves` (each encoder's input token embeddings, leaves that require grad).
    """

    token_leaves: List[torch.Tensor]
    conditioning: Dict[str, torch.Tensor]
    slices: List[slice] = field(default_factory=list)

    def token_inputs(self) -> TextInputs:
        return TextInputs(torch.cat([leaf.detach().float() for leaf in self.token_leaves], -1), self.slices)

    def token_gradients(
        self, conditioning_gradients: Dict[str, torch.Tensor], retain_graph: bool, batched: bool = False
    ) -> torch.Tensor:
        r"""
        Chain gradients with respect to the conditioning back through the text encoders to the token embeddings:
        (…, images, length, features), features of all encoders side by side. With `batched`, the conditioning
        gradients carry a leading batch of vectors (one backward pass for all where autograd can).
        """
        names = [name for name in self.conditioning if name in conditioning_gradients]
        outputs = [self.conditioning[name] for name in names]
        grads = [conditioning_gradients[name].to(self.conditioning[name].dtype) for name in names]
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
        return torch.cat(parts, -1)


def encode_with_graph(
    family, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], device
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
    widths = [leaf.shape[-1] for leaf in token_leaves]
    starts = [sum(widths[:k]) for k in range(len(widths))]
    slices = [slice(start, start + width) for start, width in zip(starts, widths)]
    return TextEncoding(token_leaves, conditioning, slices)


def encode_replaced(
    family,
    pipe,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    token_embeddings: torch.Tensor,
    slices: Sequence[slice],
) -> Dict[str, torch.Tensor]:
    r"""The pipeline's own `encode_prompt` with each encoder's token embeddings replaced by its features of
    `token_embeddings` (rows, length, features); the prompts are repeated to the number of rows."""
    slots = family.text_encoders(pipe)
    rows = token_embeddings.shape[0]
    scopes = [
        ReplacedInputEmbeddings(getattr(pipe, slot.encoder), token_embeddings[..., piece])
        for slot, piece in zip(slots, slices)
    ]
    repeated = {name: [texts[0]] * rows for name, texts in prompts.items()}
    for scope in scopes:
        scope.__enter__()
    try:
        return family.encode(pipe, repeated, call_kwargs, token_embeddings.device)
    finally:
        for scope in reversed(scopes):
            scope.__exit__(None, None, None)


def token_embedding_values(family, pipe, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    r"""Each encoder's input token embeddings of `ids` (one id row per encoder), side by side: (1, length, feat)."""
    parts = []
    for slot, row in zip(family.text_encoders(pipe), ids):
        layer = getattr(pipe, slot.encoder).get_input_embeddings()
        with torch.no_grad():
            parts.append(layer(torch.tensor([list(row)], device=layer.weight.device)).detach())
    return torch.cat(parts, -1)


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


def token_slices(family, pipe) -> List[slice]:
    r"""Each text encoder's features among the input token embeddings side by side."""
    slots = family.text_encoders(pipe)
    widths = [getattr(pipe, slot.encoder).get_input_embeddings().weight.shape[-1] for slot in slots]
    return [slice(sum(widths[:k]), sum(widths[: k + 1])) for k in range(len(widths))]


@dataclass
class TokenMixing:
    r"""
    How much each input token feeds each position of the conditioning the denoiser reads.

    Args:
        weights (`torch.Tensor`): (positions, columns): `weights[j, c]` is the share of conditioning position `j` that
            column `c`'s input token makes, `||(d h_j / d e_c) e_c||` normalised over the columns of row `j`.
        columns (`List[Tuple[Tuple[int, ...], int]]`): Each column's (text encoders, token position).
    """

    weights: torch.Tensor
    columns: List[Tuple[Tuple[int, ...], int]]

    def column(self, unit: TokenUnit) -> int:
        return self.columns.index((unit.encoders, unit.position))


def token_mixing(
    family, pipe, prompts: Dict[str, List[str]], call_kwargs: Dict[str, Any], tokens: PromptTokens, chunk: int = 32
) -> TokenMixing:
    r"""
    The text encoders' mixing of one prompt's tokens: for every input token (every text encoder's, together where the
    units are shared), the norm of its first-order contribution `(d h_j / d e_i) e_i` to every position `j` of the
    denoiser's `encoder_hidden_states`, by forward-mode differentiation through the pipeline's own `encode_prompt`
    (`chunk` tokens per pass; no backward pass). CLIP is causal: a position after a word (and the end and padding
    positions) carries that word on, and this says how much.
    """
    import torch.autograd.forward_ad as forward_ad

    slots = family.text_encoders(pipe)
    length = len(tokens.ids[0])
    shared = all(len(unit.encoders) == len(slots) for unit in tokens.units)
    groups = [tuple(range(len(slots)))] if shared else [(k,) for k in range(len(slots))]
    columns = [(group, position) for group in groups for position in range(length)]
    slices = token_slices(family, pipe)
    values = token_embedding_values(family, pipe, tokens.ids)
    parts = []
    encoders = [getattr(pipe, slot.encoder) for slot in slots]
    with torch.no_grad(), EagerAttention(encoders):
        for start in range(0, len(columns), chunk):
            piece = columns[start : start + chunk]
            tangents = torch.zeros((len(piece), *values.shape[1:]), device=values.device, dtype=values.dtype)
            for row, (group, position) in enumerate(piece):
                for k in group:
                    tangents[row, position, slices[k]] = values[0, position, slices[k]]
            with forward_ad.dual_level():
                dual = forward_ad.make_dual(values.expand(len(piece), -1, -1).clone(), tangents)
                made = encode_replaced(family, pipe, prompts, call_kwargs, dual, slices)["encoder_hidden_states"]
                tangent = forward_ad.unpack_dual(made).tangent
            parts.append(tangent.double().norm(dim=-1).T.cpu())  # (positions, columns of this piece)
    weights = torch.cat(parts, 1)
    total = weights.sum(1, keepdim=True)
    empty = (total[:, 0] <= 1e-12).nonzero()[:, 0]
    for position in empty.tolist():  # a position no token feeds keeps its own share
        weights[position, position] = 1.0
    return TokenMixing(weights / weights.sum(1, keepdim=True), columns)
