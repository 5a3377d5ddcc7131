#include "sb_run.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_atomic.h"
#include "sb_fault.h"
#include "sb_h5_name.h"
#include "sb_h5_writer.h"
#include "sb_mpi.h"
#include "sb_path.h"
#include "sb_model_load.h"
#include "sb_pack.h"
#include "sb_run_internal.h"
#include "sb_sha256.h"


static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* After a stage: rank 0 prints the spread of the ranks' times and names a rank that fell far
 * behind the others (a slow node, or a plan that balanced badly). Collective. */
sb_status sb_run_report_balance(const sb_ctx *ctx, const char *stage, double seconds, sb_error *err)
{
    double *all = ctx->rank == 0 ? sb_malloc((size_t)ctx->size * sizeof *all, "stage times", err) : NULL;
    /* rank 0's buffer must exist before anyone enters the gather */
    SB_TRY(sb_agree(ctx->comm, ctx->rank == 0 && !all ? SB_ERR_NOMEM : SB_OK, err));
    sb_status status = sb_agree(ctx->comm, SB_MPI_CALL(err, MPI_Gather(&seconds, 1, MPI_DOUBLE, all, 1, MPI_DOUBLE, 0,
                                                                        ctx->comm)), err);
    if (status != SB_OK || ctx->rank != 0 || ctx->size < 2) {
        free(all);
        return status;
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
    return SB_OK;
}

/* The units this rank owns, in order (for loops that meet at every unit boundary). */
int sb_run_owned_units(const sb_ctx *ctx, const sb_run_state *state, bool quantized_only, int *list)
{
    int count = 0;
    for (int u = 0; u < state->plan.nunits; u++)
        if (state->plan.units[u].owner == ctx->rank && (!quantized_only || state->plan.tensors[state->plan.units[u].tensor].quantize))
            list[count++] = u;
    return count;
}

/* Loops over units run the same number of iterations on every rank (the largest count), so
 * that each iteration can end with a collective stop check. */
sb_status sb_run_max_over_ranks(const sb_ctx *ctx, int count, int *most, sb_error *err)
{
    *most = count;
    return SB_MPI_CALL(err, MPI_Allreduce(&count, most, 1, MPI_INT, MPI_MAX, ctx->comm));
}

sb_status sb_run_stopped(sb_ctx *ctx, sb_run_state *state, const char *stage, int64_t units, sb_error *err)
{
    sb_state_write_manifest(ctx, &state->disk, err);
    return sb_error_set(err, SB_ERR_STOPPED,
                        "stopped on request during %s after %lld work unit(s); the work done is saved in %s: rerun "
                        "the same command with --resume to continue",
                        stage, (long long)units, state->disk.dir);
}

/* Does this run calibrate through a pipeline (and so plan by layers)? */
bool sb_run_needs_pipeline(const sb_options *o)
{
    bool data = o->calib_tokens || o->calib_text;
    return data && (o->sensitivity != SB_SENSITIVITY_MSE || o->save_imatrix || o->gptq);
}

void sb_run_state_free(sb_run_state *state)
{
    free(state->fingerprint);
    free(state->stores);
    sb_refine_result_free(&state->refine);
    free(state->expert_tokens);
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
    sb_run_unit_buffer_release(state);
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

/* ---- outputs never overwrite inputs --------------------------------------------------------- */

/* Every file directly in the model directory (shards, config, index, tokenizer, ...), the
 * directory itself, and the calibration and imatrix files. */
static sb_status add_inputs(const sb_options *o, sb_outputs *guard, sb_error *err)
{
    SB_TRY(sb_outputs_add_input(guard, o->model_dir, err));
    SB_TRY(sb_outputs_add_input(guard, o->calib_tokens, err));
    SB_TRY(sb_outputs_add_input(guard, o->calib_text, err));
    SB_TRY(sb_outputs_add_input(guard, o->imatrix_path, err));
    DIR *dir = opendir(o->model_dir);
    if (!dir)
        return SB_OK; /* the open stage says what is wrong with it */
    sb_status status = SB_OK;
    struct dirent *entry;
    while (status == SB_OK && (entry = readdir(dir))) {
        char path[SB_PATH_MAX];
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0 &&
            sb_path_format(path, sizeof path, NULL, "%s/%s", o->model_dir, entry->d_name) == SB_OK)
            status = sb_outputs_add_input(guard, path, err);
    }
    closedir(dir);
    return status;
}

static sb_status check_paths_rank0(const sb_ctx *ctx, sb_error *err)
{
    const sb_options *o = &ctx->options;
    sb_outputs guard = {0};
    sb_status status = add_inputs(o, &guard, err);
    if (status == SB_OK)
        status = sb_outputs_check(&guard, "--out", o->out_path, err);
    if (status == SB_OK && o->report_path)
        status = sb_outputs_check(&guard, "--report", o->report_path, err);
    if (status == SB_OK && o->save_imatrix)
        status = sb_outputs_check(&guard, "--save-imatrix", o->save_imatrix, err);
    for (int r = 0; status == SB_OK && o->log_json_path && r < ctx->size; r++) {
        char path[SB_PATH_MAX];
        status = sb_run_log_json_path(o->log_json_path, r, path, sizeof path, err);
        if (status == SB_OK)
            status = sb_outputs_check(&guard, "--log-json", path, err);
    }
    sb_outputs_free(&guard);
    return status;
}

sb_status sb_run_log_json_path(const char *option, int rank, char *path, size_t size, sb_error *err)
{
    /* one JSON-lines file per rank beyond the first, so lines never interleave */
    if (rank == 0)
        return sb_path_format(path, size, err, "%s", option);
    return sb_path_format(path, size, err, "%s.rank%d", option, rank);
}

sb_status sb_run_check_paths(const sb_ctx *ctx, sb_error *err)
{
    return sb_agree(ctx->comm, ctx->rank == 0 ? check_paths_rank0(ctx, err) : SB_OK, err);
}

/* ---- open ------------------------------------------------------------------------------- */

sb_status sb_run_stage_open(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    const char *model = ctx->options.model_dir;
    SB_TRY(sb_config_load(model, &state->config, err));
    sb_checkpoint_options source = sb_config_checkpoint_options(&state->config);
    SB_TRY(sb_checkpoint_open_with(model, &source, &state->checkpoint, err));
    state->descs = sb_calloc((size_t)state->checkpoint.ntensors, sizeof *state->descs, "tensor list", err);
    if (!state->descs)
        return SB_ERR_NOMEM;
    for (int i = 0; i < state->checkpoint.ntensors; i++) {
        const sb_tensor_info *info = &state->checkpoint.tensors[i];
        state->descs[i] = (sb_tensor_desc){info->name, info->ndim, info->shape,
                                           state->checkpoint.files[info->file_index].path};
    }
    sb_catalogue_options catalogue_options = {ctx->options.quantize_embeddings, ctx->options.quantize_lm_head,
                                              ctx->options.quantize_router};
    SB_TRY(sb_catalogue_build(state->descs, state->checkpoint.ntensors, &state->config.shape, &catalogue_options, model,
                              &state->catalogue, err));
    if (state->catalogue.quantized_count == 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: no tensor to quantize", model);
    if (ctx->options.save_imatrix && sb_shape_moe_layers(&state->config.shape) > 0)
        return sb_error_set(err, SB_ERR_USAGE,
                            "--save-imatrix: %s is a mixture-of-experts model, and llama.cpp's merged per-expert "
                            "entries are not written yet (the run's --report has the experts' token counts)",
                            model);
    /* Pass-through copies source bytes, and FP8 codes mean nothing without their block scales:
     * refuse here, before any work, rather than when the output is written. */
    for (int i = 0; i < state->catalogue.count; i++) {
        const sb_catalogue_entry *entry = &state->catalogue.entries[i];
        const sb_tensor_info *info = &state->checkpoint.tensors[entry->source_index];
        if (!entry->quantize && info->dtype == SB_DTYPE_F8_E4M3)
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s: tensor '%s' is F8_E4M3 but is not quantized, and an FP8 tensor cannot be passed "
                                "through (quantize it, or dequantize the checkpoint first)",
                                state->checkpoint.files[info->file_index].path, info->name);
    }
    /* every name must become an HDF5 link name (io/sb_h5_name.h): checked now, not at the
     * write stage after hours of work */
    for (int i = 0; i < state->checkpoint.ntensors; i++) {
        char *link = NULL;
        sb_status named = sb_h5_name_escape(state->checkpoint.tensors[i].name, &link, err);
        free(link);
        if (named != SB_OK)
            return sb_error_prefix(err, "%s", model);
    }
    if (sb_fault_injected(ctx->comm, "agree_io"))
        return sb_error_set(err, SB_ERR_IO, "%s: injected I/O error at the end of the open stage (agree_io)", model);
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

void sb_run_print_plan(const sb_ctx *ctx, const sb_run_state *state)
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
    /* threads per rank: --threads, else this node's cores (not this process's share of them,
     * so that the plan is the same however many processes print it) */
    int threads = o->threads > 0 ? o->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    threads = threads > 0 ? threads : 1;
    int64_t max_work = 0, max_peak = 0, total_work = 0;
    int peak_rank = 0;
    for (int r = 0; r < plan->nranks; r++) {
        max_work = plan->rank_work[r] > max_work ? plan->rank_work[r] : max_work;
        int64_t peak = sb_plan_rank_memory(plan, o, &state->config.shape, r, threads).total;
        if (peak > max_peak) {
            max_peak = peak;
            peak_rank = r;
        }
        total_work += plan->rank_work[r];
    }
    format_bytes(text, sizeof text, (double)max_peak);
    printf("  balance: busiest rank has %.2fx the mean work; peak memory per rank about %s (rank %d)\n",
           total_work ? (double)max_work * plan->nranks / (double)total_work : 1.0, text, peak_rank);
    sb_rank_memory m = sb_plan_rank_memory(plan, o, &state->config.shape, peak_rank, threads);
    const struct { const char *name; int64_t bytes; } parts[] = {
        {"layers", m.layers}, {"statistics", m.statistics}, {"gptq", m.gptq}, {"search", m.search},
        {"activations", m.activations}, {"units", m.units}, {"runtime", m.runtime}};
    printf("  rank %d holds:", peak_rank);
    const char *separator = " ";
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i].bytes)
            continue;
        format_bytes(text, sizeof text, (double)parts[i].bytes);
        printf("%s%s %s", separator, parts[i].name, text);
        separator = ", ";
    }
    printf(" (not all at once)\n");
    if (m.stage_weights > 0)
        printf("  (its pipeline stage: %lld layer(s), %lld linear weights; %.1f bytes each for weights, statistics and "
               "search)\n",
               (long long)m.stage_layers, (long long)m.stage_weights,
               (double)(m.layers + m.statistics + m.search) / (double)m.stage_weights);
    sb_plan_time time = sb_plan_predict_time(plan, o, &state->config.shape, source_bytes, threads);
    printf("  predicted wall time on %d rank(s) x %d thread(s): %.1f s = %.2f h (read %.1f, calibrate %.1f, search %.1f, "
           "curves %.1f, quantize %.1f, write %.1f s; cost model of README's Speed section)\n",
           plan->nranks, threads, time.total, time.total / 3600.0, time.read, time.calibrate, time.search,
           time.curves, time.quantize, time.write);
    /* A calibrated run holds whole layers: name the case where even one layer per rank does not
     * fit a common node share, rather than let the run find out. */
    const int64_t common_rank_bytes = (int64_t)32 << 30;
    if (m.stage_weights > 0 && max_peak > common_rank_bytes) {
        format_bytes(text, sizeof text, (double)max_peak);
        printf("  NOTE: a rank needs about %s, more than a 32 GiB rank has%s: with --sensitivity %s%s a rank holds "
               "its pipeline stage's layers with their statistics (%s); use ranks with that much memory, or a "
               "data-free run (mse: units only)\n",
               text, m.stage_layers == 1 ? ", with one layer per rank already" : "",
               sb_sensitivity_name(o->sensitivity), o->gptq ? " --gptq" : "",
               m.stage_layers == 1 ? "more ranks do not help: a layer is not split over ranks"
                                   : "more ranks help until each holds one layer");
    }
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
        format_bytes(text2, sizeof text2, (double)sb_plan_rank_memory(plan, o, &state->config.shape, r, threads).total);
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

