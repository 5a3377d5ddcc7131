#include "sb_refine.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_mpi.h"
#include "sb_alloc.h"
#include "sb_global_alloc.h"
#include "sb_gptq.h"
#include "sb_log.h"

/* Predicted rises are summed in fixed point (2^-40 nats) so the sum, and every decision made
 * from it, is the same whatever ranks the tiles are spread over. */
#define FIXED_POINT 0x1p40

/* What the search holds for one tensor: its tiles at every option, and how the pipeline sees
 * W^: a float32 copy (`working`, while the cache allows) or the store decoded per product. */
typedef struct refine_tensor_state {
    sb_tile_store store;
    float *working;          /* [rows x cols] W^, or NULL */
    sb_linear_panels panels; /* otherwise: the pipeline's weight decodes the current choice */
    const uint8_t *choice;   /* this tensor's tiles' options (into refine_state.choice) */
} refine_tensor_state;

/* An MoE layer's expert kind whose rarely routed experts are estimated as the layer's average
 * expert: the sum over the pass's batches and the layer's experts of g^2, per weight. */
typedef struct refine_pool {
    int64_t layer;
    sb_tensor_role role;
    int64_t count; /* weights of one expert of this kind */
    float *sum;
} refine_pool;

typedef struct refine_state {
    const sb_refine_problem *problem;
    sb_pipeline *pipeline;
    refine_tensor_state *tensors; /* [ntensors] */
    uint8_t *choice;              /* current option per local tile */
    uint8_t *applied;             /* option whose values are in `working` (255: none) */
    double *first, *second;       /* [local tiles x noptions] taylor sums of the last gradient pass */
    int64_t scored_tokens;        /* behind them */
    sb_hull_step *moves;          /* this round's candidate moves, one per tile at most */
    double *move_rise;            /* predicted rise of each move (by tile) */
    int64_t *prefix;
    int64_t nmoves;
    bool failed_alloc;            /* a gradient callback could not allocate its scratch */
    refine_pool *pools;           /* [npools]: only kinds with a pooled tensor here */
    int npools;
} refine_state;

static int compare_steps(const void *a, const void *b) { return sb_step_compare(a, b); }

static void fill_panel(const void *user, int64_t row0, int64_t rows, int64_t col0, int64_t cols, float *dst, int64_t ld)
{
    const refine_tensor_state *t = user;
    sb_tile_store_fill(&t->store, t->choice, row0, rows, col0, cols, dst, ld);
}

/* The search's tensor for a gradient's id, or -1 (a weight the search does not move). */
static int tensor_of(const refine_state *state, const sb_tensor_id *id)
{
    const sb_refine_problem *problem = state->problem;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_tensor_id *t = &problem->tensors[i].id;
        if (t->layer == id->layer && t->role == id->role && t->expert == id->expert)
            return i;
    }
    return -1;
}

static refine_pool *pool_of(const refine_state *state, int64_t layer, sb_tensor_role role)
{
    for (int p = 0; p < state->npools; p++)
        if (state->pools[p].layer == layer && state->pools[p].role == role)
            return &state->pools[p];
    return NULL;
}

/* A pool for every (layer, expert kind) that has a pooled tensor on this rank. */
static sb_status create_pools(refine_state *state, sb_error *err)
{
    const sb_refine_problem *problem = state->problem;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        if (!tensor->pooled || pool_of(state, tensor->id.layer, tensor->id.role))
            continue;
        if (!state->pools && !(state->pools = sb_calloc((size_t)problem->ntensors, sizeof *state->pools,
                                                        "expert pools", err)))
            return SB_ERR_NOMEM;
        refine_pool *pool = &state->pools[state->npools++];
        pool->layer = tensor->id.layer;
        pool->role = tensor->id.role;
        pool->count = tensor->tiling->rows * tensor->tiling->cols;
        if (!(pool->sum = sb_calloc((size_t)pool->count, sizeof *pool->sum, "expert pool", err)))
            return SB_ERR_NOMEM;
    }
    return SB_OK;
}

