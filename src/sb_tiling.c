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
    tiling->rows = rows;
    tiling->cols = cols;
    tiling->tile_rows = tile_rows;
    tiling->tile_cols = tile_cols;
    tiling->group = group;
    tiling->tiles_down = (rows + tile_rows - 1) / tile_rows;
    tiling->tiles_across = (cols + tile_cols - 1) / tile_cols;
    tiling->groups_per_row = (cols + group - 1) / group;
    return SB_OK;
}
