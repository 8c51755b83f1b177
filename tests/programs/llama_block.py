"""A LLaMA transformer block as NumPy ports of Meta's reference code write it: RMSNorm, rotary
position embeddings on even/odd pairs (``x[..., 0::2]``), grouped-query attention with
``np.repeat`` of the key/value heads, a KV cache written in place
(``cache_k[:B, start_pos:start_pos + T] = xk``) and a SwiGLU feed-forward.

    minicomp bench tests/programs/llama_block.py:llama_block --args-from tests/programs/llama_block.py:make_args
    minicomp bench tests/programs/llama_block.py:llama_block --args-from tests/programs/llama_block.py:make_decode_args
"""

import math

import numpy as np


def rms_norm(x, weight, eps=1e-6):
    return x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * weight


def precompute_freqs(head_dim, end, theta=10000.0):
    """cos and sin of every position's rotation angles: [end, head_dim / 2] each."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2)[: head_dim // 2] / head_dim)
    angles = np.outer(np.arange(end), freqs)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rotary_emb(x, cos, sin):
    """Rotate each (even, odd) pair of ``x`` [B, T, H, D] by its position's angle."""
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    rotated = np.stack([x_even * cos - x_odd * sin, x_even * sin + x_odd * cos], axis=-1)
    return rotated.reshape(x.shape)


def repeat_kv(x, n_rep):
    """[B, T, kv_heads, D] -> [B, T, kv_heads * n_rep, D]: each key/value head serves n_rep queries."""
    return x if n_rep == 1 else np.repeat(x, n_rep, axis=2)


def softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def attention(x, start_pos, cos, sin, mask, cache_k, cache_v, p, n_heads, n_kv_heads):
    B, T, dim = x.shape
    head_dim = dim // n_heads
    xq = (x @ p["wq"]).reshape(B, T, n_heads, head_dim)
    xk = (x @ p["wk"]).reshape(B, T, n_kv_heads, head_dim)
    xv = (x @ p["wv"]).reshape(B, T, n_kv_heads, head_dim)
    xq, xk = apply_rotary_emb(xq, cos, sin), apply_rotary_emb(xk, cos, sin)
    cache_k[:B, start_pos:start_pos + T] = xk
    cache_v[:B, start_pos:start_pos + T] = xv
    keys = repeat_kv(cache_k[:B, :start_pos + T], n_heads // n_kv_heads)
    values = repeat_kv(cache_v[:B, :start_pos + T], n_heads // n_kv_heads)
    xq, keys, values = (a.transpose(0, 2, 1, 3) for a in (xq, keys, values))
    scores = xq @ keys.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
    if mask is not None:
        scores = scores + mask
    out = softmax(scores) @ values                                   # [B, H, T, D]
    return out.transpose(0, 2, 1, 3).reshape(B, T, -1) @ p["wo"]


def feed_forward(x, w1, w2, w3):
    h = x @ w1
    return (h / (1.0 + np.exp(-h)) * (x @ w3)) @ w2                  # SiLU(x W1) * (x W3), then W2


def llama_block(x, start_pos, freqs_cos, freqs_sin, cache_k, cache_v, params, n_heads, n_kv_heads):
    """One block at positions start_pos .. start_pos + T - 1; writes those positions of the cache."""
    T = x.shape[1]
    cos, sin = freqs_cos[start_pos:start_pos + T], freqs_sin[start_pos:start_pos + T]
    mask = None
    if T > 1:  # the prompt: causal within it, everything before it visible
        mask = np.triu(np.full((T, T), -np.inf, dtype=np.float32), k=1)
        mask = np.hstack([np.zeros((T, start_pos), dtype=np.float32), mask])
    h = x + attention(rms_norm(x, params["attention_norm"]), start_pos, cos, sin, mask, cache_k, cache_v,
                      params["attention"], n_heads, n_kv_heads)
    return h + feed_forward(rms_norm(h, params["ffn_norm"]), **params["feed_forward"])


def make_args(batch=1, seq=64, start_pos=0, dim=512, n_heads=8, n_kv_heads=2, hidden=1376, max_seq=256, seed=0):
    """A prompt of ``seq`` tokens' activations, an empty KV cache and the block's weights."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / math.sqrt(shape[0])).astype(np.float32)

    head_dim = dim // n_heads
    params = {"attention": {"wq": w(dim, dim), "wk": w(dim, n_kv_heads * head_dim),
                            "wv": w(dim, n_kv_heads * head_dim), "wo": w(dim, dim)},
              "feed_forward": {"w1": w(dim, hidden), "w2": w(hidden, dim), "w3": w(dim, hidden)},
              "attention_norm": np.ones(dim, np.float32), "ffn_norm": np.ones(dim, np.float32)}
    freqs_cos, freqs_sin = precompute_freqs(head_dim, max_seq)
    cache_k = np.zeros((batch, max_seq, n_kv_heads, head_dim), np.float32)
    cache_v = np.zeros_like(cache_k)
    x = rng.standard_normal((batch, seq, dim)).astype(np.float32)
    return {"x": x, "start_pos": start_pos, "freqs_cos": freqs_cos, "freqs_sin": freqs_sin,
            "cache_k": cache_k, "cache_v": cache_v, "params": params, "n_heads": n_heads,
            "n_kv_heads": n_kv_heads}


def make_decode_args(position=64, **sizes):
    """One token at ``position`` with the cache filled before it (a generation step)."""
    args = make_args(seq=1, start_pos=position, **sizes)
    rng = np.random.default_rng(1)
    for cache in ("cache_k", "cache_v"):
        args[cache][:, :position] = rng.standard_normal(args[cache][:, :position].shape).astype(np.float32)
    return args