/* Zeroes the taylor sums and the pools before a gradient pass (a new reference point). */
static void reset_sums(refine_state *state)
{
    size_t sums = (size_t)(state->problem->local_tiles * state->problem->curve->noptions) * sizeof(double);
    memset(state->first, 0, sums);
    memset(state->second, 0, sums);
    for (int p = 0; p < state->npools; p++)
        memset(state->pools[p].sum, 0, (size_t)state->pools[p].count * sizeof(float));
}

/* After a gradient pass: a pooled expert's sums are those of its layer's average expert, as
 * sb_layer_stats_view gives them (no gradient term; the Fisher averaged over the layer's
 * experts): second = sum F_mean (Q_o - Q_current)^2, folded as the "gradient" sqrt(F_mean). */
static sb_status pool_experts(refine_state *state, sb_error *err)
{
    if (state->npools == 0)
        return SB_OK;
    const sb_refine_problem *problem = state->problem;
    const int k = problem->curve->noptions;
    float inverse = (float)(1.0 / (double)state->pipeline->shape.num_experts);
    for (int p = 0; p < state->npools; p++) {
        float *sum = state->pools[p].sum;
#pragma omp parallel for num_threads(state->pipeline->threads) schedule(static)
        for (int64_t w = 0; w < state->pools[p].count; w++)
            sum[w] = sqrtf(sum[w] * inverse);
    }
    int failed = 0;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        if (!tensor->pooled)
            continue;
        const refine_tensor_state *ts = &state->tensors[i];
        const float *root = pool_of(state, tensor->id.layer, tensor->id.role)->sum;
        int64_t tiles = sb_tiling_count(tensor->tiling), cols = tensor->tiling->cols;
#pragma omp parallel num_threads(state->pipeline->threads)
        {
            float *scratch = malloc((size_t)sb_tile_store_taylor_scratch_bytes(&ts->store));
            double *unused = malloc((size_t)k * sizeof *unused);
            if (!scratch || !unused) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tiles; t++) {
                if (!scratch || !unused)
                    continue;
                int64_t local = tensor->first_local_tile + t;
                sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
                memset(state->first + local * k, 0, (size_t)k * sizeof(double));
                memset(state->second + local * k, 0, (size_t)k * sizeof(double));
                sb_tile_store_taylor_add(&ts->store, t, state->choice[local], root + rect.row0 * cols + rect.col0, cols,
                                         unused, state->second + local * k, scratch);
            }
            free(scratch);
            free(unused);
        }
    }
    return failed ? sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers in the taylor search") : SB_OK;
}

/* The gradient pass's sink: each batch's weight gradient folded into every tile's taylor sums
 * at once (sb_tile_store_taylor_add), tiles in parallel, each by one thread; an expert's squared
 * gradient also into its kind's pool. */
static sb_status on_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                             sb_error *err)
{
    refine_state *state = user;
    refine_pool *pool = id->expert >= 0 ? pool_of(state, id->layer, id->role) : NULL;
    if (pool) {
        if (rows * cols != pool->count)
            return sb_error_set(err, SB_ERR_INTERNAL, "taylor search: a %lldx%lld expert gradient for %lld weights",
                                (long long)rows, (long long)cols, (long long)pool->count);
        float *sum = pool->sum;
#pragma omp parallel for num_threads(state->pipeline->threads) schedule(static)
        for (int64_t w = 0; w < pool->count; w++)
            sum[w] += grad[w] * grad[w];
    }
    int i = tensor_of(state, id);
    if (i < 0 || state->problem->tensors[i].pooled)
        return SB_OK;
    const sb_refine_tensor *tensor = &state->problem->tensors[i];
    const refine_tensor_state *ts = &state->tensors[i];
    if (rows != tensor->tiling->rows || cols != tensor->tiling->cols)
        return sb_error_set(err, SB_ERR_INTERNAL, "taylor search: a %lldx%lld gradient for a %lldx%lld weight",
                            (long long)rows, (long long)cols, (long long)tensor->tiling->rows,
                            (long long)tensor->tiling->cols);
    const int k = state->problem->curve->noptions;
    int64_t tiles = sb_tiling_count(tensor->tiling);
    int failed = 0;
#pragma omp parallel num_threads(state->pipeline->threads)
    {
        float *scratch = malloc((size_t)sb_tile_store_taylor_scratch_bytes(&ts->store));
        if (!scratch) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tiles; t++) {
            if (!scratch)
                continue;
            int64_t local = tensor->first_local_tile + t;
            sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
            sb_tile_store_taylor_add(&ts->store, t, state->choice[local], grad + rect.row0 * cols + rect.col0, cols,
                                     state->first + local * k, state->second + local * k, scratch);
        }
        free(scratch);
    }
    return failed ? sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers in the taylor search") : SB_OK;
}

