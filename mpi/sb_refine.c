#include "sb_refine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_alloc.h"
#include "sb_global_alloc.h"
#include "sb_gptq.h"

/* Predicted rises are summed in fixed point (2^-40 nats) so the sum, and every decision made
 * from it, is the same whatever ranks the tiles are spread over. */
#define FIXED_POINT 0x1p40

typedef struct refine_state {
    const sb_refine_problem *problem;
    float **fp;           /* [ntensors] full-precision copies */
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
} tile_scratch;

static int scratch_alloc(tile_scratch *s, const sb_tiling *tiling)
{
    size_t cells = (size_t)tiling->tile_rows * (size_t)tiling->tile_cols;
    size_t groups = (size_t)tiling->tile_rows * (size_t)sb_tile_groups(tiling->tile_cols, tiling->group);
    s->codes = malloc(cells);
    s->scales = malloc(groups * sizeof *s->scales);
    s->zeros = malloc(groups * sizeof *s->zeros);
    s->values = malloc(cells * sizeof *s->values);
    return s->codes && s->scales && s->zeros && s->values;
}

static void scratch_free(tile_scratch *s)
{
    free(s->codes);
    free(s->scales);
    free(s->zeros);
    free(s->values);
}

/* Quantizes tile `t` of `tensor` at `bits` from the FP copy into s->values (rows x cols). */
static void quantize_into(const sb_refine_tensor *tensor, const float *fp, int64_t t, int bits,
                          const sb_quant_options *quant, tile_scratch *s, sb_tile_rect *rect_out)
{
    sb_tile_rect rect = sb_tiling_rect(tensor->tiling, t);
    sb_tile_in in = tile_of(tensor, fp, rect);
    sb_tile_out out = {s->codes, s->scales, s->zeros, 0, 0, quant->format};
    if (tensor->gptq)
        sb_quantize_tile_gptq_factored(&in, &tensor->gptq[rect.col0 / tensor->tiling->tile_cols], bits, quant, &out, NULL);
    else
        sb_quantize_tile(&in, bits, quant, &out);
    sb_dequantize_tile(&out, rect.rows, rect.cols, tensor->tiling->group, s->values, rect.cols);
    *rect_out = rect;
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
                quantize_into(tensor, state->fp[i], t, problem->curve->bits[state->choice[local]],
                              &problem->curve->quant, &scratch, &rect);
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
        /* an expert calibration rarely reaches: its layer's average expert (sb_calib_stats.h) */
        sb_weight_view view = sb_layer_stats_view(tensor->stats, &tensor->id);
        const float *fisher = view.fisher_sum, *grad = view.grad_sum;
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
                    quantize_into(tensor, state->fp[i], t, curve->bits[j], &curve->quant, &scratch, &rect);
                    double first = 0, second = 0;
                    for (int r = 0; r < rect.rows; r++) {
                        int64_t offset = (rect.row0 + r) * tiling->cols + rect.col0;
                        const float *w_ref = tensor->working + offset;
                        const float *q = scratch.values + (int64_t)r * rect.cols;
                        for (int c = 0; c < rect.cols; c++) {
                            double delta = (double)q[c] - w_ref[c];
                            first += grad ? (double)grad[offset + c] * delta : 0.0;
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
    refine_state state = {problem, NULL, choice, NULL, NULL, NULL, NULL, 0};
    int64_t tiles = problem->local_tiles > 0 ? problem->local_tiles : 1;
    state.fp = sb_calloc((size_t)(problem->ntensors > 0 ? problem->ntensors : 1), sizeof *state.fp, "FP copies", err);
    state.applied = sb_malloc((size_t)tiles, "tile state", err);
    state.moves = sb_malloc((size_t)tiles * sizeof *state.moves, "moves", err);
    state.move_rise = sb_malloc((size_t)tiles * sizeof *state.move_rise, "moves", err);
    state.prefix = sb_malloc((size_t)(tiles + 1) * sizeof *state.prefix, "moves", err);
    sb_status status = state.fp && state.applied && state.moves && state.move_rise && state.prefix ? SB_OK : SB_ERR_NOMEM;
    for (int i = 0; status == SB_OK && i < problem->ntensors; i++) {
        const sb_refine_tensor *tensor = &problem->tensors[i];
        size_t bytes = (size_t)(tensor->tiling->rows * tensor->tiling->cols) * sizeof(float);
        if (!(state.fp[i] = sb_malloc(bytes, "FP copy", err)))
            status = SB_ERR_NOMEM;
        else
            memcpy(state.fp[i], tensor->working, bytes);
    }
    const int top = problem->curve->noptions - 1;
    for (int64_t t = 0; t < problem->local_tiles; t++) {
        choice[t] = problem->initial_choice ? problem->initial_choice[t] : (uint8_t)top;
        state.applied[t] = 255;
    }
    status = sb_agree(comm, status, err);
    sb_pass_request gradients = {true, problem->stats, NULL};
    int64_t nlocal = pipeline->layer_end - pipeline->layer_begin;
    double bits_per_weight = 1.0 / (double)problem->quantized_weights;
    for (int round = problem->first_round; status == SB_OK; round++) {
        int64_t cost;
        if ((status = sum_int64(comm, local_cost(&state), &cost, err)) != SB_OK)
            break;
        int64_t excess = cost - problem->code_budget;
        result->cost = cost;
        if (excess <= 0)
            break;
        /* 1. the reference point: the current allocation, quantized; its loss, g and F */
        status = sb_agree(comm, update_working(&state, err), err);
        for (int64_t i = 0; status == SB_OK && i < nlocal; i++)
            sb_layer_stats_reset_gradients(&problem->stats[i]);
        sb_nll reference = {0, 0};
        if (status == SB_OK)
            status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                      problem->batch_windows, &gradients, &reference, err);
        /* the layers' average experts at this reference point, for the rarely routed ones */
        for (int64_t i = 0; status == SB_OK && i < nlocal; i++)
            status = sb_layer_stats_pool(&problem->stats[i], problem->stats[i].min_expert_rows, err);
        status = sb_agree(comm, status, err);
        if (status != SB_OK)
            break;
        if (round == 0)
            result->fp_loss = mean(reference);
        /* 2. estimates */
        if ((status = sb_agree(comm, estimate_moves(&state, err), err)) != SB_OK)
            break;
        /* 3. a batch freeing half the excess (all of it near the end) */
        bool last_round = round + 1 >= problem->max_rounds;
        int64_t target = excess <= problem->code_budget / 100 || last_round ? excess : (excess + 2) / 3;
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
            /* 4. the real loss after the batch */
            sb_nll after = {0, 0};
            status = sb_agree(comm, update_working(&state, err), err);
            if (status == SB_OK)
                status = sb_pipeline_pass(pipeline, problem->tokens, problem->n_windows, problem->ctx,
                                          problem->batch_windows, NULL, &after, err);
            if (status != SB_OK)
                break;
            double predicted = (double)total_rise / FIXED_POINT, measured = mean(after) - mean(reference);
            double tolerance = 1e-3 * mean(reference);
            int64_t new_cost;
            if ((status = sum_int64(comm, local_cost(&state), &new_cost, err)) != SB_OK)
                break;
            bool accept = measured <= 2 * predicted + tolerance || total_moves <= 16 || last_round;
            sb_log_info(problem->log,
                        "taylor round %d: loss %.5f at %.4f bpw -> %.4f bpw with %lld moves: predicted %+.5f, "
                        "measured %+.5f%s",
                        round + 1, mean(reference), (double)(cost + problem->fixed_bits) * bits_per_weight,
                        (double)(new_cost + problem->fixed_bits) * bits_per_weight, (long long)total_moves, predicted,
                        measured, accept ? "" : ": too far off, retrying with half the batch");
            result->final_loss = mean(after);
            if (accept)
                break;
            /* undo and try half as much */
            for (int64_t m = 0; m < state.nmoves; m++)
                choice[state.moves[m].tile_index] = (uint8_t)state.moves[m].from;
            result->retries++;
            target = (target + 1) / 2;
        }
        result->rounds = round + 1;
        if (status == SB_OK && problem->checkpoint)
            status = problem->checkpoint(problem->checkpoint_user, round + 1, choice, err);
    }
    if (status == SB_OK)
        status = sb_agree(comm, update_working(&state, err), err); /* leave W^ of the result in place */
    for (int i = 0; state.fp && i < problem->ntensors; i++)
        free(state.fp[i]);
    free(state.fp);
    free(state.applied);
    free(state.moves);
    free(state.move_rise);
    free(state.prefix);
    return status;
}
