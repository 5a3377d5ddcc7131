/* SHA-256 block compression with the x86 SHA extensions (SHA-NI), after the structure of Intel's
 * "Intel SHA Extensions" paper (Gulley et al., 2013) and the intrinsics guide:
 *
 *   _mm_sha256rnds2_epu32(cdgh, abef, wk)  two rounds: takes the state as the halves {A,B,E,F}
 *                                          and {C,D,G,H} and W[t]+K[t], W[t+1]+K[t+1] in the low
 *                                          64 bits of wk; returns the new {A,B,E,F} (the new
 *                                          {C,D,G,H} is the old {A,B,E,F})
 *   _mm_sha256msg1_epu32(w0, w4)           W[t-16..t-13] + sigma0(W[t-15..t-12])
 *   _mm_sha256msg2_epu32(x, w12)           the next four schedule words, given x = the above plus
 *                                          W[t-7..t-4] and w12 = W[t-4..t-1] (for sigma1)
 *
 * The only file compiled with -msha -msse4.1 (CMakeLists.txt); sb_sha256_init calls it only
 * when sb_cpu_detect reports both. SSE4.1 is for _mm_blend_epi16, SSSE3 (implied) for the byte
 * shuffle and _mm_alignr_epi8. */
#ifdef SB_SHA256_X86

#include <immintrin.h>

#include "sb_sha256_internal.h"

void sb_sha256_blocks_x86(uint32_t state[8], const uint8_t *data, size_t blocks)
{
    /* message words are big-endian: reverse the bytes of each 32-bit lane */
    const __m128i byte_swap = _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL);

    /* state[] = A..H to the instructions' halves: abef = lanes (3..0) A,B,E,F; cdgh = C,D,G,H */
    __m128i abcd = _mm_loadu_si128((const __m128i *)&state[0]); /* lanes (0..3) A,B,C,D */
    __m128i efgh = _mm_loadu_si128((const __m128i *)&state[4]); /* lanes (0..3) E,F,G,H */
    __m128i badc = _mm_shuffle_epi32(abcd, 0xb1);               /* lanes (0..3) B,A,D,C */
    __m128i hgfe = _mm_shuffle_epi32(efgh, 0x1b);               /* lanes (0..3) H,G,F,E */
    __m128i abef = _mm_alignr_epi8(badc, hgfe, 8);              /* lanes (0..3) F,E,B,A */
    __m128i cdgh = _mm_blend_epi16(hgfe, badc, 0xf0);           /* lanes (0..3) H,G,D,C */

    for (size_t b = 0; b < blocks; b++, data += 64) {
        const __m128i abef_start = abef, cdgh_start = cdgh;
        /* the last four groups of four schedule words, group g in words[g % 4] */
        __m128i words[4];
        for (int g = 0; g < 4; g++)
            words[g] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), byte_swap);
        /* 16 groups of four rounds; the compiler unrolls them, keeping words[] in registers */
#pragma GCC unroll 16
        for (int g = 0; g < 16; g++) {
            __m128i *group = &words[g % 4]; /* holds group g - 4 until replaced by group g */
            if (g >= 4) {
                /* W[t..t+3], t = 4g, from groups g-4 (W[t-16..]), g-3 (W[t-12..]), g-2 and g-1 */
                const __m128i group_minus3 = words[(g + 1) % 4], group_minus2 = words[(g + 2) % 4];
                const __m128i group_minus1 = words[(g + 3) % 4];
                __m128i partial = _mm_sha256msg1_epu32(*group, group_minus3);
                partial = _mm_add_epi32(partial, _mm_alignr_epi8(group_minus1, group_minus2, 4)); /* W[t-7..t-4] */
                *group = _mm_sha256msg2_epu32(partial, group_minus1);
            }
            __m128i wk = _mm_add_epi32(*group, _mm_loadu_si128((const __m128i *)&sb_sha256_round_constants[4 * g]));
            /* rnds2 returns the new {A,B,E,F}, and the old one is the new {C,D,G,H}: the two
             * variables swap roles after the first call and are back in place after the second */
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0e));
        }
        abef = _mm_add_epi32(abef, abef_start);
        cdgh = _mm_add_epi32(cdgh, cdgh_start);
    }

    /* back to A..H */
    __m128i feba = _mm_shuffle_epi32(abef, 0x1b);     /* lanes (0..3) A,B,E,F */
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xb1);     /* lanes (0..3) G,H,C,D */
    abcd = _mm_blend_epi16(feba, dchg, 0xf0);         /* A,B,C,D */
    efgh = _mm_alignr_epi8(dchg, feba, 8);            /* E,F,G,H */
    _mm_storeu_si128((__m128i *)&state[0], abcd);
    _mm_storeu_si128((__m128i *)&state[4], efgh);
}

#endif
