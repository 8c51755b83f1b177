/* GCC 12 with AVX512-FP16: a zero-masked register vmovsh that binutils 2.40 will not assemble.

   Workaround: -mno-avx512fp16 where the target has AVX512-FP16 (minicomp/codegen/flags.py);
   minicomp computes float16 in float32, so nothing is lost.

   A float16 select, as minicomp renders a fused where() over float16: GCC 12 -O2 or -O3
   -march=sapphirerapids emits `vmovsh %xmm0, %xmm0, %xmm0{%k1}{z}` and the assembler stops:
   "Error: unsupported masking for `vmovsh'". Compiling is enough to see it (no AVX512-FP16
   CPU needed): gcc -O3 -march=sapphirerapids -c avx512fp16_masked_vmovsh.c */

#include <stdint.h>

void select_f16(const _Float16 *restrict x, const uint8_t *restrict t, _Float16 *restrict out) {
  out[0] = (float)x[0] < (float)(_Float16)t[0] ? x[0] : (_Float16)0;
}
