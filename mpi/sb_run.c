#include "sb_run.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_atomic.h"
#include "sb_catalogue.h"
#include "sb_config.h"
#include "sb_curves.h"
#include "sb_global_alloc.h"
#include "sb_gptq.h"
#include "sb_h5_writer.h"
#include "sb_imatrix.h"
#include "sb_model_load.h"
#include "sb_pipeline.h"
#include "sb_refine.h"
#include "sb_reorder.h"
#include "sb_state.h"
#include "sb_tokens.h"
#include "sb_pack.h"
#include "sb_plan.h"
#include "sb_safetensors.h"
#include "sb_sha256.h"

/* Everything the stages share. */
typedef struct run_state {
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_tensor_desc *descs;
    sb_catalogue catalogue;
    sb_plan plan;
    sb_curve_options curve_options;
    /* this rank's tiles: ids [first_tile, first_tile + local_tiles) */
    int64_t first_tile, local_tiles;
    double *loss;        /* [local_tiles * noptions] */
    int64_t *cost;       /* [local_tiles * noptions] */
    uint8_t *choice;     /* [local_tiles] option index */
    uint8_t *all_bits;   /* [total_tiles] bitwidth of every tile, on every rank */
    int64_t budget_bits, stored_bits, code_bits;
    sb_global_alloc_stats alloc_stats;
    char allocation_hash[65];
    double quantization_error;
    /* calibration (sensitivities other than mse) */
    bool calibrated;              /* a pipeline measured act (and fisher/grad) statistics */
    sb_pipeline pipeline;
    sb_layer_stats *stats;        /* [stats_count], layers from pipeline.layer_begin */
    int64_t stats_count;
    sb_tokens calib_tokens;
    sb_window_range calib_range;
    sb_nll calib_fp;              /* calibration loss of the FP model */
    sb_imatrix imatrix;
    bool have_imatrix;
    float **act;                  /* [ntensors] E[x^2] per input column, for tensors with one */
    sb_refine_result refine;
    sb_state disk;                /* OUT.h5.state/: stop and resume */
    bool allocation_loaded;       /* resumed with a finished allocation */
    char *fingerprint;            /* what the results depend on (sb_state.h) */
    sb_reorder reorder;           /* --reorder: every layer's orders, on every rank */
    bool reordered;
    sb_gptq_factor **gptq;        /* --gptq: [ntensors] one factor per tile column, owned tensors only */
} run_state;

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* After a stage: rank 0 prints the spread of the ranks' times and names a rank that fell far
 * behind the others (a slow node, or a plan that balanced badly). Collective. */
static void report_stage_balance(const sb_ctx *ctx, const char *stage, double seconds)
{
    double *all = ctx->rank == 0 ? malloc((size_t)ctx->size * sizeof *all) : NULL;
    MPI_Gather(&seconds, 1, MPI_DOUBLE, all, 1, MPI_DOUBLE, 0, ctx->comm);
    if (ctx->rank != 0 || !all || ctx->size < 2) {
        free(all);
        return;
    }
    int slowest = 0;
    for (int r = 1; r < ctx->size; r++)
        slowest = all[r] > all[slowest] ? r : slowest;
    double slowest_seconds = all[slowest];
    qsort(all, (size_t)ctx->size, sizeof *all, compare_doubles);
    double median = all[ctx->size / 2];
    sb_log_info(&ctx->log, "%s: ranks took %.1f s (fastest) / %.1f s (median) / %.1f s (rank %d, slowest)", stage,
                all[0], median, slowest_seconds, slowest);
    if (slowest_seconds > 1.5 * median && slowest_seconds - median > 1.0)
        sb_log_warn(&ctx->log, "rank %d fell behind in %s: %.1f s, %.1fx the median %.1f s (a slow node, or an "
                    "unbalanced plan: see --plan)", slowest, stage, slowest_seconds, slowest_seconds / median, median);
    free(all);
}

/* The units this rank owns, in order (for loops that meet at every unit boundary). */
static int owned_units(const sb_ctx *ctx, const run_state *state, bool quantized_only, int *list)
{
    int count = 0;
    for (int u = 0; u < state->plan.nunits; u++)
        if (state->plan.units[u].owner == ctx->rank && (!quantized_only || state->plan.tensors[state->plan.units[u].tensor].quantize))
            list[count++] = u;
    return count;
}

/* Loops over units run the same number of iterations on every rank (the largest count), so
 * that each iteration can end with a collective stop check. */
static int max_over_ranks(const sb_ctx *ctx, int count)
{
    int most = count;
    MPI_Allreduce(&count, &most, 1, MPI_INT, MPI_MAX, ctx->comm);
    return most;
}

static sb_status stopped(sb_ctx *ctx, run_state *state, const char *stage, int64_t units, sb_error *err)
{
    sb_state_write_manifest(ctx, &state->disk, err);
    return sb_error_set(err, SB_ERR_STOPPED,
                        "stopped on request during %s after %lld work unit(s); the work done is saved in %s: rerun "
                        "the same command with --resume to continue",
                        stage, (long long)units, state->disk.dir);
}

/* Does this run calibrate through a pipeline (and so plan by layers)? */
static bool needs_pipeline(const sb_options *o)
{
    bool data = o->calib_tokens || o->calib_text;
    return data && (o->sensitivity != SB_SENSITIVITY_MSE || o->save_imatrix || o->gptq);
}

static void state_free(run_state *state)
{
    free(state->fingerprint);
    for (int i = 0; state->gptq && i < state->plan.ntensors; i++) {
        for (int64_t t = 0; state->gptq[i] && t < state->plan.tensors[i].tiling.tiles_across; t++)
            sb_gptq_factor_free(&state->gptq[i][t]);
        free(state->gptq[i]);
    }
    free(state->gptq);
    if (state->reordered)
        sb_reorder_free(&state->reorder);
    for (int i = 0; state->act && i < state->plan.ntensors; i++)
        free(state->act[i]);
    free(state->act);
    for (int64_t i = 0; state->stats && i < state->stats_count; i++)
        sb_layer_stats_free(&state->stats[i]);
    free(state->stats);
    if (state->calibrated)
        sb_pipeline_free(&state->pipeline);
    sb_tokens_free(&state->calib_tokens);
    if (state->have_imatrix)
        sb_imatrix_free(&state->imatrix);
    free(state->loss);
    free(state->cost);
    free(state->choice);
    free(state->all_bits);
    sb_plan_free(&state->plan);
    sb_catalogue_free(&state->catalogue);
    free(state->descs);
    sb_checkpoint_close(&state->checkpoint);
    sb_config_free(&state->config);
}

/* ---- open ------------------------------------------------------------------------------- */

static sb_status stage_open(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const char *model = ctx->options.model_dir;
    SB_TRY(sb_config_load(model, &state->config, err));
    SB_TRY(sb_checkpoint_open(model, &state->checkpoint, err));
    state->descs = sb_calloc((size_t)state->checkpoint.ntensors, sizeof *state->descs, "tensor list", err);
    if (!state->descs)
        return SB_ERR_NOMEM;
    for (int i = 0; i < state->checkpoint.ntensors; i++) {
        const sb_tensor_info *info = &state->checkpoint.tensors[i];
        state->descs[i] = (sb_tensor_desc){info->name, info->ndim, info->shape};
    }
    sb_catalogue_options catalogue_options = {ctx->options.quantize_embeddings, ctx->options.quantize_lm_head};
    sb_status status = sb_catalogue_build(state->descs, state->checkpoint.ntensors, &state->config.shape,
                                          &catalogue_options, &state->catalogue, err);
    if (status != SB_OK)
        return sb_error_prefix(err, "%s", model);
    if (state->catalogue.quantized_count == 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: no tensor to quantize", model);
    return SB_OK;
}

/* ---- plan ------------------------------------------------------------------------------- */

static void format_bytes(char *out, size_t size, double bytes)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, size, "%.1f %s", bytes, units[u]);
}

