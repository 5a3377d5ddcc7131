/* sb_kernel_avx512: the AVX-512 path (F + BW + VL + VNNI; this file is compiled with those
 * flags and only ever called after sb_cpu_supports(SB_ISA_AVX512)).
 *
 * One 512-bit vector is the same chunk of two panels of one tile row: lanes 0-7 the rows of
 * panel p, lanes 8-15 those of panel p + 1 (or p again when p has no partner; the copy's
 * results are dropped). The layout is the AVX2 one, read two panels at a time, so the same
 * repacked matrix serves every path. vpdpbusd sums 4 unsigned-code x signed-activation
 * products straight into 32-bit lanes: no 16-bit partial sums, no overflow to avoid; width 8
 * turns its stored code - 128 back into the code (xor 0x80) and keeps the stored zero term.
 * The float operations per (row, token) are those of the AVX2 path, in the same order.
 *
 * One token (decode, one_token_panels) has its own loop, like the AVX2 one: 4 panels of a tile
 * row at a time (two 512-bit chains), tile runs of one width, every chunk unpacked next to its
 * vpdpbusd, the affine-q8 multipliers by a two-register permute instead of a gather, software
 * prefetch of the codes and metadata, and with GFNI (sb_kernel_panels_avx512_gfni) one affine
 * transform per bit field. Through the batch loop (partial sums in memory, a gather per group,
 * a width switch per tile) decode ran at 40-60% of the AVX2 path's speed on a Zen 5; now 2-3x
 * faster than before from memory (docs/KERNELS.md, "Decode on Zen 5").
 */
#if defined(__AVX512VNNI__)
#include <immintrin.h>
#include <string.h>

#include "sb_kernel_internal.h"

#define INLINE static inline __attribute__((always_inline))

enum { TOKEN_BLOCK = 64, TOKEN_STEP = 4 };

INLINE __m512i broadcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

INLINE __m512i shift_bytes(__m512i v, const int right)
{
    if (right > 0)
        return _mm512_srli_epi16(v, right);
    if (right < 0)
        return _mm512_slli_epi16(v, -right);
    return v;
}

/* Word `w` of the super-block in panel p (low half) and panel q (high half). */
INLINE __m512i load_pair(const uint8_t *p, const uint8_t *q, int w)
{
    __m256i low = _mm256_load_si256((const __m256i *)p + w), high = _mm256_load_si256((const __m256i *)q + w);
    return _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
}

/* The 8 chunks of a super-block of both panels, as unsigned codes 0 .. 2^bits - 1. */
INLINE void unpack_super(const uint8_t *p, const uint8_t *q, const int bits, __m512i chunk[8])
{
    if (bits == 8) {
        const __m512i flip = _mm512_set1_epi8((char)0x80);
        for (int k = 0; k < 8; k++)
            chunk[k] = _mm512_xor_si512(load_pair(p, q, k), flip);
        return;
    }
    if (bits == 3) {
        const __m512i low3 = _mm512_set1_epi8(7), spare = _mm512_set1_epi8((char)0x88);
        __m512i w[3];
        for (int j = 0; j < 3; j++) {
            w[j] = load_pair(p, q, j);
            chunk[2 * j] = _mm512_and_si512(w[j], low3);
            chunk[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(w[j], 4), low3);
        }
        __m512i high = _mm512_or_si512(_mm512_or_si512(_mm512_srli_epi16(_mm512_and_si512(w[0], spare), 3),
                                                       _mm512_srli_epi16(_mm512_and_si512(w[1], spare), 2)),
                                       _mm512_srli_epi16(_mm512_and_si512(w[2], spare), 1));
        chunk[6] = _mm512_and_si512(high, low3);
        chunk[7] = _mm512_and_si512(_mm512_srli_epi16(high, 4), low3);
        return;
    }
    for (int k = 0; k < 8; k++)
        chunk[k] = _mm512_setzero_si512();
    int shift = 0, word = 0;
    if (sb_kplane4_words(bits)) {
        const __m512i low4 = _mm512_set1_epi8(15);
        for (int m = 0; m < 4; m++) {
            __m512i w = load_pair(p, q, m);
            chunk[2 * m] = _mm512_and_si512(w, low4);
            chunk[2 * m + 1] = _mm512_and_si512(_mm512_srli_epi16(w, 4), low4);
        }
        word = 4;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        const __m512i mask = _mm512_set1_epi8((char)(3 << shift));
        for (int m = 0; m < 2; m++) {
            __m512i w = load_pair(p, q, word + m);
            for (int j = 0; j < 4; j++)
                chunk[4 * m + j] = _mm512_or_si512(chunk[4 * m + j], _mm512_and_si512(shift_bytes(w, 2 * j - shift), mask));
        }
        word += 2;
        shift += 2;
    }
    if (sb_kplane1_words(bits)) {
        const __m512i mask = _mm512_set1_epi8((char)(1 << shift));
        __m512i w = load_pair(p, q, word);
        for (int k = 0; k < 8; k++)
            chunk[k] = _mm512_or_si512(chunk[k], _mm512_and_si512(shift_bytes(w, k - shift), mask));
    }
}

