/* sb_alloc: the global bitwidth allocation, one process (the serial reference).
 *
 * A multiple-choice knapsack: every tile t takes one option k (a bitwidth) with stored cost
 * cost[t][k] bits (increasing in k) and estimated loss increase loss[t][k]; minimise the summed
 * loss with the summed cost <= budget. The greedy (ScaleBITS section "global allocation"):
 *   1. every tile starts at its cheapest option;
 *   2. each tile's upgrade steps are the edges of the lower convex hull of its (cost, loss)
 *      points (collinear points kept, so steps stay small); a step's value is its loss
 *      reduction per extra stored bit (gain per bit), non-increasing along a tile's hull;
 *   3. all steps are visited in one global order: gain per bit descending, then global tile id
 *      ascending, then step index ascending; a step is taken if it fits in what is left of the
 *      budget; a step that does not fit freezes its tile (its later steps depend on it).
 * The result never exceeds the budget. It depends only on the tiles' own numbers and ids, not
 * on how tiles are spread over ranks: mpi/sb_global_alloc.h computes the same allocation in a
 * distributed way, bit for bit. A budget at or above the dearest allocation gives every tile
 * its largest option; a budget below the cheapest is an SB_ERR_BUDGET error.
 */
#ifndef SB_ALLOC_H
#define SB_ALLOC_H

#include <stdint.h>

#include "sb_error.h"

enum { SB_MAX_OPTIONS = 8 };

typedef struct sb_alloc_problem {
    int64_t ntiles;
    int noptions;          /* options per tile (the allowed bitwidths, ascending) */
    const int64_t *cost;   /* [ntiles * noptions], cost[t * noptions + k] in bits, increasing in k */
    const double *loss;    /* [ntiles * noptions] */
    const int64_t *tile_id; /* [ntiles] global ids (unique, define tie order); NULL = 0..ntiles-1 */
    int64_t budget;        /* bits available for the whole problem */
} sb_alloc_problem;

typedef struct sb_alloc_result {
    int64_t cost;          /* summed cost of the chosen options */
    double loss;           /* summed loss of the chosen options */
    int64_t min_cost, max_cost; /* cheapest and dearest possible totals */
    int64_t steps_taken;
    int64_t steps_after_first_misfit; /* steps taken once some step did not fit */
    int all_max;           /* 1 if the budget covered the dearest allocation */
} sb_alloc_result;

/* One upgrade step on a tile's hull. */
typedef struct sb_hull_step {
    uint64_t order_key;    /* ascending key = descending gain per bit (sb_gain_key) */
    int64_t tile_id;
    int64_t tile_index;    /* local index of the tile */
    int step;              /* index along the tile's hull, 0-based */
    int from, to;          /* option indices */
    int64_t extra_cost;
} sb_hull_step;

/* Lower-convex-hull option indices of one tile, starting at option 0; returns their count.
 * Points that do not lower the loss are never on it. */
int sb_tile_hull(const int64_t *cost, const double *loss, int noptions, int *hull);

/* Gain per bit of moving from option `from` to `to` (the value both allocators order by). */
static inline double sb_gain_per_bit(const int64_t *cost, const double *loss, int from, int to)
{
    return (loss[from] - loss[to]) / (double)(cost[to] - cost[from]);
}

/* Order-preserving map of a gain per bit to an unsigned key, reversed: larger gain -> smaller key. */
uint64_t sb_gain_key(double gain_per_bit);

/* The hull steps of tiles [0, ntiles) of `problem`, appended to `steps` (caller sizes it to
 * ntiles * (noptions - 1)); returns how many. */
int64_t sb_collect_steps(const sb_alloc_problem *problem, sb_hull_step *steps);

/* Total order of steps: key, then tile id, then step. */
int sb_step_compare(const sb_hull_step *a, const sb_hull_step *b);

/* The serial greedy. `choice[t]` receives the option index of tile t. */
sb_status sb_alloc_greedy(const sb_alloc_problem *problem, uint8_t *choice, sb_alloc_result *result, sb_error *err);

/* Reference: the exact optimum by dynamic programming over the budget (small problems only:
 * O(ntiles * noptions * budget) time, O(ntiles * budget) memory). For tests. */
sb_status sb_alloc_exact_dp(const sb_alloc_problem *problem, uint8_t *choice, double *loss, sb_error *err);

#endif
