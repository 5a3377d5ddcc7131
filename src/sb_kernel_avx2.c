/* sb_kernel_avx2: the AVX2 + FMA + F16C path (this file is compiled with those flags and only
 * ever called after sb_cpu_supports(SB_ISA_AVX2)).
 *
 * One 256-bit vector is one chunk of a panel: 8 rows (lanes) x 4 columns (bytes). A chunk's
 * dot product with the token's 4 activation bytes (broadcast to every lane) is vpmaddubsw
 * (unsigned code x signed activation, pairs summed to 16 bits) and, every sb_kdepth(bits)
 * chunks, vpmaddwd by ones into 32-bit lanes: exact integers, no horizontal sums. Width 8
 * keeps codes as code - 128 (int8) and multiplies |code| by the activation carrying the
 * code's sign, so pairs stay below 2^15; its zero term gains 128 x scale.
 *
 * Per (row, token) the float operations are, tile after tile and group after group:
 *     t   = fma(isum_s, d_s, t)        for each super-block s of the group
 *     acc = fma(scale_g, t, acc);  acc = fma(offset_g, S_g, acc)
 * whatever the number of tokens in the call, so a batch gives the same bits as one token at
 * a time. A batch runs up to 16 panels of a tile row and 64 tokens at a time, tile after tile
 * (the tile's activations stay in L1 for the 16 panels); for widths 1..4 two panels at a time
 * (tile_pair): a super-block of both is unpacked once and reused by the 64 tokens, 4 at a time,
 * each token's activation broadcast feeding both panels. Batches of float activations
 * (SB_ACT_F32, f32_panels below) decode a pair of panels to floats a span at a time and run
 * 6 tokens x 16 rows of FMAs over it (the AVX-512 path sends them here too).
 */
#if defined(__AVX2__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "sb_kernel_internal.h"

#define INLINE static inline __attribute__((always_inline))

enum { TOKEN_BLOCK = 64, TOKEN_STEP = 4, BLOCK_PANELS = 16 };


INLINE __m256i broadcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

INLINE __m256i shift_bytes(__m256i v, const int right)
{
    /* 16-bit shifts move bits across the two bytes of a lane; every caller masks down to bits
     * that came from the same byte. */
    if (right > 0)
        return _mm256_srli_epi16(v, right);
    if (right < 0)
        return _mm256_slli_epi16(v, -right);
    return v;
}

/* Chunk `k` of a super-block alone (the same bytes unpack_super gives): straight-line code the
 * one-token path interleaves with its dot products, so no chunk leaves the registers. */
INLINE __m256i chunk_at(const uint8_t *super, const int bits, const int k)
{
    const __m256i *words = (const __m256i *)super;
    if (bits == 8)
        return _mm256_load_si256(words + k);
    if (bits == 3) {
        const __m256i low3 = _mm256_set1_epi8(7);
        if (k < 6) {
            __m256i w = _mm256_load_si256(words + k / 2);
            return _mm256_and_si256(k % 2 ? _mm256_srli_epi16(w, 4) : w, low3);
        }
        /* chunks 6 and 7 from bits 3 and 7 of the three words: gathered into one byte as
         * chunk 6 in bits 0-2, chunk 7 in bits 4-6, by byte averages (x + y + 1) >> 1, exact
         * here because every sum is even: x2/2 + (x1 + x0/2)/4 with x_j = word j & 0x88. Three
         * averages do the three shifts and two ors (two operations fewer per super-block and
         * panel: 3-bit decode +3-4% in L2, docs/KERNELS.md). */
        const __m256i spare = _mm256_set1_epi8((char)0x88), zero = _mm256_setzero_si256();
        __m256i high = _mm256_avg_epu8(
            _mm256_and_si256(_mm256_load_si256(words + 2), spare),
            _mm256_avg_epu8(_mm256_and_si256(_mm256_load_si256(words + 1), spare),
                            _mm256_avg_epu8(_mm256_and_si256(_mm256_load_si256(words), spare), zero)));
        return _mm256_and_si256(k == 7 ? _mm256_srli_epi16(high, 4) : high, low3);
    }
    __m256i chunk = _mm256_setzero_si256();
    int shift = 0;
    if (sb_kplane4_words(bits)) {
        __m256i w = _mm256_load_si256(words + k / 2);
        chunk = _mm256_and_si256(k % 2 ? _mm256_srli_epi16(w, 4) : w, _mm256_set1_epi8(15));
        words += 4;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        __m256i w = _mm256_load_si256(words + k / 4);
        __m256i part = _mm256_and_si256(shift_bytes(w, 2 * (k % 4) - shift), _mm256_set1_epi8((char)(3 << shift)));
        chunk = shift ? _mm256_or_si256(chunk, part) : part;
        words += 2;
        shift += 2;
    }
    if (sb_kplane1_words(bits)) {
        __m256i w = _mm256_load_si256(words);
        __m256i part = _mm256_and_si256(shift_bytes(w, k - shift), _mm256_set1_epi8((char)(1 << shift)));
        chunk = shift ? _mm256_or_si256(chunk, part) : part;
    }
    return chunk;
}

/* The 8 chunks of a super-block as bytes (codes 0 .. 2^bits - 1; width 8: code - 128). */
INLINE void unpack_super(const uint8_t *super, const int bits, __m256i chunk[8])
{
    const __m256i *words = (const __m256i *)super;
    if (bits == 8) {
        for (int k = 0; k < 8; k++)
            chunk[k] = _mm256_load_si256(words + k);
        return;
    }
    if (bits == 3) {
        for (int k = 0; k < 8; k++)
            chunk[k] = chunk_at(super, 3, k);
        return;
    }
    for (int k = 0; k < 8; k++)
        chunk[k] = _mm256_setzero_si256();
    int shift = 0;
    if (sb_kplane4_words(bits)) {
        const __m256i low4 = _mm256_set1_epi8(15);
        for (int m = 0; m < 4; m++) {
            __m256i w = _mm256_load_si256(words + m);
            chunk[2 * m] = _mm256_and_si256(w, low4);
            chunk[2 * m + 1] = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
        }
        words += 4;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        const __m256i mask = _mm256_set1_epi8((char)(3 << shift));
        for (int m = 0; m < 2; m++) {
            __m256i w = _mm256_load_si256(words + m);
            for (int j = 0; j < 4; j++)
                chunk[4 * m + j] = _mm256_or_si256(chunk[4 * m + j], _mm256_and_si256(shift_bytes(w, 2 * j - shift), mask));
        }
        words += 2;
        shift += 2;
    }
    if (sb_kplane1_words(bits)) {
        const __m256i mask = _mm256_set1_epi8((char)(1 << shift));
        __m256i w = _mm256_load_si256(words);
        for (int k = 0; k < 8; k++)
            chunk[k] = _mm256_or_si256(chunk[k], _mm256_and_si256(shift_bytes(w, k - shift), mask));
    }
}