static void print_plan(const sb_ctx *ctx, const run_state *state)
{
    if (ctx->rank != 0)
        return;
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    int64_t source_bytes = 0;
    for (int i = 0; i < state->checkpoint.nfiles; i++)
        source_bytes += (int64_t)state->checkpoint.files[i].size;
    char text[64], text2[64];
    printf("plan for %s on %d rank(s)\n", o->model_dir, plan->nranks);
    format_bytes(text, sizeof text, (double)source_bytes);
    printf("  source: %d file(s), %s, %d tensors (%d quantized, %lld weights)\n", state->checkpoint.nfiles, text,
           state->catalogue.count, state->catalogue.quantized_count, (long long)plan->quantized_weights);
    printf("  tiles: %lld of %dx%d, groups of %d, bits {", (long long)plan->total_tiles, o->tile_rows, o->tile_cols,
           o->group);
    for (int k = 0; k < o->nbits; k++)
        printf("%s%d", k ? "," : "", o->bits[k]);
    printf("}; %d work units\n", plan->nunits);
    double fixed_bpw = (double)plan->fixed_bits / (double)plan->quantized_weights;
    printf("  stored bits per weight: %.4f fixed (scales, zeros, bit maps) + codes: feasible %.4f .. %.4f\n", fixed_bpw,
           fixed_bpw + o->bits[0], fixed_bpw + o->bits[o->nbits - 1]);
    double output_bytes = ((double)o->budget * (double)plan->quantized_weights) / 8.0;
    for (int i = 0; i < plan->ntensors; i++)
        if (!plan->tensors[i].quantize)
            output_bytes += (double)plan->tensors[i].info->nbytes;
    format_bytes(text, sizeof text, output_bytes);
    printf("  output at --budget %g: about %s\n", o->budget, text);
    int64_t max_work = 0, max_peak = 0;
    for (int r = 0; r < plan->nranks; r++) {
        max_work = plan->rank_work[r] > max_work ? plan->rank_work[r] : max_work;
        max_peak = plan->rank_peak_bytes[r] > max_peak ? plan->rank_peak_bytes[r] : max_peak;
    }
    int64_t total_work = 0;
    for (int r = 0; r < plan->nranks; r++)
        total_work += plan->rank_work[r];
    format_bytes(text, sizeof text, (double)max_peak);
    printf("  balance: busiest rank has %.2fx the mean work; peak memory per rank about %s (+ runtime ~50 MiB)\n",
           total_work ? (double)max_work * plan->nranks / (double)total_work : 1.0, text);
    printf("  %-6s %-10s %-12s %-10s %s\n", "rank", "units", "tiles", "memory", "first unit");
    int shown = 0;
    for (int r = 0; r < plan->nranks; r++) {
        int units = 0, first = -1;
        for (int u = 0; u < plan->nunits; u++)
            if (plan->units[u].owner == r) {
                units++;
                if (first < 0)
                    first = u;
            }
        if (plan->nranks > 16 && r >= 8 && r < plan->nranks - 8) {
            if (!shown++)
                printf("  ...\n");
            continue;
        }
        format_bytes(text2, sizeof text2, (double)plan->rank_peak_bytes[r]);
        const sb_unit *unit = first >= 0 ? &plan->units[first] : NULL;
        printf("  %-6d %-10d %-12lld %-10s %s", r, units,
               (long long)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]), text2,
               unit ? plan->tensors[unit->tensor].entry->name : "(none)");
        if (unit && plan->tensors[unit->tensor].quantize)
            printf(" rows %lld..%lld", (long long)unit->row_begin, (long long)unit->row_end);
        printf("\n");
    }
    fflush(stdout);
}

static sb_status stage_plan(sb_ctx *ctx, run_state *state, sb_error *err)
{
    int nranks = ctx->options.plan_ranks > 0 ? ctx->options.plan_ranks : ctx->size;
    if (needs_pipeline(&ctx->options) || ctx->options.reorder)
        SB_TRY(sb_plan_build_layered(&state->catalogue, &state->checkpoint, &ctx->options, nranks,
                                     state->config.shape.num_hidden_layers, &state->plan, err));
    else
        SB_TRY(sb_plan_build(&state->catalogue, &state->checkpoint, &ctx->options, nranks, &state->plan, err));
    const sb_options *o = &ctx->options;
    state->curve_options.noptions = o->nbits;
    memcpy(state->curve_options.bits, o->bits, sizeof o->bits);
    state->curve_options.quant = sb_quant_default_options();
    state->curve_options.quant.search = o->search;
    state->curve_options.quant.format = o->scales;
    /* exact: floor(budget x weights), budget = numerator / denominator */
    __int128 budget = (__int128)o->budget_numerator * state->plan.quantized_weights / o->budget_denominator;
    state->budget_bits = (int64_t)budget;
    return SB_OK;
}

/* ---- fingerprint -------------------------------------------------------------------------- */

/* SHA-256 of a file's bytes, or "absent". */
static void file_sha256(const char *path, char hex[65])
{
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(hex, 65, "absent");
        return;
    }
    sb_sha256 hash;
    sb_sha256_init(&hash);
    char buffer[1 << 16];
    size_t got;
    while ((got = fread(buffer, 1, sizeof buffer, file)) > 0)
        sb_sha256_update(&hash, buffer, got);
    fclose(file);
    uint8_t digest[32];
    sb_sha256_final(&hash, digest);
    sb_sha256_hex(digest, hex);
}

/* What the output depends on, one "key: value" line each (sb_state.h); the same on every rank. */
static sb_status build_fingerprint(const sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_options *o = &ctx->options;
    size_t size = 0;
    FILE *out = open_memstream(&state->fingerprint, &size);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot build the run's fingerprint");
    uint8_t digest[32];
    char hex[65];
    fprintf(out, "tool: scalebits %s\n", SB_VERSION);
    sb_sha256_bytes(state->config.json_text, strlen(state->config.json_text), digest);
    sb_sha256_hex(digest, hex);
    fprintf(out, "config.json: sha256 %s\n", hex);
    for (int i = 0; i < state->checkpoint.nfiles; i++) {
        const sb_checkpoint_file *file = &state->checkpoint.files[i];
        const char *base = strrchr(file->path, '/');
        sb_sha256_hex(file->header_sha256, hex);
        fprintf(out, "header: %s sha256 %s, %llu bytes\n", base ? base + 1 : file->path, hex,
                (unsigned long long)file->size);
    }
    fprintf(out, "tile: %dx%d\ngroup: %d\nbits:", o->tile_rows, o->tile_cols, o->group);
    for (int k = 0; k < o->nbits; k++)
        fprintf(out, "%s%d", k ? "," : " ", o->bits[k]);
    fprintf(out, "\nscales: %s\nsearch: %s\nsensitivity: %s\n", sb_scale_format_name(o->scales),
            o->search == SB_SEARCH_MINMAX ? "minmax" : "weighted", sb_sensitivity_name(o->sensitivity));
    fprintf(out, "quantize embeddings / lm_head: %d / %d\nreorder: %d\ngptq: %d\n", o->quantize_embeddings,
            o->quantize_lm_head, o->reorder, o->gptq);
    if (o->calib_tokens || o->calib_text) {
        file_sha256(o->calib_tokens ? o->calib_tokens : o->calib_text, hex);
        fprintf(out, "calibration: %s sha256 %s, ctx %lld, windows %lld, batch %lld\n",
                o->calib_tokens ? "tokens" : "text", hex, (long long)o->calib_ctx, (long long)o->calib_windows,
                (long long)o->calib_batch);
    }
    if (o->imatrix_path) {
        file_sha256(o->imatrix_path, hex);
        fprintf(out, "imatrix: sha256 %s\n", hex);
    }
    if (o->sensitivity == SB_SENSITIVITY_TAYLOR)
        fprintf(out, "refine rounds: %d\n", o->refine_rounds);
    fprintf(out, "budget: %lld/%lld\n", (long long)o->budget_numerator, (long long)o->budget_denominator);
    fclose(out);
    return SB_OK;
}

/* ---- calibrate -------------------------------------------------------------------------- */

/* E[x^2] per input column of quantized tensor i, from the pipeline's statistics or the imatrix. */
static sb_status fill_act(sb_ctx *ctx, run_state *state, int i, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[i];
    int64_t cols = tensor->entry->cols;
    const float *source = NULL;
    const double *sums = NULL;
    int64_t tokens = 0;
    if (state->calibrated && tensor->entry->layer >= 0 && tensor->entry->role <= SB_ROLE_DOWN) {
        const sb_layer_stats *stats = &state->stats[tensor->entry->layer - state->pipeline.layer_begin];
        sums = stats->act_sum[tensor->entry->role];
        tokens = stats->act_tokens;
    } else if (state->have_imatrix) {
        const sb_imatrix_entry *entry = sb_imatrix_find(&state->imatrix, tensor->entry->name);
        if (!entry)
            return sb_error_set(err, SB_ERR_INPUT, "%s: no entry for tensor '%s'", ctx->options.imatrix_path,
                                tensor->entry->name);
        if (entry->ncols != cols)
            return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has %lld columns but the imatrix entry %lld",
                                ctx->options.imatrix_path, tensor->entry->name, (long long)cols,
                                (long long)entry->ncols);
        source = entry->mean_sq;
    } else {
        return SB_OK; /* no statistics for it (e.g. a quantized embedding): plain squared error */
    }
    float *act = sb_malloc((size_t)cols * sizeof *act, "activation importance", err);
    if (!act)
        return SB_ERR_NOMEM;
    /* an imatrix is in the checkpoint's column order; statistics were permuted with the model */
    const int32_t *col_src = NULL;
    sb_tensor_perm perm;
    if (source && state->reordered && tensor->entry->role != SB_ROLE_OTHER &&
        sb_reorder_tensor_perm(&state->reorder, tensor->entry->role, tensor->entry->layer, &perm, err) == SB_OK)
        col_src = perm.col_src;
    for (int64_t j = 0; j < cols; j++)
        act[j] = source ? source[col_src ? col_src[j] : j] : (float)(sums[j] / (double)(tokens > 0 ? tokens : 1));
    state->act[i] = act;
    return SB_OK;
}