/* Every tensor of every local layer quantized at every option; then each layer's matrices are
 * replaced by the search's view of W^ (the FP weights are given back when the search moves
 * every matrix of the layer). */
static sb_status build(refine_state *state, sb_refine_result *result, sb_error *err)
{
    const sb_refine_problem *problem = state->problem;
    sb_pipeline *pipeline = state->pipeline;
    const sb_curve_options *curve = problem->curve;
    int64_t cached = 0;
    for (int64_t layer = pipeline->layer_begin; layer < pipeline->layer_end; layer++) {
        sb_layer_weights *weights = &pipeline->layers[layer - pipeline->layer_begin];
        int searched = 0, matrices = 0;
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            matrices += weights->linear[k].rows > 0;
        matrices += weights->router.rows > 0 ? 1 : 0;
        matrices += 3 * (int)weights->num_experts;
        for (int i = 0; i < problem->ntensors; i++) {
            const sb_refine_tensor *tensor = &problem->tensors[i];
            if (tensor->id.layer != layer)
                continue;
            refine_tensor_state *ts = &state->tensors[i];
            SB_TRY(sb_tile_store_build(&ts->store, tensor->tiling, curve, tensor->linear, tensor->quant_weights,
                                       tensor->gptq, pipeline->threads, err));
            result->store_bytes += sb_tile_store_bytes(&ts->store);
            int64_t weights_count = tensor->tiling->rows * tensor->tiling->cols;
            int64_t fast = weights_count * (int64_t)sizeof(float) * (1 + curve->noptions);
            if (cached + fast <= problem->cache_limit) {
                if (!(ts->working = sb_malloc((size_t)weights_count * sizeof(float), "taylor reference weights", err)))
                    return SB_ERR_NOMEM;
                SB_TRY(sb_tile_store_decode_all(&ts->store, pipeline->threads, err));
                cached += fast;
            }
            ts->choice = state->choice + tensor->first_local_tile;
            ts->panels.fill = fill_panel;
            ts->panels.user = ts;
            searched++;
        }
        if (searched == matrices)
            SB_TRY(sb_layer_weights_drop_matrices(&pipeline->shape, weights, err));
        for (int i = 0; i < problem->ntensors; i++) {
            const sb_refine_tensor *tensor = &problem->tensors[i];
            refine_tensor_state *ts = &state->tensors[i];
            if (tensor->id.layer == layer)
                *tensor->linear = ts->working
                                      ? sb_linear_f32(ts->working, tensor->tiling->rows, tensor->tiling->cols)
                                      : sb_linear_panels_of(&ts->panels, tensor->tiling->rows, tensor->tiling->cols);
        }
    }
    result->cache_bytes = cached;
    return SB_OK;
}

/* Writes the values of every tile whose option changed into the float32 reference weights. */
static void update_working(refine_state *state)
{
    const sb_refine_problem *problem = state->problem;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        refine_tensor_state *ts = &state->tensors[i];
        if (!ts->working)
            continue;
        int64_t tiles = sb_tiling_count(tensor->tiling);
#pragma omp parallel for num_threads(state->pipeline->threads) schedule(dynamic, 1)
        for (int64_t t = 0; t < tiles; t++) {
            int64_t local = tensor->first_local_tile + t;
            if (state->applied[local] == state->choice[local])
                continue;
            sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
            sb_tile_store_fill(&ts->store, ts->choice, rect.row0, rect.rows, rect.col0, rect.cols,
                               ts->working + rect.row0 * tensor->tiling->cols + rect.col0, tensor->tiling->cols);
            state->applied[local] = state->choice[local];
        }
    }
}

