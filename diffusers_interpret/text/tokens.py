r"""
The prompt's tokens as the pipeline's own tokenizers make them, the units they are scored as, and the prompt's words
(every tokenizer's pieces of a word merged). Where encoders share rows and tokenize their text alike (SDXL with
`prompt_2` unset or equal to `prompt`), a token is one unit scored over all their features; otherwise each encoder's
tokens are units of their own.
"""

import re
import string
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..attribution import AttributionLevel
from ..families import PipelineFamily
from .layout import EncoderBlock, text_layout


def clean_token(token: str) -> str:
    """A token as text: CLIP's end-of-word marker `</w>` removed (as a suffix, not as a set of characters), and
    sentencepiece's word-start marker `▁` (T5) or byte-level BPE's leading-space `Ġ` (Qwen, Mistral) where the token
    has more than the marker."""
    token = token[: -len("</w>")] if token.endswith("</w>") else token
    return token[1:] if token[:1] in ("▁", "Ġ") and len(token) > 1 else token


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


def prompt_words(text: str) -> List[Tuple[str, int, int]]:
    r"""The words of a text (maximal runs of non-space characters) with their character spans."""
    return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def call_texts(prompts: Dict[str, List[str]]) -> List[str]:
    r"""Every text of a call's prompts by argument (`prompt`'s, then `prompt_2`'s, ...): the texts whose words are
    the call's words."""
    return [text for texts in prompts.values() for text in texts]


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
    # The encoder whose text is the call's `prompt`.
    prompt_encoder: int = 0

    def text_encoders(self) -> List[Tuple[int, ...]]:
        r"""The texts the words are read from, each once, as the encoders that read it: one text where every encoder
        reads the prompt; where the call gives other encoders texts of their own (`prompt_2`: Flux's T5, SDXL's and
        SD3's CLIP-G; `prompt_3`: SD3's T5), each text, in the order their tokens are listed."""
        if not self.texts:
            return []
        listed = [unit.encoders[0] for unit in self.units]
        order = list(dict.fromkeys(listed + [self.prompt_encoder] + list(range(len(self.texts)))))
        distinct = list(dict.fromkeys(self.texts[k] for k in order))
        return [tuple(k for k in range(len(self.texts)) if self.texts[k] == text) for text in distinct]

    def word_texts(self) -> List[int]:
        r"""For each word of `words()`, the index of its text in `text_encoders()`."""
        return [t for t, group in enumerate(self.text_encoders()) for _ in prompt_words(self.texts[group[0]])]

    def words(self) -> List[Tuple[str, int, int]]:
        r"""The words of the prompt (maximal runs of non-space characters) with their character spans in their text:
        the words of each text the encoders read, text after text (`text_encoders()`)."""
        return [word for group in self.text_encoders() for word in prompt_words(self.texts[group[0]])]

    def word_units(self) -> List[List[int]]:
        r"""
        For each word of `words()`, the indices of the units (of every tokenizer that read the word's text) whose
        characters overlap it; a unit of spaces only (sentencepiece's bare word-start marker) belongs to the word it
        starts. Units with no characters (start, end, padding) belong to no word.
        """
        words, texts, text_groups = self.words(), self.word_texts(), self.text_encoders()
        of_encoder = {k: t for t, group in enumerate(text_groups) for k in group}
        # Each text's words: a unit is matched against the words of the text its encoder read.
        own = {t: [w for w, owner in enumerate(texts) if owner == t] for t in range(len(text_groups))}
        groups: List[List[int]] = [[] for _ in words]
        for index, unit in enumerate(self.units):
            k = unit.encoders[0]
            if not self.spans or k not in of_encoder:
                continue
            span = self.spans[k][unit.token_index]
            if span is None:
                continue
            candidates = own[of_encoder[k]]
            hit = next((w for w in candidates if span[0] < words[w][2] and words[w][1] < span[1]), None)
            if hit is None:
                hit = next((w for w in candidates if words[w][1] >= span[0]), None)
            if hit is not None:
                groups[hit].append(index)
        return groups

    def word_scores(self, scores: Sequence[float], merge: str = "sum") -> List[Tuple[str, float]]:
        r"""
        Scores of the words of `words()`, from the scores of their units (`word_units`): T5's pieces of a word, and
        the same word under CLIP's tokenisation (where both read the same text), merge into one word.

        Args:
            scores (`Sequence[float]`): One score per unit.
            merge (`str`, *optional*, defaults to `"sum"`): `"sum"`: a word's score is its units' sum (additive
                attributions: a word's effect is its pieces' together). `"max"`: its most-read piece under each
                encoder, summed over the encoders (attention read off maps: a word a tokenizer splits into more pieces
                takes more positions, not more meaning; the sum would grow with the pieces, a mean shrink with them).
        """
        if merge not in ("sum", "max"):
            raise ValueError(f"`merge` must be 'sum' or 'max', got {merge!r}.")
        merged = []
        for (word, _, _), group in zip(self.words(), self.word_units()):
            if merge == "sum":
                merged.append((word, float(sum(float(scores[i]) for i in group))))
                continue
            per_encoder: Dict[int, List[float]] = {}
            for i in group:
                per_encoder.setdefault(self.units[i].encoders[0], []).append(float(scores[i]))
            merged.append((word, float(sum(max(values) for values in per_encoder.values()))))
        return merged

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


