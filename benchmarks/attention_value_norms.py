r"""
Would the DiT toys' word maps and rankings be truer if each head's attention to a word were weighed by what the head
takes from it? Kobayashi et al. (2020, "Attention is not only a weight") weigh attention `a_ij` by the norm of what
it carries, `|| W_o,h v_j,h ||` (the word's value through the layer's output projection, head by head), so that a head
that attends to a word but takes little from it counts for little. This runs `faithfulness.py`'s toy benchmark (every
argument is passed on) with the joint-attention maps recorded that way: each head's image-to-text attention times the
text token's value norm, divided by the mean norm over the heads and the prompt's own tokens (so a layer's maps keep
their scale), then averaged over heads. `--weighting none` runs the package as it is, for the side-by-side row.

Double-stream layers take the text's values from `add_v_proj` and write the image's through `to_out[0]`;
single-stream layers take them from `to_v` and have no output projection of their own (their norm is the value's).

    python benchmarks/attention_value_norms.py --weighting values --family flux --num-scenes 20 --deletion-scenes 0 \
        --one-object-scenes 0 --seed 4242 --threads 2 --methods word_attention attention
    python benchmarks/attention_value_norms.py --weighting none ...   # the same scenes, the package as it is
"""

import argparse
import runpy
import sys
from pathlib import Path

import torch

import diffusers_interpret.tracing.attention as attention

_probabilities = attention.joint_attention_probabilities
_mean_over_heads = attention.mean_over_heads
_weights = {"current": None}  # (batch, heads, text tokens) while a layer's probabilities are computed


def value_norms(attn, hidden_states, encoder_hidden_states, text_length: int) -> torch.Tensor:
    r"""(batch, heads, text tokens): the norm of each text token's value, head by head, through the layer's output
    projection where the layer has one for the image."""
    heads = int(attn.heads)
    if encoder_hidden_states is not None and hasattr(attn, "add_v_proj"):
        values, projection = attn.add_v_proj(encoder_hidden_states), attn.to_out[0].weight
    else:  # a single-stream layer: [text, image] already joined
        values, projection = attn.to_v(hidden_states)[:, :text_length], None
    values = values.float().unflatten(-1, (heads, -1))  # (batch, text, heads, head_dim)
    if projection is not None:
        values = torch.einsum("bthd,ohd->btho", values, projection.float().unflatten(1, (heads, -1)))
    return values.norm(dim=-1).transpose(1, 2)


@torch.no_grad()
def weighted_probabilities(attn, hidden_states, encoder_hidden_states, rotary, text_length, *args, **kwargs):
    norms = value_norms(attn, hidden_states, encoder_hidden_states, text_length)
    content = kwargs.get("content")
    kept = torch.ones_like(norms) if content is None else content.to(norms.device, norms.dtype)[:, None, :]
    kept = kept.expand_as(norms)
    _weights["current"] = norms / ((norms * kept).sum((1, 2), keepdim=True) / kept.sum((1, 2), keepdim=True))
    try:
        return _probabilities(attn, hidden_states, encoder_hidden_states, rotary, text_length, *args, **kwargs)
    finally:
        _weights["current"] = None


def weighted_mean_over_heads(probs, heads):
    weights = _weights["current"]
    if weights is not None and probs.dim() == 4 and probs.shape[-1] == weights.shape[-1]:
        probs = probs * weights[:, :, None, :].to(probs.dtype)
    return _mean_over_heads(probs, heads)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weighting", choices=["values", "none"], required=True)
    args, rest = parser.parse_known_args()
    if args.weighting == "values":
        attention.joint_attention_probabilities = weighted_probabilities
        attention.mean_over_heads = weighted_mean_over_heads
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    sys.argv = [str(here / "faithfulness.py"), *rest]
    runpy.run_path(str(here / "faithfulness.py"), run_name="__main__")


if __name__ == "__main__":
    main()
