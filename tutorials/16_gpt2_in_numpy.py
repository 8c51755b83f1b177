"""Tutorial 16: GPT-2 written in plain NumPy, generating tokens under ``@minicomp.jit``.

What you learn:

* A real NumPy program compiles unchanged: GPT-2 written the way picoGPT writes it (weights in
  nested dicts and lists, ``**params`` splatted into functions, an embedding lookup
  ``wte[inputs]``, ``np.split`` into heads, ``np.tri`` for the causal mask, ``np.hstack``
  of the heads), with random weights of GPT-2's real shapes.
* **Pytrees**: the nested dicts of weights are arguments; every array in them is an input of
  the compiled function (read at every call, never frozen in), every other value is static.
* **Dynamic dimensions**: autoregressive generation calls the model with a sequence one token
  longer each time. A compiler that specialises on shapes would compile once per token; here
  the second length makes the sequence length a *symbolic size* (torch.compile's "automatic
  dynamic"), so 20 tokens cost 2 compiles. ``np.tri(x.shape[0])`` with a symbolic size becomes
  graph ops, and each kernel takes the length as a parameter.
* Token for token, the compiled model picks what NumPy picks; the time per token of both.

Run from the repository root:  python tutorials/16_gpt2_in_numpy.py
(``MINICOMP_TUTORIAL_SMALL=1`` runs a 2-layer model of width 64, as the tests do.)
"""

import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import minicomp
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minicomp

SMALL = bool(os.environ.get("MINICOMP_TUTORIAL_SMALL"))


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 84 - len(title)))


# ----------------------------------------------------------------------------------------------
step("Step 1: GPT-2 in NumPy, as picoGPT writes it")
# ----------------------------------------------------------------------------------------------
# Nothing below knows about minicomp: these are the functions you would run with plain NumPy.


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    exp_x = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return exp_x / np.sum(exp_x, axis=-1, keepdims=True)


def layer_norm(x, g, b, eps: float = 1e-5):
    mean = np.mean(x, axis=-1, keepdims=True)
    variance = np.var(x, axis=-1, keepdims=True)
    return g * (x - mean) / np.sqrt(variance + eps) + b


def linear(x, w, b):
    return x @ w + b


def ffn(x, c_fc, c_proj):
    return linear(gelu(linear(x, **c_fc)), **c_proj)


def attention(q, k, v, mask):
    return softmax(q @ k.T / np.sqrt(q.shape[-1]) + mask) @ v


def mha(x, c_attn, c_proj, n_head):
    x = linear(x, **c_attn)                                    # [T, 3C]
    qkv_heads = [np.split(part, n_head, axis=-1) for part in np.split(x, 3, axis=-1)]
    causal_mask = (1 - np.tri(x.shape[0], dtype=x.dtype)) * -1e10
    heads = [attention(q, k, v, causal_mask) for q, k, v in zip(*qkv_heads)]
    return linear(np.hstack(heads), **c_proj)


def transformer_block(x, mlp, attn, ln_1, ln_2, n_head):
    x = x + mha(layer_norm(x, **ln_1), **attn, n_head=n_head)
    return x + ffn(layer_norm(x, **ln_2), **mlp)


def gpt2(inputs, wte, wpe, blocks, ln_f, n_head):
    positions = np.arange(inputs.shape[0])
    x = wte[inputs] + wpe[positions]                          # token + position embeddings
    for block in blocks:
        x = transformer_block(x, **block, n_head=n_head)
    return layer_norm(x, **ln_f) @ wte.T                       # logits [T, vocabulary]


def generate(forward, inputs: list, params: dict, n_head: int, n_tokens: int) -> tuple[list, list]:
    """Greedy decoding: append the most likely next token ``n_tokens`` times; the new tokens
    and the seconds each step took."""
    inputs, times = list(inputs), []
    for _ in range(n_tokens):
        start = time.perf_counter()
        logits = forward(np.array(inputs), **params, n_head=n_head)
        inputs.append(int(np.argmax(logits[-1])))
        times.append(time.perf_counter() - start)
    return inputs[-n_tokens:], times


# GPT-2 small's shapes (124M parameters), or a tiny model for the tests
if SMALL:
    n_vocab, n_ctx, n_embd, n_head, n_layer, n_tokens = 97, 64, 64, 4, 2, 8
else:
    n_vocab, n_ctx, n_embd, n_head, n_layer, n_tokens = 50257, 1024, 768, 12, 12, 20


