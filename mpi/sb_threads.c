#include "sb_threads.h"

#include <hwloc.h>
#include <omp.h>
#include <stdlib.h>

extern void openblas_set_num_threads(int threads);

void sb_threads_configure(sb_ctx *ctx)
{
    MPI_Comm node;
    int local_ranks = 1;
    if (MPI_Comm_split_type(ctx->comm, MPI_COMM_TYPE_SHARED, ctx->rank, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &local_ranks);
        MPI_Comm_free(&node);
    }
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
}
