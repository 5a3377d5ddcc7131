#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_assert.h"
#include "sb_atomic.h"
#include "sb_mpi.h"
#include "sb_h5_writer.h"
#include "sb_model_load.h"
#include "sb_pack.h"
#include "sb_plan.h"
#include "sb_run_internal.h"
#include "sb_sha256.h"

size_t sb_run_unit_params_bytes(const sb_run_state *state, const sb_unit *unit)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    return (size_t)(unit->tiles * state->curve_options.noptions * sb_curve_params_slot(&tensor->tiling)) *
           sizeof(uint16_t);
}

sb_status sb_run_unit_params_path(const sb_run_state *state, const sb_unit *unit, char *path, size_t size,
                                  sb_error *err)
{
    char name[80];
    SB_TRY(sb_path_format(name, sizeof name, err, "%lld-%lld-params", (long long)unit->first_tile_id,
                          (long long)unit->tiles));
    return sb_state_path(&state->disk, "curves", name, path, size, err);
}

static sb_status curves_of_unit(sb_ctx *ctx, sb_run_state *state, const sb_unit *unit, bool *reused, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const int k = state->curve_options.noptions;
    int64_t offset = unit->first_tile_id - state->first_tile;
    char name[64], path[SB_PATH_MAX];
    SB_TRY(sb_path_format(name, sizeof name, err, "%lld-%lld", (long long)unit->first_tile_id, (long long)unit->tiles));
    SB_TRY(sb_state_path(&state->disk, "curves", name, path, sizeof path, err));
    size_t loss_bytes = (size_t)(unit->tiles * k) * sizeof(double), cost_bytes = (size_t)(unit->tiles * k) * sizeof(int64_t);
    uint8_t *blob = sb_malloc(loss_bytes + cost_bytes, "curves", err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    if (state->disk.resuming && sb_blob_load(path, blob, loss_bytes + cost_bytes)) {
        *reused = true;
    } else {
        float *rows;
        sb_loss_model model = sb_run_unit_loss_model(ctx, state, unit);
        /* every (tile, bitwidth)'s scales, kept so that the quantize stage codes the chosen one
         * without searching again (not with GPTQ: its codes follow the error feedback) */
        size_t params_bytes = model.gptq ? 0 : sb_run_unit_params_bytes(state, unit);
        uint16_t *params = params_bytes ? sb_malloc(params_bytes, "curve parameters", err) : NULL;
        status = params_bytes && !params ? SB_ERR_NOMEM : sb_run_read_unit_rows(state, unit, &rows, err);
        if (status == SB_OK) {
            status = sb_curves_compute(&tensor->tiling, unit->tile_row_begin, unit->tile_row_end, rows, &model,
                                       &state->curve_options, (double *)blob, (int64_t *)(blob + loss_bytes), params,
                                       err);
        }
        if (status == SB_OK && params) {
            char params_path[SB_PATH_MAX];
            status = sb_run_unit_params_path(state, unit, params_path, sizeof params_path, err);
            if (status == SB_OK)
                status = sb_blob_save(params_path, params, params_bytes, err);
        }
        free(params);
        if (status == SB_OK)
            status = sb_blob_save(path, blob, loss_bytes + cost_bytes, err);
    }
    if (status == SB_OK) {
        memcpy(state->loss + offset * k, blob, loss_bytes);
        memcpy(state->cost + offset * k, blob + loss_bytes, cost_bytes);
    }
    free(blob);
    return status;
}

sb_status sb_run_stage_curves(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    const int k = state->curve_options.noptions;
    state->first_tile = plan->rank_first_tile[ctx->rank];
    state->local_tiles = plan->rank_first_tile[ctx->rank + 1] - state->first_tile;
    size_t slots = (size_t)(state->local_tiles > 0 ? state->local_tiles : 1) * (size_t)k;
    state->loss = sb_malloc(slots * sizeof *state->loss, "loss curves", err);
    state->cost = sb_malloc(slots * sizeof *state->cost, "cost curves", err);
    state->choice = sb_calloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1), 1, "allocation", err);
    if (!state->loss || !state->cost || !state->choice)
        return SB_ERR_NOMEM;
    return sb_run_units(ctx, state, "curves", curves_of_unit, err);
}

/* ---- allocate --------------------------------------------------------------------------- */