/* 16-bit partial dot products of one chunk with 4 broadcast activation bytes. */
INLINE __m256i dot16(const int bits, __m256i chunk, __m256i act)
{
    if (bits == 8)
        return _mm256_maddubs_epi16(_mm256_abs_epi8(chunk), _mm256_sign_epi8(act, chunk));
    return _mm256_maddubs_epi16(chunk, act);
}

/* Exact integer dot product of chunks [k0, k0 + count) of a super-block with a token's
 * activations `a` (the super-block's 32 bytes), as 8 int32 lanes. */
INLINE __m256i dot_chunks(const int bits, const __m256i chunk[8], const int8_t *a, const int k0, const int count)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const int depth = sb_kdepth(bits);
    __m256i s32 = _mm256_setzero_si256(), s16 = _mm256_setzero_si256();
    int pending = 0;
    for (int k = k0; k < k0 + count; k++) {
        s16 = _mm256_add_epi16(s16, dot16(bits, chunk[k], broadcast4(a + 4 * k)));
        if (++pending == depth) {
            s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, ones));
            s16 = _mm256_setzero_si256();
            pending = 0;
        }
    }
    if (pending)
        s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, ones));
    return s32;
}

/* table[s] (the float nearest to 2^(-s/32)) for 8 scale codes s (0..255) in 7 operations and
 * no gather (11 cycles on Zen 3) or table permutes: table[s] is exactly the one rounded product
 * Q8_HIGH[(s >> 3) & 7] x Q8_LOW[s & 7], times 2^(-2 (s >> 6)) (an exponent subtraction; a power
 * of two scales a nearest float to a nearest float and nothing here is subnormal). The 4 + 8
 * factors (Q8_HIGH[4..7] are Q8_HIGH[0..3] / 2) were found by a search over floats near
 * c 2^(-h/4) and 2^(-l/32) / c for which all 64 products of s = 0..63 round to the table;
 * sb_kernel_avx2_q8_table checks all 256 codes (tests/unit/test_kernels.c). It replaced four
 * 8-entry permutes of the table, three blends and their masks: 5 operations fewer per group and
 * panel (docs/KERNELS.md, Measurements). */
static const float Q8_HIGH[8] = {0x1.4ea7c8p+0f, 0x1.196918p+0f, 0x1.d94632p-1f, 0x1.8df97ep-1f,
                                 0x1.4ea7c8p-1f, 0x1.196918p-1f, 0x1.d94632p-2f, 0x1.8df97ep-2f};
static const float Q8_LOW[8] = {0x1.87a9ap-1f,   0x1.7f4524p-1f, 0x1.770ebp-1f,  0x1.6f054cp-1f,
                                0x1.6727fcp-1f,  0x1.5f75dp-1f,  0x1.57eddcp-1f, 0x1.508f38p-1f};

INLINE __m256 q8_multiplier(__m256i codes)
{
    __m256 high = _mm256_permutevar8x32_ps(_mm256_loadu_ps(Q8_HIGH), _mm256_srli_epi32(codes, 3));
    __m256 low = _mm256_permutevar8x32_ps(_mm256_loadu_ps(Q8_LOW), codes);
    __m256i product = _mm256_castps_si256(_mm256_mul_ps(high, low));
    __m256i exponent = _mm256_slli_epi32(_mm256_srli_epi32(codes, 6), 24);
    return _mm256_castsi256_ps(_mm256_sub_epi32(product, exponent));
}

void sb_kernel_avx2_q8_table(float table[256])
{
    for (int s = 0; s < 256; s += 8)
        _mm256_storeu_ps(table + s, q8_multiplier(_mm256_setr_epi32(s, s + 1, s + 2, s + 3, s + 4, s + 5, s + 6, s + 7)));
}

typedef struct group_vec {
    __m256 scale, offset;
} group_vec;

/* The affine decoding w = scale q + offset of one group for the panel's 8 rows (width 8: for
 * codes stored minus 128). */
/* The affine decoding of the group whose meta entry is at `meta` (tile bound D for affine-q8). */
INLINE group_vec decode_meta(const sb_qmatrix *m, const uint8_t *meta, int bits, float tile_scale)
{
    group_vec v;
    if (m->format == SB_SCALES_Q8) {
        __m128i codes = _mm_loadu_si128((const __m128i *)meta);
        __m256i scale_codes = _mm256_cvtepu8_epi32(codes);
        __m256i zero_codes = _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8));
        v.scale = _mm256_mul_ps(_mm256_set1_ps(tile_scale), q8_multiplier(scale_codes));
        __m256 z = _mm256_mul_ps(_mm256_cvtepi32_ps(zero_codes), _mm256_set1_ps((float)(1 << bits) / 256.0f));
        v.offset = _mm256_xor_ps(_mm256_mul_ps(v.scale, z), _mm256_set1_ps(-0.0f));
    } else {
        v.scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)meta));
        v.offset = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(meta + 16)));
    }
    if (bits == 8)
        v.offset = _mm256_add_ps(v.offset, _mm256_mul_ps(v.scale, _mm256_set1_ps(128.0f)));
    return v;
}

INLINE group_vec decode_group(const sb_qmatrix *m, const sb_ktile *tile, int g)
{
    return decode_meta(m, tile->meta + (int64_t)g * sb_kmeta_bytes(m->format), tile->bits, tile->tile_scale);
}

/* The decode path's end of a group for one panel: acc + scale x partial, then + offset x S_g,
 * the bits of decode_meta and tile_tokens with two operations fewer for affine-q8 (the zero
 * codes loaded straight into their lanes; offset x S = -(scale z) x S taken by one fnmadd: the
 * negation is exact, so fnmadd(scale z, S, acc) is fma(offset, S, acc) bit for bit). */
INLINE __m256 close_group(const sb_qmatrix *m, const uint8_t *meta, int bits, float tile_scale, __m256 partial,
                          __m256 sum, __m256 acc)
{
    if (m->format != SB_SCALES_Q8 || bits == 8) {
        group_vec v = decode_meta(m, meta, bits, tile_scale);
        acc = _mm256_fmadd_ps(v.scale, partial, acc);
        return _mm256_fmadd_ps(v.offset, sum, acc);
    }
    __m256i scale_codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)meta));
    __m256i zero_codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(meta + SB_PANEL_ROWS)));
    __m256 scale = _mm256_mul_ps(_mm256_set1_ps(tile_scale), q8_multiplier(scale_codes));
    __m256 z = _mm256_mul_ps(_mm256_cvtepi32_ps(zero_codes), _mm256_set1_ps((float)(1 << bits) / 256.0f));
    acc = _mm256_fmadd_ps(scale, partial, acc);
    return _mm256_fnmadd_ps(_mm256_mul_ps(scale, z), sum, acc);
}