INLINE __m512i dot_chunks(const __m512i chunk[8], const int8_t *a, const int k0, const int count)
{
    __m512i s32 = _mm512_setzero_si512();
    for (int k = k0; k < k0 + count; k++)
        s32 = _mm512_dpbusd_epi32(s32, chunk[k], broadcast4(a + 4 * k));
    return s32;
}

typedef struct group_vec {
    __m512 scale, offset;
} group_vec;

INLINE group_vec decode_group(const sb_qmatrix *m, const sb_ktile *tile_p, const sb_ktile *tile_q, int g)
{
    group_vec v;
    if (m->format == SB_SCALES_Q8) {
        const uint8_t *entry_p = tile_p->meta + (int64_t)g * sizeof(sb_kmeta_q8);
        const uint8_t *entry_q = tile_q->meta + (int64_t)g * sizeof(sb_kmeta_q8);
        __m128i scale_codes = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)entry_p),
                                                 _mm_loadl_epi64((const __m128i *)entry_q));
        __m128i zero_codes = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(entry_p + 8)),
                                                _mm_loadl_epi64((const __m128i *)(entry_q + 8)));
        v.scale = _mm512_mul_ps(_mm512_set1_ps(tile_p->tile_scale),
                                _mm512_i32gather_ps(_mm512_cvtepu8_epi32(scale_codes), m->q8_table, 4));
        __m512 z = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(zero_codes)),
                                 _mm512_set1_ps((float)(1 << tile_p->bits) / 256.0f));
        v.offset = _mm512_castsi512_ps(
            _mm512_xor_si512(_mm512_castps_si512(_mm512_mul_ps(v.scale, z)), _mm512_set1_epi32((int)0x80000000u)));
    } else {
        const uint8_t *entry_p = tile_p->meta + (int64_t)g * sizeof(sb_kmeta_f16);
        const uint8_t *entry_q = tile_q->meta + (int64_t)g * sizeof(sb_kmeta_f16);
        __m256i scales = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)entry_p)),
                                                 _mm_loadu_si128((const __m128i *)entry_q), 1);
        __m256i zeros = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(entry_p + 16))),
                                                _mm_loadu_si128((const __m128i *)(entry_q + 16)), 1);
        v.scale = _mm512_cvtph_ps(scales);
        v.offset = _mm512_cvtph_ps(zeros);
    }
    return v;
}

typedef struct token_view {
    const int8_t *a;   /* a, or hi for SB_ACT_INT16 */
    const int8_t *low; /* lo for SB_ACT_INT16; NULL for SB_ACT_INT8 */
    const float *d;
    const float *sums;
} token_view;

/* a . q, or 255 (hi . q) + (lo . q): exact integers. */
INLINE __m512i token_dot(const __m512i chunk[8], const token_view *token, int64_t offset, const int k0, const int count)
{
    __m512i s = dot_chunks(chunk, token->a + offset, k0, count);
    if (token->low) {
        __m512i low = dot_chunks(chunk, token->low + offset, k0, count);
        s = _mm512_add_epi32(_mm512_sub_epi32(_mm512_slli_epi32(s, 8), s), low);
    }
    return s;
}