def templated_positions(
    ids: Sequence[int], spans: Sequence[Optional[Tuple[int, int]]], tokenizer, consider_special_tokens: bool
) -> List[int]:
    r"""Positions of a padded id sequence of a prompt inside a chat template that are attributed: the tokens of the
    prompt's own characters (with `consider_special_tokens`, every token before the padding: the template's too)."""
    if consider_special_tokens:
        pad = tokenizer.pad_token_id
        return [p for p, i in enumerate(ids) if i != pad]
    return [p for p, span in enumerate(spans) if span is not None]


def prompt_spans(
    spans: Sequence[Optional[Tuple[int, int]]], start: int, length: int
) -> List[Optional[Tuple[int, int]]]:
    r"""Token spans in a text that holds the prompt at `start` (a chat template), as spans in the prompt: `None`
    for tokens outside it (as given where the prompt is the whole text)."""
    moved: List[Optional[Tuple[int, int]]] = []
    for span in spans:
        if span is None or span[1] <= start or span[0] >= start + length:
            moved.append(None)
        else:
            moved.append((max(span[0] - start, 0), min(span[1] - start, length)))
    return moved


def token_spans(tokenizer, text: str, ids: Sequence[int], **arguments) -> List[Optional[Tuple[int, int]]]:
    r"""
    Each token's (start, end) characters in `text` (`None` for special and padding tokens), from the tokenizer's
    offset mapping (the text tokenized with `arguments` besides); for a tokenizer without one, by finding each token's
    text in the lower-cased text, in order.
    """
    special = set(tokenizer.all_special_ids)
    try:
        offsets = tokenizer(
            text,
            padding="max_length",
            max_length=len(ids),
            truncation=True,
            return_offsets_mapping=True,
            **arguments,
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
        tokenizer = family.tokenizer(pipe, slot)
        texts = prompts.get(slot.prompt_argument) or prompts["prompt"]
        if hasattr(pipe, "maybe_convert_prompt"):
            texts = pipe.maybe_convert_prompt(texts, tokenizer)
        length = family.token_length(pipe, slot, call_kwargs or {})
        read = [
            family.encoder_text(pipe, slot, text, call_kwargs) for text in texts
        ]  # (what the tokenizer reads, where)
        extra = [family.tokenizer_arguments(pipe, slot, full) for full, _ in read]
        if slot.pad_to_longest:
            longest = max(len(tokenizer(full, **arguments).input_ids) for (full, _), arguments in zip(read, extra))
            length = min(length, longest)
        ids = [
            tokenizer(full, padding="max_length", max_length=length, truncation=True, **arguments).input_ids
            for (full, _), arguments in zip(read, extra)
        ]
        per_encoder.append((tokenizer, ids, texts, read, extra))
    blocks = text_layout(family, pipe, [len(ids[0]) for _, ids, _, _, _ in per_encoder], level, call_kwargs)
    result = []
    for image in range(len(per_encoder[0][1])):
        ids = [encoder_ids[image] for _, encoder_ids, _, _, _ in per_encoder]
        texts = [encoder_texts[image] for _, _, encoder_texts, _, _ in per_encoder]
        spans = [
            prompt_spans(token_spans(tokenizer, read[image][0], row, **extra[image]), read[image][1], len(text))
            for (tokenizer, _, _, read, extra), text, row in zip(per_encoder, texts, ids)
        ]
        tokens = [tokenizer.convert_ids_to_tokens(row) for (tokenizer, _, _, _, _), row in zip(per_encoder, ids)]
        labels = [[clean_token(t) if clean else t for t in row] for row in tokens]
        positions = [
            templated_positions(row, row_spans, tokenizer, consider_special_tokens)
            if slot.template
            else attributed_positions(row, tokenizer, consider_special_tokens)
            for (tokenizer, _, _, _, _), row, row_spans, slot in zip(per_encoder, ids, spans, slots)
        ]
        # Positions whose states the pipeline drops reach the denoiser as no row: never attributed.
        positions = [
            row if block is None else [p for p in row if block.row_of(p) is not None]
            for row, block in zip(positions, blocks)
        ]
        units: List[TokenUnit] = []
        scored = [k for k in range(len(ids)) if blocks[k] is not None]
        for group in dict.fromkeys(slots[k].sequence_group for k in scored):
            members = [k for k in scored if slots[k].sequence_group == group]
            first = members[0]
            words = [[labels[k][p] for p in positions[k]] for k in range(len(ids))]
            if all(positions[k] == positions[first] and words[k] == words[first] for k in members):
                # One unit per token, scored over every member's features (SDXL's CLIP-L and CLIP-G).
                units += [
                    TokenUnit(labels[first][p], blocks[first].row_of(p), ids[first][p], tuple(members), p)
                    for p in positions[first]
                ]
            else:
                units += [
                    TokenUnit(labels[k][p], blocks[k].row_of(p), ids[k][p], (k,), p)
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
