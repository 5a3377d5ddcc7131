/* sb_ctx: the state a run carries from stage to stage; there is no global state.
 *
 * Holds the communicator, this rank's place in it, the parsed options, the logger and the
 * per-stage timings that go into the report. Owned by main(); passed by pointer.
 */
#ifndef SB_CTX_H
#define SB_CTX_H

#include <mpi.h>
#include <stdio.h>

#include "sb_log.h"
#include "sb_options.h"

enum { SB_MAX_STAGES = 16 };

typedef struct sb_stage_time {
    const char *name;
    double seconds;
    int64_t peak_rss;  /* the process's peak RSS when the stage last ended (bytes) */
} sb_stage_time;

typedef struct sb_ctx {
    MPI_Comm comm;
    int rank, size;
    sb_options options;
    sb_log log;
    FILE *log_json;
    int threads;                    /* worker threads per rank (OpenMP and OpenBLAS) */
    const char *threads_reason;     /* how the thread count was chosen, for the log */
    sb_stage_time stages[SB_MAX_STAGES];
    int nstages;
} sb_ctx;

/* Records a finished stage's wall time and the peak RSS so far (max over ranks is taken at
 * report time). */
void sb_ctx_stage(sb_ctx *ctx, const char *name, double seconds);

#endif