/* For every tile, its best move down in predicted rise per freed bit: first- and second-order
 * Taylor around the reference point, from the sums of the last gradient pass (per token: the
 * gradient and Fisher of the mean NLL). */
static void estimate_moves(refine_state *state)
{
    const sb_refine_problem *problem = state->problem;
    const sb_curve_options *curve = problem->curve;
    const int k = curve->noptions;
    double per_token = state->scored_tokens > 0 ? 1.0 / (double)state->scored_tokens : 0;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        const sb_tiling *tiling = tensor->tiling;
        int64_t tiles = sb_tiling_count(tiling);
        for (int64_t t = 0; t < tiles; t++) {
            int64_t local = tensor->first_local_tile + t;
            state->move_rise[local] = 0;
            state->moves[local].extra_cost = 0;
            int current = state->choice[local];
            if (current == 0)
                continue;
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            int64_t current_bits = 8 * sb_tile_code_bytes(rect.rows, rect.cols, curve->bits[current]);
            double best_rate = INFINITY, best_rise = 0;
            int best = -1;
            int64_t best_freed = 0;
            for (int j = 0; j < current; j++) {
                double rise = per_token * (state->first[local * k + j] + 0.5 * state->second[local * k + j]);
                int64_t freed = current_bits - 8 * sb_tile_code_bytes(rect.rows, rect.cols, curve->bits[j]);
                double rate = rise / (double)freed;
                if (rate < best_rate) {
                    best_rate = rate;
                    best_rise = rise;
                    best = j;
                    best_freed = freed;
                }
            }
            if (best >= 0) {
                sb_hull_step *move = &state->moves[local];
                /* ascending key = ascending rise per freed bit: the gain of a move is -rate */
                move->order_key = sb_gain_key(-best_rate);
                move->tile_id = tensor->first_tile_id + t;
                move->tile_index = local;
                move->step = 0;
                move->from = current;
                move->to = best;
                move->extra_cost = best_freed;
                state->move_rise[local] = best_rise;
            }
        }
    }
    /* compact the tiles that have a move, then sort them */
    int64_t count = 0;
    for (int64_t t = 0; t < problem->local_tiles; t++)
        if (state->moves[t].extra_cost > 0)
            state->moves[count++] = state->moves[t];
    state->nmoves = count;
    qsort(state->moves, (size_t)count, sizeof *state->moves, compare_steps);
    state->prefix[0] = 0;
    for (int64_t m = 0; m < count; m++)
        state->prefix[m + 1] = state->prefix[m] + state->moves[m].extra_cost;
}

static int64_t local_cost(const refine_state *state)
{
    const sb_refine_problem *problem = state->problem;
    int64_t cost = 0;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        for (int64_t t = 0; t < sb_tiling_count(tensor->tiling); t++) {
            sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
            int bits = problem->curve->bits[state->choice[tensor->first_local_tile + t]];
            cost += 8 * sb_tile_code_bytes(rect.rows, rect.cols, bits);
        }
    }
    return cost;
}

static sb_status sum_int64(MPI_Comm comm, int64_t local, int64_t *total, sb_error *err)
{
    if (SB_MPI_CALL(err, MPI_Allreduce(&local, total, 1, MPI_INT64_T, MPI_SUM, comm)) != SB_OK)
        return sb_error_prefix(err, "taylor search");
    return SB_OK;
}

static double mean(sb_nll nll) { return nll.count > 0 ? nll.sum / (double)nll.count : 0; }

