#ifndef RV_DISTANCE_ISA_H
#define RV_DISTANCE_ISA_H
/* Internal to index/: the SIMD kernel tables, each defined in a file compiled
 * with its own ISA flags (rv_distance_avx2.c, rv_distance_avx512.c). Nothing
 * may touch them before rv_kernels_get has checked the CPU: calling one on a
 * CPU without the ISA is an illegal instruction. */
#include "rv_distance.h"

#if defined(RV_DISTANCE_X86)
extern const rv_kernels_t rv__kernels_avx2;   /* AVX2 + FMA */
extern const rv_kernels_t rv__kernels_avx512; /* AVX-512 F + BW + VL, FMA */
/* rv__kernels_avx512 with sq8_dot_i16 on vpdpwssd; needs AVX512_VNNI too. */
extern const rv_kernels_t rv__kernels_avx512_vnni;
#endif

#endif
