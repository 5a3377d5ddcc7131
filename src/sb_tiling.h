/* sb_tiling: how a weight matrix (rows = output channels, cols = input channels) is cut into
 * hardware-aligned tiles and each tile row into quantization groups.
 *
 * Tiles are `tile_rows x tile_cols`, numbered row-major over the tile grid; the last tile row
 * and column may be smaller (ragged edges: stories260K's FFN is 172 wide). Groups are `group`
 * consecutive input columns of one row; `group` must divide `tile_cols`, so group boundaries
 * never straddle tiles and group j of a row covers columns [j*group, min((j+1)*group, cols))
 * whatever tile it lies in. Only the matrix's last group of a row may be short.
 */
#ifndef SB_TILING_H
#define SB_TILING_H

#include <stdint.h>

#include "sb_error.h"

typedef struct sb_tiling {
    int64_t rows, cols;
    int tile_rows, tile_cols, group;
    int64_t tiles_down, tiles_across; /* the tile grid */
    int64_t groups_per_row;           /* ceil(cols / group) */
} sb_tiling;

typedef struct sb_tile_rect {
    int64_t row0, col0;
    int rows, cols;
} sb_tile_rect;

/* Validates the sizes (positive, group divides tile_cols, rows x cols and the tile count fit
 * in int64: SB_ERR_INPUT otherwise, never a wrapped count) and fills `tiling`. */
sb_status sb_tiling_init(sb_tiling *tiling, int64_t rows, int64_t cols, int tile_rows, int tile_cols, int group,
                         sb_error *err);

static inline int64_t sb_tiling_count(const sb_tiling *tiling) { return tiling->tiles_down * tiling->tiles_across; }

static inline sb_tile_rect sb_tiling_rect(const sb_tiling *tiling, int64_t tile)
{
    sb_tile_rect rect;
    int64_t tile_row = tile / tiling->tiles_across, tile_col = tile % tiling->tiles_across;
    rect.row0 = tile_row * tiling->tile_rows;
    rect.col0 = tile_col * tiling->tile_cols;
    int64_t rows_left = tiling->rows - rect.row0, cols_left = tiling->cols - rect.col0;
    rect.rows = (int)(rows_left < tiling->tile_rows ? rows_left : tiling->tile_rows);
    rect.cols = (int)(cols_left < tiling->tile_cols ? cols_left : tiling->tile_cols);
    return rect;
}

/* Bytes of one tile's packed codes at `bits` bits: the tile's codes form one LSB-first bit
 * stream, padded to a whole byte (see docs/FORMAT.md). */
static inline int64_t sb_tile_code_bytes(int rows, int cols, int bits)
{
    return ((int64_t)rows * cols * bits + 7) / 8;
}

#endif
