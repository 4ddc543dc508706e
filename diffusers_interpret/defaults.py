"""Defaults shared by the explainers and the command line (no heavy imports here)."""

# Chosen by the faithfulness benchmark (benchmarks/faithfulness.py, docs/methods.md): the fastest method that passes
# the swapped-box control on the toy model's two-object scenes.
DEFAULT_ATTRIBUTION_METHOD = "attention"
DEFAULT_ATTRIBUTION_LEVEL = "token_embeddings"
