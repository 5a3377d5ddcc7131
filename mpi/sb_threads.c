#include "sb_threads.h"

#include <hwloc.h>
#include <omp.h>
#include <stdlib.h>

#include "sb_mpi.h"

extern void openblas_set_num_threads(int threads);

sb_status sb_threads_configure(sb_ctx *ctx, sb_error *err)
{
    MPI_Comm node;
    int local_ranks = 1;
    SB_MPI_TRY(err, MPI_Comm_split_type(ctx->comm, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node));
    sb_status status = SB_MPI_CALL(err, MPI_Comm_size(node, &local_ranks));
    if (status == SB_OK)
        status = SB_MPI_CALL(err, MPI_Comm_free(&node));
    SB_TRY(status);
    int threads = 1;
    if (ctx->options.threads > 0) {
        threads = ctx->options.threads;
        ctx->threads_reason = "--threads";
    } else {
        hwloc_topology_t topology;
        int node_cores = 1, bound_cores = 1;
        if (hwloc_topology_init(&topology) == 0 && hwloc_topology_load(topology) == 0) {
            node_cores = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_CORE);
            hwloc_bitmap_t set = hwloc_bitmap_alloc();
            if (hwloc_get_cpubind(topology, set, HWLOC_CPUBIND_PROCESS) == 0)
                bound_cores = hwloc_get_nbobjs_inside_cpuset_by_type(topology, set, HWLOC_OBJ_CORE);
            else
                bound_cores = node_cores;
            hwloc_bitmap_free(set);
            hwloc_topology_destroy(topology);
        }
        int fair = node_cores / (local_ranks > 0 ? local_ranks : 1);
        threads = bound_cores < fair ? bound_cores : fair;
        ctx->threads_reason = "hwloc: min(bound cores, node cores / ranks on node)";
    }
    if (threads < 1)
        threads = 1;
    ctx->threads = threads;
    omp_set_num_threads(threads);
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(threads);
    return SB_OK;
}
