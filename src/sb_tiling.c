#include "sb_tiling.h"

sb_status sb_tiling_init(sb_tiling *tiling, int64_t rows, int64_t cols, int tile_rows, int tile_cols, int group,
                         sb_error *err)
{
    if (rows <= 0 || cols <= 0)
        return sb_error_set(err, SB_ERR_INPUT, "matrix of %lld x %lld cannot be tiled", (long long)rows,
                            (long long)cols);
    if (tile_rows <= 0 || tile_cols <= 0 || group <= 0)
        return sb_error_set(err, SB_ERR_USAGE, "tile %dx%d and group %d must be positive", tile_rows, tile_cols,
                            group);
    if (tile_cols % group != 0)
        return sb_error_set(err, SB_ERR_USAGE,
                            "group size %d must divide the tile width %d (a group may not straddle two tiles)",
                            group, tile_cols);
    /* Every count derived from the grid must fit in int64 with room to spare: the weights
     * (rows x cols, times 8 bits in the budget arithmetic) and the tiles. A [2^24, 2^40] matrix
     * in 1x1 tiles has 2^64 tiles: it must be refused here, not wrap to 0. */
    int64_t weights, tiles;
    int64_t tiles_down = rows / tile_rows + (rows % tile_rows != 0);
    int64_t tiles_across = cols / tile_cols + (cols % tile_cols != 0);
    if (__builtin_mul_overflow(rows, cols, &weights) || weights > INT64_MAX / 64 ||
        __builtin_mul_overflow(tiles_down, tiles_across, &tiles))
        return sb_error_set(err, SB_ERR_INPUT, "matrix of %lld x %lld in %dx%d tiles is too large to count", (long long)rows,
                            (long long)cols, tile_rows, tile_cols);
    tiling->rows = rows;
    tiling->cols = cols;
    tiling->tile_rows = tile_rows;
    tiling->tile_cols = tile_cols;
    tiling->group = group;
    tiling->tiles_down = tiles_down;
    tiling->tiles_across = tiles_across;
    tiling->groups_per_row = cols / group + (cols % group != 0);
    return SB_OK;
}