/* Every how many micro-batches a gradient pass runs backward (problem->gradient_windows). */
static int64_t backward_every(const sb_refine_problem *problem)
{
    int64_t batch = problem->batch_windows < 1 ? 1 : problem->batch_windows;
    if (batch > problem->n_windows)
        batch = problem->n_windows;
    int64_t batches = (problem->n_windows + batch - 1) / batch;
    if (problem->gradient_windows <= 0 || problem->gradient_windows >= problem->n_windows || batches < 1)
        return 1;
    int64_t wanted = (problem->gradient_windows + batch - 1) / batch;
    return batches / wanted > 1 ? batches / wanted : 1;
}

static void free_state(refine_state *state)
{
    for (int i = 0; state->tensors && i < state->problem->ntensors; i++) {
        sb_tile_store_free(&state->tensors[i].store);
        free(state->tensors[i].working);
    }
    free(state->tensors);
    for (int p = 0; p < state->npools; p++)
        free(state->pools[p].sum);
    free(state->pools);
    free(state->applied);
    free(state->first);
    free(state->second);
    free(state->moves);
    free(state->move_rise);
    free(state->prefix);
}

void sb_refine_result_free(sb_refine_result *result)
{
    for (int i = 0; result->stores && i < result->nstores; i++)
        sb_tile_store_free(&result->stores[i]);
    free(result->stores);
    result->stores = NULL;
    result->nstores = 0;
}

/* Each tensor's store reduced to its chosen options and handed to the result (the write needs
 * nothing else); the pipeline's views into the search's memory are emptied. */
static sb_status finish(refine_state *state, sb_refine_result *result, sb_error *err)
{
    const sb_refine_problem *problem = state->problem;
    result->stores = sb_calloc((size_t)(problem->ntensors > 0 ? problem->ntensors : 1), sizeof *result->stores,
                               "tile stores", err);
    if (!result->stores)
        return SB_ERR_NOMEM;
    result->nstores = problem->ntensors;
    for (int i = 0; i < problem->ntensors; i++) {
        refine_tensor_state *ts = &state->tensors[i];
        SB_TRY(sb_tile_store_keep_only(&ts->store, ts->choice, err));
        result->stores[i] = ts->store;
        memset(&ts->store, 0, sizeof ts->store);
    }
    return SB_OK;
}