/* Token pointers into an sb_qact, at a tile. */
typedef struct token_view {
    const int8_t *a;   /* the tile's first activation byte (a, or hi for SB_ACT_INT16) */
    const int8_t *low; /* SB_ACT_INT16: the tile's first lo byte; NULL for SB_ACT_INT8 */
    const float *d;    /* the tile's first block scale */
    const float *sums; /* the tile's first group sum */
} token_view;

/* A token's exact integer dot product with chunks [k0, k0 + count): a . q, or for 16-bit
 * activations 255 (hi . q) + (lo . q). */
INLINE __m256i token_dot(const int bits, const bool precise, const __m256i chunk[8], const token_view *token,
                         int64_t offset, const int k0, const int count)
{
    __m256i s = dot_chunks(bits, chunk, token->a + offset, k0, count);
    if (precise) {
        __m256i low = dot_chunks(bits, chunk, token->low + offset, k0, count);
        s = _mm256_add_epi32(_mm256_sub_epi32(_mm256_slli_epi32(s, 8), s), low);
    }
    return s;
}

/* Adds one tile's products to acc[u] for `ntokens` tokens. `segments_per_super` > 1 when
 * groups are narrower than 32 columns or not a multiple of 32 (segments of segment_cols). */
INLINE void tile_tokens(const int bits, const bool precise, const sb_qmatrix *m, const sb_ktile *tile,
                        const token_view *tokens, int ntokens, __m256 *acc, __m256 *partial)
{
    const int segment_chunks = m->segment_cols / SB_CHUNK_COLS;
    const int segments_per_group = m->tiling.group / m->segment_cols;
    for (int g = 0; g < tile->groups; g++) {
        for (int u = 0; u < ntokens; u++)
            partial[u] = _mm256_setzero_ps();
        int e_end = (g + 1) * segments_per_group < tile->segments ? (g + 1) * segments_per_group : tile->segments;
        for (int e = g * segments_per_group; e < e_end;) {
            /* one super-block: the segments of this group inside it */
            int super = e * segment_chunks / 8;
            __m256i chunk[8];
            unpack_super(tile->codes + (int64_t)super * 32 * bits, bits, chunk);
            int e_stop = (super + 1) * 8 / segment_chunks;
            e_stop = e_stop < e_end ? e_stop : e_end;
            const int64_t a_offset = (int64_t)super * SB_SUPER_COLS;
            int u = 0;
            if (segment_chunks == 8) {
                /* the common case: one segment per super-block */
                for (; u + TOKEN_STEP <= ntokens; u += TOKEN_STEP) {
                    __m256i s[TOKEN_STEP];
                    for (int i = 0; i < TOKEN_STEP; i++)
                        s[i] = token_dot(bits, precise, chunk, &tokens[u + i], a_offset, 0, 8);
                    for (int i = 0; i < TOKEN_STEP; i++)
                        partial[u + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]),
                                                         _mm256_set1_ps(tokens[u + i].d[super]), partial[u + i]);
                }
                for (; u < ntokens; u++) {
                    __m256i s = token_dot(bits, precise, chunk, &tokens[u], a_offset, 0, 8);
                    partial[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(tokens[u].d[super]), partial[u]);
                }
            } else {
                for (; u < ntokens; u++)
                    for (int f = e; f < e_stop; f++) {
                        int k0 = f * segment_chunks - super * 8;
                        __m256i s = token_dot(bits, precise, chunk, &tokens[u], a_offset, k0, segment_chunks);
                        partial[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(tokens[u].d[super]),
                                                     partial[u]);
                    }
            }
            e = e_stop;
        }
        group_vec v = decode_group(m, tile, g);
        for (int u = 0; u < ntokens; u++) {
            acc[u] = _mm256_fmadd_ps(v.scale, partial[u], acc[u]);
            acc[u] = _mm256_fmadd_ps(v.offset, _mm256_set1_ps(tokens[u].sums[g]), acc[u]);
        }
    }
}

/* One token, groups a multiple of 32 columns: the decode path, DECODE_PANELS panels of one tile
 * row at a time (a panel without partners is repeated; the copies' results are dropped) for as
 * many independent chains and memory streams, over a run of stored tiles of one width (`count`
 * tiles from storage position `position`). Per lane the same integer sums and float operations
 * as tile_tokens, with every chunk unpacked next to its use. Advances the codes pointers. */
enum { DECODE_PANELS = 4 };

/* The cache lines PREFETCH_BYTES past a super-block of a panel's stream: the hardware prefetchers
 * restart at every 4 KiB page of each of the 4 streams. Measured no faster on Zen 3 while this
 * loop was compute-bound (docs/KERNELS.md); on Zen 5, with the metadata prefetch below, from
 * memory 2-bit 14.9 -> 16.4 GB/s, 3-bit 13.2 -> 20.9, the 2/3-bit mix 12.6 -> 19.5 (bench-layout). */
enum { PREFETCH_BYTES = 1024 };

INLINE void prefetch_ahead(const uint8_t *super, const int bits)
{
    for (int line = 0; line < 32 * bits; line += 64)
        _mm_prefetch((const char *)super + PREFETCH_BYTES + line, _MM_HINT_T0);
}

/* Exact integer dot products of super-blocks super[p] with the token's activations `a` (its 32
 * bytes), one per panel, as 8 int32 lanes each. */
INLINE void super_dots(const int bits, const uint8_t *const *super, const int8_t *a, __m256i *s32)
{
    const __m256i ones = _mm256_set1_epi16(1);
    const int depth = sb_kdepth(bits);
    __m256i s16[DECODE_PANELS];
    for (int p = 0; p < DECODE_PANELS; p++)
        prefetch_ahead(super[p], bits);
    for (int p = 0; p < DECODE_PANELS; p++) {
        s32[p] = _mm256_setzero_si256();
        s16[p] = _mm256_setzero_si256();
    }
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        __m256i x = broadcast4(a + 4 * k);
        for (int p = 0; p < DECODE_PANELS; p++) {
            s16[p] = _mm256_add_epi16(s16[p], dot16(bits, chunk_at(super[p], bits, k), x));
            /* one chain per sum, in registers (see pair_pass) */
            __asm__("" : "+x"(s16[p]));
        }
        if ((k + 1) % depth == 0)
            for (int p = 0; p < DECODE_PANELS; p++) {
                s32[p] = _mm256_add_epi32(s32[p], _mm256_madd_epi16(s16[p], ones));
                s16[p] = _mm256_setzero_si256();
            }
    }
}

