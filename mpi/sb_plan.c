#include "sb_plan.h"

#include <stdlib.h>
#include <string.h>

#include "sb_gemm.h"
#include "sb_assert.h"
#include "sb_catalogue.h"
#include "sb_model.h"
#include "sb_pack.h"
#include "sb_tile_store.h"

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
            /* layered plans split tensors too: the stage owns all of a tensor's units, and the
             * write stages hold one at a time */
            int64_t rows_per_unit = passthrough_rows_per_unit(tensor, options);
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
        int64_t rows_per_unit = options->unit_weights / tile_row_weights;
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

/* The process itself: the program, its libraries, MPI and HDF5 once the model's headers are read.
 * Measured (bench/memory.sh: the --report peak RSS after the open stage): 22.8 to 23.1 MiB on 1
 * and 2 ranks, whatever the model and the sensitivity. */
#define PROCESS_BYTES ((int64_t)23 << 20)
/* The write stage's HDF5 buffers (the parallel file's metadata cache, its MPI-IO buffers and the
 * dataset chunks in flight), on top of a unit's packed output. Measured (bench/memory.sh): a
 * data-free austen-256 run's peak RSS rises by 8.6 MiB in the write stage, whose units are
 * under 1 MiB; it does not grow with the model. */
#define WRITE_BUFFER_BYTES ((int64_t)9 << 20)
/* OpenBLAS packs its operands into a per-thread buffer (reserved whole, resident only where
 * written). sb_gemm calls it on blocks of at most SB_GEMM_ROWS x SB_GEMM_COLS of C, so a thread
 * writes at most (SB_GEMM_ROWS + SB_GEMM_COLS) rows of OpenBLAS's k-block (at most 512 deep)
 * of packed floats, whatever the model's size; attention's products are smaller. */
#define BLAS_THREAD_BYTES ((int64_t)(SB_GEMM_ROWS + SB_GEMM_COLS) * 512 * 4)

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

bool sb_plan_bf16_matrices(const sb_plan *plan)
{
    bool any = false;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (tensor->entry->layer < 0 || !sb_role_is_linear(tensor->entry->role))
            continue;
        if (tensor->info->dtype != SB_DTYPE_BF16)
            return false;
        any = true;
    }
    return any;
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* One layer's tensors, summed for the estimate (the catalogue's per-layer list): every matrix
 * with its own statistics, GPTQ input and factors (an MoE layer's experts each). */
typedef struct layer_sizes {
    int64_t weights;         /* every matrix, the router included */
    int64_t expert_weights;  /* the experts' */
    int64_t act_columns;     /* input columns of every matrix: E[x^2] sums */
    int64_t hessian_columns; /* input columns of every distinct input (GPTQ accumulators) */
    int64_t tile_columns;    /* tile columns of the quantized matrices (GPTQ factors) */
    int64_t pooled;          /* MoE: the pooled expert's weights (its Fisher mean) */
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
        z.weights += rows * cols;
        z.expert_weights += id.expert >= 0 ? rows * cols : 0;
        z.act_columns += cols;
        if (id.role == SB_ROLE_Q || id.role == SB_ROLE_O || id.role == SB_ROLE_GATE || id.role == SB_ROLE_DOWN ||
            id.role == SB_ROLE_ROUTER)
            z.hessian_columns += cols;
        if (id.role != SB_ROLE_ROUTER || o->quantize_router)
            z.tile_columns += ceil_div(cols, o->tile_cols);
    }
    if (sb_layer_is_moe(shape, layer))
        z.pooled = 3 * shape->moe_intermediate_size * shape->hidden_size;
    return z;
}

