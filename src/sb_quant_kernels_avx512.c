/* The kernels compiled for AVX-512 (sb_quant_kernels.h: the same results as the baseline's). */
#include "sb_quant_kernels.h"

#if defined(__x86_64__)
#pragma GCC target("avx2,avx512f,avx512cd,avx512bw,avx512dq,avx512vl,prefer-vector-width=512")
#define KERNEL(name) name##_avx512
#define KERNEL_NAME "avx512"
#include "sb_quant_kernels.inc"
#endif