INLINE void tile_tokens(const int bits, const sb_qmatrix *m, const sb_ktile *tile_p, const sb_ktile *tile_q,
                        const token_view *tokens, int ntokens, __m512 *acc, __m512 *partial)
{
    const int segment_chunks = m->segment_cols / SB_CHUNK_COLS;
    const int segments_per_group = m->tiling.group / m->segment_cols;
    for (int g = 0; g < tile_p->groups; g++) {
        for (int u = 0; u < ntokens; u++)
            partial[u] = _mm512_setzero_ps();
        int e_end = (g + 1) * segments_per_group < tile_p->segments ? (g + 1) * segments_per_group : tile_p->segments;
        for (int e = g * segments_per_group; e < e_end;) {
            int super = e * segment_chunks / 8;
            __m512i chunk[8];
            unpack_super(tile_p->codes + (int64_t)super * 32 * bits, tile_q->codes + (int64_t)super * 32 * bits, bits,
                         chunk);
            int e_stop = (super + 1) * 8 / segment_chunks;
            e_stop = e_stop < e_end ? e_stop : e_end;
            const int64_t a_offset = (int64_t)super * SB_SUPER_COLS;
            int u = 0;
            if (segment_chunks == 8) {
                for (; u + TOKEN_STEP <= ntokens; u += TOKEN_STEP) {
                    __m512i s[TOKEN_STEP];
                    for (int i = 0; i < TOKEN_STEP; i++)
                        s[i] = token_dot(chunk, &tokens[u + i], a_offset, 0, 8);
                    for (int i = 0; i < TOKEN_STEP; i++)
                        partial[u + i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i]),
                                                         _mm512_set1_ps(tokens[u + i].d[super]), partial[u + i]);
                }
                for (; u < ntokens; u++) {
                    __m512i s = token_dot(chunk, &tokens[u], a_offset, 0, 8);
                    partial[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(tokens[u].d[super]), partial[u]);
                }
            } else {
                for (; u < ntokens; u++)
                    for (int f = e; f < e_stop; f++) {
                        __m512i s = token_dot(chunk, &tokens[u], a_offset, f * segment_chunks - super * 8,
                                              segment_chunks);
                        partial[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(tokens[u].d[super]),
                                                     partial[u]);
                    }
            }
            e = e_stop;
        }
        group_vec v = decode_group(m, tile_p, tile_q, g);
        for (int u = 0; u < ntokens; u++) {
            acc[u] = _mm512_fmadd_ps(v.scale, partial[u], acc[u]);
            acc[u] = _mm512_fmadd_ps(v.offset, _mm512_set1_ps(tokens[u].sums[g]), acc[u]);
        }
    }
}