sb_status sb_run_stage_plan(sb_ctx *ctx, sb_run_state *state, sb_error *err)
{
    int nranks = ctx->options.plan_ranks > 0 ? ctx->options.plan_ranks : ctx->size;
    if (sb_run_needs_pipeline(&ctx->options) || ctx->options.reorder)
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

/* SHA-256 of a regular file's bytes, or "absent" (also for a FIFO or a device, which must not
 * block the run here: the calibration reader refuses it with a message). */
static void file_sha256(const char *path, char hex[65])
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    FILE *file = fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? fdopen(fd, "rb") : NULL;
    if (!file) {
        if (fd >= 0)
            close(fd);
        memcpy(hex, "absent", 7);
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
sb_status sb_run_build_fingerprint(const sb_ctx *ctx, sb_run_state *state, sb_error *err)
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
    if (o->quantize_router) /* only when set: fingerprints of earlier runs stay valid */
        fprintf(out, "quantize router: 1\n");
    if (o->expert_min_tokens != SB_EXPERT_MIN_ROWS)
        fprintf(out, "expert min tokens: %lld\n", (long long)o->expert_min_tokens);
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
        fprintf(out, "refine rounds: %d, windows %lld\n", o->refine_rounds, (long long)o->refine_windows);
    fprintf(out, "budget: %lld/%lld\n", (long long)o->budget_numerator, (long long)o->budget_denominator);
    fclose(out);
    return SB_OK;
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
sb_status sb_run_read_tensor_rows(const sb_run_state *state, const sb_tensor_plan *tensor, int64_t row_begin, int64_t count,
                                  bool raw, void *dst, sb_error *err)
{
    tensor_reader reader = {&state->checkpoint, tensor->info};
    sb_row_reader read = raw ? read_raw_rows : read_float_rows;
    size_t element = raw ? sb_dtype_size(tensor->info->dtype) : sizeof(float);
    if (!state->reordered || tensor->entry->role == SB_ROLE_OTHER)
        return read(&reader, row_begin, count, dst, err);
    sb_tensor_perm perm;
    sb_tensor_id id = {tensor->entry->role, tensor->entry->layer, tensor->entry->expert};
    SB_TRY(sb_reorder_tensor_perm(&state->reorder, &id, &perm, err));
    return sb_reorder_read_rows(&perm, element, read, &reader, row_begin, count, dst, err);
}

void *sb_run_unit_buffer(sb_run_state *state, size_t bytes, sb_error *err)
{
    if (bytes > state->unit_buffer_bytes) {
        sb_run_unit_buffer_release(state); /* not realloc: the old contents need not be copied */
        if (!(state->unit_buffer = sb_malloc(bytes, "unit rows", err)))
            return NULL;
        state->unit_buffer_bytes = bytes;
    }
    return state->unit_buffer;
}

void sb_run_unit_buffer_release(sb_run_state *state)
{
    free(state->unit_buffer);
    state->unit_buffer = NULL;
    state->unit_buffer_bytes = 0;
}

sb_status sb_run_read_unit_rows(sb_run_state *state, const sb_unit *unit, float **rows_out, sb_error *err)
{
    const sb_tensor_plan *tensor = &state->plan.tensors[unit->tensor];
    int64_t rows = unit->row_end - unit->row_begin;
    float *buffer = sb_run_unit_buffer(state, (size_t)(rows * tensor->entry->cols) * sizeof(float), err);
    if (!buffer)
        return SB_ERR_NOMEM;
    *rows_out = buffer;
    return sb_run_read_tensor_rows(state, tensor, unit->row_begin, rows, false, buffer, err);
}

int64_t sb_run_owned_bytes(const sb_ctx *ctx, const sb_run_state *state, bool quantized_only)
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


/* The resumable loop of a stage over this rank's quantized units: every rank runs the same
 * number of iterations (the busiest rank's), and each ends at a unit boundary where all ranks
 * agree on errors and on a stop request. Progress, timing and the state manifest follow. */
sb_status sb_run_units(sb_ctx *ctx, sb_run_state *state, const char *stage, sb_run_unit_work work, sb_error *err)
{
    const sb_plan *plan = &state->plan;
    int *units = sb_malloc((size_t)(plan->nunits > 0 ? plan->nunits : 1) * sizeof *units, "unit list", err);
    if (!units)
        return SB_ERR_NOMEM;
    int mine = sb_run_owned_units(ctx, state, true, units);
    int iterations = 0;
    sb_status counted = sb_run_max_over_ranks(ctx, mine, &iterations, err);
    if (counted != SB_OK) {
        free(units);
        return counted;
    }
    sb_progress progress;
    sb_progress_begin(&progress, stage, "units", mine, sb_run_owned_bytes(ctx, state, true));
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
        bool stop = false;
        if (i + 1 < iterations && (status = sb_state_should_stop(ctx, &state->disk, i + 1, &stop, err)) != SB_OK)
            break;
        if (stop) {
            status = sb_run_stopped(ctx, state, stage, i + 1, err);
            break;
        }
    }
    free(units);
    sb_run_unit_buffer_release(state);
    if (reused)
        sb_log_rank(&ctx->log, "%s: %lld unit(s) resumed from %s", stage, (long long)reused, state->disk.dir);
    SB_TRY(status);
    double seconds = sb_progress_end(&ctx->log, &progress);
    sb_ctx_stage(ctx, stage, seconds);
    SB_TRY(sb_run_report_balance(ctx, stage, seconds, err));
    return sb_state_write_manifest(ctx, &state->disk, err);
}

/* A unit's curves: its losses then its costs, as one state file. */
/* ---- the pipeline ----------------------------------------------------------------------- */

sb_status sb_run_quantize(sb_ctx *ctx, sb_error *err)
{
    sb_run_state state;
    memset(&state, 0, sizeof state);
    sb_status status;
    double start = sb_now();
    status = sb_agree(ctx->comm, sb_run_stage_open(ctx, &state, err), err);
    if (status == SB_OK) {
        sb_ctx_stage(ctx, "open", sb_now() - start);
        status = sb_agree(ctx->comm, sb_run_stage_plan(ctx, &state, err), err);
    }
    if (status == SB_OK && ctx->options.plan_only) {
        sb_run_print_plan(ctx, &state);
        sb_run_state_free(&state);
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
        status = sb_agree(ctx->comm, sb_run_build_fingerprint(ctx, &state, err), err);
    if (status == SB_OK)
        status = sb_state_open(ctx, &state.disk, state.fingerprint, err);
    if (status == SB_OK && state.disk.resuming) {
        /* a finished allocation is kept: no curves, no search */
        char path[SB_PATH_MAX];
        int have = 0;
        status = sb_state_path(&state.disk, NULL, "allocation.bin", path, sizeof path, err);
        if (status == SB_OK)
            have = ctx->rank == 0 ? access(path, R_OK) == 0 : 0;
        status = sb_agree(ctx->comm, status, err);
        if (status == SB_OK)
            status = sb_agree(ctx->comm, SB_MPI_CALL(err, MPI_Bcast(&have, 1, MPI_INT, 0, ctx->comm)), err);
        state.allocation_loaded = have && !state.disk.budget_changed;
        sb_log_info(&ctx->log, "resuming from %s%s", state.disk.dir,
                    state.allocation_loaded ? " (the allocation is done)" : "");
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, sb_run_stage_calibrate(ctx, &state, err), err);
    if (status == SB_OK)
        status = sb_run_stage_reorder(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = sb_run_stage_hessian(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = sb_agree(ctx->comm, sb_run_stage_importance(ctx, &state, err), err);
    if (status == SB_OK && state.allocation_loaded) {
        state.first_tile = state.plan.rank_first_tile[ctx->rank];
        state.local_tiles = state.plan.rank_first_tile[ctx->rank + 1] - state.first_tile;
    } else if (ctx->options.sensitivity == SB_SENSITIVITY_TAYLOR) {
        if (status == SB_OK)
            status = sb_agree(ctx->comm, sb_run_stage_refine(ctx, &state, err), err);
    } else {
        if (status == SB_OK)
            status = sb_run_stage_curves(ctx, &state, err); /* agrees internally */
        if (status == SB_OK)
            status = sb_agree(ctx->comm, sb_run_stage_allocate(ctx, &state, err), err);
    }
    if (state.calibrated) {
        /* the model's float32 copy is not needed to write: give its memory back */
        sb_pipeline_free(&state.pipeline);
        state.calibrated = false;
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, sb_run_stage_gather(ctx, &state, err), err);
    if (status == SB_OK)
        sb_state_debug_point(ctx, "allocate", 0);
    bool stop = false;
    if (status == SB_OK && !state.allocation_loaded)
        status = sb_state_should_stop(ctx, &state.disk, 0, &stop, err);
    if (status == SB_OK && stop)
        status = sb_run_stopped(ctx, &state, "allocate", 0, err);
    if (status == SB_OK)
        status = sb_run_stage_quantize(ctx, &state, err); /* agrees internally */
    if (status == SB_OK)
        status = sb_run_stage_write(ctx, &state, err); /* agrees internally */
    if (status == SB_OK) {
        status = sb_state_remove(ctx, &state.disk, err);
    } else if (state.disk.ours && status != SB_ERR_STOPPED) {
        /* Work survives failures a rerun can get past (I/O, memory, a lost rank); after bad
         * input or options there is nothing to continue from. */
        bool transient = status == SB_ERR_IO || status == SB_ERR_NOMEM || status == SB_ERR_MPI;
        if (transient) {
            size_t used = strlen(err->message);
            snprintf(err->message + used, sizeof err->message - used,
                     " (the work done so far is kept in %s: rerun with --resume once the cause is fixed)",
                     state.disk.dir);
        } else {
            sb_error kept = *err; /* the run's error, not the removal's, is what the user sees */
            sb_state_remove(ctx, &state.disk, &kept);
        }
    }
    if (status == SB_OK)
        status = sb_agree(ctx->comm, sb_run_stage_report(ctx, &state, err), err);
    sb_run_state_free(&state);
    return status;
}