sb_rank_memory sb_plan_rank_memory(const sb_plan *plan, const sb_options *o, const sb_model_shape *shape, int rank,
                                   int threads)
{
    sb_rank_memory m;
    memset(&m, 0, sizeof m);
    m.runtime = PROCESS_BYTES;
    /* the curves and quantize stages hold a unit; the write stage a unit's output and HDF5's
     * buffers (the unit's float rows are gone by then) */
    m.units = plan->rank_peak_bytes[rank] > WRITE_BUFFER_BYTES ? plan->rank_peak_bytes[rank] : WRITE_BUFFER_BYTES;
    /* a pipeline holds the stage's layers when calibration data feed a statistic (sb_run.c) */
    bool data = o->calib_tokens || o->calib_text;
    bool calibrated = data && (o->sensitivity != SB_SENSITIVITY_MSE || o->save_imatrix || o->gptq);
    if (!calibrated || shape->num_hidden_layers <= 0) {
        m.total = m.runtime + m.units;
        return m;
    }
    m.runtime += BLAS_THREAD_BYTES * (threads > 0 ? threads : 1);
    int64_t layers = shape->num_hidden_layers;
    int nstages = sb_stage_count(plan->nranks, layers);
    if (rank >= nstages) {
        m.total = m.runtime + m.units;
        return m;
    }
    int64_t first = sb_stage_first_layer(layers, nstages, rank), end = sb_stage_first_layer(layers, nstages, rank + 1);
    int64_t hidden = shape->hidden_size, C = o->tile_cols;
    bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER, taylor = o->sensitivity == SB_SENSITIVITY_TAYLOR;
    /* the stage's layers as the pipeline holds them (sb_run_matrix_storage: every matrix, an MoE
     * layer's experts and router included), vectors, and the float32 embedding (stage 0) and
     * lm_head (last stage; tied: a copy unless stage 0 too) */
    int64_t element = sb_plan_bf16_matrices(plan) ? 2 : 4;
    int64_t vectors = 0, act_columns = 0, pooled = 0, accumulators = 0, factors = 0;
    m.stage_layers = end - first;
    for (int64_t l = first; l < end; l++) {
        layer_sizes z = sizes_of_layer(shape, l, o);
        m.stage_weights += z.weights;
        vectors += z.vectors;
        act_columns += z.act_columns;
        pooled += z.pooled;
        /* accumulators of every distinct input (Q = K, V; O; GATE = UP; DOWN; the router; each
         * expert's two); factors per tile column of every quantized matrix: H (float) and U
         * (double), C x C each */
        accumulators += 4 * C * z.hessian_columns;
        factors += 12 * C * C * z.tile_columns;
    }
    int64_t vocab_matrix = 4 * shape->vocab_size * hidden, ends = 0;
    if (rank == 0)
        ends += vocab_matrix;
    if (rank == nstages - 1)
        ends += 4 * hidden + (shape->tie_word_embeddings && nstages == 1 ? 0 : vocab_matrix);
    m.layers = element * m.stage_weights + 4 * vectors + ends;
    /* E[x^2]: one double per input column of every matrix (each expert's own); fisher: F per
     * weight and an MoE layer's pooled expert; taylor: the pooled expert's Fisher of a pass
     * (sb_refine.h: rarely routed experts) */
    m.statistics = 8 * act_columns + (fisher ? 4 * (m.stage_weights + pooled) : 0);
    if (o->gptq)
        m.gptq = accumulators + factors;
    else
        accumulators = factors = 0;
    int64_t batch = o->calib_batch > 0 ? o->calib_batch : 1, ctx = o->calib_ctx;
    int nthreads = threads > 0 ? threads : 1;
    int64_t forward_only = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, false);
    int64_t with_backward = (int64_t)sb_model_workspace_bytes_for(shape, ctx, batch, nthreads, true);
    for (int64_t l = first; l < end; l++)
        with_backward += (int64_t)sb_layer_cache_bytes(shape, l, batch * ctx);
    m.activations = fisher || taylor ? with_backward : forward_only;
    /* The stages do not all hold everything at once: the calibration pass (with a backward for
     * fisher), then the GPTQ accumulators (freed once factored), then the curves, or the taylor
     * search: its stores are built a layer at a time, each layer's FP matrices given back once
     * its tiles are quantized, and then its passes (with backwards) run on the stores. */
    int64_t shared = ends + 4 * vectors + m.statistics;
    int64_t calibrate = element * m.stage_weights + shared + (fisher ? with_backward : forward_only);
    int64_t hessian = o->gptq ? element * m.stage_weights + shared + accumulators + factors + forward_only : 0;
    int64_t after = element * m.stage_weights + shared + factors + m.units;
    if (taylor) {
        sb_curve_options curve = {o->nbits, {0}, sb_quant_default_options()};
        memcpy(curve.bits, o->bits, sizeof curve.bits);
        curve.quant.format = o->scales;
        int64_t fp_left = element * m.stage_weights, stores = 0, cached = 0, widest = 0, tiles = 0, building = 0;
        for (int64_t l = first; l < end; l++) {
            for (int i = 0; i < plan->ntensors; i++) {
                const sb_tensor_plan *tensor = &plan->tensors[i];
                if (!tensor->quantize || tensor->entry->layer != l)
                    continue;
                int64_t weights = tensor->entry->rows * tensor->entry->cols;
                stores += sb_tile_store_bytes_for(&tensor->tiling, &curve, false);
                int64_t fast = weights * 4 * (1 + o->nbits);
                if (cached + fast <= REFINE_CACHE_LIMIT)
                    cached += fast;
                else
                    widest = tensor->entry->rows > widest ? tensor->entry->rows : widest,
                    widest = tensor->entry->cols > widest ? tensor->entry->cols : widest;
                tiles += sb_tiling_count(&tensor->tiling);
            }
            building = fp_left + stores + cached > building ? fp_left + stores + cached : building;
            /* given back when the search moves every matrix of the layer (an unquantized router
             * keeps them) */
            if (!sb_layer_is_moe(shape, l) || o->quantize_router)
                fp_left -= element * sizes_of_layer(shape, l, o).weights;
        }
        /* the taylor sums (two doubles per tile and option), a PANELS product's block and the
         * MoE layers' pooled Fisher of a pass (for rarely routed experts, sb_refine.h) */
        int64_t search_state = tiles * o->nbits * 16 + 4 * (int64_t)SB_GEMM_COLS * widest + 4 * pooled;
        m.search = stores + cached + search_state;
        int64_t search = shared + factors + m.search + with_backward;
        building += shared + factors;
        after = search > building ? search : building;
        /* then the quantize stage packs the chosen tiles, a unit at a time (no rows read): the
         * stores' chosen options and one unit's packed output */
        int64_t blob = 0, code_bits = (int64_t)o->budget + 1;
        for (int u = 0; u < plan->nunits; u++) {
            const sb_unit *unit = &plan->units[u];
            int64_t unit_weights = (unit->row_end - unit->row_begin) * plan->tensors[unit->tensor].entry->cols;
            int64_t bytes = plan->tensors[unit->tensor].quantize ? unit_weights * code_bits / 8 + 4 * unit_weights / o->group
                                                                 : 0;
            blob = unit->owner == rank && bytes > blob ? bytes : blob;
        }
        m.units = blob + tiles * o->nbits * 16 + plan->total_tiles + (int64_t)((o->budget + 1) * (double)m.stage_weights / 8.0);
    }
    int64_t phase = calibrate > hessian ? calibrate : hessian;
    phase = after > phase ? after : phase;
    /* the pipeline is freed before the quantize and write stages (their units) */
    m.total = m.runtime + (phase > m.units ? phase : m.units);
    return m;
}