static void tile_dispatch(const sb_qmatrix *m, const sb_ktile *tile_p, const sb_ktile *tile_q, const token_view *tokens,
                          int ntokens, __m512 *acc, __m512 *partial)
{
    switch (tile_p->bits) {
    case 1: tile_tokens(1, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 2: tile_tokens(2, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 3: tile_tokens(3, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 4: tile_tokens(4, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 5: tile_tokens(5, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 6: tile_tokens(6, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    case 7: tile_tokens(7, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    default: tile_tokens(8, m, tile_p, tile_q, tokens, ntokens, acc, partial); break;
    }
}

static void store_rows(float *y, bool accumulate, int rows, const float *lanes)
{
    for (int r = 0; r < rows; r++)
        y[r] = accumulate ? y[r] + lanes[r] : lanes[r];
}

/* ---- One token (decode) ------------------------------------------------------------------------- */

/* vgf2p8affineqb with immediate 0: every byte times an 8x8 bit matrix (GFNI, which the compiler
 * flags of this file do not assume: only run where sb_cpu_detect().gfni, and written as asm so
 * that no other code of the file can come to use it). */
INLINE __m512i gf_affine(__m512i bytes, __m512i matrix)
{
    __m512i result;
    __asm__("vgf2p8affineqb $0, %2, %1, %0" : "=v"(result) : "v"(bytes), "v"(matrix));
    return result;
}

/* The bit matrix (one qword, for every 8 bytes) that moves bits [from, from + n) of a byte to
 * bits [to, to + n) and zeroes the others: result bit i is the parity of (matrix byte 7 - i) AND
 * the byte, so byte 7 - i holds the one source bit of result bit i. */
static inline uint64_t field_matrix(int from, int n, int to)
{
    uint64_t matrix = 0;
    for (int i = 0; i < n; i++)
        matrix |= (uint64_t)(1u << (from + i)) << (8 * (7 - (to + i)));
    return matrix;
}

/* Bits [from, from + n) of every byte of w at bits [to, to + n), the others zero: one affine
 * transform with GFNI, else a 16-bit shift and a mask (the shift moves bits across the bytes of a
 * 16-bit lane, the mask keeps those of the same byte). Both are one operation when from == to. */
INLINE __m512i byte_field(const bool gfni, __m512i w, const int from, const int n, const int to)
{
    if (gfni && from != to)
        return gf_affine(w, _mm512_set1_epi64((long long)field_matrix(from, n, to)));
    return _mm512_and_si512(shift_bytes(w, from - to), _mm512_set1_epi8((char)(((1 << n) - 1) << to)));
}

/* Chunk `k` of super-blocks p (low half) and q (high half) alone, as unsigned codes: straight-line
 * code next to its dot product (the compiler merges the word loads the chunks of a word share).
 * With GFNI every field is one operation where shifts took two: per super-block and pair of
 * panels 8 operations instead of 14 at 2 bits, 12 instead of 17 at 3. */
INLINE __m512i chunk_at(const bool gfni, const uint8_t *p, const uint8_t *q, const int bits, const int k)
{
    if (bits == 8)
        return _mm512_xor_si512(load_pair(p, q, k), _mm512_set1_epi8((char)0x80));
    if (bits == 3) {
        if (k < 6)
            return byte_field(gfni, load_pair(p, q, k / 2), 4 * (k % 2), 3, 0);
        /* bit j of chunks 6 and 7 is bit 3 and 7 of word j: moved to bits j and 4 + j and
         * merged (GFNI: three transforms and an or; else shifts and two bit selects), chunk 6 in
         * bits 0-2, chunk 7 in bits 4-6 */
        __m512i w0 = load_pair(p, q, 0), w1 = load_pair(p, q, 1), w2 = load_pair(p, q, 2), high;
        if (gfni) {
            __m512i m0 = _mm512_set1_epi64((long long)(field_matrix(3, 1, 0) | field_matrix(7, 1, 4)));
            __m512i m1 = _mm512_set1_epi64((long long)(field_matrix(3, 1, 1) | field_matrix(7, 1, 5)));
            __m512i m2 = _mm512_set1_epi64((long long)(field_matrix(3, 1, 2) | field_matrix(7, 1, 6)));
            high = _mm512_ternarylogic_epi32(gf_affine(w0, m0), gf_affine(w1, m1), gf_affine(w2, m2), 0xfe);
        } else {
            __m512i s0 = _mm512_srli_epi16(w0, 3), s1 = _mm512_srli_epi16(w1, 2), s2 = _mm512_srli_epi16(w2, 1);
            high = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x11), s0, s1, 0xca); /* mask ? s0 : s1 */
            high = _mm512_ternarylogic_epi32(_mm512_set1_epi8(0x44), s2, high, 0xca);
        }
        return byte_field(gfni, high, 4 * (k - 6), 3, 0);
    }
    __m512i chunk = _mm512_setzero_si512();
    int shift = 0, word = 0;
    if (sb_kplane4_words(bits)) {
        chunk = byte_field(gfni, load_pair(p, q, k / 2), 4 * (k % 2), 4, 0);
        word = 4;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        __m512i part = byte_field(gfni, load_pair(p, q, word + k / 4), 2 * (k % 4), 2, shift);
        chunk = shift ? _mm512_or_si512(chunk, part) : part;
        word += 2;
        shift += 2;
    }
    if (sb_kplane1_words(bits)) {
        __m512i part = byte_field(gfni, load_pair(p, q, word), k, 1, shift);
        chunk = shift ? _mm512_or_si512(chunk, part) : part;
    }
    return chunk;
}

/* The first 32 entries of sb_q8_scale_table, held in two registers for a whole product. */
typedef struct q8_table {
    __m512 low, high;
} q8_table;

/* table[s] for 16 scale codes s (0..255) in 4 operations: table[s] = table[s & 31] x 2^(-(s >> 5))
 * exactly (a power of two scales a nearest float to a nearest float; nothing here is subnormal),
 * so one two-register permute (vpermt2ps reads the index's 5 low bits: s & 31 with no mask) and
 * an exponent subtraction. The same bits as a gather of the table, which costs ~20 cycles. */
INLINE __m512 q8_multiplier(const q8_table *table, __m512i codes)
{
    __m512 base = _mm512_permutex2var_ps(table->low, codes, table->high);
    __m512i exponent = _mm512_slli_epi32(_mm512_srli_epi32(codes, 5), 23);
    return _mm512_castsi512_ps(_mm512_sub_epi32(_mm512_castps_si512(base), exponent));
}

/* The end of a group for panels p and q (meta entries at meta_p and meta_q): acc + scale x
 * partial, then + offset x S_g: the float operations of decode_group and tile_tokens (offset x
 * S = -(scale z) x S as one fnmadd: the negation is exact, so the same bits). */
INLINE __m512 close_group(const sb_qmatrix *m, const q8_table *table, const uint8_t *meta_p, const uint8_t *meta_q,
                          const int bits, float tile_scale, __m512 partial, __m512 sum, __m512 acc)
{
    if (m->format == SB_SCALES_Q8) {
        __m128i entry_p = _mm_loadu_si128((const __m128i *)meta_p), entry_q = _mm_loadu_si128((const __m128i *)meta_q);
        __m512i scale_codes = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(entry_p, entry_q));
        __m512i zero_codes = _mm512_cvtepu8_epi32(_mm_unpackhi_epi64(entry_p, entry_q));
        __m512 scale = _mm512_mul_ps(_mm512_set1_ps(tile_scale), q8_multiplier(table, scale_codes));
        __m512 z = _mm512_mul_ps(_mm512_cvtepi32_ps(zero_codes), _mm512_set1_ps((float)(1 << bits) / 256.0f));
        acc = _mm512_fmadd_ps(scale, partial, acc);
        return _mm512_fnmadd_ps(_mm512_mul_ps(scale, z), sum, acc);
    } else {
        __m256i scales = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)meta_p)),
                                                 _mm_loadu_si128((const __m128i *)meta_q), 1);
        __m256i zeros = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(meta_p + 16))),
                                                _mm_loadu_si128((const __m128i *)(meta_q + 16)), 1);
        acc = _mm512_fmadd_ps(_mm512_cvtph_ps(scales), partial, acc);
        return _mm512_fmadd_ps(_mm512_cvtph_ps(zeros), sum, acc);
    }
}