INLINE void run_one_token(const int bits, const sb_qmatrix *m, const uint8_t *const *base, int64_t tile_row,
                          int64_t position, int64_t count, const uint8_t **codes, const sb_qact *act, __m256 *acc)
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
            __m256 partial[DECODE_PANELS];
            for (int p = 0; p < DECODE_PANELS; p++)
                partial[p] = _mm256_setzero_ps();
            int s_end = (g + 1) * supers_per_group < column->supers ? (g + 1) * supers_per_group : column->supers;
            for (int s = g * supers_per_group; s < s_end; s++) {
                const uint8_t *super[DECODE_PANELS];
                __m256i s32[DECODE_PANELS];
                for (int p = 0; p < DECODE_PANELS; p++)
                    super[p] = tile_codes[p] + (int64_t)s * 32 * bits;
                super_dots(bits, super, a_tile + (int64_t)s * SB_SUPER_COLS, s32);
                __m256 d = _mm256_set1_ps(d_tile[s]);
                for (int p = 0; p < DECODE_PANELS; p++)
                    partial[p] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[p]), d, partial[p]);
            }
            __m256 sum = _mm256_set1_ps(sums[g]);
            for (int p = 0; p < DECODE_PANELS; p++)
                acc[p] = close_group(m, meta[p] + (int64_t)g * meta_bytes, bits, tile_scale, partial[p], sum, acc[p]);
        }
    }
}

/* run_one_token for 32-column tiles (groups of 32): a tile is one super-block and one group, and
 * its activation block, group and meta entry are all numbered by its tile column, so each tile
 * costs its super-block and its group's end and none of the per-column bookkeeping and loops
 * (at 32x32 tiles that was a third of the decode loop's instructions; docs/KERNELS.md). The
 * same integer sums and float operations (the partial sum is fma(isum, d, +0)). */
INLINE void run_one_token_32(const int bits, const sb_qmatrix *m, const uint8_t *const *base, int64_t tile_row,
                             int64_t position, int64_t count, const uint8_t **codes, const sb_qact *act, __m256 *acc)
{
    const int meta_bytes = sb_kmeta_bytes(m->format);
    for (int64_t i = position; i < position + count; i++) {
        int64_t tile_col = sb_ktile_col(m, tile_row, i);
        __m256i s32[DECODE_PANELS];
        super_dots(bits, codes, act->values + (int64_t)tile_col * SB_SUPER_COLS, s32);
        __m256 d = _mm256_set1_ps(act->block_scales[tile_col]), sum = _mm256_set1_ps(act->group_sums[tile_col]);
        float tile_scale = sb_ktile_bound(m, tile_row, tile_col);
        for (int p = 0; p < DECODE_PANELS; p++) {
            __m256 partial = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[p]), d, _mm256_setzero_ps());
            acc[p] = close_group(m, base[p] + (int64_t)tile_col * meta_bytes, bits, tile_scale, partial, sum, acc[p]);
            codes[p] += 32 * bits;
        }
    }
}

static void run_one_token_dispatch(int bits, const sb_qmatrix *m, const uint8_t *const *base, int64_t tile_row,
                                   int64_t position, int64_t count, const uint8_t **codes, const sb_qact *act,
                                   __m256 *acc)
{
#define RUN(b)                                                                                                   \
    (m->tiling.tile_cols == SB_SUPER_COLS ? run_one_token_32(b, m, base, tile_row, position, count, codes, act, acc)   \
                                          : run_one_token(b, m, base, tile_row, position, count, codes, act, acc))
    switch (bits) {
    case 1: RUN(1); break;
    case 2: RUN(2); break;
    case 3: RUN(3); break;
    case 4: RUN(4); break;
    case 5: RUN(5); break;
    case 6: RUN(6); break;
    case 7: RUN(7); break;
    default: RUN(8); break;
    }
#undef RUN
}

/* Tile pairs: the batch path for groups a multiple of 32 columns and widths 1..4 (whose 16-bit
 * sums hold a whole super-block). The same tile of two panels (consecutive panels of a tile
 * row) is unpacked once per super-block into 16 chunks, and each token's 4 activation bytes,
 * broadcast once, feed the chunk of both panels: half the broadcasts per multiply-add of the
 * kernel it replaced (8 tokens of one panel, a broadcast per vpmaddubsw; docs/KERNELS.md,
 * Batches). PAIR_STEP tokens x 2 panels of 16-bit sums stay in registers next to the two chunks
 * and the broadcast (6 or 3 tokens a step measured no faster); the chunks wait in L1. The
 * super-block is unpacked once for all the tokens of the call, and a group's metadata decoded
 * once per panel for all of them. Per (row, token) the same integer sums (exact, so their order
 * does not matter) and the same float operations in the same order as tile_tokens. */
enum { PAIR_STEP = 4, PAIR_MAX_STEP = 8 };

INLINE void pair_pass(const int panels, const int step, const __m256i chunk[2][8], const int8_t *const *a,
                      __m256i s32[2][PAIR_MAX_STEP], const short weight)
{
    const __m256i widen = _mm256_set1_epi16(weight); /* 16-bit sums to 32 bits, times weight */
    __m256i s16[2][PAIR_MAX_STEP];
#pragma GCC unroll 8
    for (int t = 0; t < step; t++)
        for (int p = 0; p < panels; p++)
            s16[p][t] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++) {
        __m256i c0 = chunk[0][k], c1 = chunk[panels - 1][k];
#pragma GCC unroll 8
        for (int t = 0; t < step; t++) {
            __m256i x = broadcast4(a[t] + 4 * k);
            s16[0][t] = _mm256_add_epi16(s16[0][t], _mm256_maddubs_epi16(c0, x));
            /* keeps each sum a chain in one register: GCC would otherwise reassociate the adds
             * into trees over all the products and spill them (measured: half the speed) */
            __asm__("" : "+x"(s16[0][t]));
            if (panels == 2) {
                s16[1][t] = _mm256_add_epi16(s16[1][t], _mm256_maddubs_epi16(c1, x));
                __asm__("" : "+x"(s16[1][t]));
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < step; t++)
        for (int p = 0; p < panels; p++)
            s32[p][t] = _mm256_madd_epi16(s16[p][t], widen);
}

/* `step` tokens' exact dot products with super-block `s` of `panels` panels (its unpacked
 * chunks): s32[p][t]. */
INLINE void pair_dots(const bool precise, const int panels, const int step, const __m256i chunk[2][8],
                      const token_view *tokens, int s, __m256i s32[2][PAIR_MAX_STEP])
{
    const int8_t *a[PAIR_MAX_STEP];
    for (int t = 0; t < step; t++)
        a[t] = tokens[t].a + (int64_t)s * SB_SUPER_COLS;
    /* 16-bit activations: 255 (q . hi) + (q . lo), the 255 taken by vpmaddwd (sums of at most
     * 8 x 2 x 15 x 127 per 16-bit lane: 255 x 2 of them fit 32 bits) */
    pair_pass(panels, step, chunk, a, s32, precise ? 255 : 1);
    if (precise) {
        __m256i low[2][PAIR_MAX_STEP];
        for (int t = 0; t < step; t++)
            a[t] = tokens[t].low + (int64_t)s * SB_SUPER_COLS;
        pair_pass(panels, step, chunk, a, low, 1);
        for (int t = 0; t < step; t++)
            for (int p = 0; p < panels; p++)
                s32[p][t] = _mm256_add_epi32(s32[p][t], low[p][t]);
    }
}

/* `step` tokens of super-block `s`: partial[p x TOKEN_BLOCK + t] += dot product x block scale. */
INLINE void pair_tokens(const bool precise, const int panels, const int step, const __m256i chunk[2][8],
                        const token_view *tokens, int s, __m256 *partial)
{
    __m256i s32[2][PAIR_MAX_STEP];
    pair_dots(precise, panels, step, chunk, tokens, s, s32);
    for (int t = 0; t < step; t++) {
        __m256 d = _mm256_set1_ps(tokens[t].d[s]);
        for (int p = 0; p < panels; p++) {
            __m256 *sum = &partial[p * TOKEN_BLOCK + t];
            *sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[p][t]), d, *sum);
        }
    }
}

