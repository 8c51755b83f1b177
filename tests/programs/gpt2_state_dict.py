"""GPT-2's embedding and first transformer block over a batch, written against a flat
Hugging Face style ``state_dict`` (``"h.0.attn.c_attn.weight"``): heads by reshape and
transpose, a boolean causal mask with ``np.where``, GELU with tanh.

    minicomp bench tests/programs/gpt2_state_dict.py:embed_and_block --args-from tests/programs/gpt2_state_dict.py:make_args
"""

import math

import numpy as np


def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def new_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def causal_self_attention(x, sd, prefix, n_head):
    B, T, C = x.shape
    qkv = x @ sd[prefix + "c_attn.weight"] + sd[prefix + "c_attn.bias"]
    q, k, v = np.split(qkv, 3, axis=2)
    q = q.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)   # (B, nh, T, hs)
    k = k.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
    v = v.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)
    att = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(k.shape[-1]))
    mask = np.tril(np.ones((T, T), dtype=bool))
    att = np.where(mask, att, -np.inf)
    att = np.exp(att - att.max(axis=-1, keepdims=True))
    att = att / att.sum(axis=-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    return y @ sd[prefix + "c_proj.weight"] + sd[prefix + "c_proj.bias"]


def block(x, sd, layer, n_head):
    p = f"h.{layer}."
    x = x + causal_self_attention(layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"]), sd, p + "attn.",
                                  n_head)
    h = layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    h = new_gelu(h @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
    return x + h @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]


def embed_and_block(idx, sd, n_head=12):
    """Token and position embeddings of ``idx`` [B, T], then block 0: [B, T, C]."""
    B, T = idx.shape
    tok_emb = sd["wte.weight"][idx]
    pos_emb = sd["wpe.weight"][np.arange(T)]
    return block(tok_emb + pos_emb, sd, 0, n_head)


def make_args(batch=4, seq=128, n_embd=768, n_head=12, n_vocab=50257, n_ctx=1024, seed=0):
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.02):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    c = n_embd
    sd = {"wte.weight": w(n_vocab, c), "wpe.weight": w(n_ctx, c),
          "h.0.ln_1.weight": np.ones(c, np.float32), "h.0.ln_1.bias": np.zeros(c, np.float32),
          "h.0.attn.c_attn.weight": w(c, 3 * c), "h.0.attn.c_attn.bias": w(3 * c),
          "h.0.attn.c_proj.weight": w(c, c), "h.0.attn.c_proj.bias": w(c),
          "h.0.ln_2.weight": np.ones(c, np.float32), "h.0.ln_2.bias": np.zeros(c, np.float32),
          "h.0.mlp.c_fc.weight": w(c, 4 * c), "h.0.mlp.c_fc.bias": w(4 * c),
          "h.0.mlp.c_proj.weight": w(4 * c, c), "h.0.mlp.c_proj.bias": w(c)}
    idx = rng.integers(0, n_vocab, (batch, seq))
    return {"idx": idx, "sd": sd, "n_head": n_head}
