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
        /* peak memory of a unit (the quantize stage): its rows as float32, its packed codes (at
         * about the budget's bits), scales and zeros (4 bytes a group); measured within 15% */
        int64_t weights = (unit->row_end - unit->row_begin) * plan->tensors[unit->tensor].entry->cols;
        int64_t code_bits = (int64_t)options->budget + 1;
        int64_t unit_bytes = plan->tensors[unit->tensor].quantize
                                 ? weights * 4 + weights * code_bits / 8 + 4 * weights / options->group
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

enum { REFINE_CACHE_LIMIT = 1 << 30 };

int64_t sb_plan_refine_cache_bytes(const sb_plan *plan, int nranks)
{
    (void)plan;
    (void)nranks;
    return REFINE_CACHE_LIMIT;
}

/* Measured on this machine: a run of the embedded model (no weights to speak of) peaks at
 * about 32 MiB of libraries, MPI and HDF5 buffers; a calibrated run adds OpenBLAS's GEMM
 * buffers (about 32 MiB). */
#define RUNTIME_BYTES ((int64_t)32 << 20)
#define BLAS_BUFFER_BYTES ((int64_t)32 << 20)

/* Linear weights of layer l (all experts of a MoE layer, and its router), and those one token
 * multiplies through (its top-k experts). */
static int64_t layer_weights(const sb_model_shape *shape, int64_t l, bool active)
{
    int64_t hidden = shape->hidden_size;
    int64_t q_dim = shape->num_attention_heads * shape->head_dim, kv_dim = shape->num_key_value_heads * shape->head_dim;
    int64_t attention = 2 * q_dim * hidden + 2 * kv_dim * hidden;
    if (sb_layer_is_moe(shape, l)) {
        int64_t experts = active ? shape->num_experts_per_tok : shape->num_experts;
        return attention + experts * 3 * shape->moe_intermediate_size * hidden + shape->num_experts * hidden;
    }
    return attention + 3 * shape->intermediate_size * hidden;
}

sb_rank_memory sb_plan_rank_memory(const sb_plan *plan, const sb_options *o, const sb_model_shape *shape, int rank,
                                   int threads)
{
    sb_rank_memory m;
    memset(&m, 0, sizeof m);
    m.runtime = RUNTIME_BYTES;
    m.units = plan->rank_peak_bytes[rank];
    bool calibrated = o->sensitivity != SB_SENSITIVITY_MSE || o->gptq || o->reorder;
    calibrated = calibrated && !(o->sensitivity == SB_SENSITIVITY_ACT && o->imatrix_path && !o->gptq && !o->reorder);
    if (calibrated && shape->num_hidden_layers > 0) {
        m.runtime += BLAS_BUFFER_BYTES;
        int64_t layers = shape->num_hidden_layers;
        int nstages = sb_stage_count(plan->nranks, layers);
        if (rank < nstages) {
            int64_t first = sb_stage_first_layer(layers, nstages, rank), end = sb_stage_first_layer(layers, nstages, rank + 1);
            int64_t hidden = shape->hidden_size, ffn = shape->intermediate_size, C = o->tile_cols;
            int64_t q_dim = shape->num_attention_heads * shape->head_dim;
            int64_t nlocal = end - first;
            for (int64_t l = first; l < end; l++)
                m.stage_weights += layer_weights(shape, l, false);
            m.layers = 4 * (m.stage_weights + nlocal * 2 * hidden);
            if (rank == 0)
                m.layers += 4 * shape->vocab_size * hidden;
            if (rank == nstages - 1)
                m.layers += 4 * (hidden + (shape->tie_word_embeddings && nstages > 1 ? shape->vocab_size * hidden
                                            : shape->tie_word_embeddings ? 0 : shape->vocab_size * hidden));
            /* E[x^2]: one double per input column of each of the seven kinds */
            m.statistics = nlocal * 8 * (5 * hidden + q_dim + ffn);
            bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER || o->sensitivity == SB_SENSITIVITY_TAYLOR;
            bool grad = o->sensitivity == SB_SENSITIVITY_TAYLOR;
            m.statistics += (fisher + grad) * 4 * m.stage_weights;
            int64_t accumulators = 0, factors = 0;
            if (o->gptq) {
                /* accumulators of the inputs of Q (= K, V), O, GATE (= UP), DOWN; factors per tile
                 * column of each of the seven tensors: H (float) and U (double), C x C each */
                accumulators = nlocal * 4 * C * (2 * hidden + q_dim + ffn);
                int64_t factor_columns = nlocal * ((3 * hidden + q_dim + 2 * hidden + ffn) + C - 1) / C;
                factors = factor_columns * 12 * C * C;
                m.gptq = accumulators + factors;
            }
            bool taylor = o->sensitivity == SB_SENSITIVITY_TAYLOR;
            if (taylor) {
                int64_t group = o->group, per_weight_option = 1; /* codes, plus 4 bytes per group */
                int64_t cache = o->nbits * (per_weight_option * m.stage_weights + 4 * m.stage_weights / group);
                /* the FP copies are BF16 when the checkpoint is (sb_refine.c) */
                bool bf16 = true;
                for (int i = 0; i < plan->ntensors; i++)
                    if (plan->tensors[i].quantize && plan->tensors[i].info->dtype != SB_DTYPE_BF16)
                        bf16 = false;
                m.search = (bf16 ? 2 : 4) * m.stage_weights + (cache < REFINE_CACHE_LIMIT ? cache : REFINE_CACHE_LIMIT);
            }
            int64_t batch = o->calib_batch > 0 ? o->calib_batch : 1, ctx = o->calib_ctx;
            int nthreads = threads > 0 ? threads : 1;
            int64_t forward_only = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, false);
            int64_t with_backward = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, true);
            for (int64_t l = first; l < end; l++)
                with_backward += (int64_t)sb_layer_cache_bytes(shape, l, batch * ctx);
            m.activations = fisher || grad ? with_backward : forward_only;
            /* The stages do not all hold everything at once: the calibration pass (with a
             * backward for fisher) comes before the GPTQ accumulators, which are freed once
             * factored, before the curves or the taylor search (whose passes have backwards). */
            int64_t calibrate = o->sensitivity == SB_SENSITIVITY_FISHER ? with_backward : forward_only;
            int64_t hessian = o->gptq ? accumulators + factors + forward_only : 0;
            int64_t after = factors + m.search + (taylor ? with_backward : m.units);
            int64_t phase = calibrate > hessian ? calibrate : hessian;
            phase = after > phase ? after : phase;
            /* the pipeline is freed before the quantize and write stages (their units) */
            int64_t held = m.layers + m.statistics + phase;
            m.total = m.runtime + (held > m.units ? held : m.units);
            return m;
        }
    }
    m.total = m.runtime + m.layers + m.statistics + m.gptq + m.search + m.activations + m.units;
    return m;
}

