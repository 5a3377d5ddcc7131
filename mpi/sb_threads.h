/* sb_threads: how many worker threads this rank uses, from the cores hwloc says it may run on.
 *
 * threads = min(cores in this rank's binding, cores of the node / ranks on the node), at least
 * 1; --threads overrides. The cap matters because a launcher that binds nothing leaves every
 * rank "bound" to all cores (mpirun --bind-to none, srun without task/affinity). OpenMP gets
 * the count; OpenBLAS too unless OPENBLAS_NUM_THREADS is set (the user's word wins). Collective
 * (splits the communicator by node). Records what it chose and why in ctx.
 */
#ifndef SB_THREADS_H
#define SB_THREADS_H

#include "sb_ctx.h"

sb_status sb_threads_configure(sb_ctx *ctx, sb_error *err);

#endif