def random_params(seed: int = 0) -> dict:
    """Weights of GPT-2's shapes and roughly its scales, in picoGPT's nesting."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ln():
        return {"g": np.ones(n_embd, np.float32), "b": np.zeros(n_embd, np.float32)}

    def block():
        return {"attn": {"c_attn": {"w": w(n_embd, 3 * n_embd), "b": w(3 * n_embd)},
                         "c_proj": {"w": w(n_embd, n_embd), "b": w(n_embd)}},
                "mlp": {"c_fc": {"w": w(n_embd, 4 * n_embd), "b": w(4 * n_embd)},
                        "c_proj": {"w": w(4 * n_embd, n_embd), "b": w(n_embd)}},
                "ln_1": ln(), "ln_2": ln()}

    return {"wte": w(n_vocab, n_embd, scale=0.1), "wpe": w(n_ctx, n_embd, scale=0.1),
            "blocks": [block() for _ in range(n_layer)], "ln_f": ln()}


params = random_params()
count = sum(a.size for a in [params["wte"], params["wpe"]]) + sum(
    leaf.size for block in params["blocks"] for part in block.values() for leaf in
    (part.values() if "g" in part else (x for layer in part.values() for x in layer.values())))
print(f"{n_layer} layers, width {n_embd}, {n_head} heads, vocabulary {n_vocab}: {count / 1e6:.1f} M parameters")
prompt = [int(t) for t in np.random.default_rng(1).integers(0, n_vocab, 8)]
print(f"prompt (random token ids): {prompt}")

# ----------------------------------------------------------------------------------------------
step("Step 2: generate with NumPy")
# ----------------------------------------------------------------------------------------------
numpy_tokens, numpy_times = generate(gpt2, prompt, params, n_head, n_tokens)
print(f"NumPy generated: {numpy_tokens}")
print(f"NumPy: {1e3 * np.median(numpy_times):.1f} ms per token (median of {n_tokens})")

# ----------------------------------------------------------------------------------------------
step("Step 3: the same function under @minicomp.jit")
# ----------------------------------------------------------------------------------------------
# jit(gpt2) is the whole change. The first call traces and compiles for the prompt's length;
# the second call, one token longer, compiles the length as a symbolic size T; every later
# length is served by that compile.
compiled_gpt2 = minicomp.jit(gpt2)
start = time.perf_counter()
jit_tokens, jit_times = generate(compiled_gpt2, prompt, params, n_head, n_tokens)
total = time.perf_counter() - start
print(f"minicomp generated: {jit_tokens}")
print(f"compiles: {compiled_gpt2.cache_size} for {n_tokens} tokens "
      f"(lengths {len(prompt)}..{len(prompt) + n_tokens - 1}); whole loop {total:.1f} s, compiles included")
assert jit_tokens == numpy_tokens, "the compiled model must pick NumPy's tokens"
assert compiled_gpt2.cache_size == 2, compiled_gpt2.cache_size

# ----------------------------------------------------------------------------------------------
step("Step 4: what the symbolic compile looks like")
# ----------------------------------------------------------------------------------------------
ids = np.array(prompt + jit_tokens)
compiled = compiled_gpt2.compiled_for(ids, *params.values(), n_head)
print(f"size symbols: {compiled.sizes}")
print(f"guards (checked before each call that uses it): {[why for _, _, why in compiled.guards] or 'none'}")
graph_text = str(compiled.traced).splitlines()
print("the traced graph's first inputs and first ops (inputs_0 is the sequence length):")
print(graph_text[0][:120] + " ...")
print("\n".join(graph_text[1:7]))
print(f"... {len(compiled.traced.op_nodes())} ops traced")

# ----------------------------------------------------------------------------------------------
step("Step 5: time per token, after compiling")
# ----------------------------------------------------------------------------------------------
_, again = generate(compiled_gpt2, prompt, params, n_head, n_tokens)  # compiled already: run only
assert compiled_gpt2.cache_size == 2
ratio = np.median(numpy_times) / np.median(again)
print(f"NumPy:    {1e3 * np.median(numpy_times):8.1f} ms per token")
print(f"minicomp: {1e3 * np.median(again):8.1f} ms per token  ({ratio:.2f}x NumPy's speed; median of {n_tokens})")
print("(one machine, one run: rerun for another sample; `minicomp bench` measures with spread)")
