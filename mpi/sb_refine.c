#include "sb_refine.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_alloc.h"
#include "sb_global_alloc.h"
#include "sb_gptq.h"
#include "sb_half.h"
#include "sb_log.h"

/* Predicted rises are summed in fixed point (2^-40 nats) so the sum, and every decision made
 * from it, is the same whatever ranks the tiles are spread over. */
#define FIXED_POINT 0x1p40

/* A tile's quantized form at one option, kept between rounds: the quantized values depend only
 * on the FP weights, the quantizer's importance and the GPTQ factors, none of which the search
 * changes, so each (tile, option) is quantized once and decoded when needed. */
typedef struct cached_tile {
    uint16_t *scales;       /* one block: scales, zeros [rows x groups], codes [rows x cols]; NULL: not cached */
    uint16_t *zeros;
    uint8_t *codes;
    uint16_t tile_scale;
    bool filled;
} cached_tile;

/* A tensor's full-precision weights, kept for re-quantizing: as BF16 when every value is one
 * (checkpoints are BF16: half the memory, the same values), else as float32. */
typedef struct fp_copy {
    float *f32;
    uint16_t *bf16;
} fp_copy;

typedef struct refine_state {
    const sb_refine_problem *problem;
    cached_tile *cache;   /* [local tiles x noptions], or NULL */
    int64_t cache_bytes;  /* held */
    fp_copy *fp;          /* [ntensors] full-precision copies */
    uint8_t *choice;      /* current option per local tile */
    uint8_t *applied;     /* option whose values are in the working weights (255: none) */
    sb_hull_step *moves;  /* this round's candidate moves, one per tile at most */
    double *move_rise;    /* predicted rise of each move (by tile) */
    int64_t *prefix;
    int64_t nmoves;
} refine_state;

static int compare_steps(const void *a, const void *b) { return sb_step_compare(a, b); }

static sb_tile_in tile_of(const sb_refine_tensor *tensor, const float *fp, sb_tile_rect rect)
{
    sb_tile_in in;
    in.x = fp + rect.row0 * tensor->tiling->cols + rect.col0;
    in.x_ld = tensor->tiling->cols;
    in.w = tensor->quant_weights ? tensor->quant_weights + rect.col0 : NULL;
    in.w_row_stride = 0;
    in.rows = rect.rows;
    in.cols = rect.cols;
    in.group = tensor->tiling->group;
    return in;
}

typedef struct tile_scratch {
    uint8_t *codes;
    uint16_t *scales, *zeros;
    float *values;
    float *source;  /* the tile's FP weights, when the copy is BF16 */
    float *work;
} tile_scratch;

static int scratch_alloc(tile_scratch *s, const sb_tiling *tiling)
{
    size_t cells = (size_t)tiling->tile_rows * (size_t)tiling->tile_cols;
    size_t groups = (size_t)tiling->tile_rows * (size_t)sb_tile_groups(tiling->tile_cols, tiling->group);
    s->codes = malloc(cells);
    s->scales = malloc(groups * sizeof *s->scales);
    s->zeros = malloc(groups * sizeof *s->zeros);
    s->values = malloc(cells * sizeof *s->values);
    s->source = malloc(cells * sizeof *s->source);
    s->work = malloc((size_t)sb_tile_work_floats(tiling->tile_rows, tiling->tile_cols, tiling->group) * sizeof(float));
    return s->codes && s->scales && s->zeros && s->values && s->work && s->source;
}

static void scratch_free(tile_scratch *s)
{
    free(s->codes);
    free(s->scales);
    free(s->zeros);
    free(s->values);
    free(s->work);
    free(s->source);
}

/* Quantizes tile `t` of `tensor` at option `option` from the FP copy into s->values (rows x
 * cols), through the cache: quantized once, decoded afterwards. False if a working buffer could
 * not be allocated (a tile's GPTQ scratch). */