/* --save-imatrix: every stage's E[x^2] gathered on rank 0 and written as a llama.cpp .dat. */
static sb_status save_imatrix(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_model_shape *shape = &state->config.shape;
    int64_t layers = shape->num_hidden_layers, entries = layers * SB_LINEAR_KIND_COUNT;
    int64_t *ncols = sb_calloc((size_t)entries, sizeof *ncols, "imatrix", err), total = 0;
    if (!ncols)
        return SB_ERR_NOMEM;
    for (int64_t e = 0; e < entries; e++) {
        int64_t rows;
        sb_linear_shape(shape, (sb_linear_kind)(e % SB_LINEAR_KIND_COUNT), &rows, &ncols[e]);
        total += ncols[e];
    }
    float *local = sb_calloc((size_t)total, sizeof *local, "imatrix", err);
    float *all = ctx->rank == 0 ? sb_calloc((size_t)total, sizeof *all, "imatrix", err) : NULL;
    sb_status status = local && (ctx->rank != 0 || all) ? SB_OK : SB_ERR_NOMEM;
    int64_t offset = 0;
    for (int64_t e = 0; status == SB_OK && e < entries; offset += ncols[e], e++) {
        int64_t layer = e / SB_LINEAR_KIND_COUNT;
        if (layer < state->pipeline.layer_begin || layer >= state->pipeline.layer_end)
            continue;
        const sb_layer_stats *stats = &state->stats[layer - state->pipeline.layer_begin];
        for (int64_t j = 0; j < ncols[e]; j++)
            local[offset + j] =
                (float)(stats->act_sum[e % SB_LINEAR_KIND_COUNT][j] / (double)(stats->act_tokens ? stats->act_tokens : 1));
    }
    status = sb_agree(ctx->comm, status, err);
    /* each value comes from one rank, zeros elsewhere: the float sum is exact */
    if (status == SB_OK && MPI_Reduce(local, all, (int)total, MPI_FLOAT, MPI_SUM, 0, ctx->comm) != MPI_SUCCESS)
        status = sb_error_set(err, SB_ERR_MPI, "gathering the importance matrix failed");
    if (status == SB_OK && ctx->rank == 0) {
        char (*names)[96] = sb_calloc((size_t)entries, sizeof *names, "imatrix names", err);
        const char **name_list = sb_calloc((size_t)entries, sizeof *name_list, "imatrix names", err);
        const float **means = sb_calloc((size_t)entries, sizeof *means, "imatrix", err);
        if (!names || !name_list || !means) {
            status = SB_ERR_NOMEM;
        } else {
            offset = 0;
            for (int64_t e = 0; e < entries; offset += ncols[e], e++) {
                sb_imatrix_llama_linear_name(e / SB_LINEAR_KIND_COUNT, (int)(e % SB_LINEAR_KIND_COUNT), names[e],
                                             sizeof names[e]);
                name_list[e] = names[e];
                means[e] = all + offset;
            }
            const sb_options *o = &ctx->options;
            status = sb_imatrix_write_dat(o->save_imatrix, (int)entries, name_list, ncols, means,
                                          (int)state->calib_range.n_windows, o->calib_tokens ? o->calib_tokens : o->calib_text,
                                          err);
            if (status == SB_OK)
                sb_log_info(&ctx->log, "wrote the importance matrix %s (%lld entries)", o->save_imatrix, (long long)entries);
        }
        free(names);
        free(name_list);
        free(means);
    }
    free(local);
    free(all);
    free(ncols);
    return sb_agree(ctx->comm, status, err);
}

static sb_status stage_calibrate(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_options *o = &ctx->options;
    const sb_model_shape *shape = &state->config.shape;
    state->act = sb_calloc((size_t)state->plan.ntensors, sizeof *state->act, "importance", err);
    if (!state->act)
        return SB_ERR_NOMEM;
    if (o->imatrix_path && !needs_pipeline(o)) {
        SB_TRY(sb_imatrix_load(o->imatrix_path, &state->imatrix, err));
        state->have_imatrix = true;
    }
    if (needs_pipeline(o)) {
        double start = sb_now();
        if (o->calib_tokens)
            SB_TRY(sb_tokens_read_u32(o->calib_tokens, shape->vocab_size, &state->calib_tokens, err));
        else
            SB_TRY(sb_tokens_read_bytes(o->calib_text, shape->vocab_size, &state->calib_tokens, err));
        SB_TRY(sb_tokens_windows(&state->calib_tokens, o->calib_ctx, o->calib_windows, false, &state->calib_range, err));
        sb_safetensors_source source = {&state->checkpoint, true};
        SB_TRY(sb_pipeline_create(ctx->comm, shape, sb_safetensors_fetch, &source, ctx->threads, &state->pipeline, err));
        state->calibrated = true;
        int64_t nlocal = state->pipeline.layer_end - state->pipeline.layer_begin;
        bool fisher = o->sensitivity == SB_SENSITIVITY_FISHER || o->sensitivity == SB_SENSITIVITY_TAYLOR;
        bool grad = o->sensitivity == SB_SENSITIVITY_TAYLOR;
        state->stats = sb_calloc((size_t)(nlocal > 0 ? nlocal : 1), sizeof *state->stats, "statistics", err);
        if (!state->stats)
            return SB_ERR_NOMEM;
        for (int64_t i = 0; i < nlocal; i++, state->stats_count++)
            SB_TRY(sb_layer_stats_create(shape, state->pipeline.layer_begin + i, true, fisher, grad, &state->stats[i],
                                         err));
        /* one pass at full precision: E[x^2] always; gradients too for fisher (taylor takes its
         * gradients at quantized points, in the search) */
        sb_pass_request request = {o->sensitivity == SB_SENSITIVITY_FISHER, state->stats};
        SB_TRY(sb_pipeline_pass(&state->pipeline, state->calib_range.tokens, state->calib_range.n_windows, o->calib_ctx,
                                o->calib_batch, &request, &state->calib_fp, err));
        double seconds = sb_now() - start;
        sb_log_info(&ctx->log, "calibrated on %lld windows of %lld tokens (%s) over %d pipeline stage(s): FP loss %.5f "
                    "(perplexity %.4f), %.1f s",
                    (long long)state->calib_range.n_windows, (long long)o->calib_ctx,
                    o->calib_tokens ? o->calib_tokens : o->calib_text, state->pipeline.nstages,
                    state->calib_fp.sum / (double)state->calib_fp.count,
                    exp(state->calib_fp.sum / (double)state->calib_fp.count), seconds);
        sb_ctx_stage(ctx, "calibrate", seconds);
        if (o->save_imatrix)
            SB_TRY(save_imatrix(ctx, state, err));
    }
    return SB_OK;
}

/* ---- reorder ---------------------------------------------------------------------------- */

/* The weights of (layer, kind) on this rank: the pipeline's float32 copy, or read whole. */
static sb_status layer_weights(const run_state *state, int64_t layer, sb_linear_kind kind, float **weights, bool *owned,
                               sb_error *err)
{
    if (state->calibrated && layer >= state->pipeline.layer_begin && layer < state->pipeline.layer_end) {
        *weights = sb_layer_linear(&state->pipeline.layers[layer - state->pipeline.layer_begin], kind);
        *owned = false;
        return SB_OK;
    }
    char name[256];
    sb_linear_weight_name(layer, kind, name, sizeof name);
    const sb_tensor_info *info = sb_checkpoint_find(&state->checkpoint, name);
    if (!info)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s' vanished", name);
    int64_t rows = sb_tensor_rows(info), cols = sb_tensor_cols(info);
    float *w = sb_malloc((size_t)(rows * cols) * sizeof *w, "weights for reordering", err);
    if (!w)
        return SB_ERR_NOMEM;
    sb_status status = sb_checkpoint_read_rows(&state->checkpoint, info, 0, rows, true, w, err);
    if (status != SB_OK) {
        free(w);
        return status;
    }
    *weights = w;
    *owned = true;
    return SB_OK;
}

/* Orders for every layer (docs/REORDER.md): each layer's owner computes its orders and its
 * share of the hidden order from importance marginals (F W^2 with fisher, E[x^2] W^2 with
 * statistics or an imatrix, W^2 otherwise), every rank receives all of them, and the
 * statistics and the pipeline's weights are folded; units are then read permuted. */
