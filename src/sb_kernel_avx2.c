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
 * a time. A batch runs 64 tokens at a time over each panel: a super-block is unpacked once
 * (into registers or L1) and reused by the 64 tokens, 4 at a time.
 */
#if defined(__AVX2__)
#include <immintrin.h>
#include <string.h>

#include "sb_kernel_internal.h"

#define INLINE static inline __attribute__((always_inline))

enum { TOKEN_BLOCK = 64, TOKEN_STEP = 4 };

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

/* The 8 chunks of a super-block as bytes (codes 0 .. 2^bits - 1; width 8: code - 128). */
INLINE void unpack_super(const uint8_t *super, const int bits, __m256i chunk[8])
{
    const __m256i *words = (const __m256i *)super;
    if (bits == 8) {
        for (int k = 0; k < 8; k++)
            chunk[k] = _mm256_load_si256(words + k);
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

typedef struct group_vec {
    __m256 scale, offset;
} group_vec;

/* The affine decoding w = scale q + offset of one group for the panel's 8 rows (width 8: for
 * codes stored minus 128). */
INLINE group_vec decode_group(const sb_qmatrix *m, const sb_ktile *tile, int g)
{
    group_vec v;
    if (m->format == SB_SCALES_Q8) {
        __m128i codes = _mm_loadu_si128((const __m128i *)(tile->meta + (int64_t)g * sizeof(sb_kmeta_q8)));
        __m256i scale_codes = _mm256_cvtepu8_epi32(codes);
        __m256i zero_codes = _mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8));
        v.scale = _mm256_mul_ps(_mm256_set1_ps(tile->tile_scale), _mm256_i32gather_ps(m->q8_table, scale_codes, 4));
        __m256 z = _mm256_mul_ps(_mm256_cvtepi32_ps(zero_codes), _mm256_set1_ps((float)(1 << tile->bits) / 256.0f));
        v.offset = _mm256_xor_ps(_mm256_mul_ps(v.scale, z), _mm256_set1_ps(-0.0f));
    } else {
        const uint8_t *entry = tile->meta + (int64_t)g * sizeof(sb_kmeta_f16);
        v.scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)entry));
        v.offset = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(entry + 16)));
    }
    if (tile->bits == 8)
        v.offset = _mm256_add_ps(v.offset, _mm256_mul_ps(v.scale, _mm256_set1_ps(128.0f)));
    return v;
}

/* Token pointers into an sb_qact, at a tile. */
typedef struct token_view {
    const int8_t *a;   /* the tile's first activation byte */
    const float *d;    /* the tile's first block scale */
    const float *sums; /* the tile's first group sum */
} token_view;

/* Adds one tile's products to acc[u] for `ntokens` tokens. `segments_per_super` > 1 when
 * groups are narrower than 32 columns or not a multiple of 32 (segments of segment_cols). */
INLINE void tile_tokens(const int bits, const sb_qmatrix *m, const sb_ktile *tile, const token_view *tokens,
                        int ntokens, __m256 *acc, __m256 *partial)
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
                        s[i] = dot_chunks(bits, chunk, tokens[u + i].a + a_offset, 0, 8);
                    for (int i = 0; i < TOKEN_STEP; i++)
                        partial[u + i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[i]),
                                                         _mm256_set1_ps(tokens[u + i].d[super]), partial[u + i]);
                }
                for (; u < ntokens; u++) {
                    __m256i s = dot_chunks(bits, chunk, tokens[u].a + a_offset, 0, 8);
                    partial[u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(tokens[u].d[super]), partial[u]);
                }
            } else {
                for (; u < ntokens; u++)
                    for (int f = e; f < e_stop; f++) {
                        int k0 = f * segment_chunks - super * 8;
                        __m256i s = dot_chunks(bits, chunk, tokens[u].a + a_offset, k0,
                                               segment_chunks);
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

static void tile_dispatch(const sb_qmatrix *m, const sb_ktile *tile, const token_view *tokens, int ntokens,
                          __m256 *acc, __m256 *partial)
{
    switch (tile->bits) {
    case 1: tile_tokens(1, m, tile, tokens, ntokens, acc, partial); break;
    case 2: tile_tokens(2, m, tile, tokens, ntokens, acc, partial); break;
    case 3: tile_tokens(3, m, tile, tokens, ntokens, acc, partial); break;
    case 4: tile_tokens(4, m, tile, tokens, ntokens, acc, partial); break;
    case 5: tile_tokens(5, m, tile, tokens, ntokens, acc, partial); break;
    case 6: tile_tokens(6, m, tile, tokens, ntokens, acc, partial); break;
    case 7: tile_tokens(7, m, tile, tokens, ntokens, acc, partial); break;
    default: tile_tokens(8, m, tile, tokens, ntokens, acc, partial); break;
    }
}

void sb_kernel_panels_avx2(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    const sb_qact *act = args->act;
    __m256 acc[TOKEN_BLOCK], partial[TOKEN_BLOCK];
    token_view tokens[TOKEN_BLOCK];
    for (int64_t panel = panel_begin; panel < panel_end; panel++) {
        const uint8_t *base = sb_kpanel(m, panel);
        int64_t tile_row = sb_kpanel_tile_row(m, panel), row0 = m->panel_row0[panel];
        int rows = sb_kpanel_rows(m, panel);
        for (int64_t t0 = 0; t0 < act->ntokens; t0 += TOKEN_BLOCK) {
            int ntokens = (int)(act->ntokens - t0 < TOKEN_BLOCK ? act->ntokens - t0 : TOKEN_BLOCK);
            for (int u = 0; u < ntokens; u++)
                acc[u] = _mm256_setzero_ps();
            const uint8_t *codes = sb_kpanel_codes(m, base);
            for (int64_t tile_col = 0; tile_col < m->tiling.tiles_across; tile_col++) {
                sb_ktile tile = sb_ktile_at(m, base, tile_row, tile_col, codes);
                codes += (int64_t)tile.supers * 32 * tile.bits;
                for (int u = 0; u < ntokens; u++) {
                    int64_t t = t0 + u;
                    tokens[u].a = act->values + t * act->stride + tile.first_block * SB_SUPER_COLS;
                    tokens[u].d = act->block_scales + t * act->blocks + tile.first_block;
                    tokens[u].sums = act->group_sums + t * act->groups + tile.first_group;
                }
                tile_dispatch(m, &tile, tokens, ntokens, acc, partial);
            }
            for (int u = 0; u < ntokens; u++) {
                float *y = args->y + (t0 + u) * args->ldy + row0;
                if (rows == SB_PANEL_ROWS) {
                    __m256 value = args->accumulate ? _mm256_add_ps(_mm256_loadu_ps(y), acc[u]) : acc[u];
                    _mm256_storeu_ps(y, value);
                } else {
                    float lanes[8];
                    _mm256_storeu_ps(lanes, acc[u]);
                    for (int r = 0; r < rows; r++)
                        y[r] = args->accumulate ? y[r] + lanes[r] : lanes[r];
                }
            }
        }
    }
}

#else /* not built for this instruction set: never selected (sb_cpu_supports is false) */
#include "sb_kernel_internal.h"
void sb_kernel_panels_avx2(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    sb_kernel_panels_scalar(args, panel_begin, panel_end);
}
#endif
