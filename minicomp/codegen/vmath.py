"""Branch-free, auto-vectorisable float32 transcendental functions for the C target (issue 5).

Generated code today calls scalar libm (``expf``, ``tanhf``, ``erff``) once per element; gcc
cannot vectorise those calls, so elementwise chains with transcendentals (gelu, softmax,
attention) run one element at a time. The functions here are plain C99 ``static inline``
code -- arithmetic, ``fmaf``, ``fabsf``/``copysignf``, integer bit manipulation through a union,
selects made of bit operations (``mc_vsel_f32``), no branches, no intrinsics -- which
``gcc -O3`` vectorises for AVX2 and AVX-512 targets alike (checked by ``tests/test_vmath.py``
with ``-fopt-info-vec-optimized`` for ``-march=haswell``, ``skylake-avx512`` and ``native``).
They need no ``-ffast-math`` and no ``-fno-trapping-math`` (see ``flags.py`` for why minicomp
leaves that out): they are written for IEEE float32 with round-to-nearest. Targets without FMA
(plain x86-64) keep them scalar: ``fmaf`` is a library call there.

Accuracy (max error in float32 ulp against NumPy's float64 result rounded to float32, over a
dense sweep of all magnitudes plus 8M random bit patterns and points; an ulp of a denormal
result is the denormal spacing; ``tests/test_vmath.py`` asserts <= 2). Specials (+-0, +-inf,
NaN) are exact.

====================  ==========
function              max ulp
====================  ==========
``mc_vexp_f32``       1
``mc_vtanh_f32``      1
``mc_vsigmoid_f32``   2
``mc_verf_f32``       1
``mc_vlog_f32``       1
====================  ==========

The exact figures measured are in each function's comment. Not used by the renderer yet:
``SOURCE`` is the C text, ``source()`` returns it (for inclusion in a generated prelude).
"""

from __future__ import annotations

#: libm-level function name (as in ``Call.fn``) -> its vectorisable float32 C replacement
FUNCTIONS_F32 = {
    "exp": "mc_vexp_f32",
    "tanh": "mc_vtanh_f32",
    "erf": "mc_verf_f32",
    "log": "mc_vlog_f32",
}

#: every function ``SOURCE`` defines (``mc_vsigmoid_f32`` can back the ``mc_sigmoid_f32`` helper)
ALL_F32 = (*FUNCTIONS_F32.values(), "mc_vsigmoid_f32")

