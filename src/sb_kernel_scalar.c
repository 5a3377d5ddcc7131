/* sb_kernel_scalar: the portable path, a plain reading of the layout (sb_kernel_internal.h).
 * It computes, per token and row, the sums the SIMD paths compute, in the same order: per group
 * of a tile, t = sum over its segments of (integer dot product) x d_b, then acc += scale t and
 * acc += offset S_g; groups in order, tiles in order. Float activations (SB_ACT_F32): each
 * weight decoded as scale q + offset, then acc += w x column by column in storage order. */
#include <string.h>

#include "sb_half.h"
#include "sb_kernel_internal.h"

/* Code of chunk `k`, byte `i` of a super-block at `bits` (the stored code, 0 .. 2^bits - 1). */
static inline int code_at(const uint8_t *super, int bits, int k, int i)
{
    if (bits == 8)
        return super[32 * k + i] ^ 0x80;
    if (bits == 3) {
        if (k < 6)
            return (super[32 * (k / 2) + i] >> (4 * (k % 2))) & 7;
        int bit = k == 6 ? 3 : 7;
        return ((super[i] >> bit) & 1) | ((super[32 + i] >> bit) & 1) << 1 | ((super[64 + i] >> bit) & 1) << 2;
    }
    int code = 0, shift = 0;
    if (sb_kplane4_words(bits)) {
        code = (super[32 * (k / 2) + i] >> (4 * (k % 2))) & 15;
        super += 4 * 32;
        shift = 4;
    }
    if (sb_kplane2_words(bits)) {
        code |= ((super[32 * (k / 4) + i] >> (2 * (k % 4))) & 3) << shift;
        super += 2 * 32;
        shift += 2;
    }
    if (sb_kplane1_words(bits))
        code |= ((super[i] >> k) & 1) << shift;
    return code;
}

/* The affine decoding of group `g` of a tile for the panel's 8 rows: w = scale q + offset. */
static void decode_group(const sb_qmatrix *m, const sb_ktile *tile, int g, float scale[8], float offset[8])
{
    const uint8_t *entry = tile->meta + g * sb_kmeta_bytes(m->format);
    for (int r = 0; r < SB_PANEL_ROWS; r++) {
        if (m->format == SB_SCALES_Q8) {
            const sb_kmeta_q8 *meta = (const sb_kmeta_q8 *)entry;
            scale[r] = tile->tile_scale * m->q8_table[meta->scale_code[r]];
            float z = (float)meta->zero_code[r] * ((float)(1 << tile->bits) / 256.0f);
            offset[r] = -(scale[r] * z);
        } else {
            const sb_kmeta_f16 *meta = (const sb_kmeta_f16 *)entry;
            scale[r] = sb_f16_to_f32(meta->scale[r]);
            offset[r] = sb_f16_to_f32(meta->zero[r]);
        }
    }
}

enum { TOKEN_BLOCK = 64 };

/* Tokens [t0, t0 + count) of a panel: acc[u][r] for token t0 + u, row r. Each super-block is
 * unpacked once for all of them. */
static void panel_tokens(const sb_qmatrix *m, int64_t panel, const sb_qact *act, int64_t t0, int count,
                         float acc[][SB_PANEL_ROWS])
{
    const uint8_t *base = sb_kpanel(m, panel);
    int64_t tile_row = sb_kpanel_tile_row(m, panel);
    int segment = m->segment_cols, group = m->tiling.group, segments_per_group = group / segment;
    float partial[TOKEN_BLOCK][SB_PANEL_ROWS];
    uint8_t codes[8][32];
    memset(acc, 0, (size_t)count * sizeof *acc);
    const uint8_t *tile_codes = sb_kpanel_codes(m, base);
    for (int64_t position = 0; position < m->tiling.tiles_across; position++) {
        sb_ktile tile = sb_ktile_at(m, base, tile_row, sb_ktile_col(m, tile_row, position), tile_codes);
        tile_codes += (int64_t)tile.supers * 32 * tile.bits;
        int64_t a0 = tile.first_block * SB_SUPER_COLS;
        for (int g = 0; g < tile.groups; g++) {
            memset(partial, 0, sizeof partial);
            int e_end = (g + 1) * segments_per_group < tile.segments ? (g + 1) * segments_per_group : tile.segments;
            int unpacked = -1;
            for (int e = g * segments_per_group; e < e_end; e++) {
                int col0 = e * segment, super = col0 / SB_SUPER_COLS;
                if (super != unpacked) {
                    const uint8_t *words = tile.codes + (int64_t)super * 32 * tile.bits;
                    for (int k = 0; k < 8; k++)
                        for (int i = 0; i < 32; i++)
                            codes[k][i] = (uint8_t)code_at(words, tile.bits, k, i);
                    unpacked = super;
                }
                for (int u = 0; u < count; u++) {
                    int64_t t = t0 + u;
                    const int8_t *values = act->values + t * act->stride + a0;
                    const int8_t *low = act->low ? act->low + t * act->stride + a0 : NULL;
                    int32_t isum[SB_PANEL_ROWS] = {0};
                    for (int k = col0 / 4; k < (col0 + segment) / 4; k++)
                        for (int r = 0; r < SB_PANEL_ROWS; r++)
                            for (int c = 0; c < 4; c++) {
                                int64_t at = 4 * k + c;
                                int32_t x = low ? 255 * values[at] + low[at] : values[at];
                                isum[r] += codes[k % 8][4 * r + c] * x;
                            }
                    float d = act->block_scales[t * act->blocks + tile.first_block + col0 / SB_SUPER_COLS];
                    for (int r = 0; r < SB_PANEL_ROWS; r++)
                        partial[u][r] += (float)isum[r] * d;
                }
            }
            float scale[8], offset[8];
            decode_group(m, &tile, g, scale, offset);
            for (int u = 0; u < count; u++) {
                float sum = act->group_sums[(t0 + u) * act->groups + tile.first_group + g];
                for (int r = 0; r < SB_PANEL_ROWS; r++) {
                    acc[u][r] += scale[r] * partial[u][r];
                    acc[u][r] += offset[r] * sum;
                }
            }
        }
    }
}

