/* sb_kernel_scalar: the portable path, a plain reading of the layout (sb_kernel_internal.h).
 * It computes, per token and row, the sums the SIMD paths compute, in the same order: per group
 * of a tile, t = sum over its segments of (integer dot product) x d_b, then acc += scale t and
 * acc += offset S_g; groups in order, tiles in order. */
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

static void panel_token(const sb_qmatrix *m, int64_t panel, const sb_qact *act, int64_t token, float acc[8])
{
    const uint8_t *base = sb_kpanel(m, panel);
    int64_t tile_row = sb_kpanel_tile_row(m, panel);
    const int8_t *values = act->values + token * act->stride;
    const int8_t *low = act->low ? act->low + token * act->stride : NULL;
    const float *block_scales = act->block_scales + token * act->blocks;
    const float *group_sums = act->group_sums + token * act->groups;
    int segment = m->segment_cols, group = m->tiling.group;
    for (int r = 0; r < SB_PANEL_ROWS; r++)
        acc[r] = 0.0f;
    const uint8_t *codes = sb_kpanel_codes(m, base);
    for (int64_t position = 0; position < m->tiling.tiles_across; position++) {
        sb_ktile tile = sb_ktile_at(m, base, tile_row, sb_ktile_col(m, tile_row, position), codes);
        codes += (int64_t)tile.supers * 32 * tile.bits;
        int64_t a0 = tile.first_block * SB_SUPER_COLS;
        int segments_per_group = group / segment;
        for (int g = 0; g < tile.groups; g++) {
            float partial[8] = {0};
            int e_end = (g + 1) * segments_per_group < tile.segments ? (g + 1) * segments_per_group : tile.segments;
            for (int e = g * segments_per_group; e < e_end; e++) {
                int col0 = e * segment;
                int32_t isum[8] = {0};
                for (int k = col0 / 4; k < (col0 + segment) / 4; k++) {
                    const uint8_t *super = tile.codes + (int64_t)(k / 8) * 32 * tile.bits;
                    for (int r = 0; r < SB_PANEL_ROWS; r++)
                        for (int c = 0; c < 4; c++)
                            isum[r] += code_at(super, tile.bits, k % 8, 4 * r + c) *
                                       (low ? 255 * values[a0 + 4 * k + c] + low[a0 + 4 * k + c] : values[a0 + 4 * k + c]);
                }
                float d = block_scales[tile.first_block + col0 / SB_SUPER_COLS];
                for (int r = 0; r < SB_PANEL_ROWS; r++)
                    partial[r] += (float)isum[r] * d;
            }
            float scale[8], offset[8];
            decode_group(m, &tile, g, scale, offset);
            for (int r = 0; r < SB_PANEL_ROWS; r++) {
                acc[r] += scale[r] * partial[r];
                acc[r] += offset[r] * group_sums[tile.first_group + g];
            }
        }
    }
}

void sb_kernel_panels_scalar(const sb_qmatrix_args *args, int64_t panel_begin, int64_t panel_end)
{
    const sb_qmatrix *m = args->matrix;
    for (int64_t panel = panel_begin; panel < panel_end; panel++) {
        int rows = sb_kpanel_rows(m, panel);
        int64_t row0 = m->panel_row0[panel];
        for (int64_t t = 0; t < args->act->ntokens; t++) {
            float acc[8];
            panel_token(m, panel, args->act, t, acc);
            float *y = args->y + t * args->ldy + row0;
            for (int r = 0; r < rows; r++)
                y[r] = args->accumulate ? y[r] + acc[r] : acc[r];
        }
    }
}
