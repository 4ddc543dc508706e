r"""
The prompt's side of the data path: tokens and the units they are scored as, and the text encoders run with a graph
from the input token embeddings (or from their outputs) to the conditioning the denoiser reads.

A family may condition on several text encoders. Every encoder's tokens sit in one layout, an `EncoderBlock` of rows
(sequence positions) and features each: encoders of one `sequence_group` share rows and sit side by side on the
feature axis (SDXL: CLIP-L and CLIP-G; SD3: CLIP-L and CLIP-G), groups follow one another on the sequence axis (SD3:
T5 after CLIP; Flux: the pooled-only CLIP after T5). Where encoders share rows, their token embeddings at one row are
treated as one vector, and when they tokenize their text into the same tokens (SDXL with `prompt_2` unset or equal
to `prompt`) a token is one unit scored over all its features; otherwise each encoder's tokens are units of their
own, scored over that encoder's features.
"""

import re
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from .attribution import AttributionLevel
from .families import PipelineFamily
from .tracing.leaves import (
    EagerAttention,
    Float32Compute,
    LeafInputEmbeddings,
    ReplacedInputEmbeddings,
    input_embeddings,
)


def clean_token(token: str) -> str:
    """A token as text: CLIP's end-of-word marker `</w>` removed (as a suffix, not as a set of characters), and
    sentencepiece's word-start marker `▁` (T5) where the token has more than the marker."""
    token = token[: -len("</w>")] if token.endswith("</w>") else token
    return token[1:] if token.startswith("▁") and len(token) > 1 else token


@dataclass(frozen=True)
class TokenUnit:
    r"""
    What one attribution score is for: a token position and the features of it that are scored.

    Args:
        label (`str`): The token as text.
        position (`int`): Its row in the layout of every encoder's tokens (`EncoderBlock`).
        token_id (`int`): Its id (in the first of `encoders`' tokenizer).
        encoders (`Tuple[int, ...]`): Indices of the text encoders whose features are scored.
        index (`int`, *optional*): Its position in its own encoder's padded token sequence (`position` when `None`:
            the encoder's block starts at row 0).
    """

    label: str
    position: int
    token_id: int
    encoders: Tuple[int, ...]
    index: Optional[int] = None

    @property
    def token_index(self) -> int:
        return self.position if self.index is None else self.index


@dataclass(frozen=True)
class EncoderBlock:
    r"""
    Where one text encoder's tokens sit in the layout of every encoder's tokens.

    Args:
        rows (`slice`): Its token positions (rows of the layout's sequence axis).
        features (`slice`): Its features (of the layout's feature axis).
    """

    rows: slice
    features: slice


def text_layout(
    family: PipelineFamily, pipe, lengths: Sequence[int], level: AttributionLevel
) -> List[Optional[EncoderBlock]]:
    r"""
    Each text encoder's block in the layout at `level`, given its padded token length: at the token level, encoders of
    a sequence group side by side on the features of shared rows, groups one after the other on the rows; at the
    text-encoder-output level, the rows and features its output occupies in the denoiser's `encoder_hidden_states`
    (`None` for an encoder that conditions through a pooled vector only).
    """
    output = AttributionLevel(level) is AttributionLevel.TEXT_ENCODER_OUTPUT
    blocks: List[Optional[EncoderBlock]] = []
    group_rows: Dict[int, slice] = {}
    group_width: Dict[int, int] = {}
    next_row = 0
    for slot, length in zip(family.text_encoders(pipe), lengths):
        if output and slot.feature_slice is None:
            blocks.append(None)
            continue
        group = slot.sequence_group
        if group not in group_rows:
            group_rows[group], group_width[group] = slice(next_row, next_row + length), 0
            next_row += length
        elif group_rows[group].stop - group_rows[group].start != length:
            raise RuntimeError(f"Text encoders of sequence group {group} made token sequences of different lengths.")
        if output:
            features = slot.feature_slice
        else:
            width = int(input_embeddings(getattr(pipe, slot.encoder)).weight.shape[-1])
            features = slice(group_width[group], group_width[group] + width)
            group_width[group] += width
        blocks.append(EncoderBlock(group_rows[group], features))
    return blocks


def layout_shape(blocks: Sequence[Optional[EncoderBlock]]) -> Tuple[int, int]:
    r"""(rows, features) of a token-level layout."""
    present = [b for b in blocks if b is not None]
    return max(b.rows.stop for b in present), max(b.features.stop for b in present)