/* Groups of 32 columns (one super-block, s = g): `step` tokens' whole group, closed into
 * acc[p][t] straight from the registers. The partial sum is fma(isum, d, +0), the operation
 * the general path does on its zeroed partial (a multiply could differ in the sign of a zero
 * product), then the group's two fmas. */
INLINE void pair_tokens_group32(const bool precise, const int panels, const int step, const __m256i chunk[2][8],
                                const token_view *tokens, int s, const group_vec *v, __m256 *const *acc)
{
    __m256i s32[2][PAIR_MAX_STEP];
    pair_dots(precise, panels, step, chunk, tokens, s, s32);
    for (int t = 0; t < step; t++) {
        __m256 d = _mm256_set1_ps(tokens[t].d[s]), sum = _mm256_set1_ps(tokens[t].sums[s]);
        for (int p = 0; p < panels; p++) {
            __m256 partial = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[p][t]), d, _mm256_setzero_ps());
            __m256 total = _mm256_fmadd_ps(v[p].scale, partial, acc[p][t]);
            acc[p][t] = _mm256_fmadd_ps(v[p].offset, sum, total);
        }
    }
}

/* One tile of `panels` (1 or 2) panels for `ntokens` tokens: acc[p][u] += the tile's products.
 * partial holds 2 x TOKEN_BLOCK vectors. */
INLINE void tile_pair(const int bits, const bool precise, const int panels, const sb_qmatrix *m, const sb_ktile *tile,
                      const token_view *tokens, int ntokens, __m256 *const *acc, __m256 *partial)
{
    const int supers_per_group = m->tiling.group / SB_SUPER_COLS;
    if (supers_per_group == 1) {
        /* 32x32 tiles: a group per super-block, whose partial sums would go to memory and back
         * for one fma each */
        for (int g = 0; g < tile[0].groups; g++) {
            __m256i chunk[2][8];
            group_vec v[2];
            for (int p = 0; p < panels; p++) {
                unpack_super(tile[p].codes + (int64_t)g * 32 * bits, bits, chunk[p]);
                v[p] = decode_group(m, &tile[p], g);
            }
            int u = 0;
            for (; u + PAIR_STEP <= ntokens; u += PAIR_STEP) {
                __m256 *at[2] = {acc[0] + u, acc[panels - 1] + u};
                pair_tokens_group32(precise, panels, PAIR_STEP, chunk, tokens + u, g, v, at);
            }
            for (; u < ntokens; u++) {
                __m256 *at[2] = {acc[0] + u, acc[panels - 1] + u};
                pair_tokens_group32(precise, panels, 1, chunk, tokens + u, g, v, at);
            }
        }
        return;
    }
    for (int g = 0; g < tile[0].groups; g++) {
        for (int p = 0; p < panels; p++)
            for (int u = 0; u < ntokens; u++)
                partial[p * TOKEN_BLOCK + u] = _mm256_setzero_ps();
        int s_end = (g + 1) * supers_per_group < tile[0].supers ? (g + 1) * supers_per_group : tile[0].supers;
        for (int s = g * supers_per_group; s < s_end; s++) {
            __m256i chunk[2][8];
            for (int p = 0; p < panels; p++)
                unpack_super(tile[p].codes + (int64_t)s * 32 * bits, bits, chunk[p]);
            int u = 0;
            for (; u + PAIR_STEP <= ntokens; u += PAIR_STEP)
                pair_tokens(precise, panels, PAIR_STEP, chunk, tokens + u, s, partial + u);
            for (; u < ntokens; u++)
                pair_tokens(precise, panels, 1, chunk, tokens + u, s, partial + u);
        }
        for (int p = 0; p < panels; p++) {
            group_vec v = decode_group(m, &tile[p], g);
            for (int u = 0; u < ntokens; u++) {
                acc[p][u] = _mm256_fmadd_ps(v.scale, partial[p * TOKEN_BLOCK + u], acc[p][u]);
                acc[p][u] = _mm256_fmadd_ps(v.offset, _mm256_set1_ps(tokens[u].sums[g]), acc[p][u]);
            }
        }
    }
}

static void pair_dispatch(const sb_qmatrix *m, const sb_ktile *tile, int panels, const token_view *tokens, int ntokens,
                          __m256 *const *acc, __m256 *partial)
{
    bool precise = tokens[0].low != NULL;
#define PAIR(b, p, n) tile_pair(b, p, n, m, tile, tokens, ntokens, acc, partial)
    switch ((tile->bits * 2 + precise) * 2 + (panels == 2)) {
    case 4: PAIR(1, false, 1); break;
    case 5: PAIR(1, false, 2); break;
    case 6: PAIR(1, true, 1); break;
    case 7: PAIR(1, true, 2); break;
    case 8: PAIR(2, false, 1); break;
    case 9: PAIR(2, false, 2); break;
    case 10: PAIR(2, true, 1); break;
    case 11: PAIR(2, true, 2); break;
    case 12: PAIR(3, false, 1); break;
    case 13: PAIR(3, false, 2); break;
    case 14: PAIR(3, true, 1); break;
    case 15: PAIR(3, true, 2); break;
    case 16: PAIR(4, false, 1); break;
    case 17: PAIR(4, false, 2); break;
    case 18: PAIR(4, true, 1); break;
    default: PAIR(4, true, 2); break;
    }
#undef PAIR
}

