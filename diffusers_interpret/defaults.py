"""Defaults shared by the explainers and the command line (no heavy imports here)."""

# Chosen by the faithfulness benchmark (benchmarks/faithfulness.py, docs/methods.md): on the toy model's fresh
# two-object scenes it ranks the boxed object's colour word first among all words and passes the swapped-box control,
# for about the cost of a plain generation.
DEFAULT_ATTRIBUTION_METHOD = "word_attention"
DEFAULT_ATTRIBUTION_LEVEL = "token_embeddings"