sb_status sb_refine_allocate(sb_pipeline *pipeline, const sb_refine_problem *problem, uint8_t *choice,
                             sb_refine_result *result, sb_error *err)
{
    MPI_Comm comm = pipeline->comm;
    memset(result, 0, sizeof *result);
    refine_state state;
    memset(&state, 0, sizeof state);
    state.problem = problem;
    state.pipeline = pipeline;
    state.choice = choice;
    const int k = problem->curve->noptions;
    int64_t tiles = problem->local_tiles > 0 ? problem->local_tiles : 1;
    state.tensors = sb_calloc((size_t)(problem->ntensors > 0 ? problem->ntensors : 1), sizeof *state.tensors,
                              "search tensors", err);
    state.applied = sb_malloc((size_t)tiles, "tile state", err);
    state.first = sb_calloc((size_t)(tiles * k), sizeof *state.first, "taylor sums", err);
    state.second = sb_calloc((size_t)(tiles * k), sizeof *state.second, "taylor sums", err);
    state.moves = sb_malloc((size_t)tiles * sizeof *state.moves, "moves", err);
    state.move_rise = sb_malloc((size_t)tiles * sizeof *state.move_rise, "moves", err);
    state.prefix = sb_malloc((size_t)(tiles + 1) * sizeof *state.prefix, "moves", err);
    sb_status status = state.tensors && state.applied && state.first && state.second && state.moves &&
                               state.move_rise && state.prefix
                           ? SB_OK
                           : SB_ERR_NOMEM;
    const int top = k - 1;
    for (int64_t t = 0; status == SB_OK && t < problem->local_tiles; t++) {
        choice[t] = problem->initial_choice ? problem->initial_choice[t] : (uint8_t)top;
        state.applied[t] = 255;
    }
    double t0 = sb_now();
    if (status == SB_OK)
        status = create_pools(&state, err);
    if (status == SB_OK)
        status = build(&state, result, err);
    result->seconds.quantize += sb_now() - t0;
    status = sb_agree(comm, status, err);
    sb_gradient_sink sink = {on_gradient, NULL, &state};
    /* the estimates of round r use the gradients of micro-batches r, r + every, ... (mod every):
     * a function of the round, so a resumed search takes the same ones */
    sb_nll gradient_nll = {0, 0};
    sb_pass_request gradients = {true, NULL, NULL, &sink, backward_every(problem), 0, &gradient_nll};
    double bits_per_weight = 1.0 / (double)problem->quantized_weights;
    /* The loss check of an accepted batch runs at the next round's reference point: on one
     * pipeline stage it collects the taylor sums too, and that round needs no pass of its own
     * (the same NLL, the same sums: the forward is the same code, so the allocation is the same).
     * On several stages a loss-only pass overlaps the stages (micro-batches in flight) while a
     * backward pass cannot, so there the check stays forward-only. */
    const bool fuse_checks = pipeline->nstages == 1;
    /* A rejected check's backward is wasted: after a rejection, checks stay forward-only until
     * one is kept (this only moves work: fused or not, the decisions are the same). So is the
     * backward of a check whose batch meets the budget: kept, it ends the search; rejected, the
     * retry reuses this round's estimates. */
    bool fuse_next = true;
    bool have_reference = false;
    sb_nll reference = {0, 0};
    for (int round = problem->first_round; status == SB_OK; round++) {
        double round_start = sb_now();
        int64_t cost;
        if ((status = sum_int64(comm, local_cost(&state), &cost, err)) != SB_OK)
            break;
        int64_t excess = cost - problem->code_budget;
        result->cost = cost;
        if (excess <= 0)
            break;
        /* 1. the reference point: the current allocation, quantized; its loss and taylor sums */
        if (!have_reference) {
            t0 = sb_now();
            update_working(&state);
            result->seconds.quantize += sb_now() - t0;
            reset_sums(&state);
            t0 = sb_now();
            gradients.backward_first = round % gradients.backward_every;
            status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                      problem->batch_windows, &gradients, &reference, err);
            result->seconds.gradient += sb_now() - t0;
            result->passes++;
            state.scored_tokens = gradient_nll.count;
            /* the layers' average experts at this reference point, for the rarely routed ones */
            if (status == SB_OK)
                status = sb_agree(comm, pool_experts(&state, err), err);
            if (status != SB_OK)
                break;
        }
        have_reference = false;
        if (round == problem->first_round && problem->first_round == 0)
            result->fp_loss = mean(reference);
        /* 2. estimates */
        t0 = sb_now();
        estimate_moves(&state);
        result->seconds.estimate += sb_now() - t0;
        /* 3. a batch freeing two thirds of the excess if the estimates hold for that long a
         *    step (checked more strictly), else a third; all of it once the excess is at most a
         *    tenth of the budget (austen-256 at 3.0: the former hundredth took rounds 5 and 6, a
         *    full pass each, for 0.06 bpw; in one batch: heldout perplexity 3.5885 against 3.5882,
         *    4 rounds, not 6) */
        bool last_round = round + 1 >= problem->max_rounds;
        bool all = excess <= problem->code_budget / 10 || last_round;
        bool long_step = !all;
        int64_t target = all ? excess : excess - excess / 3;
        int checks = 0;
        double predicted = 0, measured = 0;
        for (;;) {
            sb_step_order limit;
            if ((status = sb_global_order_limit(comm, state.moves, state.prefix, state.nmoves, target - 1, &limit, NULL,
                                                err)) != SB_OK)
                break;
            int64_t chosen = 0, rise_fixed = 0;
            for (int64_t m = 0; m < state.nmoves; m++) {
                sb_step_order here = sb_step_order_of(&state.moves[m]);
                if (sb_step_order_compare(&here, &limit) > 0)
                    break;
                choice[state.moves[m].tile_index] = (uint8_t)state.moves[m].to;
                rise_fixed += llround(state.move_rise[state.moves[m].tile_index] * FIXED_POINT);
                chosen++;
            }
            int64_t total_moves, total_rise, new_cost;
            if ((status = sum_int64(comm, chosen, &total_moves, err)) != SB_OK ||
                (status = sum_int64(comm, rise_fixed, &total_rise, err)) != SB_OK ||
                (status = sum_int64(comm, local_cost(&state), &new_cost, err)) != SB_OK)
                break;
            /* 4. the real loss after the batch (with the sums for the next round if it is kept) */
            sb_nll after = {0, 0};
            t0 = sb_now();
            update_working(&state);
            result->seconds.quantize += sb_now() - t0;
            bool fused = fuse_checks && fuse_next && new_cost > problem->code_budget;
            if (fused)
                reset_sums(&state);
            gradients.backward_first = (round + 1) % gradients.backward_every;
            t0 = sb_now();
            status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                      problem->batch_windows, fused ? &gradients : NULL, &after, err);
            result->seconds.check += sb_now() - t0;
            result->passes++;
            checks++;
            if (status != SB_OK)
                break;
            if (fused)
                state.scored_tokens = gradient_nll.count;
            if (fused && (status = sb_agree(comm, pool_experts(&state, err), err)) != SB_OK)
                break;
            predicted = (double)total_rise / FIXED_POINT;
            measured = mean(after) - mean(reference);
            double tolerance = 1e-3 * mean(reference);
            /* Keep the batch unless the loss rose by more than the prediction's own size above
             * it: measured <= predicted + |predicted| + tolerance. For a predicted rise that is
             * at most twice the rise; for a predicted fall, any batch that does not raise the
             * loss (beyond the tolerance): a fall smaller than predicted is still a gain. */
            bool accept = long_step ? measured <= predicted + 0.5 * fabs(predicted) + tolerance
                                    : measured <= predicted + fabs(predicted) + tolerance || total_moves <= 16 || last_round;
            sb_log_info(problem->log,
                        "taylor round %d: loss %.5f at %.4f bpw -> %.4f bpw with %lld moves: predicted %+.5f, "
                        "measured %+.5f%s",
                        round + 1, mean(reference), (double)(cost + problem->fixed_bits) * bits_per_weight,
                        (double)(new_cost + problem->fixed_bits) * bits_per_weight, (long long)total_moves, predicted,
                        measured, accept ? "" : long_step ? ": off for a long step, retrying with a third of the excess"
                                                          : ": too far off, retrying with half the batch");
            result->final_loss = mean(after);
            fuse_next = accept;
            if (accept) {
                reference = after;
                have_reference = fused;
                break;
            }
            /* undo and try half as much */
            for (int64_t m = 0; m < state.nmoves; m++)
                choice[state.moves[m].tile_index] = (uint8_t)state.moves[m].from;
            result->retries++;
            target = long_step ? (excess + 2) / 3 : (target + 1) / 2;
            long_step = false;
        }
        if (status == SB_OK && result->nrounds < SB_REFINE_MAX_LOGGED_ROUNDS) {
            sb_refine_round *r = &result->round[result->nrounds++];
            r->checks = checks;
            r->predicted = predicted;
            r->measured = measured;
            r->seconds = sb_now() - round_start;
        }
        result->rounds = round + 1;
        if (status == SB_OK && problem->checkpoint)
            status = problem->checkpoint(problem->checkpoint_user, round + 1, choice, err);
    }
    if (status == SB_OK)
        status = sb_agree(comm, finish(&state, result, err), err);
    /* the pipeline's weights pointed into the search's memory: leave them empty */
    for (int i = 0; i < problem->ntensors; i++)
        *problem->tensors[i].linear = sb_linear_f32(NULL, problem->tensors[i].tiling->rows,
                                                    problem->tensors[i].tiling->cols);
    free_state(&state);
    if (status != SB_OK)
        sb_refine_result_free(result);
    return status;
}
