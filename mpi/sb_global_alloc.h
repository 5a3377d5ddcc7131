/* sb_global_alloc: the allocation of src/sb_alloc.h computed across ranks, bit for bit.
 *
 * Each rank holds the curves of its own tiles (a contiguous range of global tile ids). The
 * serial greedy visits all hull steps in one global order and takes each that fits; here:
 *   1. integer all-reduces give the cheapest and dearest totals (feasibility, all-max case);
 *   2. the first step that does not fit (the "critical" step) is found by bisection over the
 *      step order (gain-per-bit key, then tile id, then step index), each probe one int64
 *      all-reduce of the extra bits of the steps before it: every step before it is taken;
 *   3. after it, the next step taken is the globally first step that is its tile's next step
 *      and fits in what is left: one all-reduce (lexicographic minimum) per step taken.
 * Every decision comes from integer sums and exact key comparisons, never from a sum of
 * doubles, so the result is the serial greedy's for any number of ranks. Collective.
 */
#ifndef SB_GLOBAL_ALLOC_H
#define SB_GLOBAL_ALLOC_H

#include <mpi.h>
#include <stdint.h>

#include "sb_alloc.h"
#include "sb_error.h"

typedef struct sb_global_alloc_stats {
    int64_t min_cost, max_cost, cost;  /* global totals of the variable (code) bits */
    int64_t steps_taken;
    int64_t steps_after_first_misfit;
    int all_max;
    int bisection_rounds;
    int skip_rounds;
} sb_global_alloc_stats;

/* `problem` describes this rank's tiles (tile_id must be set); `problem->budget` is the global
 * budget for all ranks' tiles. Writes `choice` for the local tiles. Collective over `comm`. On
 * SB_ERR_BUDGET every rank returns it with the same message. */
sb_status sb_global_alloc(MPI_Comm comm, const sb_alloc_problem *problem, uint8_t *choice,
                          sb_global_alloc_stats *stats, sb_error *err);

/* A position in the global order of steps: (order_key, tile_id, step), compared in that order. */
typedef struct sb_step_order {
    uint64_t key, tile, step;
} sb_step_order;

/* For locally sorted `steps` (sb_step_compare) with prefix sums of their extra_cost
 * (prefix[0] = 0, prefix[i + 1] = prefix[i] + steps[i].extra_cost): the largest position P such
 * that the global sum of extra_cost over all steps before P is <= `limit`. If every step fits,
 * P = (UINT64_MAX, UINT64_MAX, UINT64_MAX). The step at P (if any) is the first that does not
 * fit. Exact (integer all-reduces; bisection over the order), the same for any rank count.
 * Collective. `rounds` counts the all-reduces (may be NULL). */
sb_status sb_global_order_limit(MPI_Comm comm, const sb_hull_step *steps, const int64_t *prefix, int64_t count,
                                int64_t limit, sb_step_order *position, int *rounds, sb_error *err);
/* Local extra bits of the sorted steps strictly before `position`. */
int64_t sb_steps_before(const sb_hull_step *steps, const int64_t *prefix, int64_t count, const sb_step_order *position);
int sb_step_order_compare(const sb_step_order *a, const sb_step_order *b);
sb_step_order sb_step_order_of(const sb_hull_step *step);

#endif
