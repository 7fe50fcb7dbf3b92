/* AVX-512F kernels of rv_subs_kernels.h (compiled with -mavx512f -mfma). */
#include <immintrin.h>

#include "rv_subs_kernels.h"

#define VEC __m512
#define W 16
#define ZERO() _mm512_setzero_ps()
#define LOAD(p) _mm512_load_ps(p)
#define SUB(a, b) _mm512_sub_ps(a, b)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define HSUM(v) _mm512_reduce_add_ps(v)
#define L2_MANY rv__subs_l2_many_avx512
#define DOT_MANY rv__subs_dot_many_avx512
#define BLOCK0_MANY rv__subs_block0_many_avx512
#include "rv_subs_kernels_body.h"