/* The budget cannot be met: say what is feasible, in the user's unit. */
sb_status sb_run_budget_error(const sb_ctx *ctx, const sb_run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    double n = (double)plan->quantized_weights;
    double fixed = (double)plan->fixed_bits;
    int64_t min_cost = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize)
            continue;
        for (int64_t t = 0; t < sb_tiling_count(&tensor->tiling); t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            min_cost += 8 * sb_tile_code_bytes(rect.rows, rect.cols, o->bits[0]);
        }
    }
    return sb_error_set(err, SB_ERR_BUDGET,
                        "%s: --budget %g bits per weight cannot be met: the cheapest allocation (every tile at "
                        "%d bits, plus scales, zeros and bit maps) needs %.4f; feasible budgets are %.4f or more",
                        o->model_dir, o->budget, o->bits[0], (fixed + (double)min_cost) / n,
                        ceil((fixed + (double)min_cost) / n * 1e4) / 1e4);
}

sb_status sb_run_stage_allocate(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    double start = sb_now();
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    int64_t *ids = sb_malloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1) * sizeof *ids, "tile ids", err);
    if (!ids)
        return SB_ERR_NOMEM;
    for (int64_t t = 0; t < state->local_tiles; t++)
        ids[t] = state->first_tile + t;
    int64_t code_budget = state->budget_bits - plan->fixed_bits;
    sb_alloc_problem problem = {state->local_tiles, o->nbits, state->cost, state->loss, ids, code_budget};
    sb_status status = code_budget < 0 ? sb_error_set(err, SB_ERR_BUDGET, "budget below the fixed overhead")
                                       : sb_global_alloc(ctx->comm, &problem, state->choice, &state->alloc_stats, err);
    free(ids);
    if (status == SB_ERR_BUDGET)
        return sb_run_budget_error(ctx, state, err);
    SB_TRY(status);
    sb_ctx_stage(ctx, "allocate", sb_now() - start);
    return SB_OK;
}

/* ---- refine (taylor) --------------------------------------------------------------------- */

/* The taylor search's checkpoint: every tile's option after a round, saved by rank 0 as
 * refine.bin (the round count, then one byte per tile in global order); then a stop check. */
typedef struct refine_saver {
    sb_ctx *ctx;
    sb_run_state *state;
} refine_saver;

static sb_status save_refine_round(void *user, int rounds_done, const uint8_t *choice, sb_error *err)
{
    refine_saver *saver = user;
    sb_ctx *ctx = saver->ctx;
    sb_run_state *state = saver->state;
    const sb_plan *plan = &state->plan;
    int *counts = sb_malloc((size_t)ctx->size * sizeof *counts, "counts", err);
    int *displs = sb_malloc((size_t)ctx->size * sizeof *displs, "displacements", err);
    uint8_t *all = ctx->rank == 0 ? sb_malloc((size_t)plan->total_tiles + 4, "search state", err) : NULL;
    sb_status status = counts && displs && (ctx->rank != 0 || all) ? SB_OK : SB_ERR_NOMEM;
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        /* the plan keeps total_tiles + 4 below 2^31 (sb_plan.h): MPI's int counts hold */
        SB_ASSERT(plan->total_tiles + 4 <= INT32_MAX);
        for (int r = 0; r < ctx->size; r++) {
            counts[r] = (int)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]);
            displs[r] = (int)plan->rank_first_tile[r] + 4;
        }
        status = sb_agree(ctx->comm, SB_MPI_CALL(err, MPI_Gatherv(choice, (int)state->local_tiles, MPI_UINT8_T, all, counts,
                                                                   displs, MPI_UINT8_T, 0, ctx->comm)), err);
        if (status == SB_OK && ctx->rank == 0) {
            int32_t round = rounds_done;
            memcpy(all, &round, 4);
            char path[SB_PATH_MAX];
            status = sb_state_path(&state->disk, NULL, "refine.bin", path, sizeof path, err);
            if (status == SB_OK)
                status = sb_blob_save(path, all, (size_t)plan->total_tiles + 4, err);
        }
        status = sb_agree(ctx->comm, status, err);
    }
    free(counts);
    free(displs);
    free(all);
    if (status == SB_OK) {
        sb_state_debug_point(ctx, "refine", rounds_done);
        bool stop = false;
        status = sb_state_should_stop(ctx, &state->disk, rounds_done, &stop, err);
        if (status == SB_OK && stop)
            status = sb_run_stopped(ctx, state, "the taylor search", rounds_done, err);
    }
    return status;
}