static sb_status stage_reorder(sb_ctx *ctx, run_state *state, sb_error *err)
{
    if (!ctx->options.reorder)
        return SB_OK;
    double start = sb_now();
    const sb_model_shape *shape = &state->config.shape;
    int64_t layers = shape->num_hidden_layers, hidden = shape->hidden_size;
    SB_TRY(sb_reorder_create(shape, 0, layers, &state->reorder, err));
    state->reordered = true;
    double *contributions = sb_calloc((size_t)(layers * hidden), sizeof *contributions, "hidden scores", err);
    if (!contributions)
        return SB_ERR_NOMEM;
    int nstages = sb_stage_count(ctx->size, layers);
    sb_status status = SB_OK;
    for (int64_t layer = 0; layer < layers && status == SB_OK; layer++) {
        int owner = 0;
        for (int st = 0; st < nstages; st++)
            if (layer >= sb_stage_first_layer(layers, nstages, st))
                owner = st;
        if (owner != ctx->rank)
            continue;
        const sb_layer_stats *stats = state->calibrated ? &state->stats[layer - state->pipeline.layer_begin] : NULL;
        double *marginals[2 * SB_LINEAR_KIND_COUNT] = {NULL};
        sb_layer_importance importance;
        for (int k = 0; k < SB_LINEAR_KIND_COUNT && status == SB_OK; k++) {
            int64_t rows, cols;
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
            marginals[2 * k] = sb_calloc((size_t)rows, sizeof(double), "marginals", err);
            marginals[2 * k + 1] = sb_calloc((size_t)cols, sizeof(double), "marginals", err);
            float *w = NULL;
            bool owned = false;
            if (!marginals[2 * k] || !marginals[2 * k + 1])
                status = SB_ERR_NOMEM;
            else
                status = layer_weights(state, layer, (sb_linear_kind)k, &w, &owned, err);
            if (status == SB_OK) {
                const double *act = stats ? stats->act_sum[k] : NULL;
                /* Fisher only where it was measured (taylor takes its gradients later, in the search) */
                const float *fisher = stats && stats->scored_tokens > 0 ? stats->fisher_sum[k] : NULL;
                sb_reorder_marginals(w, fisher ? NULL : act, fisher, rows, cols, marginals[2 * k], marginals[2 * k + 1]);
            }
            if (owned)
                free(w);
            importance.row[k] = marginals[2 * k];
            importance.col[k] = marginals[2 * k + 1];
        }
        if (status == SB_OK)
            status = sb_reorder_layer_from_importance(&state->reorder, layer, &importance, NULL, err);
        if (status == SB_OK)
            sb_reorder_layer_hidden_score(shape, &importance, contributions + layer * hidden);
        for (int i = 0; i < 2 * SB_LINEAR_KIND_COUNT; i++)
            free(marginals[i]);
    }
    status = sb_agree(ctx->comm, status, err);
    /* every rank gets every layer's orders and hidden contribution, from the layer's owner */
    for (int64_t layer = 0; layer < layers && status == SB_OK; layer++) {
        int owner = 0;
        for (int st = 0; st < nstages; st++)
            if (layer >= sb_stage_first_layer(layers, nstages, st))
                owner = st;
        sb_layer_reorder *orders = sb_reorder_layer(&state->reorder, layer);
        int64_t head_dim = shape->head_dim, kv = shape->num_key_value_heads;
        MPI_Bcast(orders->mlp, (int)shape->intermediate_size, MPI_INT32_T, owner, ctx->comm);
        MPI_Bcast(orders->kv_heads, (int)kv, MPI_INT32_T, owner, ctx->comm);
        MPI_Bcast(orders->q_heads, (int)shape->num_attention_heads, MPI_INT32_T, owner, ctx->comm);
        MPI_Bcast(orders->head_dims, (int)(kv * head_dim), MPI_INT32_T, owner, ctx->comm);
        MPI_Bcast(contributions + layer * hidden, (int)hidden, MPI_DOUBLE, owner, ctx->comm);
    }
    if (status == SB_OK)
        status = sb_reorder_hidden_from_contributions(&state->reorder, contributions, NULL, err);
    free(contributions);
    /* fold: this rank's statistics and pipeline weights now describe the reordered model */
    for (int64_t i = 0; status == SB_OK && state->calibrated && i < state->stats_count; i++)
        status = sb_reorder_apply_stats(&state->reorder, &state->stats[i], err);
    if (status == SB_OK && state->calibrated) {
        sb_pipeline *p = &state->pipeline;
        for (int64_t layer = p->layer_begin; layer < p->layer_end && status == SB_OK; layer++)
            status = sb_reorder_apply_layer(&state->reorder, layer, &p->layers[layer - p->layer_begin], err);
        if (status == SB_OK && p->embed)
            status = sb_reorder_apply_embed(&state->reorder, p->embed, err);
        if (status == SB_OK && p->final_norm)
            status = sb_reorder_apply_head(&state->reorder, p->final_norm, p->lm_head == p->embed ? NULL : p->lm_head,
                                           err);
    }
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        sb_log_info(&ctx->log, "reordered channels (hidden, MLP, heads, value channels), folded into the model, %.1f s",
                    sb_now() - start);
        sb_ctx_stage(ctx, "reorder", sb_now() - start);
    }
    return status;
}

/* --gptq: a forward pass over the calibration data on the (reordered) model gathering the
 * block-diagonal second moments of every layer input, then one factor per tile column of each
 * owned tensor (shared by its tiles and bitwidths, in the curves, the search and the write). */
static sb_status stage_hessian(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_options *o = &ctx->options;
    if (!o->gptq)
        return SB_OK;
    double start = sb_now();
    sb_status status = SB_OK;
    for (int64_t i = 0; i < state->stats_count && status == SB_OK; i++)
        status = sb_layer_stats_add_hessian(&state->stats[i], o->tile_cols, err);
    status = sb_agree(ctx->comm, status, err);
    sb_nll nll = {0, 0};
    sb_pass_request request = {false, state->stats};
    SB_TRY(sb_pipeline_pass(&state->pipeline, state->calib_range.tokens, state->calib_range.n_windows, o->calib_ctx,
                            o->calib_batch, &request, &nll, err));
    state->gptq = sb_calloc((size_t)state->plan.ntensors, sizeof *state->gptq, "GPTQ factors", err);
    status = state->gptq ? SB_OK : SB_ERR_NOMEM;
    for (int u = 0; u < state->plan.nunits && status == SB_OK; u++) {
        const sb_unit *unit = &state->plan.units[u];
        const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
        if (unit->owner != ctx->rank || !tensor->quantize || state->gptq[unit->tensor] || tensor->entry->layer < 0)
            continue;
        const sb_layer_stats *stats = &state->stats[tensor->entry->layer - state->pipeline.layer_begin];
        const float *blocks = sb_layer_stats_hessian(stats, (sb_linear_kind)tensor->entry->role);
        int64_t across = tensor->tiling.tiles_across;
        sb_gptq_factor *factors = sb_calloc((size_t)across, sizeof *factors, "GPTQ factors", err);
        if (!factors) {
            status = SB_ERR_NOMEM;
            break;
        }
        state->gptq[unit->tensor] = factors;
        for (int64_t t = 0; t < across && status == SB_OK; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            status = sb_gptq_factor_init(&factors[t], sb_hessian_block(blocks, o->tile_cols, t), rect.cols, err);
            if (status != SB_OK)
                sb_error_prefix(err, "tensor '%s', tile column %lld", tensor->entry->name, (long long)t);
        }
    }
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        sb_log_info(&ctx->log, "GPTQ: input second moments of every layer gathered and factored, %.1f s",
                    sb_now() - start);
        sb_ctx_stage(ctx, "hessian", sb_now() - start);
    }
    return status;
}

/* E[x^2] vectors of the tensors this rank owns (after reordering: in the folded model's order). */
static sb_status stage_importance(sb_ctx *ctx, run_state *state, sb_error *err)
{
    for (int u = 0; u < state->plan.nunits; u++) {
        const sb_unit *unit = &state->plan.units[u];
        if (unit->owner != ctx->rank || !state->plan.tensors[unit->tensor].quantize || state->act[unit->tensor])
            continue;
        SB_TRY(fill_act(ctx, state, unit->tensor, err));
    }
    return SB_OK;
}

/* How the tiles of a unit are scored: see sb_loss_model. */
static sb_loss_model unit_loss_model(const sb_ctx *ctx, const run_state *state, const sb_unit *unit)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    sb_loss_model model = {{NULL, 0, 1.0}, {NULL, 0, 0}, NULL, NULL, NULL, 0};
    model.quant.values = state->act ? state->act[unit->tensor] : NULL;
    if (state->gptq && state->gptq[unit->tensor]) {
        const sb_layer_stats *stats = &state->stats[tensor->entry->layer - state->pipeline.layer_begin];
        model.gptq = state->gptq[unit->tensor];
        model.gptq_scale = 1.0 / (double)(stats->hessian_tokens > 0 ? stats->hessian_tokens : 1);
    }
    if (ctx->options.sensitivity == SB_SENSITIVITY_FISHER && state->calibrated && tensor->entry->layer >= 0) {
        const sb_layer_stats *stats = &state->stats[tensor->entry->layer - state->pipeline.layer_begin];
        /* D = 1/2 sum F (Q - W)^2 with F = fisher_sum / tokens; layered units are whole tensors */
        model.loss.values = stats->fisher_sum[tensor->entry->role];
        model.loss.row_stride = tensor->entry->cols;
        model.loss.scale = 0.5 / (double)(stats->scored_tokens > 0 ? stats->scored_tokens : 1);
    }
    return model;
}

/* ---- curves ----------------------------------------------------------------------------- */

/* Reads source rows of one tensor for sb_reorder_read_rows: float32 (finite) or raw bytes. */
typedef struct tensor_reader {
    const sb_checkpoint *checkpoint;
    const sb_tensor_info *info;
} tensor_reader;

static sb_status read_float_rows(void *user, int64_t row_begin, int64_t row_count, void *dst, sb_error *err)
{
    tensor_reader *reader = user;
    return sb_checkpoint_read_rows(reader->checkpoint, reader->info, row_begin, row_count, true, dst, err);
}

static sb_status read_raw_rows(void *user, int64_t row_begin, int64_t row_count, void *dst, sb_error *err)
{
    tensor_reader *reader = user;
    return sb_checkpoint_read_raw_rows(reader->checkpoint, reader->info, row_begin, row_count, dst, err);
}