def place(parts: Sequence[Optional[torch.Tensor]], blocks: Sequence[Optional[EncoderBlock]]) -> torch.Tensor:
    r"""Each encoder's (..., length, width) tensor in its block of one (..., rows, features) tensor (zeros elsewhere).
    With one block at the origin, the tensor itself."""
    present = [(part, block) for part, block in zip(parts, blocks) if block is not None and part is not None]
    rows, width = layout_shape(blocks)
    if len(present) == 1 and tuple(present[0][0].shape[-2:]) == (rows, width):
        return present[0][0]
    lead = present[0][0].shape[:-2]
    out = torch.zeros((*lead, rows, width), dtype=present[0][0].dtype, device=present[0][0].device)
    for part, block in present:
        out[..., block.rows, block.features] = part
    return out


def prompt_words(text: str) -> List[Tuple[str, int, int]]:
    r"""The words of a text (maximal runs of non-space characters) with their character spans."""
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def concept_name(word: str) -> str:
    r"""A word as a concept: without the punctuation around it ("left," -> "left")."""
    return word.strip(string.punctuation) or word


@dataclass
class PromptTokens:
    r"""The tokens of one image's prompt, per text encoder, and the units they are scored as."""

    ids: List[List[int]]
    tokens: List[List[str]]
    units: List[TokenUnit]
    blocks: List[Optional[EncoderBlock]] = field(default_factory=list)
    # Per encoder: the text it read, and each token's (start, end) characters in it (None for special tokens).
    texts: List[str] = field(default_factory=list)
    spans: List[List[Optional[Tuple[int, int]]]] = field(default_factory=list)
    # The encoder whose text is the call's `prompt` (its words are the words scored by `word_scores`).
    prompt_encoder: int = 0

    def words(self) -> List[Tuple[str, int, int]]:
        r"""The words of the prompt (maximal runs of non-space characters) with their character spans."""
        return prompt_words(self.texts[self.prompt_encoder] if self.texts else "")

    def word_units(self) -> List[List[int]]:
        r"""
        For each word of `words()`, the indices of the units (of every tokenizer that read the prompt's text) whose
        characters overlap it; a unit of spaces only (sentencepiece's bare word-start marker) belongs to the word it
        starts. Units with no characters (start, end, padding) belong to no word.
        """
        words = self.words()
        groups: List[List[int]] = [[] for _ in words]
        for index, unit in enumerate(self.units):
            k = unit.encoders[0]
            if not self.spans or self.texts[k] != self.texts[self.prompt_encoder]:
                continue
            span = self.spans[k][unit.token_index]
            if span is None:
                continue
            hit = next((w for w, (_, start, end) in enumerate(words) if span[0] < end and start < span[1]), None)
            if hit is None:
                hit = next((w for w, (_, start, _) in enumerate(words) if start >= span[0]), None)
            if hit is not None:
                groups[hit].append(index)
        return groups

    def word_scores(self, scores: Sequence[float]) -> List[Tuple[str, float]]:
        r"""
        Scores of the prompt's words: each word's score is the sum of the scores of its units (`word_units`): T5's
        pieces of a word, and the same word under CLIP's tokenisation, merge into one word.
        """
        return [
            (word, float(sum(float(scores[i]) for i in group)))
            for (word, _, _), group in zip(self.words(), self.word_units())
        ]

    @property
    def positions(self) -> List[int]:
        return [unit.position for unit in self.units]

    @property
    def labels(self) -> List[str]:
        return [unit.label for unit in self.units]

    @property
    def slices(self) -> List[Optional[slice]]:
        r"""Each encoder's features in the layout of `blocks` (`None` for an encoder not in it)."""
        return [None if block is None else block.features for block in self.blocks]


def attributed_positions(ids: Sequence[int], tokenizer, consider_special_tokens: bool) -> List[int]:
    r"""Positions of a padded id sequence that are attributed: the prompt's tokens (and start/end ones if asked)."""
    ids = list(ids)
    eos = tokenizer.eos_token_id
    end = ids.index(eos) if eos in ids else len(ids)
    start = 1 if ids and ids[0] == tokenizer.bos_token_id else 0
    if consider_special_tokens:
        return list(range(0, min(end + 1, len(ids))))
    return list(range(start, end))


def token_spans(tokenizer, text: str, ids: Sequence[int]) -> List[Optional[Tuple[int, int]]]:
    r"""
    Each token's (start, end) characters in `text` (`None` for special and padding tokens), from the tokenizer's
    offset mapping; for a tokenizer without one, by finding each token's text in the lower-cased text, in order.
    """
    special = set(tokenizer.all_special_ids)
    try:
        offsets = tokenizer(
            text, padding="max_length", max_length=len(ids), truncation=True, return_offsets_mapping=True
        )
        mapping = offsets["offset_mapping"]
        if list(offsets["input_ids"]) == list(ids):
            return [None if i in special or end <= start else (start, end) for i, (start, end) in zip(ids, mapping)]
    except (NotImplementedError, TypeError, ValueError, KeyError):
        pass
    lowered, cursor, spans = text.lower(), 0, []
    for i, token in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        piece = clean_token(token).lower()
        found = -1 if i in special or not piece else lowered.find(piece, cursor)
        spans.append(None if found < 0 else (found, found + len(piece)))
        cursor = cursor if found < 0 else found + len(piece)
    return spans