/* ---- cost model ------------------------------------------------------------------------- */

/* Per-core costs on this machine (AMD EPYC Zen 3), from quiet-machine runs: the whole-run
 * throughput before the vectorised search (68 ns per weight and bitwidth) over the speed-up
 * bench-curves measures for it (about 3x); austen-256's fisher+gptq run (8.3 s: GPTQ curves about
 * 200 ns per weight and bitwidth after its passes); the runtime's forward rate (17.7k tokens/s on
 * 2 cores, 0.74 of the SGEMM peak: about 80 GFLOP/s per core); cp of the checkpoint. bench/
 * costmodel.sh re-measures them (and checks the model on a 1x and a 4x model). */
#define COST_CURVE_NS 23.0     /* curves, per weight and bitwidth (default weighted search, Q8) */
#define COST_GPTQ_NS 200.0     /* the same with GPTQ error feedback */
#define COST_ESTIMATE_NS 4.0   /* taylor: one move estimate, per weight and candidate bitwidth */
#define COST_GFLOPS 80.0       /* the runtime's achieved SGEMM rate per core */
#define COST_IO_GBPS 0.35      /* read or write per rank (cp of the checkpoint here) */
#define TAYLOR_ROUNDS 8.0      /* rounds and loss checks per round of the taylor search (austen-256) */
#define TAYLOR_CHECKS 1.5

sb_plan_time sb_plan_predict_time(const sb_plan *plan, const sb_options *o, const sb_model_shape *shape,
                                  int64_t source_bytes, int cores)
{
    sb_plan_time t;
    memset(&t, 0, sizeof t);
    int nranks = plan->nranks > 0 ? plan->nranks : 1;
    double per_core = 1e-9 / (cores > 0 ? cores : 1); /* seconds per nanosecond of one core's work */
    /* the busiest rank's share of the weights */
    int64_t busiest = 0, total = 0;
    for (int r = 0; r < nranks; r++) {
        busiest = plan->rank_work[r] > busiest ? plan->rank_work[r] : busiest;
        total += plan->rank_work[r];
    }
    double share = total > 0 ? (double)busiest / (double)total : 1.0;
    double weights = (double)plan->quantized_weights * share;
    t.read = (double)source_bytes / nranks / (COST_IO_GBPS * 1e9);
    t.write = (double)o->budget * (double)plan->quantized_weights / 8.0 / nranks / (COST_IO_GBPS * 1e9);
    double per_bit = o->gptq ? COST_GPTQ_NS : COST_CURVE_NS;
    t.quantize = weights * per_bit * per_core;
    bool calibrated = o->sensitivity != SB_SENSITIVITY_MSE || o->gptq || o->reorder;
    if (calibrated && shape->num_hidden_layers > 0) {
        /* the weights a token multiplies through: a MoE layer's top-k experts, not all */
        double model_weights = (double)shape->vocab_size * (double)shape->hidden_size;
        for (int64_t l = 0; l < shape->num_hidden_layers; l++)
            model_weights += (double)layer_weights(shape, l, true);
        double tokens = (double)o->calib_windows * (double)o->calib_ctx;
        double flop_rate = (cores > 0 ? cores : 1) * COST_GFLOPS * 1e9;
        double forward = 2.0 * model_weights * tokens / flop_rate, backward_pass = 3.0 * forward;
        int stages = sb_stage_count(nranks, shape->num_hidden_layers);
        double micro = (double)((o->calib_windows + o->calib_batch - 1) / (o->calib_batch > 0 ? o->calib_batch : 1));
        /* a forward-only pass: stages overlap, with a fill of (stages - 1) micro-batches */
        double overlapped = forward / stages * (micro + stages - 1) / micro;
        bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER;
        t.calibrate = (fisher ? backward_pass : overlapped) + (o->gptq ? overlapped : 0);
        if (o->sensitivity == SB_SENSITIVITY_TAYLOR) {
            double candidates = (double)o->nbits * weights * per_bit * per_core;
            double estimates = TAYLOR_ROUNDS * weights * (o->nbits - 1) / 2.0 * COST_ESTIMATE_NS * per_core;
            double checks = TAYLOR_ROUNDS * TAYLOR_CHECKS * (stages == 1 ? backward_pass : overlapped);
            double gradients = stages == 1 ? backward_pass : TAYLOR_ROUNDS * backward_pass;
            t.search = candidates + estimates + checks + gradients;
        } else {
            t.curves = (double)o->nbits * weights * per_bit * per_core;
        }
    } else {
        t.curves = (double)o->nbits * weights * per_bit * per_core;
    }
    t.total = t.read + t.calibrate + t.search + t.curves + t.quantize + t.write;
    return t;
}