/* Rows [row_begin, row_begin + count) of a tensor as the (possibly reordered) model has it. */
static sb_status read_tensor_rows(const run_state *state, const sb_tensor_plan *tensor, int64_t row_begin, int64_t count,
                                  bool raw, void *dst, sb_error *err)
{
    tensor_reader reader = {&state->checkpoint, tensor->info};
    sb_row_reader read = raw ? read_raw_rows : read_float_rows;
    size_t element = raw ? sb_dtype_size(tensor->info->dtype) : sizeof(float);
    if (!state->reordered || tensor->entry->role == SB_ROLE_OTHER)
        return read(&reader, row_begin, count, dst, err);
    sb_tensor_perm perm;
    SB_TRY(sb_reorder_tensor_perm(&state->reorder, tensor->entry->role, tensor->entry->layer, &perm, err));
    return sb_reorder_read_rows(&perm, element, read, &reader, row_begin, count, dst, err);
}

static sb_status read_unit_rows(const run_state *state, const sb_unit *unit, float **rows_out, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    int64_t count = (unit->row_end - unit->row_begin) * tensor->entry->cols;
    float *rows = sb_malloc((size_t)count * sizeof *rows, "tensor rows", err);
    if (!rows)
        return SB_ERR_NOMEM;
    sb_status status = read_tensor_rows(state, tensor, unit->row_begin, unit->row_end - unit->row_begin, false, rows, err);
    if (status != SB_OK) {
        free(rows);
        return status;
    }
    *rows_out = rows;
    return SB_OK;
}

static int64_t owned_bytes(const sb_ctx *ctx, const run_state *state, bool quantized_only)
{
    int64_t bytes = 0;
    for (int u = 0; u < state->plan.nunits; u++) {
        const sb_unit *unit = &state->plan.units[u];
        const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
        if (unit->owner == ctx->rank && (!quantized_only || tensor->quantize))
            bytes += (unit->row_end - unit->row_begin) * tensor->entry->cols * (int64_t)sb_dtype_size(tensor->info->dtype);
    }
    return bytes;
}

/* Work on one unit: compute it or, resuming, load it from the state directory (set *reused). */
typedef sb_status (*unit_work)(sb_ctx *ctx, run_state *state, const sb_unit *unit, bool *reused, sb_error *err);

/* The resumable loop of a stage over this rank's quantized units: every rank runs the same
 * number of iterations (the busiest rank's), and each ends at a unit boundary where all ranks
 * agree on errors and on a stop request. Progress, timing and the state manifest follow. */
static sb_status run_units(sb_ctx *ctx, run_state *state, const char *stage, unit_work work, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    int *units = sb_malloc((size_t)(plan->nunits > 0 ? plan->nunits : 1) * sizeof *units, "unit list", err);
    if (!units)
        return SB_ERR_NOMEM;
    int mine = owned_units(ctx, state, true, units);
    int iterations = max_over_ranks(ctx, mine);
    sb_progress progress;
    sb_progress_begin(&progress, stage, "units", mine, owned_bytes(ctx, state, true));
    sb_status status = SB_OK;
    int64_t reused = 0;
    for (int i = 0; i < iterations; i++) {
        if (status == SB_OK && i < mine) {
            const sb_unit *unit = &plan->units[units[i]];
            const sb_tensor_plan *tensor = &plan->tensors[unit->tensor];
            bool was_reused = false;
            status = work(ctx, state, unit, &was_reused, err);
            if (status != SB_OK && status != SB_ERR_NOMEM)
                sb_error_prefix(err, "tensor '%s'", tensor->entry->name);
            reused += was_reused;
            sb_progress_advance(&ctx->log, &progress, 1,
                                (unit->row_end - unit->row_begin) * tensor->entry->cols *
                                    (int64_t)sb_dtype_size(tensor->info->dtype),
                                tensor->entry->name);
        }
        sb_state_debug_point(ctx, stage, i + 1);
        if ((status = sb_agree(ctx->comm, status, err)) != SB_OK)
            break;
        if (i + 1 < iterations && sb_state_should_stop(ctx, &state->disk, i + 1)) {
            status = stopped(ctx, state, stage, i + 1, err);
            break;
        }
    }
    free(units);
    if (reused)
        sb_log_rank(&ctx->log, "%s: %lld unit(s) resumed from %s", stage, (long long)reused, state->disk.dir);
    SB_TRY(status);
    double seconds = sb_progress_end(&ctx->log, &progress);
    sb_ctx_stage(ctx, stage, seconds);
    report_stage_balance(ctx, stage, seconds);
    return sb_state_write_manifest(ctx, &state->disk, err);
}

/* A unit's curves: its losses then its costs, as one state file. */
static sb_status curves_of_unit(sb_ctx *ctx, run_state *state, const sb_unit *unit, bool *reused, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const int k = state->curve_options.noptions;
    int64_t offset = unit->first_tile_id - state->first_tile;
    char name[64], path[4400];
    snprintf(name, sizeof name, "%lld-%lld", (long long)unit->first_tile_id, (long long)unit->tiles);
    sb_state_path(&state->disk, "curves", name, path, sizeof path);
    size_t loss_bytes = (size_t)(unit->tiles * k) * sizeof(double), cost_bytes = (size_t)(unit->tiles * k) * sizeof(int64_t);
    uint8_t *blob = sb_malloc(loss_bytes + cost_bytes, "curves", err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    if (state->disk.resuming && sb_state_load(path, blob, loss_bytes + cost_bytes)) {
        *reused = true;
    } else {
        float *rows;
        status = read_unit_rows(state, unit, &rows, err);
        if (status == SB_OK) {
            sb_loss_model model = unit_loss_model(ctx, state, unit);
            status = sb_curves_compute(&tensor->tiling, unit->tile_row_begin, unit->tile_row_end, rows, &model,
                                       &state->curve_options, (double *)blob, (int64_t *)(blob + loss_bytes), err);
            free(rows);
        }
        if (status == SB_OK)
            status = sb_state_save(path, blob, loss_bytes + cost_bytes, err);
    }
    if (status == SB_OK) {
        memcpy(state->loss + offset * k, blob, loss_bytes);
        memcpy(state->cost + offset * k, blob + loss_bytes, cost_bytes);
    }
    free(blob);
    return status;
}

static sb_status stage_curves(sb_ctx *ctx, run_state *state, sb_error *err)
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
    return run_units(ctx, state, "curves", curves_of_unit, err);
}

/* ---- allocate --------------------------------------------------------------------------- */

/* The budget cannot be met: say what is feasible, in the user's unit. */
static sb_status stage_allocate_budget_error(const sb_ctx *ctx, const run_state *state, sb_error *err)
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

static sb_status stage_allocate(sb_ctx *ctx, run_state *state, sb_error *err)
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
        return stage_allocate_budget_error(ctx, state, err);
    SB_TRY(status);
    sb_ctx_stage(ctx, "allocate", sb_now() - start);
    return SB_OK;
}

/* ---- refine (taylor) --------------------------------------------------------------------- */

/* The taylor search's checkpoint: every tile's option after a round, saved by rank 0 as
 * refine.bin (the round count, then one byte per tile in global order); then a stop check. */
typedef struct refine_saver {
    sb_ctx *ctx;
    run_state *state;
} refine_saver;

static sb_status save_refine_round(void *user, int rounds_done, const uint8_t *choice, sb_error *err)
{
    refine_saver *saver = user;
    sb_ctx *ctx = saver->ctx;
    run_state *state = saver->state;
    const sb_plan *plan = &state->plan;
    int *counts = sb_malloc((size_t)ctx->size * sizeof *counts, "counts", err);
    int *displs = sb_malloc((size_t)ctx->size * sizeof *displs, "displacements", err);
    uint8_t *all = ctx->rank == 0 ? sb_malloc((size_t)plan->total_tiles + 4, "search state", err) : NULL;
    sb_status status = counts && displs && (ctx->rank != 0 || all) ? SB_OK : SB_ERR_NOMEM;
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        for (int r = 0; r < ctx->size; r++) {
            counts[r] = (int)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]);
            displs[r] = (int)plan->rank_first_tile[r] + 4;
        }
        MPI_Gatherv(choice, (int)state->local_tiles, MPI_UINT8_T, all, counts, displs, MPI_UINT8_T, 0, ctx->comm);
        if (ctx->rank == 0) {
            int32_t round = rounds_done;
            memcpy(all, &round, 4);
            char path[4400];
            sb_state_path(&state->disk, NULL, "refine.bin", path, sizeof path);
            status = sb_state_save(path, all, (size_t)plan->total_tiles + 4, err);
        }
        status = sb_agree(ctx->comm, status, err);
    }
    free(counts);
    free(displs);
    free(all);
    if (status == SB_OK) {
        sb_state_debug_point(ctx, "refine", rounds_done);
        if (sb_state_should_stop(ctx, &state->disk, rounds_done))
            status = stopped(ctx, state, "the taylor search", rounds_done, err);
    }
    return status;
}

