r"""
The prompt's side of the data path: tokens and the units they are scored as (`tokens`), where every text encoder's
tokens sit (`layout`), the text encoders run with a graph from the input token embeddings (or from their outputs)
to the conditioning the denoiser reads (`encoding`), and how much each token feeds each conditioning position
(`mixing`).

A family may condition on several text encoders. Every encoder's tokens sit in one layout, an `EncoderBlock` of rows
(sequence positions) and features each: encoders of one `sequence_group` share rows and sit side by side on the
feature axis (SDXL: CLIP-L and CLIP-G; SD3: CLIP-L and CLIP-G), groups follow one another on the sequence axis (SD3:
T5 after CLIP; Flux: the pooled-only CLIP after T5). Where encoders share rows, their token embeddings at one row are
treated as one vector, and when they tokenize their text into the same tokens (SDXL with `prompt_2` unset or equal
to `prompt`) a token is one unit scored over all its features; otherwise each encoder's tokens are units of their
own, scored over that encoder's features.
"""

from .encoding import (
    ConditioningLeaves,
    TextEncoding,
    check_same,
    encode_replaced,
    encode_replaced_with_graph,
    encode_with_graph,
    token_embedding_values,
)
from .layout import EncoderBlock, layout_shape, place, text_layout, token_blocks
from .mixing import TokenMixing, concept_states, token_mixing
from .tokens import (
    PromptTokens,
    TextInputs,
    TokenUnit,
    attributed_positions,
    call_texts,
    clean_token,
    concept_name,
    prompt_words,
    token_spans,
    tokenize,
)

__all__ = [
    "ConditioningLeaves",
    "EncoderBlock",
    "PromptTokens",
    "TextEncoding",
    "TextInputs",
    "TokenMixing",
    "TokenUnit",
    "attributed_positions",
    "call_texts",
    "check_same",
    "clean_token",
    "concept_name",
    "concept_states",
    "encode_replaced",
    "encode_replaced_with_graph",
    "encode_with_graph",
    "layout_shape",
    "place",
    "prompt_words",
    "text_layout",
    "token_blocks",
    "token_embedding_values",
    "token_mixing",
    "token_spans",
    "tokenize",
]
