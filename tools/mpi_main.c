/* scalebits-mpi: quantize a Llama-family checkpoint to mixed precision under an exact budget.
 * One process or any number of MPI ranks; the pipeline is in mpi/sb_run.h.
 *
 * After MPI_Init every path ends in MPI_Finalize on every rank with the same exit code: errors
 * (a bad option included) are agreed on (mpi/comm/sb_agree.h) and reported once, by rank 0. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "sb_agree.h"
#include "sb_blas_start.h"
#include "sb_ctx.h"
#include "sb_mpi.h"
#include "sb_options_parse.h"
#include "sb_path.h"
#include "sb_run.h"
#include "sb_state.h"
#include "sb_threads.h"

/* Large buffers in their own mappings, given back to the system when freed. glibc raises its
 * mmap threshold after the first free of a large block (up to 32 MiB), and then serves blocks of
 * that size from the heap, where freed ones stay resident as holes: the run's phases (the
 * calibration workspace and layer caches, then the GPTQ factors, then the taylor search's tile
 * stores and decoded tiles) would pile up instead of following one another (austen-256's
 * taylor run peaked at 300 MiB instead of 264: bench/memory.sh), and --plan, which counts the
 * phases, could not predict it. A fixed threshold turns the adjustment off; an explicit
 * MALLOC_MMAP_THRESHOLD_ wins. */
static void give_back_large_buffers(void)
{
#ifdef __GLIBC__
    if (!getenv("MALLOC_MMAP_THRESHOLD_"))
        mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}

/* Opens this rank's --log-json file, once every output path has been checked. */
static sb_status open_log_json(sb_ctx *ctx, sb_error *err)
{
    char path[SB_PATH_MAX];
    SB_TRY(sb_run_log_json_path(ctx->options.log_json_path, ctx->rank, path, sizeof path, err));
    ctx->log_json = fopen(path, "w");
    if (!ctx->log_json)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open the JSON log", path);
    ctx->log.json = ctx->log_json;
    return SB_OK;
}

int main(int argc, char **argv)
{
    /* before MPI_Init: it may re-execute the program with a better OpenBLAS core */
    sb_blas_start blas;
    sb_blas_start_check(argv, &blas);
    give_back_large_buffers();
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "scalebits-mpi: error: MPI_Init failed\n");
        return 1;
    }
    /* at once: a stop request (Slurm's USR1) that comes during start-up must not kill a rank */
    sb_state_install_signal_handlers();
    sb_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.comm = MPI_COMM_WORLD;
    sb_error err = {0};
    /* An MPI failure must end every rank with a message, never leave one waiting. */
    sb_status status = SB_MPI_CALL(&err, MPI_Comm_set_errhandler(ctx.comm, MPI_ERRORS_RETURN));
    if (status == SB_OK)
        status = sb_mpi_rank_size(ctx.comm, &ctx.rank, &ctx.size, &err);
    if (status == SB_OK)
        status = sb_agree(ctx.comm, sb_options_parse(argc, argv, &ctx.options, &err), &err);
    bool shown = false;
    if (status == SB_OK && (ctx.options.show_help || ctx.options.show_version)) {
        if (ctx.rank == 0) {
            if (ctx.options.show_help)
                sb_options_usage(argv[0]);
            else
                printf("scalebits %s\n", SB_VERSION);
        }
        shown = true;
    }
    sb_log_init(&ctx.log, ctx.rank, ctx.size, status == SB_OK ? (sb_verbosity)ctx.options.verbosity : SB_NORMAL);
    if (status == SB_OK && !shown)
        status = sb_run_check_paths(&ctx, &err);
    if (status == SB_OK && !shown && ctx.options.log_json_path)
        status = sb_agree(ctx.comm, open_log_json(&ctx, &err), &err);
    if (status == SB_OK && !shown)
        status = sb_agree(ctx.comm, sb_threads_configure(&ctx, &err), &err);
    if (status == SB_OK && !shown) {
        sb_log_info(&ctx.log, "scalebits %s: %d rank(s) x %d thread(s) (%s)", SB_VERSION, ctx.size, ctx.threads,
                    ctx.threads_reason);
        sb_log_info(&ctx.log, "%s", blas.message);
        status = sb_run_quantize(&ctx, &err);
    }
    if (status != SB_OK && ctx.rank == 0) {
        fprintf(stderr, "scalebits-mpi: error: %s\n", err.message);
        if (status == SB_ERR_USAGE)
            fprintf(stderr, "run '%s --help' for the options\n", argv[0]);
    }
    if (ctx.log_json)
        fclose(ctx.log_json);
    if (MPI_Finalize() != MPI_SUCCESS && status == SB_OK)
        status = SB_ERR_MPI;
    return sb_status_exit_code(status);
}
