/* The distributed allocation (mpi/sb_global_alloc.h) equals the serial greedy (src/sb_alloc.h)
 * choice for choice, on random problems, at every rank count from 1 to the size of the job
 * (CTest runs it under mpirun -n 8: communicators of the first 1..8 ranks; each allocation is a
 * few hundred all-reduces, so the problems are few and small), with tiles spread
 * unevenly over the ranks (some ranks hold none), and tied gains broken by tile id; budgets
 * below the cheapest allocation fail on every rank alike, budgets above the dearest give all
 * tiles their largest option. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "sb_alloc.h"
#include "sb_global_alloc.h"
#include "sb_mpi.h"
#include "sb_test.h"

enum { MAX_TILES = 120, MAX_OPTIONS = 6 };

static void random_problem(sb_test_rng *rng, int64_t ntiles, int noptions, int64_t *cost, double *loss, bool ties)
{
    static const int bit_options[] = {1, 2, 3, 4, 6, 8};
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t weights = 1 + (int64_t)(sb_test_next(rng) % 6);
        double scale = ties ? 1.0 : 0.1 + 10 * sb_test_uniform(rng);
        double previous = INFINITY;
        for (int k = 0; k < noptions; k++) {
            cost[t * noptions + k] = weights * bit_options[k] + 1;
            /* ties: identical curves on many tiles, so only the tile id orders their steps */
            double value = ties ? weights * pow(0.25, bit_options[k])
                                : scale * weights * pow(0.25, bit_options[k]) * (0.5 + sb_test_uniform(rng));
            if (!ties && sb_test_uniform(rng) < 0.8 && value > previous)
                value = previous * sb_test_uniform(rng);
            loss[t * noptions + k] = value;
            previous = value;
        }
    }
}

int main(int argc, char **argv)
{
    int rank, size;
    sb_test_mpi_init(&argc, &argv, &rank, &size);
    sb_error err = {0};
    static int64_t cost[MAX_TILES * MAX_OPTIONS], ids[MAX_TILES];
    static double loss[MAX_TILES * MAX_OPTIONS];
    static uint8_t serial[MAX_TILES], distributed[MAX_TILES], local_choice[MAX_TILES];
    int problems = 0, compared = 0;
    for (int trial = 0; trial < 8; trial++) {
        /* every rank draws the same problem */
        sb_test_rng rng = {(uint64_t)trial * 7919 + 1};
        int64_t ntiles = 1 + (int64_t)(sb_test_next(&rng) % MAX_TILES);
        int noptions = 2 + (int)(sb_test_next(&rng) % (MAX_OPTIONS - 1));
        bool ties = trial % 4 == 0;
        random_problem(&rng, ntiles, noptions, cost, loss, ties);
        for (int64_t t = 0; t < ntiles; t++)
            ids[t] = 1000 + 3 * t; /* global ids need not start at 0 or be dense */
        int64_t min_cost = 0, max_cost = 0;
        for (int64_t t = 0; t < ntiles; t++) {
            min_cost += cost[t * noptions];
            max_cost += cost[t * noptions + noptions - 1];
        }
        /* budgets: infeasible, exactly the cheapest, in between, the dearest (every step fits) */
        int64_t budgets[4] = {min_cost - 1, min_cost, min_cost + (int64_t)(sb_test_uniform(&rng) * (max_cost - min_cost)),
                              max_cost};
        for (int b = 0; b < 4; b++) {
            sb_alloc_problem whole = {ntiles, noptions, cost, loss, ids, budgets[b]};
            sb_alloc_result result;
            sb_status serial_status = sb_alloc_greedy(&whole, serial, &result, &err);
            problems++;
            /* split points: an uneven contiguous split over k ranks, drawn alike everywhere */
            for (int k = 1; k <= size; k++) {
                int64_t first[9] = {0};
                for (int r = 1; r < k; r++) {
                    int64_t point = (int64_t)(sb_test_next(&rng) % (uint64_t)(ntiles + 1));
                    first[r] = point > first[r - 1] ? point : first[r - 1];
                }
                first[k] = ntiles;
                MPI_Comm comm;
                SB_CHECK(SB_MPI_CALL(&err, MPI_Comm_split(MPI_COMM_WORLD, rank < k ? 0 : MPI_UNDEFINED, rank, &comm)) ==
                         SB_OK);
                if (rank >= k)
                    continue;
                int64_t begin = first[rank], count = first[rank + 1] - begin;
                sb_alloc_problem mine = {count, noptions, cost + begin * noptions, loss + begin * noptions, ids + begin,
                                         budgets[b]};
                sb_global_alloc_stats stats;
                sb_error local_err = {0};
                sb_status status = sb_global_alloc(comm, &mine, local_choice, &stats, &local_err);
                SB_CHECK_MSG(status == serial_status, "trial %d budget %d at %d ranks: status %d, serial %d (%s)", trial,
                             b, k, (int)status, (int)serial_status, local_err.message);
                if (status == SB_OK && serial_status == SB_OK) {
                    int counts[9], displs[9];
                    for (int r = 0; r < k; r++) {
                        counts[r] = (int)(first[r + 1] - first[r]);
                        displs[r] = (int)first[r];
                    }
                    SB_CHECK(SB_MPI_CALL(&err, MPI_Gatherv(local_choice, (int)count, MPI_UINT8_T, distributed, counts,
                                                           displs, MPI_UINT8_T, 0, comm)) == SB_OK);
                    if (rank == 0) {
                        compared++;
                        SB_CHECK_MSG(memcmp(serial, distributed, (size_t)ntiles) == 0,
                                     "trial %d budget %d: the allocation at %d ranks differs from the serial one", trial,
                                     b, k);
                        SB_CHECK(stats.cost == result.cost && stats.all_max == result.all_max);
                    }
                }
                SB_MPI_CALL(&err, MPI_Comm_free(&comm));
            }
        }
    }
    if (rank == 0)
        printf("%d problems, %d distributed allocations compared with the serial one at 1..%d ranks\n", problems,
               compared, size);
    return sb_test_mpi_finish("test_global_alloc", rank);
}
