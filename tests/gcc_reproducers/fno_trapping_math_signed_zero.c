/* Why minicomp does not compile with -fno-trapping-math (minicomp/codegen/flags.py).

   GCC documents -fno-trapping-math as assuming that no floating-point operation traps. GCC
   12.2 also rewrites (float)(int)x into truncf(x) under it (and (double)(long)x into trunc),
   which differs in the sign of zero: for x in (-1, 0) the conversion gives 0 (+0.0), truncf
   gives -0.0. NumPy's x.astype(np.int64).astype(np.float64) is +0.0 there, and so was
   minicomp's, until this flag. It needs SSE4.1 (roundss) for the rewrite:

     gcc -O2 -march=x86-64-v2 fno_trapping_math_signed_zero.c && ./a.out        ok
     gcc -O2 -march=x86-64-v2 -fno-trapping-math fno_trapping_math_signed_zero.c && ./a.out

   Exit status: 0 when both round trips give +0.0, else 1. */

#include <math.h>
#include <stdio.h>

__attribute__((noinline)) float round_trip_f32(float x) { return (float)(int)x; }
__attribute__((noinline)) double round_trip_f64(double x) { return (double)(long)x; }

int main(void) {
  volatile float x = -0.5f;
  volatile double y = -0.5;
  float a = round_trip_f32(x);
  double b = round_trip_f64(y);
  printf("(float)(int)-0.5f = %g, (double)(long)-0.5 = %g\n", a, b);
  return signbit(a) || signbit(b);
}