static bool quantize_into(refine_state *state, int tensor_index, int64_t t, int option, tile_scratch *s,
                          sb_tile_rect *rect_out)
{
    const sb_refine_problem *problem = state->problem;
    const sb_refine_tensor *tensor = &problem->tensors[tensor_index];
    const sb_quant_options *quant = &problem->curve->quant;
    int bits = problem->curve->bits[option];
    sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
    int groups = sb_tile_groups(rect.cols, tensor->tiling->group);
    cached_tile *cached =
        state->cache ? &state->cache[(tensor->first_local_tile + t) * problem->curve->noptions + option] : NULL;
    sb_tile_out out = {s->codes, s->scales, s->zeros, 0, bits, quant->format, s->work};
    if (cached && cached->filled) {
        out.codes = cached->codes;
        out.scales = cached->scales;
        out.zeros = cached->zeros;
        out.tile_scale = cached->tile_scale;
    } else {
        const fp_copy *fp = &state->fp[tensor_index];
        sb_tile_in in = tile_of(tensor, fp->f32, rect);
        if (!fp->f32) { /* widen the tile's rows from the BF16 copy */
            for (int r = 0; r < rect.rows; r++)
                for (int c = 0; c < rect.cols; c++)
                    s->source[r * rect.cols + c] =
                        sb_bf16_to_f32(fp->bf16[(rect.row0 + r) * tensor->tiling->cols + rect.col0 + c]);
            in.x = s->source;
            in.x_ld = rect.cols;
        }
        double error = tensor->gptq ? sb_quantize_tile_gptq_factored(
                                          &in, &tensor->gptq[rect.col0 / tensor->tiling->tile_cols], bits, quant, &out, NULL)
                                    : sb_quantize_tile(&in, bits, quant, &out);
        if (isnan(error))
            return false;
        if (cached && cached->scales) {
            size_t cells = (size_t)rect.rows * (size_t)rect.cols, nmeta = (size_t)rect.rows * (size_t)groups;
            memcpy(cached->codes, s->codes, cells);
            memcpy(cached->scales, s->scales, nmeta * sizeof *s->scales);
            memcpy(cached->zeros, s->zeros, nmeta * sizeof *s->zeros);
            cached->tile_scale = out.tile_scale;
            cached->filled = true;
        }
    }
    sb_dequantize_tile(&out, rect.rows, rect.cols, tensor->tiling->group, s->values, rect.cols);
    *rect_out = rect;
    return true;
}

/* Bytes one cached (tile, option) holds. */
static int64_t cached_bytes(const sb_tiling *tiling, sb_tile_rect rect)
{
    int64_t nmeta = (int64_t)rect.rows * sb_tile_groups(rect.cols, tiling->group);
    return 2 * nmeta * (int64_t)sizeof(uint16_t) + (int64_t)rect.rows * rect.cols;
}

/* Cache entries for as many (tile, option) pairs as problem->cache_limit allows, tiles in
 * order, all options of a tile or none; an allocation that fails just leaves the rest
 * uncached (they are quantized again when needed, with the same result). */
static void cache_init(refine_state *state)
{
    const sb_refine_problem *problem = state->problem;
    const int k = problem->curve->noptions;
    state->cache = problem->local_tiles > 0 ? calloc((size_t)(problem->local_tiles * k), sizeof *state->cache) : NULL;
    if (!state->cache)
        return;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        for (int64_t t = 0; t < sb_tiling_count(tensor->tiling); t++) {
            sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
            int64_t bytes = cached_bytes(tensor->tiling, rect);
            if (state->cache_bytes + k * bytes > problem->cache_limit)
                return;
            int64_t nmeta = (int64_t)rect.rows * sb_tile_groups(rect.cols, tensor->tiling->group);
            for (int o = 0; o < k; o++) {
                cached_tile *c = &state->cache[(tensor->first_local_tile + t) * k + o];
                if (!(c->scales = malloc((size_t)bytes)))
                    return;
                c->zeros = c->scales + nmeta;
                c->codes = (uint8_t *)(c->zeros + nmeta);
                state->cache_bytes += bytes;
            }
        }
    }
}

static void cache_free(refine_state *state)
{
    if (!state->cache)
        return;
    for (int64_t i = 0; i < state->problem->local_tiles * state->problem->curve->noptions; i++)
        free(state->cache[i].scales);
    free(state->cache);
    state->cache = NULL;
}

/* Writes the quantized values of every tile whose option changed into the working weights. */
static sb_status update_working(refine_state *state, sb_error *err)
{
    const sb_refine_problem *problem = state->problem;
    int failed = 0;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        int64_t tiles = sb_tiling_count(tensor->tiling);
#pragma omp parallel
        {
            tile_scratch scratch;
            int ok = scratch_alloc(&scratch, tensor->tiling);
            if (!ok) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tiles; t++) {
                int64_t local = tensor->first_local_tile + t;
                if (!ok || state->applied[local] == state->choice[local])
                    continue;
                sb_tile_rect rect;
                if (!quantize_into(state, i, t, state->choice[local], &scratch, &rect)) {
#pragma omp atomic write
                    failed = 1;
                    continue;
                }
                for (int r = 0; r < rect.rows; r++)
                    memcpy(tensor->working + (rect.row0 + r) * tensor->tiling->cols + rect.col0,
                           scratch.values + (int64_t)r * rect.cols, (size_t)rect.cols * sizeof(float));
                state->applied[local] = state->choice[local];
            }
            scratch_free(&scratch);
        }
    }
    return failed ? sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers in the taylor search") : SB_OK;
}

/* For every tile, its best move down in predicted rise per freed bit (first- and second-order
 * Taylor around the current working weights, with g and F of the mean NLL). */