/* One token, groups a multiple of 32 columns: DECODE_PAIRS pairs of panels of one tile row at a
 * time (a 512-bit vector is the same chunk of two panels; missing panels repeat the last one,
 * their results dropped) over a run of `count` stored tiles of one width from storage position
 * `position`. vpdpbusd sums every chunk straight into 32-bit lanes; per lane the same integer
 * sums and float operations as tile_tokens. Advances the codes pointers. */
enum { DECODE_PAIRS = 2, DECODE_PANELS = 2 * DECODE_PAIRS, PREFETCH_BYTES = 1024 };

/* The cache lines PREFETCH_BYTES past a super-block of a panel's stream. The hardware prefetchers
 * restart at every 4 KiB page of each of the 4 streams, and this loop consumes 2- and 3-bit codes
 * faster than they ramp up: from memory (bench-layout --decode, Zen 5) 2-bit 18 -> 24 GB/s,
 * 3-bit 17 -> 23, 4-bit 23 -> 29; 512 and 2048 bytes ahead gained less, 8-bit nothing. */
INLINE void prefetch_ahead(const uint8_t *super, const int bits)
{
    for (int line = 0; line < 32 * bits; line += 64)
        _mm_prefetch((const char *)super + PREFETCH_BYTES + line, _MM_HINT_T0);
}

/* Exact integer dot products of the super-blocks super[p] with the token's activations `a` (its
 * 32 bytes), as DECODE_PAIRS vectors of two panels' 8 int32 lanes. */
INLINE void super_dots(const bool gfni, const int bits, const uint8_t *const *super, const int8_t *a, __m512i *s32)
{
    for (int p = 0; p < DECODE_PANELS; p++)
        prefetch_ahead(super[p], bits);
    for (int h = 0; h < DECODE_PAIRS; h++)
        s32[h] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        __m512i x = broadcast4(a + 4 * k);
        for (int h = 0; h < DECODE_PAIRS; h++)
            s32[h] = _mm512_dpbusd_epi32(s32[h], chunk_at(gfni, super[2 * h], super[2 * h + 1], bits, k), x);
    }
}

