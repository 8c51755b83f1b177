"""Dynamic dimensions: one compile with a symbolic size serves every length (docs/dynamic_dimensions.md)."""

import re
import warnings

import numpy as np
import pytest

import minicomp
from minicomp.errors import MinicompError, MinicompRuntimeError, MinicompWarning
from minicomp.frontend.tracer import trace_with_structure
from minicomp.ir.dtypes import TensorType
from minicomp.ir.symbolic import Sym, SymbolicShapeError, parse_size
from minicomp.passes.pipeline import run_pipeline
from minicomp.stages import build

SIZES = [0, 1, 2, 7, 33, 100]  # empty, single, and sizes that are no multiple of any tile
T = Sym.symbol("T")


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def check(jitted, make_args, sizes=SIZES, rtol=2e-5, atol=2e-5):
    """``jitted`` matches NumPy at every size, through one compile."""
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)  # no fallback to static sizes
        for n in sizes:
            args = make_args(rng, n)
            got, want = jitted(*args), jitted.fn(*args)
            for g, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (got, want))):
                np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"size {n}")
    assert jitted.cache_size == 1


# -- the symbolic integers -----------------------------------------------------------------------


def test_symbolic_arithmetic_is_exact():
    assert str(T * 768 // 12) == "64*T"
    assert (T + 1) - 1 == T and isinstance(T - T, int)
    assert (T * 768).evaluate({"T": 5}) == 3840
    assert (3 * T * T - 2 * T + 1).evaluate({"T": 4}) == 41
    assert parse_size(str(3 * T * T - 2 * T + 1)) == 3 * T * T - 2 * T + 1
    assert T >= 0 and T + 1 > 0 and T * 4 // T == 4
    assert T != 768 and hash(T * 2) == hash(2 * T)


@pytest.mark.parametrize("undecidable", [lambda: T > 1, lambda: T // 5, lambda: int(T), lambda: range(T),
                                         lambda: bool(T), lambda: np.empty((T, 3))])
def test_symbolic_sizes_never_decide_silently(undecidable):
    with pytest.raises(SymbolicShapeError):
        undecidable()


def test_types_print_and_parse_symbols():
    t = TensorType((T, 768), "f32")
    assert str(t) == "f32[T,768]" and TensorType.parse(str(t)) == t
    assert TensorType.parse("f32[768*T-1,4]").shape == (768 * T - 1, 4)


# -- one compile for every size ------------------------------------------------------------------


def test_elementwise_and_reductions():
    @minicomp.jit(dynamic={"x": [0]})
    def f(x, b):
        y = np.tanh(x * 2.0 + b)
        return y, y.sum(axis=0), y.mean(axis=0), x.max(axis=1), y.mean()

    check(f, lambda rng, n: (rand(rng, n, 24), rand(rng, 24)), sizes=[1, 2, 7, 33, 100])


def test_softmax_and_layernorm_rows():
    @minicomp.jit(dynamic={"x": [0]})
    def f(x, g, b):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        soft = e / e.sum(axis=-1, keepdims=True)
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        return soft, (x - mu) / np.sqrt(var + 1e-5) * g + b

    check(f, lambda rng, n: (rand(rng, n, 40), rand(rng, 40), rand(rng, 40)))


def test_matmul_with_symbolic_rows():
    @minicomp.jit(dynamic={"x": [0]})
    def f(x, w, b):
        return np.maximum(x @ w + b, 0.0)

    check(f, lambda rng, n: (rand(rng, n, 48), rand(rng, 48, 72), rand(rng, 72)), rtol=1e-4, atol=1e-4)


def test_attention_with_symbolic_length_on_both_sides():
    heads, dim = 4, 8

    @minicomp.jit(dynamic={"x": [0]})
    def f(x, w):
        q = (x @ w).reshape(x.shape[0], heads, dim).transpose(1, 0, 2)
        scores = q @ q.transpose(0, 2, 1) / np.sqrt(dim)
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        p = e / e.sum(axis=-1, keepdims=True)
        out = (p @ q).transpose(1, 0, 2).reshape(x.shape[0], heads * dim)
        return out, out[:, 3:9]

    check(f, lambda rng, n: (rand(rng, n, 16), rand(rng, 16, heads * dim)), sizes=[1, 2, 7, 33],
          rtol=1e-4, atol=1e-4)


def test_symbolic_graph_prints_symbols():
    f = minicomp.jit(lambda x: x * 2, dynamic={"x": [1]})
    compiled = f.compiled_for(np.ones((3, 5), np.float32))
    assert "f32[3,x_1]" in str(compiled.traced)
    assert compiled.sizes == {"x_1": "x.shape[1]"}
    assert "mc_size_x_1" in f.inspect(np.ones((3, 5), np.float32)).source


# -- automatic dynamic ---------------------------------------------------------------------------


def test_second_size_compiles_a_symbolic_size_once():
    f = minicomp.jit(lambda x, w: np.exp(x @ w))
    rng = np.random.default_rng(1)
    w = rand(rng, 8, 5)
    for n in [3, 4, 5, 1, 30]:
        x = rand(rng, n, 8) * 0.1
        np.testing.assert_allclose(f(x, w), np.exp(x @ w), rtol=1e-5)
    assert f.cache_size == 2  # the first shape, then one symbolic compile for all the others


def test_dynamic_false_compiles_every_shape():
    f = minicomp.jit(lambda x: x + 1, dynamic=False)
    for n in [3, 4, 5]:
        f(np.ones(n, np.float32))
    assert f.cache_size == 3


def test_generation_loop_compiles_twice_not_per_token():
    rng = np.random.default_rng(2)
    C, layers = 16, 2
    weights = [(rand(rng, C, 3 * C) * 0.2, rand(rng, C, C) * 0.2, rand(rng, C, 4 * C) * 0.2,
                rand(rng, 4 * C, C) * 0.2) for _ in range(layers)]

    def block(x, w_qkv, w_o, w_1, w_2):
        mu = x.mean(axis=-1, keepdims=True)
        h = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
        qkv = h @ w_qkv
        q, k, v = qkv[:, :C], qkv[:, C:2 * C], qkv[:, 2 * C:]
        s = q @ k.T / float(np.sqrt(C))
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        x = x + (e / e.sum(axis=-1, keepdims=True)) @ v @ w_o
        return x + np.tanh(x @ w_1) @ w_2

    def model(x, *ws):
        for i in range(layers):
            x = block(x, *ws[4 * i:4 * i + 4])
        return x

    jitted = minicomp.jit(model)
    flat = [w for layer in weights for w in layer]
    tokens = rand(rng, 1, C)
    for _ in range(12):  # each step's input has one more token
        out = jitted(tokens, *flat)
        np.testing.assert_allclose(out, model(tokens, *flat), rtol=1e-4, atol=1e-4)
        tokens = np.concatenate([tokens, np.tanh(out[-1:])], axis=0)
    assert jitted.cache_size == 2, [(k[0], v.sizes) for k, v in jitted._compiled.items()]


# -- guards and fallbacks ------------------------------------------------------------------------


def test_equal_symbols_must_be_equal_sizes():
    graph, _ = trace_with_structure(lambda x, y: x + y, (TensorType((T, 4), "f32"), TensorType((T, 4), "f32")))
    run = build(run_pipeline(graph)[0])
    x = np.ones((3, 4), np.float32)
    np.testing.assert_array_equal(run(x, x)[0], x + x)
    with pytest.raises(MinicompRuntimeError, match=r"must be f32\[T,4\] \(with T = 3\), got f32\[5,4\]"):
        run(x, np.ones((5, 4), np.float32))


def test_slices_and_indices_along_the_symbolic_axis():
    @minicomp.jit(dynamic={"x": [0]})
    def f(x):
        return x[-1] * 2, x[1:] - x[:-1], x[0] + x[-2:].sum(axis=0), x[:, -1]

    check(f, lambda rng, n: (rand(rng, n, 5),), sizes=[2, 3, 9, 40])


def test_a_call_that_breaks_a_guard_compiles_static():
    fn = lambda x: x[2:] + x[:3].sum(axis=0)  # noqa: E731  (assumes 3 <= x.shape[0])
    f = minicomp.jit(fn, dynamic={"x": [0]})
    compiled = f.compiled_for(np.ones((5, 2), np.float32))
    assert [(str(e), m) for e, m, _ in compiled.guards] == [("x_0", 2), ("x_0 - 2", 0), ("x_0", 3)]
    for n in [5, 7, 3, 2, 1, 0]:  # 2, 1, 0: NumPy clamps x[:3] and x[2:]; compiled for that shape
        x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
        np.testing.assert_array_equal(f(x), fn(x))
    assert f.cache_size == 4
    with pytest.raises(MinicompError, match="out of bounds"):  # NumPy's IndexError at this size
        minicomp.jit(lambda x: x[-1], dynamic={"x": [0]})(np.ones((0, 2), np.float32))


@pytest.mark.parametrize("fn", [lambda x: x[::2] + 1,                      # a step along the symbolic axis
                                lambda x: x[:, :1] * np.arange(0, 2 * x.shape[0], 2)[:, None],  # step 2
                                lambda x: x * 2 if x.shape[0] > 3 else x - 1])  # Python control flow
def test_what_needs_a_size_compiles_static_and_says_so(fn):
    f = minicomp.jit(fn, dynamic={"x": [0]})
    for n in [2, 5, 6]:
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        with pytest.warns(MinicompWarning, match="static sizes") if n == 2 else warnings.catch_warnings():
            np.testing.assert_array_equal(f(x), fn(x))
    assert f.cache_size == 3


@pytest.mark.parametrize("dynamic, message", [({"y": [0]}, "has no argument 'y'"),
                                              ({"x": 0}, "must be a list of ints"),
                                              ("x", "argument name -> axes")])
def test_dynamic_option_is_checked(dynamic, message):
    with pytest.raises(MinicompError, match=message):
        minicomp.jit(lambda x: x, dynamic=dynamic)


def test_dynamic_axis_must_exist():
    f = minicomp.jit(lambda x: x, dynamic={"x": [2]})
    with pytest.raises(MinicompError, match="axis 2 does not exist"):
        f(np.ones((2, 3), np.float32))


def test_dimensions_of_equal_size_share_a_symbol():
    def attention(x, mask, w):  # the mask is an argument of shape [T, T]
        q = x @ w
        s = q @ q.T / 4.0 + mask
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return (e / e.sum(axis=-1, keepdims=True)) @ q

    f = minicomp.jit(attention)
    rng = np.random.default_rng(3)
    w = rand(rng, 8, 8)
    for n in range(1, 9):
        x, mask = rand(rng, n, 8), ((1 - np.tri(n)) * -1e10).astype(np.float32)
        np.testing.assert_allclose(f(x, mask, w), attention(x, mask, w), rtol=1e-4, atol=1e-5)
    assert f.cache_size == 2
    assert f.compiled_for(x, mask, w).sizes == {"x_0": "x.shape[0]"}


def test_the_fallback_warning_names_the_users_line():
    f = minicomp.jit(lambda x: x * len(range(x.shape[0])), dynamic={"x": [0]})
    with pytest.warns(MinicompWarning, match=r"x\.shape\[0\].*test_dynamic_shapes\.py:\d+"):
        np.testing.assert_array_equal(f(np.ones((3, 3), np.float32)), np.full((3, 3), 3, np.float32))


def test_packed_matmul_with_symbolic_rows():
    @minicomp.jit(dynamic={"x": [0]})
    def f(x, w, b):
        return np.tanh(x @ w + b)

    check(f, lambda rng, n: (rand(rng, n, 256), rand(rng, 256, 200) * 0.1, rand(rng, 200)),
          sizes=[0, 1, 5, 6, 7, 13, 64, 101], rtol=2e-4, atol=2e-4)
    x = np.ones((3, 256), np.float32)
    assert "mc_gemm" in f.inspect(x, np.ones((256, 200), np.float32), np.ones(200, np.float32)).source


def test_dump_prints_a_symbolic_graph_and_its_guards(tmp_path, capsys):
    from minicomp.cli import main

    source = tmp_path / "model.py"
    source.write_text("import numpy as np\n\ndef f(x, w):\n    return np.tanh(x @ w)[-1]\n")
    assert main(["dump", f"{source}:f", "--arg", "x=f32[T,64]", "--arg", "w=f32[64,32]"]) in (0, None)
    captured = capsys.readouterr()
    assert "%x: f32[T,64]" in captured.out and "starts=[T-1,0]" in captured.out
    assert "assuming T >= 1" in captured.err
    assert main(["dump", f"{source}:f", "--arg", "x=f32[T,64]", "--arg", "w=f32[64,32]", "--emit", "c"]) in (0, None)
    assert "int64_t mc_size_T = ((const int64_t *)args[" in capsys.readouterr().out


# -- NumPy functions that take a size: np.tri(x.shape[0]) and friends (frontend/sizes.py) -----------


def gpt_attention(q, k, v):
    """picoGPT's causal self-attention, as written there: the mask from np.tri of the length."""
    causal_mask = (1 - np.tri(q.shape[0], dtype=q.dtype)) * -1e10
    s = q @ k.T / np.sqrt(q.shape[-1]) + causal_mask
    e = np.exp(s - np.max(s, axis=-1, keepdims=True))
    return (e / np.sum(e, axis=-1, keepdims=True)) @ v


SIZED = {
    "tri": lambda x: x * np.tri(x.shape[0], dtype=x.dtype),
    "tri k=-1, float64": lambda x: x * np.tri(x.shape[0], k=-1),
    "tri N x M": lambda x: x[:, :3] + np.tri(x.shape[0], 3, 1, dtype=np.float32),
    "eye": lambda x: x + np.eye(x.shape[0], dtype=x.dtype),
    "arange": lambda x: x * np.arange(x.shape[0])[:, None],
    "arange start, dtype": lambda x: x + np.arange(2, x.shape[0] + 2, dtype=np.float32)[:, None],
    "ones, zeros, full": lambda x: x + np.ones((x.shape[0], 1)) - np.zeros(x.shape, np.float32)
                                   + np.full((x.shape[0], x.shape[0]), 0.5, np.float32),
    "cumsum along the symbolic axis": lambda x: np.cumsum(x, axis=0) + np.cumprod(x[:, :1] * 0 + 1, axis=0),
}


@pytest.mark.parametrize("name", SIZED)
def test_size_taking_numpy_functions_compile_with_a_symbolic_size(name):
    square = name in ("tri", "tri k=-1, float64", "eye", "ones, zeros, full")  # x is [T, T]
    check(minicomp.jit(SIZED[name], dynamic={"x": [0, 1] if square else [0]}),
          lambda rng, n: (rand(rng, n, n if square else 4),))


def test_picogpt_causal_attention_compiles_once_for_every_length():
    f = minicomp.jit(gpt_attention)
    rng = np.random.default_rng(1)
    for n in [1, 2, 5, 16, 33, 3]:
        q, k, v = (rand(rng, n, 16) for _ in range(3))
        with warnings.catch_warnings():
            warnings.simplefilter("error", MinicompWarning)
            np.testing.assert_allclose(f(q, k, v), gpt_attention(q, k, v), rtol=1e-4, atol=1e-5)
    assert f.cache_size == 2  # the first shape, then one symbolic compile
    compiled = f.compiled_for(q, k, v)
    assert compiled.sizes == {"q_0": "q.shape[0]"}
    assert "cumsum" in str(compiled.traced)  # the mask is built from graph ops, not a constant
    patterns = [n.attrs.get("pattern") for n in compiled.graph.op_nodes() if n.op == "fused"]
    assert "attention" in patterns, patterns  # the computed mask is read by the fused attention


def test_heads_sharing_a_computed_mask_fuse_as_attention():
    """A mask computed in the graph (not a constant) and read by several heads is an operand of
    each head's fused attention, as a constant mask is."""
    def heads(q, k, v, bias):
        mask = np.where(bias > 0, 0.0, -1e9).astype(np.float32)
        return [softmax_rows(q[:, h] @ k[:, h].T + mask) @ v[:, h] for h in range(2)]

    def softmax_rows(s):
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    rng = np.random.default_rng(2)
    q, k, v = (rand(rng, 9, 2, 8) for _ in range(3))
    bias = rand(rng, 9, 9)
    f = minicomp.jit(heads, dynamic=False)
    for got, want in zip(f(q, k, v, bias), heads(q, k, v, bias)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    patterns = [n.attrs.get("pattern") for n in f.compiled_for(q, k, v, bias).graph.op_nodes() if n.op == "fused"]
    assert patterns.count("attention") == 2, patterns


def test_numpy_is_itself_again_after_a_symbolic_trace():
    originals = (np.arange, np.tri, np.ones, np.zeros, np.full, np.empty, np.eye)
    f = minicomp.jit(SIZED["tri"], dynamic={"x": [0, 1]})
    f(np.ones((3, 3), np.float32))
    assert (np.arange, np.tri, np.ones, np.zeros, np.full, np.empty, np.eye) == originals


def test_a_size_function_imported_by_name_compiles_static_and_says_so():
    from numpy import tri  # bound before the trace: NumPy's own, which asks for the size's value

    f = minicomp.jit(lambda x: x * tri(x.shape[0], dtype=x.dtype), dynamic={"x": [0]})
    with pytest.warns(MinicompWarning, match="static sizes"):
        np.testing.assert_array_equal(f(np.ones((3, 3), np.float32)), np.tri(3, dtype=np.float32))


def test_slices_with_symbolic_bounds_of_a_static_axis():
    """``wpe[:T]``, ``wpe[2:T + 2]``: the bounds are guarded to lie in the axis (NumPy would
    clamp beyond it; such a call compiles with static sizes)."""
    wpe = np.arange(64 * 3, dtype=np.float32).reshape(64, 3)

    def positions(x):
        n = x.shape[0]
        return x + wpe[:n] + wpe[2:n + 2] - wpe[np.arange(n)]

    f = minicomp.jit(positions, dynamic={"x": [0]})
    rng = np.random.default_rng(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)
        for n in [1, 5, 0, 62, 17]:
            x = rand(rng, n, 3)
            np.testing.assert_array_equal(f(x), positions(x))
    assert f.cache_size == 1
    guards = [str(expr) for expr, _, _ in f.compiled_for(x).guards]
    assert "-x_0+62" in [g.replace(" ", "") for g in guards], guards
    x = rand(rng, 63, 3)  # n + 2 = 65 > 64: NumPy clamps wpe[2:65] to 62 rows and cannot add
    with pytest.raises(ValueError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        positions(x)
    with pytest.raises(ValueError, match="broadcast"):
        f(x)


# -- int arguments that vary: compiled as sizes (frontend/dynamic.py) ----------------------------


def kv_step(cache, x, start_pos):
    """Write x's positions into the cache, attend over everything written so far."""
    T = x.shape[0]
    cache[start_pos:start_pos + T] = x
    keys = cache[:start_pos + T]
    scores = x @ keys.T
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)) @ keys


def test_a_varying_int_argument_compiles_once_as_a_size():
    f = minicomp.jit(kv_step)
    rng = np.random.default_rng(6)
    ours, theirs = np.zeros((24, 8), np.float32), np.zeros((24, 8), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)
        for position in range(0, 20):
            x = rand(rng, 1, 8)
            np.testing.assert_allclose(f(ours, x, position), kv_step(theirs, x, position), rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(ours, theirs)
    assert f.cache_size == 2  # position 0, then one compile with start_pos as a size
    compiled = f.compiled_for(ours, x, 19)
    assert compiled.sizes == {"start_pos": "start_pos"} and compiled.int_symbols == {"start_pos": 0}
    assert "size_start_pos" in [node.name for node in compiled.traced.inputs]  # the size carrier


def test_a_prompt_then_single_tokens_share_one_compile_over_the_position():
    """The prompt's length and the position both vary between the first two calls; the function
    needs the length's value (``if T > 1``), so the int alone becomes a size."""
    def step(cache, x, start_pos):
        T = x.shape[0]
        cache[start_pos:start_pos + T] = x
        scale = 0.5 if T > 1 else 1.0  # Python control flow on the length
        return cache[:start_pos + T].sum(axis=0) * scale

    f = minicomp.jit(step)
    rng = np.random.default_rng(7)
    ours, theirs = np.zeros((16, 4), np.float32), np.zeros((16, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MinicompWarning)
        for position, length in [(0, 5)] + [(p, 1) for p in range(5, 12)]:
            x = rand(rng, length, 4)
            np.testing.assert_array_equal(f(ours, x, position), step(theirs, x, position))
            np.testing.assert_array_equal(ours, theirs)
    assert f.cache_size == 2


@pytest.mark.parametrize("fn, values", [
    (lambda x, n: x * 2 if n > 2 else x, [1, 2, 3, 4]),                # Python control flow on the int
    (lambda x, n: x.reshape(n, -1).sum(axis=0), [2, 4, 8]),            # the int as a shape: needs its value
    (lambda x, n: x[n:n + 2] * 1, [-3, -2, 1]),                          # negative: NumPy's wrap, never a size
])
def test_an_int_that_cannot_be_a_size_compiles_static_with_numpys_result(fn, values):
    f = minicomp.jit(fn)
    x = np.arange(16, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MinicompWarning)
        for n in values:
            np.testing.assert_array_equal(f(x, n), fn(x, n))


def test_ints_stay_static_with_dynamic_false_and_bools_are_never_sizes():
    f = minicomp.jit(lambda x, n: x[:n] + 1, dynamic=False)
    x = np.arange(8, dtype=np.float32)
    for n in [1, 2, 3]:
        np.testing.assert_array_equal(f(x, n), x[:n] + 1)
    assert f.cache_size == 3
    g = minicomp.jit(lambda x, flag: x + 1 if flag else x - 1)
    for flag in [True, False, True]:
        np.testing.assert_array_equal(g(x, flag), x + 1 if flag else x - 1)
    assert g.cache_size == 2


def test_an_equality_on_a_size_or_int_in_the_users_code_is_a_guard_never_a_wrong_branch():
    """``if x.shape[0] == 5`` with a symbolic size takes the False branch: the trace records
    the guard ``x_0 != 5``, so the call where it is 5 compiles on its own (and gets NumPy's
    branch), as does ``mode == 5`` with an int compiled as a size."""
    by_shape = lambda x: x * 3 if x.shape[0] == 5 else x + 1  # noqa: E731
    by_int = lambda x, mode: x * 3 if mode == 5 else x + 1  # noqa: E731
    by_tuple = lambda x: x * 3 if x.shape == (5, 2) else x + 1  # noqa: E731
    f, g, h = minicomp.jit(by_shape), minicomp.jit(by_int), minicomp.jit(by_tuple)
    for n in [3, 4, 5, 6, 5]:
        x = np.arange(n, dtype=np.float32)
        np.testing.assert_array_equal(f(x), by_shape(x))
        np.testing.assert_array_equal(g(x[:2], n), by_int(x[:2], n))
        np.testing.assert_array_equal(h(np.ones((n, 2), np.float32)), by_tuple(np.ones((n, 2), np.float32)))
    assert f.cache_size == 3  # 3, then symbolic (serving 4 and 6), then 5 on its own
    assert any("== 5 was taken as False" in why for _, _, why in f.compiled_for(np.ones(4, np.float32)).guards)


def test_only_inputs_no_kernel_reads_are_passed_unprepared():
    """Size carriers are passed as given (no copy of a zero-stride array); an input returned as
    it is, unread by any kernel, is still made contiguous first (the fuzzer caught a strided
    one returned as garbage when every input without users was passed as given)."""
    graph = minicomp.Graph.parse("graph g(%x: f32[3,4], %y: f32[3,4]) {\n"
                                 "  %a = add(%y, %y) : f32[3,4]\n  return %x, %a\n}")
    run = minicomp.compile(graph)
    x = np.arange(24, dtype=np.float32).reshape(6, 4)[::2]  # every other row: not contiguous
    out = run(x, np.ones((3, 4), np.float32))
    np.testing.assert_array_equal(out[0], x)
    f = minicomp.jit(kv_step)
    cache, x1 = np.zeros((8, 4), np.float32), np.ones((1, 4), np.float32)
    f(cache, x1, 2), f(cache, x1, 3)
    assert f.compiled_for(cache, x1, 3).run._unread  # the size carrier of start_pos


def test_symbolic_row_counts_keep_the_static_schedules():
    """Over a symbolic row count, an elementwise kernel is still vectorised and parallel, and a
    row kernel's run-time thread condition counts a row's whole work (it counted only its first
    loop, so softmax over 4096 rows of 1024 ran on one thread)."""
    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    gelu = lambda x: 0.5 * x * (1 + np.tanh(0.79788456 * (x + 0.044715 * x**3)))  # noqa: E731
    x = np.ones((8, 1024), np.float32)
    elementwise = minicomp.jit(gelu, dynamic={"x": [0]}).compiled_for(x).run.program
    assert [str(step) for step in elementwise.kernels[0].schedule] == ["vectorize(i1)", "parallel(i0)"]
    source = minicomp.jit(softmax, dynamic={"x": [0]}).compiled_for(x).run.source
    [condition] = re.findall(r"if\(!mc_serial && \((\d+)\*mc_size_x_0\) >= \d+\)", source)
    assert int(condition) >= 3 * 1024  # max, exp and sum, divide: three passes over the row