sb_status sb_run_stage_refine(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    double start = sb_now();
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    state->first_tile = plan->rank_first_tile[ctx->rank];
    state->local_tiles = plan->rank_first_tile[ctx->rank + 1] - state->first_tile;
    state->choice = sb_calloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1), 1, "allocation", err);
    sb_refine_tensor *tensors = sb_calloc((size_t)plan->ntensors, sizeof *tensors, "search tensors", err);
    int *plan_index = sb_calloc((size_t)plan->ntensors, sizeof *plan_index, "search tensors", err);
    if (!state->choice || !tensors || !plan_index) {
        free(tensors);
        free(plan_index);
        return SB_ERR_NOMEM;
    }
    int ntensors = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize || tensor->first_tile_id < state->first_tile ||
            tensor->first_tile_id >= state->first_tile + state->local_tiles)
            continue;
        int64_t layer = tensor->entry->layer - state->pipeline.layer_begin;
        plan_index[ntensors] = i;
        sb_refine_tensor *t = &tensors[ntensors++];
        t->tiling = &tensor->tiling;
        t->first_local_tile = tensor->first_tile_id - state->first_tile;
        t->first_tile_id = tensor->first_tile_id;
        t->id = (sb_tensor_id){tensor->entry->role, tensor->entry->layer, tensor->entry->expert};
        t->linear = sb_layer_matrix(&state->pipeline.layers[layer], &t->id);
        /* an expert calibration rarely reached: estimated as its layer's average expert */
        if (state->calibrated && state->stats) {
            sb_weight_view view = sb_layer_stats_view(&state->stats[layer], &t->id);
            t->pooled = view.pooled;
        }
        t->quant_weights = state->act[i];
        t->gptq = state->gptq ? state->gptq[i] : NULL;
        if (!t->linear) {
            free(tensors);
            free(plan_index);
            return sb_error_set(err, SB_ERR_INTERNAL, "taylor search: tensor '%s' is not in its pipeline stage",
                                tensor->entry->name);
        }
    }
    sb_refine_problem problem = {
        .ntensors = ntensors,
        .tensors = tensors,
        .local_tiles = state->local_tiles,
        .curve = &state->curve_options,
        .code_budget = state->budget_bits - plan->fixed_bits,
        .max_rounds = o->refine_rounds,
        .tokens = state->calib_range.tokens,
        .n_windows = state->calib_range.n_windows,
        .ctx = o->calib_ctx,
        .batch_windows = o->calib_batch,
        .gradient_windows = o->refine_windows,
        .log = &ctx->log,
        .cache_limit = o->debug_search_cache_mib >= 0 ? (int64_t)o->debug_search_cache_mib << 20
                                                      : sb_plan_refine_cache_bytes(plan, ctx->size),
        .quantized_weights = plan->quantized_weights,
        .fixed_bits = plan->fixed_bits,
    };
    sb_status status = problem.code_budget < 0 ? SB_ERR_BUDGET : SB_OK;
    if (status == SB_OK) {
        /* the cheapest allocation must fit, as for the greedy */
        int64_t min_cost = 0, all_min;
        for (int i = 0; i < ntensors; i++)
            for (int64_t t = 0; t < sb_tiling_count(tensors[i].tiling); t++) {
                sb_tile_rect rect = sb_tiling_rect(tensors[i].tiling, t);
                min_cost += 8 * sb_tile_code_bytes(rect.rows, rect.cols, o->bits[0]);
            }
        status = SB_MPI_CALL(err, MPI_Allreduce(&min_cost, &all_min, 1, MPI_INT64_T, MPI_SUM, ctx->comm));
        if (status == SB_OK && all_min > problem.code_budget)
            status = SB_ERR_BUDGET;
    }
    if (status == SB_ERR_BUDGET || status == SB_ERR_MPI) {
        free(tensors);
        free(plan_index);
        return status == SB_ERR_MPI ? status : sb_run_budget_error(ctx, state, err);
    }
    /* resume: the search's state after its last finished round */
    uint8_t *saved = NULL;
    if (state->disk.resuming) {
        char path[SB_PATH_MAX];
        saved = sb_malloc((size_t)plan->total_tiles + 4, "search state", err);
        if (saved && sb_state_path(&state->disk, NULL, "refine.bin", path, sizeof path, NULL) == SB_OK &&
            sb_blob_load(path, saved, (size_t)plan->total_tiles + 4)) {
            int32_t rounds;
            memcpy(&rounds, saved, 4);
            problem.first_round = rounds;
            problem.initial_choice = saved + 4 + state->first_tile;
            sb_log_info(&ctx->log, "taylor search: resuming after round %d", rounds);
        }
    }
    refine_saver saver = {ctx, state};
    problem.checkpoint = save_refine_round;
    problem.checkpoint_user = &saver;
    status = sb_refine_allocate(&state->pipeline, &problem, state->choice, &state->refine, err);
    free(saved);
    /* the quantize stage packs the search's tiles as they are (the same values it would compute) */
    if (status == SB_OK && !(state->stores = sb_calloc((size_t)plan->ntensors, sizeof *state->stores, "tile stores", err)))
        status = SB_ERR_NOMEM;
    for (int n = 0; status == SB_OK && n < ntensors; n++)
        state->stores[plan_index[n]] = &state->refine.stores[n];
    free(plan_index);
    free(tensors);
    SB_TRY(status);
    sb_log_info(&ctx->log, "taylor search: %d rounds (%d retries), calibration loss %.5f at full precision -> %.5f",
                state->refine.rounds, state->refine.retries, state->refine.fp_loss, state->refine.final_loss);
    const sb_refine_result *r = &state->refine;
    sb_log_info(&ctx->log,
                "taylor search time: %.1f s estimating moves, %.1f s quantizing tiles, %.1f s in %d calibration "
                "passes (%.1f s loss checks, %.1f s other); %.1f MiB of tiles at every bitwidth, %.1f MiB decoded",
                r->seconds.estimate, r->seconds.quantize, r->seconds.check + r->seconds.gradient, r->passes,
                r->seconds.check, r->seconds.gradient, (double)r->store_bytes / 1048576.0,
                (double)r->cache_bytes / 1048576.0);
    sb_ctx_stage(ctx, "refine_estimate", r->seconds.estimate);
    sb_ctx_stage(ctx, "refine_quantize", r->seconds.quantize);
    sb_ctx_stage(ctx, "refine_passes", r->seconds.check + r->seconds.gradient);
    sb_ctx_stage(ctx, "refine", sb_now() - start);
    return SB_OK;
}

