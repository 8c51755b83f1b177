/* GCC 12.2 loop vectoriser: an SLP group of masked loads is loaded under one mask.

   Workaround: --param=max-completely-peel-times=1 (minicomp/codegen/flags.py).

   Each function below is a short loop nest as minicomp renders it: a select between loads
   that may only be read where the select picks them (a concatenate's parts, a where()). GCC
   fully unrolls the short inner loop, if-converts the select into masked loads
   (.MASK_LOAD: vpmaskmov with AVX2, zero-masking with AVX-512) and vectorises the outer loop
   with the unrolled loads as one SLP group. When the group needs more than one vector per
   iteration, vectorizable_load gives every vector the mask of the *first* one: lanes of the
   later vectors read 0 where the select wanted the load. Seen with -O3 -march=x86-64-v3 (and
   haswell, znver3, skylake-avx512 targets alike, in different functions):

     concat_2_parts   out[i] = i < 3 ? x[i] : x[i - 3]        wrong with GCC's defaults
     concat_3_parts   3 parts of 2, 2 and 3 rows, 2 columns  wrong with -fno-tree-vrp
     select_eq        x0 == x1 ? x0 : x2 over [6, 3]          wrong with both

   -fno-tree-vrp (minicomp's first workaround) fixes concat_2_parts and breaks concat_3_parts;
   --param=max-completely-peel-times=2 (its second) fixes select_eq but not the others. With
   max-completely-peel-times=1 GCC no longer unrolls the inner loops, so no such group forms.

   Build and run: gcc -O3 -march=x86-64-v3 slp_masked_load.c && ./a.out
   Exit status: 0 when every result is right, else a bit per wrong function (1, 2, 4). */

#include <stdint.h>
#include <stdio.h>

__attribute__((noinline)) void concat_2_parts(const int32_t *restrict x0, int32_t *restrict out) {
  for (int64_t i0 = 0; i0 < 6; ++i0)
    for (int64_t i1 = 0; i1 < 2; ++i1)
      out[i0 * 2 + i1] = i0 < 3 ? x0[i0 * 2 + i1] : x0[(i0 - 3) * 2 + i1];
}

__attribute__((noinline)) void concat_3_parts(const int32_t *restrict x0, const int32_t *restrict x1,
                                              const int32_t *restrict x2, int32_t *restrict out) {
  for (int64_t i0 = 0; i0 < 7; ++i0)
    for (int64_t i1 = 0; i1 < 2; ++i1)
      out[i0 * 2 + i1] = i0 < 2 ? x0[i0 * 2 + i1] : i0 < 4 ? x1[(i0 - 2) * 2 + i1] : x2[(i0 - 4) * 2 + i1];
}

__attribute__((noinline)) void select_eq(const float *restrict x0, const float *restrict x1,
                                         const float *restrict x2, float *restrict out) {
  for (int64_t i0 = 0; i0 < 6; ++i0)
    for (int64_t i1 = 0; i1 < 3; ++i1)
      out[i0 * 3 + i1] = x0[i0 * 3 + i1] == x1[i0 * 3 + i1] ? x0[i0 * 3 + i1] : x2[i0 * 3 + i1];
}

static int report(const char *name, int wrong, int bit) {
  printf("%s: %s\n", name, wrong ? "WRONG" : "ok");
  return wrong ? bit : 0;
}

int main(void) {
  int status = 0, wrong = 0;

  int32_t a[6] = {2, 1, 4, -2, -1, -3}, out2[12];   /* no zeros: a zero read shows */
  concat_2_parts(a, out2);
  for (int i = 0; i < 12; i++) wrong += out2[i] != a[i % 6];
  status |= report("concat_2_parts", wrong, 1);

  int32_t p0[4] = {101, 102, 103, 104}, p1[4] = {201, 202, 203, 204};
  int32_t p2[6] = {301, 302, 303, 304, 305, 306}, out3[14];
  int32_t want3[14] = {101, 102, 103, 104, 201, 202, 203, 204, 301, 302, 303, 304, 305, 306};
  concat_3_parts(p0, p1, p2, out3);
  wrong = 0;
  for (int i = 0; i < 14; i++) wrong += out3[i] != want3[i];
  status |= report("concat_3_parts", wrong, 2);

  float x0[18], x1[18], x2[18], out[18];
  for (int i = 0; i < 18; i++) {
    x0[i] = i % 3 ? 1.5f : 2.0f;
    x1[i] = i % 2 ? 1.5f : -1.0f;
    x2[i] = 100.0f + i;
  }
  select_eq(x0, x1, x2, out);
  wrong = 0;
  for (int i = 0; i < 18; i++) wrong += out[i] != (x0[i] == x1[i] ? x0[i] : x2[i]);
  status |= report("select_eq", wrong, 4);
  return status;
}