/* Tiles the pair kernel does not take (widths 5..8, groups not a multiple of 32 columns). */
static void tile_dispatch(const sb_qmatrix *m, const sb_ktile *tile, const token_view *tokens, int ntokens,
                          __m256 *acc, __m256 *partial)
{
    bool precise = tokens[0].low != NULL;
#define TILE(b, p) tile_tokens(b, p, m, tile, tokens, ntokens, acc, partial)
    switch (tile->bits * 2 + precise) {
    case 2: TILE(1, false); break;
    case 3: TILE(1, true); break;
    case 4: TILE(2, false); break;
    case 5: TILE(2, true); break;
    case 6: TILE(3, false); break;
    case 7: TILE(3, true); break;
    case 8: TILE(4, false); break;
    case 9: TILE(4, true); break;
    case 10: TILE(5, false); break;
    case 11: TILE(5, true); break;
    case 12: TILE(6, false); break;
    case 13: TILE(6, true); break;
    case 14: TILE(7, false); break;
    case 15: TILE(7, true); break;
    case 16: TILE(8, false); break;
    default: TILE(8, true); break;
    }
#undef TILE
}

static void store_panel(const sb_qmatrix_args *args, int64_t token, int64_t panel, __m256 value)
{
    const sb_qmatrix *m = args->matrix;
    float *y = args->y + token * args->ldy + m->panel_row0[panel];
    int rows = sb_kpanel_rows(m, panel);
    if (rows == SB_PANEL_ROWS) {
        _mm256_storeu_ps(y, args->accumulate ? _mm256_add_ps(_mm256_loadu_ps(y), value) : value);
    } else {
        float lanes[8];
        _mm256_storeu_ps(lanes, value);
        for (int r = 0; r < rows; r++)
            y[r] = args->accumulate ? y[r] + lanes[r] : lanes[r];
    }
}

/* The metadata of the next DECODE_PANELS panels (from `panel`), while this group of panels runs:
 * it is read 16 or 32 bytes a group (in two passes where a tile row mixes widths), too slowly
 * for the hardware prefetchers to follow, and each miss stalls a group's end. */
static void prefetch_meta(const sb_qmatrix *m, int64_t panel, int64_t panel_end)
{
    for (int p = 0; p < DECODE_PANELS && panel + p < panel_end; p++) {
        const uint8_t *meta = sb_kpanel(m, panel + p);
        for (int64_t line = 0; line < m->meta_bytes; line += 64)
            _mm_prefetch((const char *)meta + line, _MM_HINT_T0);
    }
}

/* One token (decode): DECODE_PANELS panels at a time. */
static void one_token_panels(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    for (int64_t panel = panel_begin; panel < panel_end;) {
        int64_t tile_row = sb_kpanel_tile_row(m, panel);
        int n = 1; /* panels of this tile row in this thread's range */
        while (n < DECODE_PANELS && panel + n < panel_end && sb_kpanel_tile_row(m, panel + n) == tile_row)
            n++;
        const uint8_t *base[DECODE_PANELS], *codes[DECODE_PANELS];
        __m256 acc[DECODE_PANELS];
        for (int p = 0; p < DECODE_PANELS; p++) {
            base[p] = sb_kpanel(m, panel + (p < n ? p : n - 1));
            codes[p] = sb_kpanel_codes(m, base[p]);
            acc[p] = _mm256_setzero_ps();
        }
        if (panel + n < panel_end)
            prefetch_meta(m, panel + n, panel_end);
        const uint8_t *bits_row = m->bits_per_tile + tile_row * m->tiling.tiles_across;
        for (int64_t position = 0; position < m->tiling.tiles_across;) {
            int bits = bits_row[sb_ktile_col(m, tile_row, position)];
            int64_t end = position + 1;
            while (end < m->tiling.tiles_across && bits_row[sb_ktile_col(m, tile_row, end)] == bits)
                end++;
            run_one_token_dispatch(bits, m, base, tile_row, position, end - position, codes, act, acc);
            position = end;
        }
        for (int p = 0; p < n; p++)
            store_panel(args, 0, panel + p, acc[p]);
        panel += n;
    }
}

/* ---- Batches of float activations (SB_ACT_F32) ------------------------------------------------
 *
 * A tile row is walked in spans of at most SB_F32_SPAN_COLS columns in storage order (whole
 * super-blocks, possibly of several tiles: runs). Per span and pair of panels, the 16 rows'
 * weights are decoded once into `wd` (column after column, 16 floats each: 128 KiB, in L2), then
 * every token of the batch takes them F32_TOKENS at a time: per column two weight vectors,
 * F32_TOKENS broadcasts and 2 x F32_TOKENS FMAs into accumulators that stay in registers for the
 * whole span (12 of the 16 registers). A (row, token) is one FMA chain over its columns in
 * storage order, continued through y between spans: the same bits for any batch size or thread
 * count. Spans of 128 columns (8 KiB of weights in L1, the activations in L2) ran at 60% of the
 * FMA peak on a Zen 3: a quarter of the time went to reloading y (the tile row's outputs and the
 * block's activations no longer fit L2 together at 512 tokens); long spans load y once per 2048
 * columns and stream each token's activations sequentially. */
enum { F32_TOKENS = 6, F32_ROW_FLOATS = 2 * SB_PANEL_ROWS, F32_SMALL_SPAN = 128 };

/* Super-blocks [s0, s0 + supers) of one stored tile within a span. */
typedef struct f32_run {
    int64_t tile_col;
    int64_t col0;  /* the run's first column of the matrix (its activations) */
    int s0, supers;
    int cols;      /* valid columns (a ragged tile's last super-block has fewer than 32) */
    int wd0;       /* its first column in the span's decoded weights */
} f32_run;