def tokenize(
    family: PipelineFamily,
    pipe,
    prompts: Dict[str, List[str]],
    consider_special_tokens: bool,
    clean: bool,
    call_kwargs: Optional[Dict[str, Any]] = None,
    level: AttributionLevel = AttributionLevel.TOKEN_EMBEDDINGS,
) -> List[PromptTokens]:
    r"""
    The tokens of every image's prompt(s) as the pipeline's own tokenizers make them (padded to the length the
    pipeline pads to), and their units at `level` (at the text-encoder-output level, only the tokens of encoders whose
    output is in the denoiser's `encoder_hidden_states`).
    """
    slots = family.text_encoders(pipe)
    per_encoder = []
    for slot in slots:
        tokenizer = getattr(pipe, slot.tokenizer)
        texts = prompts.get(slot.prompt_argument) or prompts["prompt"]
        if hasattr(pipe, "maybe_convert_prompt"):
            texts = pipe.maybe_convert_prompt(texts, tokenizer)
        length = family.token_length(pipe, slot, call_kwargs or {})
        ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True).input_ids
        per_encoder.append((tokenizer, ids, texts))
    blocks = text_layout(family, pipe, [len(ids[0]) for _, ids, _ in per_encoder], level)
    result = []
    for image in range(len(per_encoder[0][1])):
        ids = [encoder_ids[image] for _, encoder_ids, _ in per_encoder]
        texts = [encoder_texts[image] for _, _, encoder_texts in per_encoder]
        spans = [token_spans(tokenizer, text, row) for (tokenizer, _, _), text, row in zip(per_encoder, texts, ids)]
        tokens = [tokenizer.convert_ids_to_tokens(row) for (tokenizer, _, _), row in zip(per_encoder, ids)]
        labels = [[clean_token(t) if clean else t for t in row] for row in tokens]
        positions = [
            attributed_positions(row, tokenizer, consider_special_tokens)
            for (tokenizer, _, _), row in zip(per_encoder, ids)
        ]
        units: List[TokenUnit] = []
        scored = [k for k in range(len(ids)) if blocks[k] is not None]
        for group in dict.fromkeys(slots[k].sequence_group for k in scored):
            members = [k for k in scored if slots[k].sequence_group == group]
            first = members[0]
            words = [[labels[k][p] for p in positions[k]] for k in range(len(ids))]
            if all(positions[k] == positions[first] and words[k] == words[first] for k in members):
                # One unit per token, scored over every member's features (SDXL's CLIP-L and CLIP-G).
                start = blocks[first].rows.start
                units += [
                    TokenUnit(labels[first][p], start + p, ids[first][p], tuple(members), p) for p in positions[first]
                ]
            else:
                units += [
                    TokenUnit(labels[k][p], blocks[k].rows.start + p, ids[k][p], (k,), p)
                    for k in members
                    for p in positions[k]
                ]
        prompt_encoder = next((k for k, slot in enumerate(slots) if slot.prompt_argument == "prompt"), 0)
        result.append(PromptTokens(ids, tokens, units, blocks, texts, spans, prompt_encoder))
    return result


