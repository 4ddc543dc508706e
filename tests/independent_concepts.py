"""
ConceptAttention written out with explicit softmax attention from a HunyuanVideo transformer's (1.0 or 1.5) dual-stream
blocks' parts, independent of the recorder (which calls the blocks themselves).
"""

import torch
from diffusers.models.embeddings import apply_rotary_emb


def hunyuan_concept_probabilities(transformer, embedded, block_inputs) -> torch.Tensor:
    r"""
    The concept tokens (`embedded(timestep)`: (1, concepts, features) in the text stream) carried through the
    dual-stream blocks with the text-stream weights, attending to [video, concepts]; each video token's attention
    output computed against [video, the prompt's kept text]; per block the concept x video dot products, averaged
    over the blocks and the calls, a softmax across the concepts: (concepts, video tokens).

    `block_inputs`: per traced call, per block, (video, text, temb, the text's kept keys (text tokens,) bool, the
    video's rotary embedding, the call's timestep).
    """
    with torch.no_grad():
        scores = []
        for call in block_inputs:
            stream = embedded(call[0][5])
            per_block = []
            for block, (video, text, temb, keep_text, rotary, _) in zip(transformer.transformer_blocks, call):
                attn = block.attn
                norm_video = block.norm1(video, emb=temb)[0]
                norm_text = block.norm1_context(text, emb=temb)[0]
                norm_c, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = block.norm1_context(stream, emb=temb)

                def heads(x, norm=None, count=attn.heads):
                    x = x.unflatten(-1, (count, -1))
                    return norm(x) if norm is not None else x

                vq = apply_rotary_emb(heads(attn.to_q(norm_video), attn.norm_q), rotary, sequence_dim=1)
                vk = apply_rotary_emb(heads(attn.to_k(norm_video), attn.norm_k), rotary, sequence_dim=1)
                vv = heads(attn.to_v(norm_video))
                tk, tv = heads(attn.add_k_proj(norm_text), attn.norm_added_k), heads(attn.add_v_proj(norm_text))
                cq = heads(attn.add_q_proj(norm_c), attn.norm_added_q)
                ck, cv = heads(attn.add_k_proj(norm_c), attn.norm_added_k), heads(attn.add_v_proj(norm_c))

                def attend(q, k, v, keep=None):
                    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
                    if keep is not None:
                        logits = logits.masked_fill(~keep, float("-inf"))
                    return (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).flatten(2)

                keep = torch.cat([torch.ones(video.shape[1], dtype=torch.bool), keep_text])
                video_out = attend(vq, torch.cat([vk, tk], 1), torch.cat([vv, tv], 1), keep)
                concept_out = attend(cq, torch.cat([vk, ck], 1), torch.cat([vv, cv], 1))
                per_block.append(torch.einsum("bcd,bnd->bcn", concept_out, video_out))
                stream = stream + c_gate_msa[:, None] * attn.to_add_out(concept_out)
                normed = block.norm2_context(stream) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
                stream = stream + c_gate_mlp[:, None] * block.ff_context(normed)
            scores.append(torch.stack(per_block).mean(0))
        return torch.stack(scores).mean(0).softmax(dim=1)[0]