/* The 8 rows of one panel for a run's columns: wd[c x 16] = scale q + offset for column c. */
INLINE void f32_decode_run(const int bits, const sb_qmatrix *m, const sb_ktile *tile, const f32_run *run, float *wd)
{
    const int group = m->tiling.group;
    int col = run->s0 * SB_SUPER_COLS, g = col / group, next = (g + 1) * group;
    group_vec v = decode_group(m, tile, g);
    for (int s = run->s0; s < run->s0 + run->supers; s++) {
        __m256i chunk[8];
        unpack_super(tile->codes + (int64_t)s * 32 * bits, bits, chunk);
#pragma GCC unroll 8
        for (int k = 0; k < 8; k++, col += SB_CHUNK_COLS) {
            if (col == next) { /* a group holds whole chunks (its width is a multiple of 4) */
                v = decode_group(m, tile, ++g);
                next += group;
            }
#pragma GCC unroll 4
            for (int j = 0; j < SB_CHUNK_COLS; j++) {
                __m256i q = bits == 8 ? _mm256_srai_epi32(_mm256_slli_epi32(chunk[k], 24 - 8 * j), 24)
                            : j == 3  ? _mm256_srli_epi32(chunk[k], 24)
                                      : _mm256_and_si256(_mm256_srli_epi32(chunk[k], 8 * j), _mm256_set1_epi32(255));
                _mm256_store_ps(wd + (int64_t)(col - run->s0 * SB_SUPER_COLS + j) * F32_ROW_FLOATS,
                                _mm256_fmadd_ps(v.scale, _mm256_cvtepi32_ps(q), v.offset));
            }
        }
    }
}

static void f32_decode_dispatch(const sb_qmatrix *m, const sb_ktile *tile, const f32_run *run, float *wd)
{
    switch (tile->bits) {
    case 1: f32_decode_run(1, m, tile, run, wd); break;
    case 2: f32_decode_run(2, m, tile, run, wd); break;
    case 3: f32_decode_run(3, m, tile, run, wd); break;
    case 4: f32_decode_run(4, m, tile, run, wd); break;
    case 5: f32_decode_run(5, m, tile, run, wd); break;
    case 6: f32_decode_run(6, m, tile, run, wd); break;
    case 7: f32_decode_run(7, m, tile, run, wd); break;
    default: f32_decode_run(8, m, tile, run, wd); break;
    }
}

/* `ntok` tokens (their activation rows x[t]) times a span's decoded weights for `panels` panels:
 * acc[t][p] += sum over the runs' columns of x w, one FMA chain per lane. */
INLINE void f32_block_tokens(const int panels, const int ntok, const float *wd, const f32_run *runs, int nruns,
                             const float *const *x, __m256 acc[F32_TOKENS][2])
{
    /* the accumulators as locals, so they live in registers (through the pointer GCC stored
     * every one of them back after each FMA: a third of the speed) */
    __m256 sum[F32_TOKENS][2];
#pragma GCC unroll 6
    for (int t = 0; t < ntok; t++)
        for (int p = 0; p < panels; p++)
            sum[t][p] = acc[t][p];
    for (int e = 0; e < nruns; e++) {
        const float *w = wd + (int64_t)runs[e].wd0 * F32_ROW_FLOATS;
        const float *xr[F32_TOKENS];
        for (int t = 0; t < ntok; t++)
            xr[t] = x[t] + runs[e].col0;
        for (int c = 0; c < runs[e].cols; c++) {
            __m256 w0 = _mm256_load_ps(w + c * F32_ROW_FLOATS);
            __m256 w1 = panels == 2 ? _mm256_load_ps(w + c * F32_ROW_FLOATS + SB_PANEL_ROWS) : w0;
#pragma GCC unroll 6
            for (int t = 0; t < ntok; t++) {
                __m256 b = _mm256_broadcast_ss(xr[t] + c);
                sum[t][0] = _mm256_fmadd_ps(b, w0, sum[t][0]);
                if (panels == 2)
                    sum[t][1] = _mm256_fmadd_ps(b, w1, sum[t][1]);
            }
        }
    }
#pragma GCC unroll 6
    for (int t = 0; t < ntok; t++)
        for (int p = 0; p < panels; p++)
            acc[t][p] = sum[t][p];
}

static void f32_block_dispatch(int panels, int ntok, const float *wd, const f32_run *runs, int nruns,
                               const float *const *x, __m256 acc[F32_TOKENS][2])
{
#define F32(p, n) f32_block_tokens(p, n, wd, runs, nruns, x, acc)
    switch ((ntok - 1) * 2 + (panels == 2)) {
    case 0: F32(1, 1); break;
    case 1: F32(2, 1); break;
    case 2: F32(1, 2); break;
    case 3: F32(2, 2); break;
    case 4: F32(1, 3); break;
    case 5: F32(2, 3); break;
    case 6: F32(1, 4); break;
    case 7: F32(2, 4); break;
    case 8: F32(1, 5); break;
    case 9: F32(2, 5); break;
    case 10: F32(1, 6); break;
    default: F32(2, 6); break;
    }
#undef F32
}

/* Rows [0, rows) of a panel's 8 at y (the lanes past a short panel's rows are neither read nor
 * written). */
INLINE __m256i f32_row_mask(int rows) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }

