#include "sb_plan.h"

#include <stdlib.h>
#include <string.h>

#include "sb_assert.h"
#include "sb_pack.h"

int64_t sb_plan_fixed_bits(const sb_tiling *tiling, sb_scale_format format)
{
    /* scales and zeros (and Q8's per-tile bounds), and the 4-bit-per-tile bit map */
    int64_t tiles = sb_tiling_count(tiling);
    return sb_scale_bits(format, tiling->rows, tiling->groups_per_row, tiles) + 8 * sb_bitmap_bytes(tiles);
}

/* Pass-through tensors are copied in row ranges of at most --unit-weights (a 400B model's
 * embedding is 4 GB); only 2-D tensors split, by whole rows. */
static int64_t passthrough_rows_per_unit(const sb_tensor_plan *tensor, const sb_options *options)
{
    /* one unit for a tensor without data (a zero extent), however many "rows" it has */
    if (tensor->info->ndim != 2 || tensor->entry->cols == 0)
        return tensor->entry->rows > 0 ? tensor->entry->rows : 1;
    int64_t rows = options->unit_weights / (tensor->entry->cols > 0 ? tensor->entry->cols : 1);
    return rows < 1 ? 1 : rows;
}

static sb_status build(const sb_catalogue *catalogue, const sb_checkpoint *checkpoint, const sb_options *options,
                       int nranks, int64_t layered, sb_plan *plan, sb_error *err)
{
    memset(plan, 0, sizeof *plan);
    plan->nranks = nranks;
    plan->ntensors = catalogue->count;
    plan->tensors = sb_calloc((size_t)catalogue->count, sizeof *plan->tensors, "tensor plan", err);
    plan->rank_first_tile = sb_calloc((size_t)nranks + 1, sizeof *plan->rank_first_tile, "plan", err);
    plan->rank_work = sb_calloc((size_t)nranks, sizeof *plan->rank_work, "plan", err);
    plan->rank_peak_bytes = sb_calloc((size_t)nranks, sizeof *plan->rank_peak_bytes, "plan", err);
    if (!plan->tensors || !plan->rank_first_tile || !plan->rank_work || !plan->rank_peak_bytes) {
        sb_plan_free(plan);
        return SB_ERR_NOMEM;
    }
    int64_t total_work = 0, max_units = 0;
    for (int i = 0; i < catalogue->count; i++) {
        sb_tensor_plan *tensor = &plan->tensors[i];
        tensor->entry = &catalogue->entries[i];
        tensor->info = &checkpoint->tensors[tensor->entry->source_index];
        tensor->quantize = tensor->entry->quantize;
        if (tensor->quantize) {
            sb_status status = sb_tiling_init(&tensor->tiling, tensor->entry->rows, tensor->entry->cols, options->tile_rows,
                                              options->tile_cols, options->group, err);
            if (status != SB_OK) {
                sb_error_prefix(err, "tensor '%s'", tensor->entry->name);
                sb_plan_free(plan);
                return status;
            }
            tensor->first_tile_id = plan->total_tiles;
            plan->total_tiles += sb_tiling_count(&tensor->tiling);
            tensor->fixed_bits = sb_plan_fixed_bits(&tensor->tiling, options->scales);
            plan->fixed_bits += tensor->fixed_bits;
            plan->quantized_weights += tensor->entry->rows * tensor->entry->cols;
            int64_t weights = tensor->entry->rows * tensor->entry->cols;
            /* curves at every bitwidth, then one more quantization to write */
            total_work += weights * (options->nbits + 1);
            max_units += tensor->tiling.tiles_down;
        } else {
            total_work += tensor->entry->rows * tensor->entry->cols;
            int64_t per_unit = passthrough_rows_per_unit(tensor, options);
            max_units += tensor->entry->rows / per_unit + (tensor->entry->rows % per_unit != 0);
            (void)layered;
        }
        /* unit indices are int, and every tile id must fit MPI's int counts (the allocation
         * travels as one byte per tile, plus a 4-byte round count): refused here, before any
         * work, not at the gather after hours of it */
        if (max_units > INT32_MAX / 2 || plan->total_tiles > INT32_MAX - 4) {
            sb_error_set(err, SB_ERR_INPUT,
                         "the model makes %lld tiles and %lld work units at --tile %dx%d; at most 2^31 - 5 tiles "
                         "and 2^30 units are supported: use larger tiles or --unit-weights",
                         (long long)plan->total_tiles, (long long)max_units, options->tile_rows, options->tile_cols);
            sb_plan_free(plan);
            return SB_ERR_INPUT;
        }
    }
    plan->units = sb_calloc((size_t)(max_units > 0 ? max_units : 1), sizeof *plan->units, "work units", err);
    if (!plan->units) {
        sb_plan_free(plan);
        return SB_ERR_NOMEM;
    }
    for (int i = 0; i < catalogue->count; i++) {
        sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize) {
            int64_t rows_per_unit = layered ? tensor->entry->rows : passthrough_rows_per_unit(tensor, options);
            for (int64_t row = 0; row < tensor->entry->rows; row += rows_per_unit) {
                SB_ASSERT(plan->nunits < max_units);
                sb_unit *unit = &plan->units[plan->nunits++];
                unit->tensor = i;
                unit->row_begin = row;
                unit->row_end = row + rows_per_unit < tensor->entry->rows ? row + rows_per_unit : tensor->entry->rows;
                unit->work = (unit->row_end - unit->row_begin) * tensor->entry->cols;
            }
            continue;
        }
        const sb_tiling *tiling = &tensor->tiling;
        int64_t tile_row_weights = (int64_t)options->tile_rows * tiling->cols;
        int64_t rows_per_unit = layered ? tiling->tiles_down : options->unit_weights / tile_row_weights;
        if (rows_per_unit < 1)
            rows_per_unit = 1;
        for (int64_t tr = 0; tr < tiling->tiles_down; tr += rows_per_unit) {
            sb_unit *unit = &plan->units[plan->nunits++];
            unit->tensor = i;
            unit->tile_row_begin = tr;
            unit->tile_row_end = tr + rows_per_unit < tiling->tiles_down ? tr + rows_per_unit : tiling->tiles_down;
            unit->row_begin = tr * tiling->tile_rows;
            unit->row_end = unit->tile_row_end * tiling->tile_rows < tiling->rows ? unit->tile_row_end * tiling->tile_rows
                                                                                  : tiling->rows;
            unit->first_tile_id = tensor->first_tile_id + tr * tiling->tiles_across;
            unit->tiles = (unit->tile_row_end - tr) * tiling->tiles_across;
            /* the unit's tiles are its tensor's, and no more than max_units units exist */
            SB_ASSERT(unit->first_tile_id + unit->tiles <= tensor->first_tile_id + sb_tiling_count(tiling));
            SB_ASSERT(plan->nunits <= max_units);
            unit->work = (unit->row_end - unit->row_begin) * tiling->cols * (options->nbits + 1);
        }
    }
    /* Contiguous split by cumulative work: unit u goes to the rank whose share holds its middle. */
    __int128 prefix = 0;
    for (int u = 0; u < plan->nunits; u++) {
        sb_unit *unit = &plan->units[u];
        __int128 middle2 = 2 * prefix + unit->work;
        int owner = total_work > 0 ? (int)(middle2 * nranks / (2 * (__int128)total_work)) : 0;
        if (layered) {
            int nstages = sb_stage_count(nranks, layered);
            int layer = plan->tensors[unit->tensor].entry->layer;
            sb_tensor_role role = plan->tensors[unit->tensor].entry->role;
            owner = layer >= 0 ? 0 : role == SB_ROLE_EMBED ? 0 : nstages - 1;
            for (int s = 0; layer >= 0 && s < nstages; s++)
                if (layer >= sb_stage_first_layer(layered, nstages, s))
                    owner = s;
        }
        unit->owner = owner < nranks ? owner : nranks - 1;
        prefix += unit->work;
        plan->rank_work[unit->owner] += unit->work;
        /* peak memory of a unit: its rows as float32, importance, codes at 8 bits, scales */
        int64_t weights = (unit->row_end - unit->row_begin) * plan->tensors[unit->tensor].entry->cols;
        int64_t unit_bytes = plan->tensors[unit->tensor].quantize
                                 ? weights * (4 + 4 + 1) + weights / 4 /* rows, importance, codes, scales */
                                 : weights * (int64_t)sb_dtype_size(plan->tensors[unit->tensor].info->dtype);
        if (unit_bytes > plan->rank_peak_bytes[unit->owner])
            plan->rank_peak_bytes[unit->owner] = unit_bytes;
    }
    /* tile ranges per rank (quantized units are in tile-id order and owners never decrease) */
    for (int r = 0; r <= nranks; r++)
        plan->rank_first_tile[r] = plan->total_tiles;
    for (int u = plan->nunits - 1; u >= 0; u--) {
        const sb_unit *unit = &plan->units[u];
        if (plan->tensors[unit->tensor].quantize)
            for (int r = unit->owner; r >= 0 && plan->rank_first_tile[r] > unit->first_tile_id; r--)
                plan->rank_first_tile[r] = unit->first_tile_id;
    }
    for (int r = 0; r < nranks; r++) {
        int64_t tiles = plan->rank_first_tile[r + 1] - plan->rank_first_tile[r];
        /* loss and cost per tile and option, plus the whole allocation (one byte per tile) */
        plan->rank_peak_bytes[r] += tiles * options->nbits * 16 + plan->total_tiles;
    }
    return SB_OK;
}

void sb_plan_free(sb_plan *plan)
{
    free(plan->tensors);
    free(plan->units);
    free(plan->rank_first_tile);
    free(plan->rank_work);
    free(plan->rank_peak_bytes);
    memset(plan, 0, sizeof *plan);
}

sb_status sb_plan_build(const sb_catalogue *catalogue, const sb_checkpoint *checkpoint, const sb_options *options,
                        int nranks, sb_plan *plan, sb_error *err)
{
    return build(catalogue, checkpoint, options, nranks, 0, plan, err);
}

sb_status sb_plan_build_layered(const sb_catalogue *catalogue, const sb_checkpoint *checkpoint,
                                const sb_options *options, int nranks, int64_t layers, sb_plan *plan, sb_error *err)
{
    return build(catalogue, checkpoint, options, nranks, layers > 0 ? layers : 1, plan, err);
}