INLINE void run_one_token(const bool gfni, const int bits, const sb_qmatrix *m, const q8_table *table,
                          const uint8_t *const *base, int64_t tile_row, int64_t position, int64_t count,
                          const uint8_t **codes, const sb_qact *act, __m512 *acc)
{
    const int supers_per_group = m->tiling.group / SB_SUPER_COLS;
    const int meta_bytes = sb_kmeta_bytes(m->format);
    for (int64_t i = position; i < position + count; i++) {
        /* what the panels share: the tile column's shape and activations, the tile's bound */
        const uint8_t *tile_codes[DECODE_PANELS], *meta[DECODE_PANELS];
        int64_t tile_col;
        const sb_kcolumn *column = sb_kdecode_tile(m, tile_row, i, bits, DECODE_PANELS, base, codes, tile_codes, meta,
                                                   &tile_col);
        float tile_scale = sb_ktile_bound(m, tile_row, tile_col);
        const int8_t *a_tile = act->values + column->first_block * SB_SUPER_COLS;
        const float *d_tile = act->block_scales + column->first_block;
        const float *sums = act->group_sums + column->first_group;
        for (int g = 0; g < column->groups; g++) {
            __m512 partial[DECODE_PAIRS];
            for (int h = 0; h < DECODE_PAIRS; h++)
                partial[h] = _mm512_setzero_ps();
            int s_end = (g + 1) * supers_per_group < column->supers ? (g + 1) * supers_per_group : column->supers;
            for (int s = g * supers_per_group; s < s_end; s++) {
                const uint8_t *super[DECODE_PANELS];
                __m512i s32[DECODE_PAIRS];
                for (int p = 0; p < DECODE_PANELS; p++)
                    super[p] = tile_codes[p] + (int64_t)s * 32 * bits;
                super_dots(gfni, bits, super, a_tile + (int64_t)s * SB_SUPER_COLS, s32);
                __m512 d = _mm512_set1_ps(d_tile[s]);
                for (int h = 0; h < DECODE_PAIRS; h++)
                    partial[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32[h]), d, partial[h]);
            }
            __m512 sum = _mm512_set1_ps(sums[g]);
            for (int h = 0; h < DECODE_PAIRS; h++)
                acc[h] = close_group(m, table, meta[2 * h] + (int64_t)g * meta_bytes,
                                     meta[2 * h + 1] + (int64_t)g * meta_bytes, bits, tile_scale, partial[h], sum,
                                     acc[h]);
        }
    }
}

/* run_one_token for 32-column tiles (groups of 32): a tile is one super-block and one group,
 * numbered (activation block, group, meta entry) by its tile column, and a run's codes are
 * contiguous: none of the per-column bookkeeping and loops (sb_kernel_avx2.c measured a fifth to
 * a quarter of the instructions at 32x32 tiles). The same integer sums and float operations. */
INLINE void run_one_token_32(const bool gfni, const int bits, const sb_qmatrix *m, const q8_table *table,
                             const uint8_t *const *base, int64_t tile_row, int64_t position, int64_t count,
                             const uint8_t **codes, const sb_qact *act, __m512 *acc)
{
    const int meta_bytes = sb_kmeta_bytes(m->format);
    for (int64_t i = position; i < position + count; i++) {
        int64_t tile_col = sb_ktile_col(m, tile_row, i);
        __m512i s32[DECODE_PAIRS];
        super_dots(gfni, bits, codes, act->values + (int64_t)tile_col * SB_SUPER_COLS, s32);
        __m512 d = _mm512_set1_ps(act->block_scales[tile_col]), sum = _mm512_set1_ps(act->group_sums[tile_col]);
        float tile_scale = sb_ktile_bound(m, tile_row, tile_col);
        int64_t meta = (int64_t)tile_col * meta_bytes;
        for (int h = 0; h < DECODE_PAIRS; h++) {
            __m512 partial = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s32[h]), d, _mm512_setzero_ps());
            acc[h] = close_group(m, table, base[2 * h] + meta, base[2 * h + 1] + meta, bits, tile_scale, partial, sum,
                                 acc[h]);
        }
        for (int p = 0; p < DECODE_PANELS; p++)
            codes[p] += 32 * bits;
    }
}