/* ---- cost model ------------------------------------------------------------------------- */

/* Per-core costs on this machine (AMD EPYC Zen 3), from quiet-machine runs: the whole-run
 * throughput before the vectorised search (68 ns per weight and bitwidth) over the speed-up
 * bench-curves measures for it (about 3x); austen-256's fisher+gptq run (8.3 s: GPTQ curves about
 * 200 ns per weight and bitwidth after its passes); the runtime's forward rate (17.7k tokens/s on
 * 2 cores, 0.74 of the SGEMM peak: about 80 GFLOP/s per core); cp of the checkpoint. bench/
 * costmodel.sh re-measures them (and checks the model on a 1x and a 4x model). */
/* curves, per weight and bitwidth on one core (default weighted search, Q8), their source reads
 * included: the whole-run curves stage of bench/throughput.sh --size-gb 2 on this Zen 3 with the
 * quantizer of 2026-12-02 evening (32.4 s on 2 threads for 0.81 G quantized weights x 4
 * bitwidths); the quantize stage of the same runs (3.4-3.7 s): one bitwidth's codes, without the
 * search's trials */
#define COST_CURVE_NS 20.0
#define COST_QUANTIZE_NS 9.1
#define COST_GPTQ_NS 200.0     /* the same with GPTQ error feedback */
#define COST_ESTIMATE_NS 4.0   /* taylor: one move estimate, per weight and candidate bitwidth */
#define COST_GFLOPS 80.0       /* the runtime's achieved SGEMM rate per core */
#define COST_IO_GBPS 0.35      /* read or write per rank (cp of the checkpoint here) */
#define TAYLOR_ROUNDS 5.0      /* rounds of the taylor search: austen-256 takes 4 (3.0 bpw) to 5 (2.5 bpw) since the
                                * whole excess goes in one batch at a tenth of the budget */
#define TAYLOR_CHECKS 1.2      /* loss checks per round: none of the 8 austen table runs retried; 0.2 for retries */

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
    t.quantize = weights * (o->gptq ? COST_GPTQ_NS : COST_QUANTIZE_NS) * per_core;
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