static sb_status estimate_moves(refine_state *state, sb_error *err)
{
    const sb_refine_problem *problem = state->problem;
    const sb_curve_options *curve = problem->curve;
    int failed = 0;
    state->nmoves = 0;
    for (int i = 0; i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        const sb_tiling *tiling = tensor->tiling;
        int64_t tiles = sb_tiling_count(tiling);
        const float *fisher = tensor->stats->fisher_sum[tensor->kind], *grad = tensor->stats->grad_sum[tensor->kind];
        double per_token = tensor->stats->scored_tokens > 0 ? 1.0 / (double)tensor->stats->scored_tokens : 0;
#pragma omp parallel
        {
            tile_scratch scratch;
            int ok = scratch_alloc(&scratch, tiling);
            if (!ok) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(dynamic, 1)
            for (int64_t t = 0; t < tiles; t++) {
                int64_t local = tensor->first_local_tile + t;
                state->move_rise[local] = 0;
                state->moves[local].extra_cost = 0;
                int current = state->choice[local];
                if (!ok || current == 0)
                    continue;
                sb_tile_rect rect = sb_tiling_rect(tiling, t);
                int64_t current_bits = 8 * sb_tile_code_bytes(rect.rows, rect.cols, curve->bits[current]);
                double best_rate = INFINITY, best_rise = 0;
                int best = -1;
                int64_t best_freed = 0;
                for (int j = 0; j < current; j++) {
                    if (!quantize_into(state, i, t, j, &scratch, &rect)) {
#pragma omp atomic write
                        failed = 1;
                        break;
                    }
                    double first = 0, second = 0;
                    for (int r = 0; r < rect.rows; r++) {
                        int64_t offset = (rect.row0 + r) * tiling->cols + rect.col0;
                        const float *w_ref = tensor->working + offset;
                        const float *q = scratch.values + (int64_t)r * rect.cols;
                        for (int c = 0; c < rect.cols; c++) {
                            double delta = (double)q[c] - w_ref[c];
                            first += (double)grad[offset + c] * delta;
                            second += (double)fisher[offset + c] * delta * delta;
                        }
                    }
                    double rise = per_token * (first + 0.5 * second);
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
            scratch_free(&scratch);
        }
    }
    if (failed)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot allocate tile buffers in the taylor search");
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
    return SB_OK;
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
    if (MPI_Allreduce(&local, total, 1, MPI_INT64_T, MPI_SUM, comm) != MPI_SUCCESS)
        return sb_error_set(err, SB_ERR_MPI, "MPI_Allreduce failed in the taylor search");
    return SB_OK;
}

static double mean(sb_nll nll) { return nll.count > 0 ? nll.sum / (double)nll.count : 0; }

sb_status sb_refine_allocate(sb_pipeline *pipeline, const sb_refine_problem *problem, uint8_t *choice,
                             sb_refine_result *result, sb_error *err)
{
    MPI_Comm comm = pipeline->comm;
    memset(result, 0, sizeof *result);
    refine_state state = {problem, NULL, 0, NULL, choice, NULL, NULL, NULL, NULL, 0};
    int64_t tiles = problem->local_tiles > 0 ? problem->local_tiles : 1;
    state.fp = sb_calloc((size_t)(problem->ntensors > 0 ? problem->ntensors : 1), sizeof *state.fp, "FP copies", err);
    state.applied = sb_malloc((size_t)tiles, "tile state", err);
    state.moves = sb_malloc((size_t)tiles * sizeof *state.moves, "moves", err);
    state.move_rise = sb_malloc((size_t)tiles * sizeof *state.move_rise, "moves", err);
    state.prefix = sb_malloc((size_t)(tiles + 1) * sizeof *state.prefix, "moves", err);
    sb_status status = state.fp && state.applied && state.moves && state.move_rise && state.prefix ? SB_OK : SB_ERR_NOMEM;
    for (int i = 0; status == SB_OK && i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        size_t count = (size_t)(tensor->tiling->rows * tensor->tiling->cols);
        bool bf16 = true;
        for (size_t k = 0; k < count && bf16; k++)
            bf16 = sb_bf16_to_f32(sb_f32_to_bf16(tensor->working[k])) == tensor->working[k] ||
                   isnan(tensor->working[k]);
        if (bf16 && (state.fp[i].bf16 = sb_malloc(count * sizeof(uint16_t), "FP copy", err))) {
            for (size_t k = 0; k < count; k++)
                state.fp[i].bf16[k] = sb_f32_to_bf16(tensor->working[k]);
            result->fp_copy_bytes += (int64_t)(count * sizeof(uint16_t));
        } else if (!bf16 && (state.fp[i].f32 = sb_malloc(count * sizeof(float), "FP copy", err))) {
            memcpy(state.fp[i].f32, tensor->working, count * sizeof(float));
            result->fp_copy_bytes += (int64_t)(count * sizeof(float));
        } else {
            status = SB_ERR_NOMEM;
        }
    }
    const int top = problem->curve->noptions - 1;
    for (int64_t t = 0; t < problem->local_tiles; t++) {
        choice[t] = problem->initial_choice ? problem->initial_choice[t] : (uint8_t)top;
        state.applied[t] = 255;
    }
    if (status == SB_OK)
        cache_init(&state);
    result->cache_bytes = state.cache_bytes;
    status = sb_agree(comm, status, err);
    sb_pass_request gradients = {true, problem->stats, NULL};
    int64_t nlocal = pipeline->layer_end - pipeline->layer_begin;
    double bits_per_weight = 1.0 / (double)problem->quantized_weights;
    /* The loss check of an accepted batch runs at the next round's reference point: on one
     * pipeline stage it collects g and F too, and that round needs no pass of its own (the
     * same NLL, the same sums: the forward is the same code, so the allocation is the same).
     * On several stages a loss-only pass overlaps the stages (micro-batches in flight) while a
     * backward pass cannot, so there the check stays forward-only. */
    const bool fuse_checks = pipeline->nstages == 1;
    /* A rejected check's backward is wasted: after a rejection, checks stay forward-only until
     * one is kept (this only moves work: fused or not, the decisions are the same). */
    bool fuse_next = true;
    bool have_reference = false;
    sb_nll reference = {0, 0};
    for (int round = problem->first_round; status == SB_OK; round++) {
        double round_start = sb_now(), t0;
        int64_t cost;
        if ((status = sum_int64(comm, local_cost(&state), &cost, err)) != SB_OK)
            break;
        int64_t excess = cost - problem->code_budget;
        result->cost = cost;
        if (excess <= 0)
            break;
        /* 1. the reference point: the current allocation, quantized; its loss, g and F */
        if (!have_reference) {
            t0 = sb_now();
            status = sb_agree(comm, update_working(&state, err), err);
            result->seconds.quantize += sb_now() - t0;
            for (int64_t i = 0; status == SB_OK && i < nlocal; i++)
                sb_layer_stats_reset_gradients(&problem->stats[i]);
            t0 = sb_now();
            if (status == SB_OK)
                status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                          problem->batch_windows, &gradients, &reference, err);
            result->seconds.gradient += sb_now() - t0;
            result->passes++;
            if (status != SB_OK)
                break;
        }
        have_reference = false;
        if (round == problem->first_round && problem->first_round == 0)
            result->fp_loss = mean(reference);
        /* 2. estimates */
        t0 = sb_now();
        status = sb_agree(comm, estimate_moves(&state, err), err);
        result->seconds.estimate += sb_now() - t0;
        if (status != SB_OK)
            break;
        /* 3. a batch freeing two thirds of the excess if the estimates hold for that long a
         *    step (checked more strictly), else a third (all of it near the end) */
        bool last_round = round + 1 >= problem->max_rounds;
        bool all = excess <= problem->code_budget / 100 || last_round;
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
            int64_t total_moves, total_rise;
            if ((status = sum_int64(comm, chosen, &total_moves, err)) != SB_OK ||
                (status = sum_int64(comm, rise_fixed, &total_rise, err)) != SB_OK)
                break;
            /* 4. the real loss after the batch (with g and F, for the next round if it is kept) */
            sb_nll after = {0, 0};
            t0 = sb_now();
            status = sb_agree(comm, update_working(&state, err), err);
            result->seconds.quantize += sb_now() - t0;
            bool fused = fuse_checks && fuse_next;
            for (int64_t i = 0; fused && status == SB_OK && i < nlocal; i++)
                sb_layer_stats_reset_gradients(&problem->stats[i]);
            t0 = sb_now();
            if (status == SB_OK)
                status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                          problem->batch_windows, fused ? &gradients : NULL, &after, err);
            result->seconds.check += sb_now() - t0;
            result->passes++;
            checks++;
            if (status != SB_OK)
                break;
            predicted = (double)total_rise / FIXED_POINT;
            measured = mean(after) - mean(reference);
            double tolerance = 1e-3 * mean(reference);
            int64_t new_cost;
            if ((status = sum_int64(comm, local_cost(&state), &new_cost, err)) != SB_OK)
                break;
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
        status = sb_agree(comm, update_working(&state, err), err); /* leave W^ of the result in place */
    for (int i = 0; state.fp && i < problem->ntensors; i++) {
        free(state.fp[i].f32);
        free(state.fp[i].bf16);
    }
    free(state.fp);
    free(state.applied);
    free(state.moves);
    free(state.move_rise);
    free(state.prefix);
    cache_free(&state);
    return status;
}
