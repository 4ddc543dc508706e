"""Independent attention processors for the tests: the models' attention math with an explicit softmax, whose
probabilities they keep (every head, query and key) for a test to compare the recorded maps with."""

import torch


class ExplicitJointAttention:
    r"""Flux's (and Chroma's) `FluxAttnProcessor` math with an explicit softmax over the scores plus the layer's
    attention mask as the SDPA kernel applies it (boolean: kept keys; floating: added)."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        d = attn.head_dim
        q = attn.norm_q(attn.to_q(hidden_states).unflatten(-1, (-1, d)))
        k = attn.norm_k(attn.to_k(hidden_states).unflatten(-1, (-1, d)))
        v = attn.to_v(hidden_states).unflatten(-1, (-1, d))
        if encoder_hidden_states is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, d))
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        scores = q.float() @ k.float().transpose(-1, -2) / d**0.5
        if attention_mask is not None:
            if attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, float("-inf"))
            else:
                scores = scores + attention_mask
        probs = torch.softmax(scores, dim=-1)
        self.store.append(probs)  # (batch, heads, all queries, all keys)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2, 3)
        if encoder_hidden_states is not None:
            text, image = out[:, : encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1] :]
            return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)
        return out


class ExplicitFlux2Attention:
    r"""The math of both of Flux 2's attention layers' processors (double-stream, and single-stream with its fused
    query, key, value and MLP projection) with an explicit softmax."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, *args, image_rotary_emb=None):
        from diffusers.models.embeddings import apply_rotary_emb

        # (hidden, encoder hidden, mask, rotary) for the double-stream layers, (hidden, mask, rotary) for the others.
        single = hasattr(attn, "to_qkv_mlp_proj")
        encoder_hidden_states = None if single else args[0]
        image_rotary_emb = args[-1] if image_rotary_emb is None else image_rotary_emb
        d, mlp = attn.head_dim, None
        if hasattr(attn, "to_qkv_mlp_proj"):
            projected = attn.to_qkv_mlp_proj(hidden_states)
            q, k, v = projected[..., : 3 * attn.inner_dim].chunk(3, dim=-1)
            mlp = projected[..., 3 * attn.inner_dim :]
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (x.unflatten(-1, (-1, d)) for x in (q, k, v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            eq = attn.norm_added_q(attn.add_q_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            ek = attn.norm_added_k(attn.add_k_proj(encoder_hidden_states).unflatten(-1, (-1, d)))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(-1, (-1, d))
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
        k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) / d**0.5, dim=-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2, 3)
        if mlp is not None:
            return attn.to_out(torch.cat([out, attn.mlp_act_fn(mlp)], dim=-1))
        text, image = out[:, : encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1] :]
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


class ExplicitQwenImageAttention:
    r"""The math of Qwen-Image's dual-stream attention processor with an explicit softmax: each stream's projections
    and norms, each stream rotated by its own complex frequencies, [text, image] attended jointly (the padding of a
    batch's shorter prompts masked out)."""

    def __init__(self, store):
        self.store = store

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        encoder_hidden_states_mask=None,
        attention_mask=None,
        image_rotary_emb=None,
    ):
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        d = attn.inner_dim // attn.heads
        q, k, v = (f(hidden_states).unflatten(-1, (-1, d)) for f in (attn.to_q, attn.to_k, attn.to_v))
        eq, ek, ev = (
            f(encoder_hidden_states).unflatten(-1, (-1, d))
            for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        )
        q, k, eq, ek = attn.norm_q(q), attn.norm_k(k), attn.norm_added_q(eq), attn.norm_added_k(ek)
        image_freqs, text_freqs = image_rotary_emb
        q, k = (apply_rotary_emb_qwen(x, image_freqs, use_real=False) for x in (q, k))
        eq, ek = (apply_rotary_emb_qwen(x, text_freqs, use_real=False) for x in (eq, ek))
        q, k, v = (torch.cat(pair, 1).transpose(1, 2) for pair in ((eq, q), (ek, k), (ev, v)))
        scores = q.float() @ k.float().transpose(-1, -2) / d**0.5
        if encoder_hidden_states_mask is not None:
            keep = torch.cat(
                [encoder_hidden_states_mask.bool(), torch.ones_like(hidden_states[..., 0], dtype=torch.bool)], 1
            )
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2, 3)
        text, image = out[:, : encoder_hidden_states.shape[1]], out[:, encoder_hidden_states.shape[1] :]
        return attn.to_out[1](attn.to_out[0](image)), attn.to_add_out(text)


class ExplicitPRXAttention:
    r"""The math of PRX's attention processor with an explicit softmax: the image's queries over [text, image] keys,
    the text's padding masked out."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.transformers.transformer_prx import apply_rope

        b, n, h, d = hidden_states.shape[0], hidden_states.shape[1], attn.heads, attn.head_dim
        q, k, v = attn.img_qkv_proj(hidden_states).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(attn.norm_q(q), image_rotary_emb), apply_rope(attn.norm_k(k), image_rotary_emb)
        tk, tv = attn.txt_kv_proj(encoder_hidden_states).reshape(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        k, v = torch.cat([attn.norm_added_k(tk), k], 2), torch.cat([tv, v], 2)
        scores = q.float() @ k.float().transpose(-1, -2) / d**0.5
        if attention_mask is not None:
            keep = torch.cat([attention_mask.bool(), torch.ones(b, n, dtype=torch.bool)], 1)
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, n, h * d)
        return attn.to_out[0](out)


class ExplicitZImageAttention:
    r"""The math of Z-Image's single-stream attention processor with an explicit softmax: each head's query and key
    RMS-normed and rotated by the row's complex frequencies, the batch's padding masked out."""

    def __init__(self, store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        q, k, v = (f(hidden_states).unflatten(-1, (attn.heads, -1)) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)

        def rotate(x):
            pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
            return torch.view_as_real(pairs * freqs_cis.unsqueeze(2)).flatten(3).type_as(x)

        q, k = rotate(q), rotate(k)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        scores = q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        self.store.append(probs)
        out = (probs.to(v.dtype) @ v).transpose(1, 2).flatten(2, 3)
        return attn.to_out[0](out)
