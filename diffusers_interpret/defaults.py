"""Defaults shared by the explainers and the command line (no heavy imports here)."""

# Chosen by the faithfulness benchmark (benchmarks/faithfulness.py, docs/methods.md): on the toy model's fresh
# two-object scenes it ranks the boxed object's colour word first among all words and passes the swapped-box control,
# for about the cost of a plain generation.
DEFAULT_ATTRIBUTION_METHOD = "word_attention"
DEFAULT_ATTRIBUTION_LEVEL = "token_embeddings"
# Where an existing image's explanation noises the image: levels of the schedule's noise (0 clean, 1 pure noise), one
# denoiser call each, averaged (chosen on the toy models' rendered scenes: benchmarks/segmentation.py).
DEFAULT_NOISE_LEVELS = (0.1, 0.3, 0.5)