/* ---- gather ----------------------------------------------------------------------------- */

sb_status sb_run_stage_gather(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    double start = sb_now();
    const sb_plan *plan = &state->plan;
    state->all_bits = sb_malloc((size_t)(plan->total_tiles > 0 ? plan->total_tiles : 1), "allocation", err);
    uint8_t *local = sb_malloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1), "allocation", err);
    int *counts = sb_malloc((size_t)ctx->size * sizeof *counts, "counts", err);
    int *displs = sb_malloc((size_t)ctx->size * sizeof *displs, "displacements", err);
    /* every rank has its buffers before anyone enters the gather */
    sb_status status = sb_agree(ctx->comm, !state->all_bits || !local || !counts || !displs ? SB_ERR_NOMEM : SB_OK, err);
    if (status != SB_OK)
        goto done;
    /* the plan refuses more tiles than MPI's int counts hold (sb_plan.h) */
    SB_ASSERT(plan->total_tiles <= INT32_MAX);
    for (int64_t t = 0; t < state->local_tiles && !state->allocation_loaded; t++)
        local[t] = (uint8_t)ctx->options.bits[state->choice[t]];
    for (int r = 0; r < ctx->size; r++) {
        counts[r] = (int)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]);
        displs[r] = (int)plan->rank_first_tile[r];
    }
    if (state->allocation_loaded) {
        /* resumed: every rank reads the saved allocation (one byte per tile) */
        char path[SB_PATH_MAX];
        if ((status = sb_state_path(&state->disk, NULL, "allocation.bin", path, sizeof path, err)) != SB_OK)
            goto done;
        if (!sb_blob_load(path, state->all_bits, (size_t)plan->total_tiles)) {
            status = sb_error_set(err, SB_ERR_IO, "%s: cannot read the saved allocation", path);
            goto done;
        }
    } else if ((status = SB_MPI_CALL(err, MPI_Allgatherv(local, (int)state->local_tiles, MPI_UINT8_T, state->all_bits,
                                                          counts, displs, MPI_UINT8_T, ctx->comm))) != SB_OK) {
        goto done;
    }
    /* the stored size, exactly, from the allocation alone */
    state->code_bits = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (tensor->quantize)
            state->code_bits += 8 * sb_block_code_bytes(&tensor->tiling, 0, sb_tiling_count(&tensor->tiling),
                                                        state->all_bits + tensor->first_tile_id);
    }
    state->stored_bits = state->code_bits + plan->fixed_bits;
    if (state->stored_bits > state->budget_bits)
        status = sb_error_set(err, SB_ERR_INTERNAL, "allocation stores %lld bits, over the budget of %lld",
                              (long long)state->stored_bits, (long long)state->budget_bits);
    uint8_t digest[32];
    sb_sha256_bytes(state->all_bits, (size_t)plan->total_tiles, digest);
    sb_sha256_hex(digest, state->allocation_hash);
    if (status == SB_OK && ctx->rank == 0 && !state->allocation_loaded) {
        char path[SB_PATH_MAX];
        status = sb_state_path(&state->disk, NULL, "allocation.bin", path, sizeof path, err);
        if (status == SB_OK)
            status = sb_blob_save(path, state->all_bits, (size_t)plan->total_tiles, err);
    }
done:
    free(local);
    free(counts);
    free(displs);
    sb_ctx_stage(ctx, "gather", sb_now() - start);
    return status;
}