static sb_status stage_refine(sb_ctx *ctx, run_state *state, sb_error *err)
{
    double start = sb_now();
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    state->first_tile = plan->rank_first_tile[ctx->rank];
    state->local_tiles = plan->rank_first_tile[ctx->rank + 1] - state->first_tile;
    state->choice = sb_calloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1), 1, "allocation", err);
    sb_refine_tensor *tensors = sb_calloc((size_t)plan->ntensors, sizeof *tensors, "search tensors", err);
    if (!state->choice || !tensors) {
        free(tensors);
        return SB_ERR_NOMEM;
    }
    int ntensors = 0;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize || tensor->first_tile_id < state->first_tile ||
            tensor->first_tile_id >= state->first_tile + state->local_tiles)
            continue;
        int64_t layer = tensor->entry->layer - state->pipeline.layer_begin;
        sb_refine_tensor *t = &tensors[ntensors++];
        t->tiling = &tensor->tiling;
        t->first_local_tile = tensor->first_tile_id - state->first_tile;
        t->first_tile_id = tensor->first_tile_id;
        t->kind = (sb_linear_kind)tensor->entry->role;
        t->working = sb_layer_linear(&state->pipeline.layers[layer], t->kind);
        t->quant_weights = state->act[i];
        t->stats = &state->stats[layer];
        t->gptq = state->gptq ? state->gptq[i] : NULL;
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
        .stats = state->stats,
        .log = &ctx->log,
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
        MPI_Allreduce(&min_cost, &all_min, 1, MPI_INT64_T, MPI_SUM, ctx->comm);
        if (all_min > problem.code_budget)
            status = SB_ERR_BUDGET;
    }
    if (status == SB_ERR_BUDGET) {
        free(tensors);
        return stage_allocate_budget_error(ctx, state, err);
    }
    /* resume: the search's state after its last finished round */
    uint8_t *saved = NULL;
    if (state->disk.resuming) {
        char path[4400];
        sb_state_path(&state->disk, NULL, "refine.bin", path, sizeof path);
        saved = sb_malloc((size_t)plan->total_tiles + 4, "search state", err);
        if (saved && sb_state_load(path, saved, (size_t)plan->total_tiles + 4)) {
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
    free(tensors);
    SB_TRY(status);
    sb_log_info(&ctx->log, "taylor search: %d rounds (%d retries), calibration loss %.5f at full precision -> %.5f",
                state->refine.rounds, state->refine.retries, state->refine.fp_loss, state->refine.final_loss);
    sb_ctx_stage(ctx, "refine", sb_now() - start);
    return SB_OK;
}

/* ---- gather ----------------------------------------------------------------------------- */

static sb_status stage_gather(sb_ctx *ctx, run_state *state, sb_error *err)
{
    double start = sb_now();
    const sb_plan *plan = &state->plan;
    state->all_bits = sb_malloc((size_t)(plan->total_tiles > 0 ? plan->total_tiles : 1), "allocation", err);
    uint8_t *local = sb_malloc((size_t)(state->local_tiles > 0 ? state->local_tiles : 1), "allocation", err);
    int *counts = sb_malloc((size_t)ctx->size * sizeof *counts, "counts", err);
    int *displs = sb_malloc((size_t)ctx->size * sizeof *displs, "displacements", err);
    sb_status status = SB_OK;
    if (!state->all_bits || !local || !counts || !displs) {
        status = SB_ERR_NOMEM;
        goto done;
    }
    if (plan->total_tiles > INT32_MAX) {
        status = sb_error_set(err, SB_ERR_INTERNAL, "more than 2^31 tiles: use larger tiles");
        goto done;
    }
    for (int64_t t = 0; t < state->local_tiles && !state->allocation_loaded; t++)
        local[t] = (uint8_t)ctx->options.bits[state->choice[t]];
    for (int r = 0; r < ctx->size; r++) {
        counts[r] = (int)(plan->rank_first_tile[r + 1] - plan->rank_first_tile[r]);
        displs[r] = (int)plan->rank_first_tile[r];
    }
    if (state->allocation_loaded) {
        /* resumed: every rank reads the saved allocation (one byte per tile) */
        char path[4400];
        sb_state_path(&state->disk, NULL, "allocation.bin", path, sizeof path);
        if (!sb_state_load(path, state->all_bits, (size_t)plan->total_tiles)) {
            status = sb_error_set(err, SB_ERR_IO, "%s: cannot read the saved allocation", path);
            goto done;
        }
    } else if (MPI_Allgatherv(local, (int)state->local_tiles, MPI_UINT8_T, state->all_bits, counts, displs, MPI_UINT8_T,
                              ctx->comm) != MPI_SUCCESS) {
        status = sb_error_set(err, SB_ERR_MPI, "MPI_Allgatherv of the allocation failed");
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
        char path[4400];
        sb_state_path(&state->disk, NULL, "allocation.bin", path, sizeof path);
        status = sb_state_save(path, state->all_bits, (size_t)plan->total_tiles, err);
    }
done:
    free(local);
    free(counts);
    free(displs);
    sb_ctx_stage(ctx, "gather", sb_now() - start);
    return status;
}

/* ---- write ------------------------------------------------------------------------------ */

static sb_status define_datasets(sb_ctx *ctx, run_state *state, sb_h5_writer *writer, int *handles, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (tensor->quantize) {
            sb_h5_quantized_desc desc = {
                .name = tensor->entry->name,
                .rows = tensor->tiling.rows,
                .cols = tensor->tiling.cols,
                .tile_rows = tensor->tiling.tile_rows,
                .tile_cols = tensor->tiling.tile_cols,
                .group = tensor->tiling.group,
                .tiles = sb_tiling_count(&tensor->tiling),
                .code_bytes = sb_block_code_bytes(&tensor->tiling, 0, sb_tiling_count(&tensor->tiling),
                                                  state->all_bits + tensor->first_tile_id),
                .source_dtype = sb_dtype_name(tensor->info->dtype),
                .role = sb_role_name(tensor->entry->role),
                .layer = tensor->entry->layer,
                .encoding = sb_scale_format_name(ctx->options.scales),
            };
            SB_TRY(sb_h5_define_quantized(writer, &desc, &handles[i], err));
        } else {
            SB_TRY(sb_h5_define_passthrough(writer, tensor->entry->name, sb_dtype_name(tensor->info->dtype),
                                            tensor->info->ndim, tensor->info->shape, &handles[i], err));
        }
    }
    (void)ctx;
    return SB_OK;
}

/* A quantized unit's output as saved in the state directory: its packed codes, then its scales,
 * zeros (uint16 per (row, group)) and tile scale bounds (uint16 per tile). */
typedef struct unit_output {
    int64_t code_offset, code_bytes, scale_count;
    size_t bytes;
} unit_output;

static unit_output unit_output_layout(const run_state *state, const sb_unit *unit)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const sb_tiling *tiling = &tensor->tiling;
    int64_t first_local_tile = unit->first_tile_id - tensor->first_tile_id;
    unit_output layout;
    layout.code_offset = sb_block_code_bytes(tiling, 0, first_local_tile, state->all_bits + tensor->first_tile_id);
    layout.code_bytes = sb_block_code_bytes(tiling, first_local_tile, unit->tiles, state->all_bits + unit->first_tile_id);
    layout.scale_count = (unit->row_end - unit->row_begin) * tiling->groups_per_row;
    layout.bytes = (size_t)layout.code_bytes + (size_t)(2 * layout.scale_count + unit->tiles) * sizeof(uint16_t);
    return layout;
}

static void unit_path(const run_state *state, const sb_unit *unit, char *path, size_t size)
{
    char name[64];
    snprintf(name, sizeof name, "%lld-%lld", (long long)unit->first_tile_id, (long long)unit->tiles);
    sb_state_path(&state->disk, "units", name, path, size);
}

static sb_status quantize_unit(run_state *state, const sb_unit *unit, uint8_t *blob, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    unit_output layout = unit_output_layout(state, unit);
    uint16_t *scales = (uint16_t *)(blob + layout.code_bytes);
    uint16_t *zeros = scales + layout.scale_count, *tile_scales = zeros + layout.scale_count;
    float *block = NULL;
    SB_TRY(read_unit_rows(state, unit, &block, err));
    double error = 0;
    sb_status status = sb_quantize_block(&tensor->tiling, unit->tile_row_begin, unit->tile_row_end, block,
                                         &(sb_importance){state->act ? state->act[unit->tensor] : NULL, 0, 1.0},
                                         state->gptq ? state->gptq[unit->tensor] : NULL, &state->curve_options.quant, state->all_bits + unit->first_tile_id, blob,
                                         scales, zeros, tile_scales, &error, err);
    free(block);
    state->quantization_error += error;
    return status;
}

