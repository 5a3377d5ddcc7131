/* scalebits-mpi: quantize a Llama-family checkpoint to mixed precision under an exact budget.
 * One process or any number of MPI ranks; the pipeline is in mpi/sb_run.h. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_blas_start.h"
#include "sb_options_parse.h"
#include "sb_ctx.h"
#include "sb_run.h"
#include "sb_state.h"
#include "sb_threads.h"

int main(int argc, char **argv)
{
    /* before MPI_Init: it may re-execute the program with a better OpenBLAS core */
    sb_blas_start blas;
    sb_blas_start_check(argv, &blas);
    MPI_Init(&argc, &argv);
    /* at once: a stop request (Slurm's USR1) that comes during start-up must not kill a rank */
    sb_state_install_signal_handlers();
    sb_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.comm = MPI_COMM_WORLD;
    /* An MPI failure must end every rank with a message, never leave one waiting. */
    MPI_Comm_set_errhandler(ctx.comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(ctx.comm, &ctx.rank);
    MPI_Comm_size(ctx.comm, &ctx.size);
    sb_error err = {0};
    sb_status status = sb_agree(ctx.comm, sb_options_parse(argc, argv, &ctx.options, &err), &err);
    if (status == SB_OK && (ctx.options.show_help || ctx.options.show_version)) {
        if (ctx.rank == 0) {
            if (ctx.options.show_help)
                sb_options_usage(argv[0]);
            else
                printf("scalebits %s\n", SB_VERSION);
        }
        MPI_Finalize();
        return 0;
    }
    sb_log_init(&ctx.log, ctx.rank, ctx.size, status == SB_OK ? (sb_verbosity)ctx.options.verbosity : SB_NORMAL);
    if (status == SB_OK && ctx.options.log_json_path) {
        char path[4200];
        /* one JSON-lines file per rank beyond the first, so lines never interleave */
        if (ctx.rank == 0)
            snprintf(path, sizeof path, "%s", ctx.options.log_json_path);
        else
            snprintf(path, sizeof path, "%s.rank%d", ctx.options.log_json_path, ctx.rank);
        ctx.log_json = fopen(path, "w");
        sb_status open_status =
            ctx.log_json ? SB_OK : sb_error_set(&err, SB_ERR_IO, "%s: cannot open the JSON log", path);
        status = sb_agree(ctx.comm, open_status, &err);
        ctx.log.json = ctx.log_json;
    }
    if (status == SB_OK) {
        sb_threads_configure(&ctx);
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
    MPI_Finalize();
    return sb_status_exit_code(status);
}