static void run_one_token_dispatch(const bool gfni, int bits, const sb_qmatrix *m, const q8_table *table,
                                   const uint8_t *const *base, int64_t tile_row, int64_t position, int64_t count,
                                   const uint8_t **codes, const sb_qact *act, __m512 *acc)
{
#define RUN(g, b)                                                                                                \
    (m->tiling.tile_cols == SB_SUPER_COLS                                                                        \
         ? run_one_token_32(g, b, m, table, base, tile_row, position, count, codes, act, acc)                     \
         : run_one_token(g, b, m, table, base, tile_row, position, count, codes, act, acc))
#define WIDTHS(g)                                                                                                \
    switch (bits) {                                                                                              \
    case 1: RUN(g, 1); break;                                                                                    \
    case 2: RUN(g, 2); break;                                                                                    \
    case 3: RUN(g, 3); break;                                                                                    \
    case 4: RUN(g, 4); break;                                                                                    \
    case 5: RUN(g, 5); break;                                                                                    \
    case 6: RUN(g, 6); break;                                                                                    \
    case 7: RUN(g, 7); break;                                                                                    \
    default: RUN(g, 8); break;                                                                                   \
    }
    if (gfni)
        WIDTHS(true)
    else
        WIDTHS(false)
#undef WIDTHS
#undef RUN
}

/* The metadata of the next DECODE_PANELS panels (from `panel`), while this group of panels runs:
 * it is read 16 or 32 bytes a group (and in two passes where a tile row mixes widths), too
 * slowly for the hardware prefetchers to follow, and each miss stalls a group's end. From
 * memory (bench-layout --decode, 2+3 mix) 20.8 -> 27 GB/s at 128x128 tiles, 16.4 -> 20.1 at
 * 32x32; pure widths unchanged. */
static void prefetch_meta(const sb_qmatrix *m, int64_t panel, int64_t panel_end)
{
    for (int p = 0; p < DECODE_PANELS && panel + p < panel_end; p++) {
        const uint8_t *meta = sb_kpanel(m, panel + p);
        for (int64_t line = 0; line < m->meta_bytes; line += 64)
            _mm_prefetch((const char *)meta + line, _MM_HINT_T0);
    }
}

static void store_panel(const sb_qmatrix_args *args, int64_t panel, const float *lanes)
{
    const sb_qmatrix *m = args->matrix;
    float *y = args->y + m->panel_row0[panel];
    int rows = sb_kpanel_rows(m, panel);
    if (rows == SB_PANEL_ROWS) {
        __m256 value = _mm256_loadu_ps(lanes);
        _mm256_storeu_ps(y, args->accumulate ? _mm256_add_ps(_mm256_loadu_ps(y), value) : value);
    } else {
        store_rows(y, args->accumulate, rows, lanes);
    }
}

/* One token (decode): DECODE_PANELS panels of a tile row at a time, tile runs of one width. */
static void one_token_panels(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end, bool gfni)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    q8_table table = {_mm512_loadu_ps(m->q8_table), _mm512_loadu_ps(m->q8_table + 16)};
    for (int64_t panel = panel_begin; panel < panel_end;) {
        int64_t tile_row = sb_kpanel_tile_row(m, panel);
        int n = 1; /* panels of this tile row in this thread's range */
        while (n < DECODE_PANELS && panel + n < panel_end && sb_kpanel_tile_row(m, panel + n) == tile_row)
            n++;
        const uint8_t *base[DECODE_PANELS], *codes[DECODE_PANELS];
        __m512 acc[DECODE_PAIRS];
        for (int p = 0; p < DECODE_PANELS; p++) {
            base[p] = sb_kpanel(m, panel + (p < n ? p : n - 1));
            codes[p] = sb_kpanel_codes(m, base[p]);
        }
        if (panel + n < panel_end)
            prefetch_meta(m, panel + n, panel_end);
        for (int h = 0; h < DECODE_PAIRS; h++)
            acc[h] = _mm512_setzero_ps();
        const uint8_t *bits_row = m->bits_per_tile + tile_row * m->tiling.tiles_across;
        for (int64_t position = 0; position < m->tiling.tiles_across;) {
            int bits = bits_row[sb_ktile_col(m, tile_row, position)];
            int64_t end = position + 1;
            while (end < m->tiling.tiles_across && bits_row[sb_ktile_col(m, tile_row, end)] == bits)
                end++;
            run_one_token_dispatch(gfni, bits, m, &table, base, tile_row, position, end - position, codes, act, acc);
            position = end;
        }
        float lanes[16 * DECODE_PAIRS];
        for (int h = 0; h < DECODE_PAIRS; h++)
            _mm512_storeu_ps(lanes + 16 * h, acc[h]);
        for (int p = 0; p < n; p++)
            store_panel(args, panel + p, lanes + 8 * p);
        panel += n;
    }
}

