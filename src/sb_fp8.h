/* sb_fp8: the FP8 E4M3 format of FP8 checkpoints (safetensors dtype "F8_E4M3", torch's
 * float8_e4m3fn), to and from float32.
 *
 * One sign bit, 4 exponent bits (bias 7), 3 mantissa bits, no infinities:
 *     exponent 0:      (-1)^s * m/8 * 2^-6          (subnormals; 0x00 and 0x80 are +-0)
 *     exponent 1..15:  (-1)^s * (1 + m/8) * 2^(e-7)  (largest finite: 0x7E = 448)
 *     0x7F and 0xFF:   NaN (the only NaN codes; exponent 15 with m < 7 is finite)
 * Every finite code is exact in float32 (and in BF16: 4 significant bits). Decoding is exact;
 * encoding rounds to nearest, ties to even, and saturates at +-448 (what an FP8 writer with
 * scales chosen from the block maximum never needs; NaN encodes as 0x7F). Header-only: the
 * decoder sits in the checkpoint reader's inner loop.
 */
#ifndef SB_FP8_H
#define SB_FP8_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "sb_half.h"

#define SB_E4M3_MAX 448.0f

static inline bool sb_e4m3_is_nan(uint8_t code) { return (code & 0x7f) == 0x7f; }

/* The value of a code; a NaN code (see sb_e4m3_is_nan) gives a float NaN. */
static inline float sb_e4m3_to_f32(uint8_t code)
{
    uint32_t sign = (uint32_t)(code & 0x80u) << 24;
    uint32_t exponent = (code >> 3) & 0xfu, mantissa = code & 0x7u;
    if (sb_e4m3_is_nan(code))
        return sb_bits_f32(sign | 0x7fc00000u);
    if (exponent == 0) {
        float value = (float)mantissa * 0x1p-9f; /* m/8 * 2^-6, exact */
        return sign ? -value : value;
    }
    /* float32 exponent field: (e - 7) + 127; the 3 mantissa bits on top of float32's 23 */
    return sb_bits_f32(sign | (exponent + 120u) << 23 | mantissa << 20);
}

/* The nearest code to `value` (ties to even), saturating at +-448; NaN gives 0x7F. */
static inline uint8_t sb_f32_to_e4m3(float value)
{
    if (isnan(value))
        return 0x7f;
    uint8_t sign = signbit(value) ? 0x80 : 0x00;
    float magnitude = fabsf(value);
    if (!(magnitude < 464.0f)) /* 464 is halfway to 480, the first value past the largest: saturate */
        return (uint8_t)(sign | 0x7e);
    if (magnitude < 0x1p-6f) {
        /* subnormal range in units of 2^-9: rounding to 8 lands exactly on the smallest normal,
         * whose code is 0x08 = 8 as well */
        float units = nearbyintf(magnitude * 0x1p9f); /* exact scaling, round half to even */
        return (uint8_t)(sign | (uint8_t)units);
    }
    int exponent;
    float fraction = frexpf(magnitude, &exponent); /* magnitude = fraction * 2^exponent, fraction in [0.5, 1) */
    /* (1 + m/8) * 2^(exponent - 1): m = (2 fraction - 1) * 8, exact before rounding */
    float steps = nearbyintf((2.0f * fraction - 1.0f) * 8.0f);
    int biased = exponent - 1 + 7;
    if (steps == 8.0f) { /* rounded up to the next power of two */
        steps = 0.0f;
        biased++;
    }
    uint8_t code = (uint8_t)(biased << 3 | (int)steps);
    return (uint8_t)(sign | (code > 0x7e ? 0x7e : code));
}

#endif