@dataclass
class TextInputs:
    r"""
    The prompt's embeddings at the attribution level, every text encoder's in its block of the layout.

    Args:
        values (`torch.Tensor`): (images, rows, features), detached.
        slices (`List[slice]`): Each text encoder's features in `values` (`None` for an encoder not in them).
    """

    values: torch.Tensor
    slices: List[Optional[slice]]

    def unit_features(self, unit: TokenUnit) -> List[int]:
        width = self.values.shape[-1]
        return [i for k in unit.encoders for i in range(width)[self.slices[k]]]


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
    blocks = text_layout(family, pipe, [leaf.shape[1] for leaf in token_leaves], AttributionLevel.TOKEN_EMBEDDINGS)
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
    `token_embeddings` (rows, length, features); the prompts are repeated to the number of rows."""
    slots = family.text_encoders(pipe)
    rows = token_embeddings.shape[0]
    scopes = [
        ReplacedInputEmbeddings(getattr(pipe, slot.encoder), token_embeddings[:, block.rows, block.features])
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
    with torch.enable_grad():
        conditioning = encode_replaced(family, pipe, prompts, call_kwargs, place(leaves, blocks), blocks)
    return TextEncoding(leaves, conditioning, blocks)


def token_embedding_values(family: PipelineFamily, pipe, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    r"""Each encoder's input token embeddings of `ids` (one id row per encoder) in the token-level layout:
    (1, rows, features)."""
    parts = []
    for slot, row in zip(family.text_encoders(pipe), ids):
        layer = input_embeddings(getattr(pipe, slot.encoder))
        with torch.no_grad():
            parts.append(layer(torch.tensor([list(row)], device=layer.weight.device)).detach())
    return place(parts, token_blocks(family, pipe, ids))


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
            prompt_rows = self.encoding.conditioning
        elif self.level is AttributionLevel.TOKEN_EMBEDDINGS:
            self.encoding = encode_replaced_with_graph(
                self.family, self.pipe, self.prompts, self.call_kwargs, self.embeddings.to(device), self.blocks
            )
            prompt_rows = self.encoding.conditioning
        elif self.embeddings is not None:
            prompt_rows = {**prompt_rows, "encoder_hidden_states": self.embeddings.to(device)}
        self.conditioning = {name: t.detach().clone().requires_grad_(True) for name, t in prompt_rows.items()}
        return self.conditioning


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


def token_blocks(family: PipelineFamily, pipe, ids: Sequence[Sequence[int]]) -> List[EncoderBlock]:
    r"""Each text encoder's block in the token-level layout, for its padded token ids (one row per encoder)."""
    return text_layout(family, pipe, [len(row) for row in ids], AttributionLevel.TOKEN_EMBEDDINGS)


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
    family: PipelineFamily,
    pipe,
    prompts: Dict[str, List[str]],
    call_kwargs: Dict[str, Any],
    tokens: PromptTokens,
    chunk: int = 32,
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
    blocks = token_blocks(family, pipe, tokens.ids)
    groups = list(dict.fromkeys(unit.encoders for unit in tokens.units))
    columns = [
        (group, row) for group in groups for row in range(blocks[group[0]].rows.start, blocks[group[0]].rows.stop)
    ]
    values = token_embedding_values(family, pipe, tokens.ids)
    parts = []
    encoders = [getattr(pipe, slot.encoder) for slot in slots]
    with torch.no_grad(), EagerAttention(encoders), Float32Compute(encoders):
        for start in range(0, len(columns), chunk):
            piece = columns[start : start + chunk]
            tangents = torch.zeros((len(piece), *values.shape[1:]), device=values.device, dtype=values.dtype)
            for row, (group, position) in enumerate(piece):
                for k in group:
                    tangents[row, position, blocks[k].features] = values[0, position, blocks[k].features]
            with forward_ad.dual_level():
                dual = forward_ad.make_dual(values.expand(len(piece), -1, -1).clone(), tangents)
                made = encode_replaced(family, pipe, prompts, call_kwargs, dual, blocks)["encoder_hidden_states"]
                tangent = forward_ad.unpack_dual(made).tangent
            parts.append(tangent.double().norm(dim=-1).T.cpu())  # (positions, columns of this piece)
    weights = torch.cat(parts, 1)
    total = weights.sum(1, keepdim=True)
    empty = (total[:, 0] <= 1e-12).nonzero()[:, 0]
    for position in empty.tolist():  # a position no token feeds keeps its own share (if it is a token's row)
        own = [c for c, (_, row) in enumerate(columns) if row == position]
        if own:
            weights[position, own[0]] = 1.0
    return TokenMixing(weights / weights.sum(1, keepdim=True).clamp_min(1e-30), columns)


def concept_states(
    family: PipelineFamily, pipe, concepts: Sequence[str], call_kwargs: Dict[str, Any], device
) -> torch.Tensor:
    r"""
    Each concept encoded on its own by the pipeline's own `encode_prompt`: the mean of its tokens' states (start, end
    and padding left out) in the denoiser's `encoder_hidden_states`, (concepts, features).
    """
    prompts = {"prompt": list(concepts)}
    with torch.no_grad():
        states = family.encode(pipe, prompts, call_kwargs, device)["encoder_hidden_states"]
    tokens = tokenize(family, pipe, prompts, False, True, call_kwargs, AttributionLevel.TEXT_ENCODER_OUTPUT)
    rows = []
    for index, (concept, prompt) in enumerate(zip(concepts, tokens)):
        positions = sorted(set(prompt.positions))
        if not positions:
            raise ValueError(f"The concept {concept!r} has no token of its own: name concepts with words.")
        rows.append(states[index, positions].float().mean(0))
    return torch.stack(rows)