SOURCE = r"""
/* ---- minicomp vmath: branch-free, auto-vectorisable float32 functions ---- */
#include <math.h>
#include <stdint.h>

typedef union { float f; int32_t i; } mc_vbits_f32;

static inline float mc_vasf_f32(int32_t i) { mc_vbits_f32 u; u.i = i; return u.f; }
static inline int32_t mc_vasi_f32(float f) { mc_vbits_f32 u; u.f = f; return u.i; }

/* c ? a : b, as bit operations: c is a lane mask (mc_vmask_f32: all ones or all zeros). Every
   select here goes through it. A ?: is a branch to gcc: it sinks the arithmetic that only one
   side uses into it, or, when one side is a constant, computes the rest of the function
   separately on that path. Floating-point arithmetic may trap (-ftrapping-math, gcc's
   default), so once behind a branch it is never executed speculatively again, and the loop
   stays scalar on a CPU without AVX-512's masked arithmetic (AVX2: "control flow in loop").
   Bit operations are no branch: nothing moves. */
static inline int32_t mc_vmask_f32(int c) { return -(int32_t)(c != 0); }
static inline float mc_vsel_f32(int32_t c, float a, float b) {
    return mc_vasf_f32((mc_vasi_f32(a) & c) | (mc_vasi_f32(b) & ~c));
}

/* exp(x). Method: clamp x to [-104, 89] (NaN-safe selects), n = rint(x/ln2) by the
   1.5*2^23 magic-number trick, r = x - n*ln2 with a 2-constant Cody-Waite split through
   fmaf (|r| <= ln2/2), e^r = 1 + r + r^2*P(r) with the degree-5 Cephes minimax polynomial P,
   then scaled by 2^n as 2^(n>>1) * 2^(n-(n>>1)) built from exponent bits, so results near
   overflow and in the denormal range come out right and beyond 89 overflow to inf by the
   multiplication itself. exp(-inf) = 0, exp(inf) = inf, NaN -> NaN.
   Below -104 the result rounds to 0, and it is selected as 0 without computing it: a
   multiplication whose result underflows costs a microcode assist (about 10x the whole
   function), and masked attention scores are -inf in bulk. Those lanes compute exp(0).
   Measured max error: 1 ulp (normal results), 1 denormal ulp (denormal results). */
static inline float mc_vexp_f32(float x) {
    int32_t zero = mc_vmask_f32(x < -104.0f);  /* e^x rounds to 0 */
    float xc = mc_vsel_f32(mc_vmask_f32(x < 89.0f), x, 89.0f);  /* NaN -> 89, restored at the end */
    xc = mc_vasf_f32(mc_vasi_f32(xc) & ~zero);
    const float magic = 12582912.0f;           /* 1.5 * 2^23 */
    float kf = fmaf(xc, 1.44269502f, magic) - magic;
    float r = fmaf(kf, -0.693145752f, xc);     /* ln2 hi: 8 significant bits, exact product */
    r = fmaf(kf, -1.42860677e-06f, r);         /* ln2 lo */
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float y = fmaf(r * r, p, r) + 1.0f;
    int32_t n = (int32_t)kf;
    int32_t n1 = n >> 1, n2 = n - n1;
    float s1 = mc_vasf_f32((n1 + 127) << 23), s2 = mc_vasf_f32((n2 + 127) << 23);
    y = (y * s1) * s2;
    y = mc_vasf_f32(mc_vasi_f32(y) & ~zero);   /* +0 where e^x rounds to 0 */
    return mc_vsel_f32(mc_vmask_f32(x != x), x, y);
}

/* tanh(x). Method: |x| < 0.625: odd polynomial x + x*z*P(z), z = x^2 (Cephes tanhf minimax,
   degree 4 in z); otherwise sign(x) * (1 - 2/(exp(2|x|) + 1)) with mc_vexp_f32, which
   saturates to +-1 for large |x| (exp overflows to inf). Both are computed and one is
   selected. tanh(+-0) = +-0, tanh(+-inf) = +-1, NaN -> NaN.
   Measured max error: 1 ulp. */
static inline float mc_vtanh_f32(float x) {
    float a = fabsf(x);
    float z = x * x;
    float p = -5.70498872745e-3f;
    p = fmaf(p, z, 2.06390887954e-2f);
    p = fmaf(p, z, -5.37397155531e-2f);
    p = fmaf(p, z, 1.33314422036e-1f);
    p = fmaf(p, z, -3.33332819422e-1f);
    float small = copysignf(fmaf(x * z, p, x), x);   /* keeps tanh(-0) = -0 */
    float e = mc_vexp_f32(a + a);
    float big = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    return mc_vsel_f32(mc_vmask_f32(a < 0.625f), small, big);   /* NaN: big, which is NaN */
}

/* sigmoid(x) = 1/(1 + e) for x >= 0 and e/(1 + e) for x < 0, e = mc_vexp_f32(-|x|) <= 1
   (never overflows, so results for x < -87 are the right denormals, not 0);
   sigmoid(inf) = 1, sigmoid(-inf) = 0, NaN -> NaN.
   Measured max error: 2 ulp (normal results), 1 denormal ulp (denormal results). */
static inline float mc_vsigmoid_f32(float x) {
    float e = mc_vexp_f32(-fabsf(x));
    float d = 1.0f + e;
    return mc_vsel_f32(mc_vmask_f32(x < 0.0f), e, 1.0f) / d;
}

/* erf(x). Method: |x| < 0.875: x + x*P(x^2), P of degree 5 fitted for relative error (weighted
   least squares on Chebyshev nodes, 0.16 ulp before rounding) -- accurate relatively down
   to the smallest denormals, unlike Abramowitz-Stegun 7.1.26; otherwise
   sign(x) * (1 - exp(-a^2) * Q(1/a)), a = min(|x|, 4), Q of degree 9 in 1/a fitted to
   erfc(a)*exp(a^2) on [0.875, 4] (relative error 5e-8); erf(a) rounds to 1 for a > 3.92.
   erf(+-0) = +-0, erf(+-inf) = +-1, NaN -> NaN.
   Measured max error: 1 ulp. */
static inline float mc_verf_f32(float x) {
    float a = fabsf(x);
    float t = x * x;
    float p = -0.000623494299f;
    p = fmaf(p, t, 0.00503869538f);
    p = fmaf(p, t, -0.0267962746f);
    p = fmaf(p, t, 0.112826073f);
    p = fmaf(p, t, -0.37612569f);
    p = fmaf(p, t, 0.128379163f);
    float small = fmaf(x, p, x);              /* x*(1 + p): 2/sqrt(pi) is not exact in float */
    float ac = mc_vsel_f32(mc_vmask_f32(a > 4.0f), 4.0f, a);     /* NaN stays NaN */
    ac = mc_vsel_f32(mc_vmask_f32(ac < 0.875f), 0.875f, ac);
    float u = 1.0f / ac;
    float q = 0.0157479638f;
    q = fmaf(q, u, -0.0970200489f);
    q = fmaf(q, u, 0.240301403f);
    q = fmaf(q, u, -0.267992119f);
    q = fmaf(q, u, 0.0100659928f);
    q = fmaf(q, u, 0.355714597f);
    q = fmaf(q, u, -0.420319054f);
    q = fmaf(q, u, 0.0303550539f);
    q = fmaf(q, u, 0.560542929f);
    q = fmaf(q, u, 0.000186865724f);
    float big = copysignf(1.0f - mc_vexp_f32(-(ac * ac)) * q, x);
    return mc_vsel_f32(mc_vmask_f32(a < 0.875f), small, big);
}

/* log(x). Method: denormals are scaled by 2^23 first; x = 2^e * m read from the bits with
   m in [sqrt(1/2), sqrt(2)); log(1+f) = f - f^2/2 + f^3*P(f), f = m - 1, with the degree-8
   Cephes logf minimax polynomial; + e*ln2 with a 2-constant split. log(+-0) = -inf,
   log(x < 0) = NaN, log(inf) = inf, NaN -> NaN.
   Measured max error: 1 ulp. */
static inline float mc_vlog_f32(float x) {
    int32_t den = mc_vmask_f32(x < 1.17549435e-38f);  /* denormal (or zero/negative: fixed below) */
    float xs = x * mc_vsel_f32(den, 8388608.0f, 1.0f);
    int32_t i = mc_vasi_f32(xs);
    int32_t e = ((i >> 23) & 0xff) - 127 - (den & 23);
    float m = mc_vasf_f32((i & 0x007fffff) | 0x3f800000);   /* [1, 2) */
    int32_t hi = mc_vmask_f32(m > 1.41421356f);
    m = m * mc_vsel_f32(hi, 0.5f, 1.0f);
    e = e - hi;                                /* hi is -1 where m was halved */
    float fe = (float)e;
    float f = m - 1.0f;
    float z = f * f;
    float p = 7.0376836292e-2f;
    p = fmaf(p, f, -1.1514610310e-1f);
    p = fmaf(p, f, 1.1676998740e-1f);
    p = fmaf(p, f, -1.2420140846e-1f);
    p = fmaf(p, f, 1.4249322787e-1f);
    p = fmaf(p, f, -1.6668057665e-1f);
    p = fmaf(p, f, 2.0000714765e-1f);
    p = fmaf(p, f, -2.4999993993e-1f);
    p = fmaf(p, f, 3.3333331174e-1f);
    float y = f * z * p;
    y = fmaf(fe, -2.12194440e-4f, y);
    y = fmaf(z, -0.5f, y);
    float r = f + y;
    r = fmaf(fe, 0.693359375f, r);
    r = mc_vsel_f32(mc_vmask_f32(x == INFINITY), INFINITY, r);      /* the specials */
    r = mc_vsel_f32(mc_vmask_f32(x == 0.0f), -INFINITY, r);
    r = mc_vsel_f32(mc_vmask_f32(x < 0.0f), NAN, r);
    return mc_vsel_f32(mc_vmask_f32(x != x), x, r);
}
/* ---- end minicomp vmath ---- */
"""


def source() -> str:
    """The C text of the vectorisable float32 functions (``static inline``; includes math.h)."""
    return SOURCE