static void panels(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end, bool gfni)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    if (act->precision == SB_ACT_F32) {
        /* float batches: the AVX2 FMA kernel (every CPU this path runs on has AVX2 and FMA) */
        sb_kernel_panels_avx2(args, panel_begin, panel_end);
        return;
    }
    if (act->ntokens == 1 && m->segment_cols == SB_SUPER_COLS && !act->low) {
        one_token_panels(args, panel_begin, panel_end, gfni);
        return;
    }
    __m512 acc[TOKEN_BLOCK], partial[TOKEN_BLOCK];
    token_view tokens[TOKEN_BLOCK];
    for (int64_t panel = panel_begin; panel < panel_end;) {
        int64_t tile_row = sb_kpanel_tile_row(m, panel);
        /* pair with the next panel when it is in the same tile row and in this thread's range */
        bool paired = panel + 1 < panel_end && sb_kpanel_tile_row(m, panel + 1) == tile_row;
        int64_t partner = paired ? panel + 1 : panel;
        const uint8_t *base_p = sb_kpanel(m, panel), *base_q = sb_kpanel(m, partner);
        for (int64_t t0 = 0; t0 < act->ntokens; t0 += TOKEN_BLOCK) {
            int ntokens = (int)(act->ntokens - t0 < TOKEN_BLOCK ? act->ntokens - t0 : TOKEN_BLOCK);
            for (int u = 0; u < ntokens; u++)
                acc[u] = _mm512_setzero_ps();
            const uint8_t *codes_p = sb_kpanel_codes(m, base_p), *codes_q = sb_kpanel_codes(m, base_q);
            for (int64_t position = 0; position < m->tiling.tiles_across; position++) {
                int64_t tile_col = sb_ktile_col(m, tile_row, position);
                sb_ktile tile_p = sb_ktile_at(m, base_p, tile_row, tile_col, codes_p);
                sb_ktile tile_q = sb_ktile_at(m, base_q, tile_row, tile_col, codes_q);
                codes_p += (int64_t)tile_p.supers * 32 * tile_p.bits;
                codes_q += (int64_t)tile_q.supers * 32 * tile_q.bits;
                for (int u = 0; u < ntokens; u++) {
                    int64_t t = t0 + u;
                    tokens[u].a = act->values + t * act->stride + tile_p.first_block * SB_SUPER_COLS;
                    tokens[u].low = act->low ? act->low + t * act->stride + tile_p.first_block * SB_SUPER_COLS : NULL;
                    tokens[u].d = act->block_scales + t * act->blocks + tile_p.first_block;
                    tokens[u].sums = act->group_sums + t * act->groups + tile_p.first_group;
                }
                tile_dispatch(m, &tile_p, &tile_q, tokens, ntokens, acc, partial);
            }
            for (int u = 0; u < ntokens; u++) {
                float lanes[16];
                _mm512_storeu_ps(lanes, acc[u]);
                float *y = args->y + (t0 + u) * args->ldy;
                store_rows(y + m->panel_row0[panel], args->accumulate, sb_kpanel_rows(m, panel), lanes);
                if (paired)
                    store_rows(y + m->panel_row0[partner], args->accumulate, sb_kpanel_rows(m, partner), lanes + 8);
            }
        }
        panel += paired ? 2 : 1;
    }
}

void sb_kernel_panels_avx512(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    panels(args, panel_begin, panel_end, false);
}

void sb_kernel_panels_avx512_gfni(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    panels(args, panel_begin, panel_end, true);
}

#else /* not built for this instruction set: never selected (sb_cpu_supports is false) */
#include "sb_kernel_internal.h"
void sb_kernel_panels_avx512(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    sb_kernel_panels_scalar(args, panel_begin, panel_end);
}
void sb_kernel_panels_avx512_gfni(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    sb_kernel_panels_scalar(args, panel_begin, panel_end);
}
#endif
