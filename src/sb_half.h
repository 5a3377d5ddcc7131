/* sb_half: IEEE binary16 (F16) and bfloat16 (BF16) conversions to and from float32.
 *
 * Scales and zeros are stored as F16; checkpoints arrive as F16/BF16/F32. Conversions to
 * 16 bits round to nearest, ties to even (as numpy/torch do), so what we store is what a
 * reader decodes: every quantizer computes its codes against the rounded stored values.
 * Header-only: these sit in the innermost loops.
 */
#ifndef SB_HALF_H
#define SB_HALF_H

#include <stdint.h>
#include <string.h>

static inline uint32_t sb_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float sb_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float sb_bf16_to_f32(uint16_t h) { return sb_bits_f32((uint32_t)h << 16); }

static inline uint16_t sb_f32_to_bf16(float f)
{
    uint32_t u = sb_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a (quiet) NaN */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float sb_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1f) /* inf / nan */
        return sb_bits_f32(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        if (mantissa == 0)
            return sb_bits_f32(sign);
        /* subnormal: value = mantissa * 2^-24 (exact in float32) */
        float value = (float)mantissa * 0x1p-24f;
        return sign ? -value : value;
    }
    return sb_bits_f32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static inline uint16_t sb_f32_to_f16(float f)
{
    uint32_t u = sb_f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs_bits = u & 0x7fffffffu;
    if (abs_bits > 0x7f800000u) /* NaN */
        return (uint16_t)(sign | 0x7e00u);
    if (abs_bits >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs_bits < 0x38800000u) { /* below the smallest normal 2^-14: subnormal or zero */
        /* 2^-24 units, round half to even via float addition of a magic constant */
        float magnitude = sb_bits_f32(abs_bits);
        float scaled = magnitude * 0x1p24f; /* exact: power-of-two scaling */
        /* nearbyint-free RNE: adding 2^23 forces rounding at the integer position */
        float rounded = (scaled + 0x1p23f) - 0x1p23f;
        return (uint16_t)(sign | (uint16_t)rounded);
    }
    uint32_t mantissa_odd = (abs_bits >> 13) & 1u;
    abs_bits += 0xfffu + mantissa_odd; /* round to nearest even at bit 13 */
    return (uint16_t)(sign | (uint16_t)((abs_bits - 0x38000000u) >> 13));
}

/* Round a float through F16 and back: the value a reader of our files will see. */
static inline float sb_round_f16(float f) { return sb_f16_to_f32(sb_f32_to_f16(f)); }

#endif
