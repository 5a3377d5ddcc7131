/* bench-h5-define: what creating the output file's groups and datasets costs for a real model's
 * tensor count, without any data: the writer's collective definitions (mpi/sb_run_write.c, the
 * same code scalebits-mpi runs) and the commit, for a header-only checkpoint of any size
 * (bench-gen-checkpoint --headers-only). Every tile is given --bits bits; nothing is written
 * into the datasets (their space is allocated at creation, as in a real run, so the file is
 * sparse).
 *
 *   mpirun -n R bench-h5-define [--per-tensor] [--bits B] --model DIR --out FILE.h5 [scalebits-mpi options]
 *
 * --per-tensor defines one group per expert (the layout before expert stacks) for comparison.
 * Prints one line per run (rank 0): tensors, HDF5 groups and datasets, define and commit seconds
 * (the slowest rank's), the file's size.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "sb_agree.h"
#include "sb_options_parse.h"
#include "sb_run_internal.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double slowest(MPI_Comm comm, double seconds)
{
    double most = seconds;
    MPI_Allreduce(&seconds, &most, 1, MPI_DOUBLE, MPI_MAX, comm);
    return most;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    sb_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.comm = MPI_COMM_WORLD;
    MPI_Comm_rank(ctx.comm, &ctx.rank);
    MPI_Comm_size(ctx.comm, &ctx.size);
    bool per_tensor = false;
    int bits = 3;
    /* our flags first, the rest is scalebits-mpi's command line */
    char **rest = malloc((size_t)(argc + 1) * sizeof *rest);
    int nrest = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--per-tensor") == 0)
            per_tensor = true;
        else if (strcmp(argv[i], "--bits") == 0 && i + 1 < argc && strchr(argv[i + 1], ',') == NULL &&
                 atoi(argv[i + 1]) >= 1 && atoi(argv[i + 1]) <= 8)
            bits = atoi(argv[++i]);
        else
            rest[nrest++] = argv[i];
    }
    rest[nrest] = NULL;
    sb_error err = {0};
    sb_status status = sb_options_parse(nrest, rest, &ctx.options, &err);
    sb_log_init(&ctx.log, ctx.rank, ctx.size, SB_QUIET);
    ctx.threads = 1;
    sb_run_state state;
    memset(&state, 0, sizeof state);
    double open_start = now();
    if (status == SB_OK)
        status = sb_agree(ctx.comm, sb_run_stage_open(&ctx, &state, &err), &err);
    if (status == SB_OK)
        status = sb_agree(ctx.comm, sb_run_stage_plan(&ctx, &state, &err), &err);
    double open_seconds = slowest(ctx.comm, now() - open_start);
    int *handles = NULL;
    if (status == SB_OK) {
        state.all_bits = malloc((size_t)(state.plan.total_tiles > 0 ? state.plan.total_tiles : 1));
        handles = calloc((size_t)state.plan.ntensors, sizeof *handles);
        status = state.all_bits && handles ? SB_OK : sb_error_set(&err, SB_ERR_NOMEM, "out of memory");
        if (status == SB_OK)
            memset(state.all_bits, bits, (size_t)state.plan.total_tiles);
    }
    sb_h5_writer *writer = NULL;
    double define_seconds = 0, commit_seconds = 0;
    if (status == SB_OK)
        status = sb_h5_writer_create(ctx.options.out_path, NULL, ctx.comm, &writer, &err);
    if (status == SB_OK) {
        MPI_Barrier(ctx.comm);
        double start = now();
        status = sb_agree(ctx.comm, sb_run_define_output(&ctx, &state, writer, !per_tensor, handles, &err), &err);
        define_seconds = slowest(ctx.comm, now() - start);
        start = now();
        if (status == SB_OK)
            status = sb_h5_writer_commit(writer, &err);
        else
            sb_h5_writer_abort(writer);
        commit_seconds = slowest(ctx.comm, now() - start);
    }
    if (status == SB_OK && ctx.rank == 0) {
        int quantized = 0, experts = 0, passthrough = 0;
        for (int i = 0; i < state.plan.ntensors; i++) {
            const sb_tensor_plan *tensor = &state.plan.tensors[i];
            quantized += tensor->quantize;
            experts += tensor->quantize && tensor->entry->expert >= 0;
            passthrough += !tensor->quantize;
        }
        int stacks = per_tensor ? 0 : experts / (int)(state.config.shape.num_experts > 0 ? state.config.shape.num_experts : 1);
        int groups = quantized - (per_tensor ? 0 : experts - stacks);
        int per_group = ctx.options.scales == SB_SCALES_Q8 ? 5 : 4;
        struct stat st;
        stat(ctx.options.out_path, &st);
        printf("%s, %d rank(s), %s: %d tensors (%d quantized, %d experts), %d groups + %d datasets under /tensors, "
               "%d pass-through; open+plan %.2f s, define %.2f s, commit %.2f s, total %.2f s; file %.1f GiB (sparse)\n",
               ctx.options.model_dir, ctx.size, per_tensor ? "one group per tensor" : "experts stacked",
               state.plan.ntensors, quantized, experts, groups, groups * per_group, passthrough, open_seconds,
               define_seconds, commit_seconds, define_seconds + commit_seconds,
               (double)st.st_size / (1024.0 * 1024.0 * 1024.0));
    }
    if (status != SB_OK && ctx.rank == 0)
        fprintf(stderr, "bench-h5-define: error: %s\n", err.message);
    if (ctx.rank == 0)
        remove(ctx.options.out_path);
    free(handles);
    sb_run_state_free(&state);
    free(rest);
    MPI_Finalize();
    return status == SB_OK ? 0 : 1;
}