/* Float activations (SB_ACT_F32), tokens [t0, t0 + count) of a panel: each weight decoded as
 * w = scale q + offset, then acc[u][r] += w x one column at a time, tiles in storage order. */
static void panel_floats(const sb_qmatrix *m, int64_t panel, const sb_qact *act, int64_t t0, int count,
                         float acc[][SB_PANEL_ROWS])
{
    const uint8_t *base = sb_kpanel(m, panel);
    int64_t tile_row = sb_kpanel_tile_row(m, panel);
    const uint8_t *tile_codes = sb_kpanel_codes(m, base);
    for (int64_t position = 0; position < m->tiling.tiles_across; position++) {
        int64_t tile_col = sb_ktile_col(m, tile_row, position);
        sb_ktile tile = sb_ktile_at(m, base, tile_row, tile_col, tile_codes);
        tile_codes += (int64_t)tile.supers * 32 * tile.bits;
        const float *x = act->floats + t0 * act->float_stride + tile_col * m->tiling.tile_cols;
        float scale[8], offset[8];
        int decoded = -1;
        for (int c = 0; c < tile.cols; c++) {
            int g = c / m->tiling.group;
            if (g != decoded) {
                decode_group(m, &tile, g, scale, offset);
                decoded = g;
            }
            const uint8_t *words = tile.codes + (int64_t)(c / SB_SUPER_COLS) * 32 * tile.bits;
            int k = c % SB_SUPER_COLS / SB_CHUNK_COLS, i = c % SB_CHUNK_COLS;
            for (int r = 0; r < SB_PANEL_ROWS; r++) {
                float w = scale[r] * (float)code_at(words, tile.bits, k, SB_CHUNK_COLS * r + i) + offset[r];
                for (int u = 0; u < count; u++)
                    acc[u][r] += w * x[u * act->float_stride + c];
            }
        }
    }
}

void sb_kernel_panels_scalar(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    float acc[TOKEN_BLOCK][SB_PANEL_ROWS];
    if (args->act->precision == SB_ACT_F32) {
        for (int64_t panel = panel_begin; panel < panel_end; panel++) {
            int rows = sb_kpanel_rows(m, panel);
            int64_t row0 = m->panel_row0[panel];
            for (int64_t t0 = 0; t0 < args->act->ntokens; t0 += TOKEN_BLOCK) {
                int count = (int)(args->act->ntokens - t0 < TOKEN_BLOCK ? args->act->ntokens - t0 : TOKEN_BLOCK);
                for (int u = 0; u < count; u++)
                    for (int r = 0; r < SB_PANEL_ROWS; r++)
                        acc[u][r] = args->accumulate && r < rows ? args->y[(t0 + u) * args->ldy + row0 + r] : 0.0f;
                panel_floats(m, panel, args->act, t0, count, acc);
                for (int u = 0; u < count; u++)
                    for (int r = 0; r < rows; r++)
                        args->y[(t0 + u) * args->ldy + row0 + r] = acc[u][r];
            }
        }
        return;
    }
    for (int64_t panel = panel_begin; panel < panel_end; panel++) {
        int rows = sb_kpanel_rows(m, panel);
        int64_t row0 = m->panel_row0[panel];
        for (int64_t t0 = 0; t0 < args->act->ntokens; t0 += TOKEN_BLOCK) {
            int count = (int)(args->act->ntokens - t0 < TOKEN_BLOCK ? args->act->ntokens - t0 : TOKEN_BLOCK);
            panel_tokens(m, panel, args->act, t0, count, acc);
            for (int u = 0; u < count; u++) {
                float *y = args->y + (t0 + u) * args->ldy + row0;
                for (int r = 0; r < rows; r++)
                    y[r] = args->accumulate ? y[r] + acc[u][r] : acc[u][r];
            }
        }
    }
}