/* A unit quantized at its allocation and packed, as one state file. */
static sb_status quantized_unit(sb_ctx *ctx, run_state *state, const sb_unit *unit, bool *reused, sb_error *err)
{
    unit_output layout = unit_output_layout(state, unit);
    char path[4400];
    unit_path(state, unit, path, sizeof path);
    uint8_t *blob = sb_malloc(layout.bytes, "packed unit", err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = SB_OK;
    if (state->disk.resuming && sb_state_load(path, blob, layout.bytes))
        *reused = true;
    else if ((status = quantize_unit(state, unit, blob, err)) == SB_OK)
        status = sb_state_save(path, blob, layout.bytes, err);
    free(blob);
    (void)ctx;
    return status;
}

/* Quantizes and packs this rank's units into the state directory (skipping those a resumed
 * run already has); stops at a unit boundary on request. */
static sb_status stage_quantize(sb_ctx *ctx, run_state *state, sb_error *err)
{
    return run_units(ctx, state, "quantize", quantized_unit, err);
}

/* Writes a quantized unit, saved by stage_quantize, into the output file. */
static sb_status write_quantized_unit(const sb_ctx *ctx, run_state *state, const sb_unit *unit, sb_h5_writer *writer,
                                      int handle, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    const sb_tiling *tiling = &tensor->tiling;
    unit_output layout = unit_output_layout(state, unit);
    int64_t rows = unit->row_end - unit->row_begin;
    char path[4400];
    unit_path(state, unit, path, sizeof path);
    uint8_t *blob = sb_malloc(layout.bytes, "packed unit", err);
    if (!blob)
        return SB_ERR_NOMEM;
    sb_status status = sb_state_load(path, blob, layout.bytes)
                           ? SB_OK
                           : sb_error_set(err, SB_ERR_IO, "%s: the packed unit of tensor '%s' is missing or corrupt",
                                          path, tensor->entry->name);
    uint16_t *scales = (uint16_t *)(blob + layout.code_bytes);
    uint16_t *zeros = scales + layout.scale_count, *tile_scales = zeros + layout.scale_count;
    if (status == SB_OK)
        status = sb_h5_write_codes(writer, handle, layout.code_offset, layout.code_bytes, blob, err);
    if (status == SB_OK)
        status = sb_h5_write_scale_rows(writer, handle, unit->row_begin, rows, scales, zeros, err);
    if (status == SB_OK)
        status = sb_h5_write_tile_scales(writer, handle, unit->first_tile_id - tensor->first_tile_id, unit->tiles,
                                         tile_scales, err);
    if (status == SB_OK && unit->tile_row_begin == 0) {
        int64_t tiles = sb_tiling_count(tiling);
        uint8_t *bitmap = sb_malloc((size_t)sb_bitmap_bytes(tiles), "bit map", err);
        if (!bitmap) {
            status = SB_ERR_NOMEM;
        } else {
            sb_pack_bitmap(state->all_bits + tensor->first_tile_id, tiles, bitmap);
            status = sb_h5_write_bitmap(writer, handle, bitmap, err);
            free(bitmap);
        }
    }
    free(blob);
    (void)ctx;
    return status;
}

static sb_status write_passthrough_unit(run_state *state, const sb_unit *unit, sb_h5_writer *writer, int handle,
                                        sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    int64_t rows = unit->row_end - unit->row_begin;
    size_t bytes = (size_t)(rows * tensor->entry->cols) * sb_dtype_size(tensor->info->dtype);
    void *raw = sb_malloc(bytes, "pass-through rows", err);
    if (!raw)
        return SB_ERR_NOMEM;
    sb_status status = read_tensor_rows(state, tensor, unit->row_begin, rows, true, raw, err);
    if (status == SB_OK)
        status = sb_h5_write_passthrough_rows(writer, handle, unit->row_begin, rows, raw, err);
    free(raw);
    return status;
}

static sb_status write_root_attributes(sb_ctx *ctx, run_state *state, sb_h5_writer *writer, sb_error *err)
{
    const sb_options *o = &ctx->options;
    const sb_plan *plan = &state->plan;
    int64_t tile[2] = {o->tile_rows, o->tile_cols}, group = o->group, bits[8];
    for (int k = 0; k < o->nbits; k++)
        bits[k] = o->bits[k];
    int64_t counts[3] = {plan->quantized_weights, state->stored_bits, plan->total_tiles};
    SB_TRY(sb_h5_root_string(writer, "format", "scalebits", err));
    SB_TRY(sb_h5_root_int64s(writer, "format_version", (int64_t[]){1}, 1, err));
    SB_TRY(sb_h5_root_double(writer, "budget_bpw", o->budget, err));
    SB_TRY(sb_h5_root_double(writer, "achieved_bpw", (double)state->stored_bits / (double)plan->quantized_weights, err));
    SB_TRY(sb_h5_root_int64s(writer, "quantized_weights", &counts[0], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "stored_bits", &counts[1], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "tiles", &counts[2], 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "tile", tile, 2, err));
    SB_TRY(sb_h5_root_int64s(writer, "group", &group, 1, err));
    SB_TRY(sb_h5_root_int64s(writer, "bits", bits, o->nbits, err));
    SB_TRY(sb_h5_root_string(writer, "sensitivity", sb_sensitivity_name(o->sensitivity), err));
    SB_TRY(sb_h5_root_string(writer, "scale_search", o->search == SB_SEARCH_MINMAX ? "minmax" : "weighted", err));
    SB_TRY(sb_h5_root_string(writer, "encoding", sb_scale_format_name(o->scales), err));
    SB_TRY(sb_h5_root_string(writer, "gptq", o->gptq ? "error feedback across the columns of each tile" : "no", err));
    SB_TRY(sb_h5_root_string(writer, "reordered",
                             o->reorder ? "hidden, mlp, heads, head_dims (folded: the file holds an equivalent model)"
                                        : "no",
                             err));
    SB_TRY(sb_h5_root_string(writer, "config_json", state->config.json_text, err));
    SB_TRY(sb_h5_root_string(writer, "allocation_sha256", state->allocation_hash, err));
    SB_TRY(sb_h5_root_string(writer, "tool_version", "scalebits " SB_VERSION, err));
    SB_TRY(sb_h5_root_string(writer, "command_line", o->command_line, err));
    SB_TRY(sb_h5_root_string(writer, "source_model", o->model_dir, err));
    int nfiles = state->checkpoint.nfiles;
    char **headers = sb_calloc((size_t)nfiles, sizeof *headers, "header hashes", err);
    if (!headers)
        return SB_ERR_NOMEM;
    for (int i = 0; i < nfiles; i++) {
        const sb_checkpoint_file *file = &state->checkpoint.files[i];
        const char *base = strrchr(file->path, '/');
        char hex[65];
        sb_sha256_hex(file->header_sha256, hex);
        size_t length = strlen(base ? base + 1 : file->path) + 80;
        headers[i] = malloc(length);
        if (headers[i])
            snprintf(headers[i], length, "%s sha256:%s", base ? base + 1 : file->path, hex);
    }
    sb_status status = sb_h5_root_strings(writer, "source_header_sha256", (const char *const *)headers, nfiles, err);
    for (int i = 0; i < nfiles; i++)
        free(headers[i]);
    free(headers);
    return status;
}

static sb_status stage_write(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    sb_h5_writer *writer = NULL;
    /* the file grows inside the state directory: a crash leaves nothing beside the output, and
     * a resumed run removes it with the rest */
    char temp_path[4400];
    sb_state_path(&state->disk, NULL, "output.h5.tmp", temp_path, sizeof temp_path);
    sb_status status = sb_h5_writer_create(ctx->options.out_path, temp_path, ctx->comm, &writer, err);
    if (status != SB_OK)
        return status; /* creation failed everywhere */
    int *handles = sb_calloc((size_t)plan->ntensors, sizeof *handles, "dataset handles", err);
    status = handles ? define_datasets(ctx, state, writer, handles, err) : SB_ERR_NOMEM;
    status = sb_agree(ctx->comm, status, err);
    if (status == SB_OK) {
        int owned = 0;
        for (int u = 0; u < plan->nunits; u++)
            owned += plan->units[u].owner == ctx->rank;
        sb_progress progress;
        sb_progress_begin(&progress, "write", "units", owned, owned_bytes(ctx, state, false));
        int64_t written = 0;
        for (int u = 0; u < plan->nunits && status == SB_OK; u++) {
            const sb_unit *unit = &plan->units[u];
            if (unit->owner != ctx->rank)
                continue;
            const sb_tensor_plan *tensor = &plan->tensors[unit->tensor];
            status = tensor->quantize ? write_quantized_unit(ctx, state, unit, writer, handles[unit->tensor], err)
                                      : write_passthrough_unit(state, unit, writer, handles[unit->tensor], err);
            sb_state_debug_point(ctx, "write", ++written);
            sb_progress_advance(&ctx->log, &progress, 1,
                                (unit->row_end - unit->row_begin) * tensor->entry->cols *
                                    (int64_t)sb_dtype_size(tensor->info->dtype),
                                tensor->entry->name);
        }
        sb_ctx_stage(ctx, "write", sb_progress_end(&ctx->log, &progress));
        status = sb_agree(ctx->comm, status, err);
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, write_root_attributes(ctx, state, writer, err), err);
    free(handles);
    if (status != SB_OK) {
        sb_h5_writer_abort(writer);
        return status;
    }
    double start = sb_now();
    status = sb_h5_writer_commit(writer, err);
    sb_ctx_stage(ctx, "commit", sb_now() - start);
    return status;
}

/* ---- report ----------------------------------------------------------------------------- */

static sb_status stage_report(sb_ctx *ctx, run_state *state, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    const sb_options *o = &ctx->options;
    int64_t histogram[9] = {0};
    int64_t weights_at[9] = {0};
    for (int i = 0; i < plan->ntensors; i++) {
        const sb_tensor_plan *tensor = &plan->tensors[i];
        if (!tensor->quantize)
            continue;
        for (int64_t t = 0; t < sb_tiling_count(&tensor->tiling); t++) {
            uint8_t b = state->all_bits[tensor->first_tile_id + t];
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            histogram[b]++;
            weights_at[b] += (int64_t)rect.rows * rect.cols;
        }
    }
    /* stage times and memory: the slowest / largest rank */
    double stage_max[SB_MAX_STAGES];
    double local_times[SB_MAX_STAGES];
    for (int i = 0; i < ctx->nstages; i++)
        local_times[i] = ctx->stages[i].seconds;
    MPI_Allreduce(local_times, stage_max, ctx->nstages, MPI_DOUBLE, MPI_MAX, ctx->comm);
    int64_t peak = sb_peak_rss_bytes(), peak_max = 0;
    MPI_Allreduce(&peak, &peak_max, 1, MPI_INT64_T, MPI_MAX, ctx->comm);
    double achieved = (double)state->stored_bits / (double)plan->quantized_weights;
    if (ctx->rank == 0) {
        sb_log_info(&ctx->log, "wrote %s: %.4f bits per weight (budget %g), %lld tiles, allocation sha256 %.16s",
                    o->out_path, achieved, o->budget, (long long)plan->total_tiles, state->allocation_hash);
        char line[512];
        size_t used = 0;
        for (int b = 1; b <= 8; b++)
            if (histogram[b])
                used += (size_t)snprintf(line + used, sizeof line - used, "%s%d-bit: %lld (%.1f%%)", used ? ", " : "",
                                         b, (long long)histogram[b],
                                         100.0 * (double)weights_at[b] / (double)plan->quantized_weights);
        sb_log_info(&ctx->log, "tiles per bitwidth (share of weights): %s", line);
        if (state->alloc_stats.all_max)
            sb_log_info(&ctx->log, "the budget covers every tile at %d bits: all tiles get the largest bitwidth",
                        o->bits[o->nbits - 1]);
    }
    sb_status status = SB_OK;
    if (ctx->rank == 0 && o->report_path) {
        char *text = NULL;
        size_t size = 0;
        FILE *out = open_memstream(&text, &size);
        if (!out)
            return sb_error_set(err, SB_ERR_NOMEM, "cannot build the report");
        fprintf(out, "{\n  \"tool\": \"scalebits %s\",\n  \"model\": ", SB_VERSION);
        sb_json_write_string(out, o->model_dir);
        fprintf(out, ",\n  \"output\": ");
        sb_json_write_string(out, o->out_path);
        fprintf(out, ",\n  \"ranks\": %d,\n  \"threads_per_rank\": %d,\n", ctx->size, ctx->threads);
        fprintf(out, "  \"budget_bpw\": %.10g,\n  \"achieved_bpw\": %.10g,\n", o->budget, achieved);
        fprintf(out, "  \"quantized_weights\": %lld,\n  \"stored_bits\": %lld,\n  \"fixed_bits\": %lld,\n",
                (long long)plan->quantized_weights, (long long)state->stored_bits, (long long)plan->fixed_bits);
        fprintf(out, "  \"tile\": [%d, %d],\n  \"group\": %d,\n  \"sensitivity\": \"%s\",\n", o->tile_rows,
                o->tile_cols, o->group, sb_sensitivity_name(o->sensitivity));
        fprintf(out, "  \"allocation_sha256\": \"%s\",\n  \"all_max\": %s,\n", state->allocation_hash,
                state->alloc_stats.all_max ? "true" : "false");
        fprintf(out, "  \"tiles\": %lld,\n  \"tiles_per_bitwidth\": {", (long long)plan->total_tiles);
        int first = 1;
        for (int b = 1; b <= 8; b++)
            if (histogram[b]) {
                fprintf(out, "%s\"%d\": %lld", first ? "" : ", ", b, (long long)histogram[b]);
                first = 0;
            }
        fprintf(out, "},\n  \"weights_per_bitwidth\": {");
        first = 1;
        for (int b = 1; b <= 8; b++)
            if (weights_at[b]) {
                fprintf(out, "%s\"%d\": %lld", first ? "" : ", ", b, (long long)weights_at[b]);
                first = 0;
            }
        fprintf(out, "},\n  \"seconds\": {");
        for (int i = 0; i < ctx->nstages; i++)
            fprintf(out, "%s\"%s\": %.3f", i ? ", " : "", ctx->stages[i].name, stage_max[i]);
        fprintf(out, "},\n  \"peak_rss_bytes\": %lld,\n  \"peak_rss_bytes_rank0\": %lld\n}\n", (long long)peak_max,
                (long long)peak);
        fclose(out);
        status = sb_atomic_write_file(o->report_path, text, size, err);
        free(text);
    }
    return status;
}

/* ---- the pipeline ----------------------------------------------------------------------- */

sb_status sb_run_quantize(sb_ctx *ctx, sb_error *err)
{
    run_state state;
    memset(&state, 0, sizeof state);
    sb_status status;
    double start = sb_now();
    status = sb_agree(ctx->comm, stage_open(ctx, &state, err), err);
    if (status == SB_OK) {
        sb_ctx_stage(ctx, "open", sb_now() - start);
        status = sb_agree(ctx->comm, stage_plan(ctx, &state, err), err);
    }
    if (status == SB_OK && ctx->options.plan_only) {
        print_plan(ctx, &state);
        state_free(&state);
        return SB_OK;
    }
    if (status == SB_OK) {
        sb_log_info(&ctx->log, "%s: %d tensors, %d quantized (%lld weights) in %lld tiles of %dx%d; budget %g bpw = %lld bits",
                    ctx->options.model_dir, state.catalogue.count, state.catalogue.quantized_count,
                    (long long)state.plan.quantized_weights, (long long)state.plan.total_tiles, ctx->options.tile_rows,
                    ctx->options.tile_cols, ctx->options.budget, (long long)state.budget_bits);
        /* before hours of work: can the output be written at all? */
        sb_status check = ctx->rank == 0 ? sb_check_writable_dir_of(ctx->options.out_path, err) : SB_OK;
        status = sb_agree(ctx->comm, check, err);
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, build_fingerprint(ctx, &state, err), err);
    if (status == SB_OK)
        status = sb_state_open(ctx, &state.disk, state.fingerprint, err);
    if (status == SB_OK && state.disk.resuming) {
        /* a finished allocation is kept: no curves, no search */
        char path[4400];
        sb_state_path(&state.disk, NULL, "allocation.bin", path, sizeof path);
        int have = ctx->rank == 0 ? access(path, R_OK) == 0 : 0;
        MPI_Bcast(&have, 1, MPI_INT, 0, ctx->comm);
        state.allocation_loaded = have && !state.disk.budget_changed;
        sb_log_info(&ctx->log, "resuming from %s%s", state.disk.dir,
                    state.allocation_loaded ? " (the allocation is done)" : "");
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, stage_calibrate(ctx, &state, err), err);
    if (status == SB_OK)
        status = stage_reorder(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = stage_hessian(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = sb_agree(ctx->comm, stage_importance(ctx, &state, err), err);
    if (status == SB_OK && state.allocation_loaded) {
        state.first_tile = state.plan.rank_first_tile[ctx->rank];
        state.local_tiles = state.plan.rank_first_tile[ctx->rank + 1] - state.first_tile;
    } else if (ctx->options.sensitivity == SB_SENSITIVITY_TAYLOR) {
        if (status == SB_OK)
            status = sb_agree(ctx->comm, stage_refine(ctx, &state, err), err);
    } else {
        if (status == SB_OK)
            status = stage_curves(ctx, &state, err); /* agrees internally */
        if (status == SB_OK)
            status = sb_agree(ctx->comm, stage_allocate(ctx, &state, err), err);
    }
    if (state.calibrated) {
        /* the model's float32 copy is not needed to write: give its memory back */
        sb_pipeline_free(&state.pipeline);
        state.calibrated = false;
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, stage_gather(ctx, &state, err), err);
    if (status == SB_OK)
        sb_state_debug_point(ctx, "allocate", 0);
    if (status == SB_OK && !state.allocation_loaded && sb_state_should_stop(ctx, &state.disk, 0))
        status = stopped(ctx, &state, "allocate", 0, err);
    if (status == SB_OK)
        status = stage_quantize(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = stage_write(ctx, &state, err); /* agrees internally */
    if (status == SB_OK) {
        sb_state_remove(ctx, &state.disk);
    } else if (state.disk.dir[0] && status != SB_ERR_STOPPED) {
        /* Work survives failures a rerun can get past (I/O, memory, a lost rank); after bad
         * input or options there is nothing to continue from. */
        bool transient = status == SB_ERR_IO || status == SB_ERR_NOMEM || status == SB_ERR_MPI;
        if (transient) {
            size_t used = strlen(err->message);
            snprintf(err->message + used, sizeof err->message - used,
                     " (the work done so far is kept in %s: rerun with --resume once the cause is fixed)",
                     state.disk.dir);
        } else
            sb_state_remove(ctx, &state.disk);
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, stage_report(ctx, &state, err), err);
    state_free(&state);
    return status;
}
