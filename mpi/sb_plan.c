#include "sb_plan.h"

#include <stdlib.h>
#include <string.h>

#include "sb_model.h"
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
    if (tensor->info->ndim != 2)
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
    int64_t total_work = 0;
    int max_units = 0;
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
            max_units += (int)tensor->tiling.tiles_down;
        } else {
            total_work += tensor->entry->rows * tensor->entry->cols;
            max_units += (int)((tensor->entry->rows + passthrough_rows_per_unit(tensor, options) - 1) /
                               passthrough_rows_per_unit(tensor, options));
            (void)layered;
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

/* ---- memory ----------------------------------------------------------------------------- */

/* Measured: a run of the embedded model (no weights to speak of) peaks at about 32 MiB of
 * libraries, MPI and HDF5 buffers; a calibrated run adds OpenBLAS's GEMM buffers (about 32 MiB). */
#define RUNTIME_BYTES ((int64_t)32 << 20)
#define BLAS_BUFFER_BYTES ((int64_t)32 << 20)

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* One layer's matrices, summed for the estimate (the catalogue's per-layer list). */
typedef struct layer_sizes {
    int64_t weights;         /* every matrix, the router included */
    int64_t expert_weights;  /* the experts' */
    int64_t quantized;       /* the quantized ones */
    int64_t act_columns;     /* input columns of every matrix: E[x^2] sums */
    int64_t hessian_columns; /* input columns of every distinct input (GPTQ accumulators) */
    int64_t tile_columns;    /* tile columns of the quantized matrices (GPTQ factors) */
    int64_t pooled;          /* MoE: the pooled expert's weights */
    int64_t vectors;         /* norms, q/k norms, biases: their elements */
} layer_sizes;

static layer_sizes sizes_of_layer(const sb_model_shape *shape, int64_t layer, const sb_options *o)
{
    layer_sizes z;
    memset(&z, 0, sizeof z);
    int64_t count = sb_layer_tensor_count(shape, layer);
    for (int64_t i = 0; i < count; i++) {
        sb_tensor_id id = sb_layer_tensor_id(shape, layer, i);
        int64_t rows, cols;
        if (!sb_weight_is_matrix(&id)) {
            int ndim;
            if (sb_catalogue_expected_shape(shape, &id, &rows, &cols, &ndim))
                z.vectors += rows * cols;
            continue;
        }
        sb_weight_shape(shape, &id, &rows, &cols);
        bool quantized = id.role != SB_ROLE_ROUTER || o->quantize_router;
        z.weights += rows * cols;
        z.expert_weights += id.expert >= 0 ? rows * cols : 0;
        z.act_columns += cols;
        if (id.role == SB_ROLE_Q || id.role == SB_ROLE_O || id.role == SB_ROLE_GATE || id.role == SB_ROLE_DOWN ||
            id.role == SB_ROLE_ROUTER)
            z.hessian_columns += cols;
        if (quantized) {
            z.quantized += rows * cols;
            z.tile_columns += ceil_div(cols, o->tile_cols);
        }
    }
    if (sb_layer_is_moe(shape, layer))
        z.pooled = 3 * shape->moe_intermediate_size * shape->hidden_size;
    return z;
}

bool sb_plan_experts_as_bf16(const sb_plan *plan, const sb_options *o)
{
    if (o->sensitivity == SB_SENSITIVITY_TAYLOR)
        return false;
    bool experts = false;
    for (int i = 0; i < plan->ntensors; i++) {
        if (plan->tensors[i].entry->expert < 0)
            continue;
        if (plan->tensors[i].info->dtype != SB_DTYPE_BF16)
            return false;
        experts = true;
    }
    return experts;
}

sb_rank_memory sb_plan_rank_memory(const sb_plan *plan, const sb_options *o, const sb_model_shape *shape, int rank,
                                   int threads)
{
    sb_rank_memory m;
    memset(&m, 0, sizeof m);
    m.runtime = RUNTIME_BYTES;
    m.units = plan->rank_peak_bytes[rank];
    bool data = o->calib_tokens || o->calib_text;
    bool pipeline = data && (o->sensitivity != SB_SENSITIVITY_MSE || o->save_imatrix || o->gptq);
    int64_t layers = shape->num_hidden_layers;
    int nstages = sb_stage_count(plan->nranks, layers);
    if (!pipeline || layers <= 0 || rank >= nstages) {
        m.total = m.runtime + m.units;
        return m;
    }
    m.runtime += BLAS_BUFFER_BYTES;
    int64_t first = sb_stage_first_layer(layers, nstages, rank), end = sb_stage_first_layer(layers, nstages, rank + 1);
    int64_t hidden = shape->hidden_size, C = o->tile_cols;
    bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER || o->sensitivity == SB_SENSITIVITY_TAYLOR;
    bool taylor = o->sensitivity == SB_SENSITIVITY_TAYLOR;
    int64_t accumulators = 0, factors = 0, quantized = 0;
    bool bf16_experts = sb_plan_experts_as_bf16(plan, o);
    m.stage_layers = end - first;
    for (int64_t l = first; l < end; l++) {
        layer_sizes z = sizes_of_layer(shape, l, o);
        m.stage_weights += z.weights;
        quantized += z.quantized;
        m.layers += 4 * (z.weights + z.vectors) - (bf16_experts ? 2 * z.expert_weights : 0);
        m.statistics += 8 * z.act_columns + (fisher + taylor) * 4 * z.weights + (fisher ? 4 * z.pooled : 0);
        accumulators += 4 * C * z.hessian_columns;
        factors += 12 * C * C * z.tile_columns;
    }
    if (rank == 0)
        m.layers += 4 * shape->vocab_size * hidden;
    if (rank == nstages - 1 && !(shape->tie_word_embeddings && nstages == 1))
        m.layers += 4 * shape->vocab_size * hidden;
    if (o->gptq)
        m.gptq = accumulators + factors;
    if (taylor)
        m.search = 4 * quantized;
    int64_t batch = o->calib_batch > 0 ? o->calib_batch : 1, ctx = o->calib_ctx;
    int nthreads = threads > 0 ? threads : 1;
    int64_t forward_only = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, false);
    int64_t with_backward = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, true);
    for (int64_t l = first; l < end; l++)
        with_backward += (int64_t)sb_layer_cache_bytes(shape, l, batch * ctx);
    m.activations = fisher ? with_backward : forward_only;
    /* one after another: the calibration pass (with a backward for fisher), the GPTQ pass with
     * its accumulators (then factored), the curves or the taylor search (its passes have
     * backwards); the pipeline is freed before the quantize and write stages (their units) */
    int64_t calibrate = o->sensitivity == SB_SENSITIVITY_FISHER ? with_backward : forward_only;
    int64_t hessian = o->gptq ? accumulators + factors + forward_only : 0;
    int64_t after = (o->gptq ? factors : 0) + m.search + (taylor ? with_backward : m.units);
    int64_t phase = calibrate > hessian ? calibrate : hessian;
    phase = after > phase ? after : phase;
    int64_t held = m.layers + m.statistics + phase;
    m.total = m.runtime + (held > m.units ? held : m.units);
    return m;
}