static void f32_panels(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    /* the products cannot fail: without the heap, short spans on the stack (slower, same bits) */
    _Alignas(32) float small[F32_SMALL_SPAN * F32_ROW_FLOATS];
    float *wd = aligned_alloc(64, (size_t)SB_F32_SPAN_COLS * F32_ROW_FLOATS * sizeof(float));
    const int span_cols = wd ? SB_F32_SPAN_COLS : F32_SMALL_SPAN;
    if (!wd)
        wd = small;
    f32_run runs[SB_F32_SPAN_COLS / SB_SUPER_COLS];
    for (int64_t panel = panel_begin; panel < panel_end;) {
        int64_t tile_row = sb_kpanel_tile_row(m, panel);
        int n = 1; /* panels of this tile row in this thread's range */
        while (panel + n < panel_end && sb_kpanel_tile_row(m, panel + n) == tile_row)
            n++;
        int64_t position = 0;
        int s_next = 0; /* the first super-block of the tile at `position` not yet taken */
        for (bool first = true; position < m->tiling.tiles_across; first = false) {
            int nruns = 0, slots = 0;
            while (position < m->tiling.tiles_across && slots < span_cols) {
                int64_t tile_col = sb_ktile_col(m, tile_row, position);
                const sb_kcolumn *column = &m->columns[tile_col];
                int take = column->supers - s_next, room = (span_cols - slots) / SB_SUPER_COLS;
                take = take < room ? take : room;
                int left = column->cols - s_next * SB_SUPER_COLS;
                runs[nruns++] = (f32_run){.tile_col = tile_col,
                                          .col0 = tile_col * m->tiling.tile_cols + s_next * SB_SUPER_COLS,
                                          .s0 = s_next, .supers = take,
                                          .cols = left < take * SB_SUPER_COLS ? left : take * SB_SUPER_COLS,
                                          .wd0 = slots};
                slots += take * SB_SUPER_COLS;
                s_next += take;
                if (s_next == column->supers) {
                    position++;
                    s_next = 0;
                }
            }
            for (int i = 0; i < n; i += 2) {
                int panels = n - i < 2 ? 1 : 2;
                int rows[2] = {sb_kpanel_rows(m, panel + i), sb_kpanel_rows(m, panel + i + panels - 1)};
                for (int p = 0; p < panels; p++) {
                    const uint8_t *base = sb_kpanel(m, panel + i + p);
                    for (int e = 0; e < nruns; e++) {
                        int64_t tile = tile_row * m->tiling.tiles_across + runs[e].tile_col;
                        sb_ktile t = sb_ktile_at(m, base, tile_row, runs[e].tile_col,
                                                 sb_kpanel_codes(m, base) + m->code_offset[tile]);
                        f32_decode_dispatch(m, &t, &runs[e], wd + (int64_t)runs[e].wd0 * F32_ROW_FLOATS + p * SB_PANEL_ROWS);
                    }
                }
                __m256i mask[2] = {f32_row_mask(rows[0]), f32_row_mask(rows[1])};
                for (int64_t t0 = 0; t0 < act->ntokens; t0 += F32_TOKENS) {
                    int ntok = (int)(act->ntokens - t0 < F32_TOKENS ? act->ntokens - t0 : F32_TOKENS);
                    const float *x[F32_TOKENS];
                    __m256 acc[F32_TOKENS][2];
                    for (int t = 0; t < ntok; t++) {
                        x[t] = act->floats + (t0 + t) * act->float_stride;
                        for (int p = 0; p < 2; p++) {
                            const float *y = args->y + (t0 + t) * args->ldy + m->panel_row0[panel + i + (p < panels ? p : 0)];
                            bool load = p < panels && (!first || args->accumulate);
                            acc[t][p] = !load                      ? _mm256_setzero_ps()
                                        : rows[p] == SB_PANEL_ROWS ? _mm256_loadu_ps(y)
                                                                   : _mm256_maskload_ps(y, mask[p]);
                        }
                    }
                    f32_block_dispatch(panels, ntok, wd, runs, nruns, x, acc);
                    for (int t = 0; t < ntok; t++) {
                        for (int p = 0; p < panels; p++) {
                            float *y = args->y + (t0 + t) * args->ldy + m->panel_row0[panel + i + p];
                            if (rows[p] == SB_PANEL_ROWS)
                                _mm256_storeu_ps(y, acc[t][p]);
                            else
                                _mm256_maskstore_ps(y, mask[p], acc[t][p]);
                        }
                    }
                }
            }
        }
        panel += n;
    }
    if (wd != small)
        free(wd);
}

void sb_kernel_panels_avx2(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    if (act->precision == SB_ACT_F32) {
        f32_panels(args, panel_begin, panel_end);
        return;
    }
    if (act->ntokens == 1 && m->segment_cols == SB_SUPER_COLS && !act->low) {
        one_token_panels(args, panel_begin, panel_end);
        return;
    }
    /* Batches: up to BLOCK_PANELS panels of one tile row at a time, tile after tile, so that a
     * tile's activations for TOKEN_BLOCK tokens (16 KiB for 128 columns of 16-bit activations)
     * are read from L1 by every panel instead of streaming the whole row of activations past
     * each panel (at 512 tokens 8 MiB: measured 2.5x slower per product than 64 tokens). Each
     * (row, token) still sums its tiles in storage order: the same bits as a panel at a time. */
    __m256 acc[BLOCK_PANELS * TOKEN_BLOCK], partial[2 * TOKEN_BLOCK]; /* 36 KiB of the thread's stack */
    token_view tokens[TOKEN_BLOCK];
    for (int64_t panel = panel_begin; panel < panel_end;) {
        int64_t tile_row = sb_kpanel_tile_row(m, panel);
        int n = 1; /* panels of this tile row in this thread's range */
        while (n < BLOCK_PANELS && panel + n < panel_end && sb_kpanel_tile_row(m, panel + n) == tile_row)
            n++;
        for (int64_t t0 = 0; t0 < act->ntokens; t0 += TOKEN_BLOCK) {
            int ntokens = (int)(act->ntokens - t0 < TOKEN_BLOCK ? act->ntokens - t0 : TOKEN_BLOCK);
            const uint8_t *base[BLOCK_PANELS], *codes[BLOCK_PANELS];
            for (int i = 0; i < n; i++) {
                base[i] = sb_kpanel(m, panel + i);
                codes[i] = sb_kpanel_codes(m, base[i]);
                for (int u = 0; u < ntokens; u++)
                    acc[i * TOKEN_BLOCK + u] = _mm256_setzero_ps();
            }
            for (int64_t position = 0; position < m->tiling.tiles_across; position++) {
                int64_t tile_col = sb_ktile_col(m, tile_row, position);
                const sb_kcolumn *column = &m->columns[tile_col];
                for (int u = 0; u < ntokens; u++) {
                    int64_t t = t0 + u;
                    tokens[u].a = act->values + t * act->stride + column->first_block * SB_SUPER_COLS;
                    tokens[u].low = act->low ? act->low + t * act->stride + column->first_block * SB_SUPER_COLS : NULL;
                    tokens[u].d = act->block_scales + t * act->blocks + column->first_block;
                    tokens[u].sums = act->group_sums + t * act->groups + column->first_group;
                }
                for (int i = 0; i < n; i += 2) {
                    int panels = n - i < 2 ? 1 : 2;
                    sb_ktile tile[2];
                    for (int p = 0; p < panels; p++) {
                        tile[p] = sb_ktile_at(m, base[i + p], tile_row, tile_col, codes[i + p]);
                        codes[i + p] += (int64_t)tile[p].supers * 32 * tile[p].bits;
                    }
                    if (m->segment_cols == SB_SUPER_COLS && tile[0].bits <= 4) {
                        __m256 *pair_acc[2] = {acc + i * TOKEN_BLOCK, acc + (i + panels - 1) * TOKEN_BLOCK};
                        pair_dispatch(m, tile, panels, tokens, ntokens, pair_acc, partial);
                    } else {
                        for (int p = 0; p < panels; p++)
                            tile_dispatch(m, &tile[p], tokens, ntokens, acc + (i + p) * TOKEN_BLOCK, partial);
                    }
                }
            }
            for (int i = 0; i < n; i++)
                for (int u = 0; u < ntokens; u++)
                    store_panel(args, t0 + u, panel + i, acc[i * TOKEN_BLOCK + u]);
        }
        panel += n;
    }
}

#else /* not built for this instruction set: never selected (sb_cpu_supports is false) */
#include "sb_kernel_internal.h"
#include "sb_quant.h"
void sb_kernel_panels_avx2(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    sb_kernel_panels_scalar(args, panel_begin, panel_end);
}
void sb_kernel_avx2_q8_table(float table[256])
{
    const float *reference = sb_q8_scale_table();
    for (int s = 0; s < 256; s++)
        table[s] = reference[s];
}
#endif
