#include "sb_alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int sb_tile_hull(const int64_t *cost, const double *loss, int noptions, int *hull)
{
    int count = 0;
    hull[count++] = 0;
    for (int k = 1; k < noptions; k++) {
        if (!(loss[k] < loss[hull[count - 1]]))
            continue; /* dearer and no better than the hull's end: never worth a step */
        /* Pop the end while it lies above the chord: the step into it gains less per bit than
         * the step out of it would. Equal slopes are kept (smaller steps). */
        while (count >= 2 && sb_gain_per_bit(cost, loss, hull[count - 2], hull[count - 1]) <
                                 sb_gain_per_bit(cost, loss, hull[count - 1], k))
            count--;
        hull[count++] = k;
    }
    return count;
}

uint64_t sb_gain_key(double gain_per_bit)
{
    uint64_t u;
    memcpy(&u, &gain_per_bit, sizeof u);
    /* IEEE order-preserving map (negative floats reversed), then complemented so that the
     * largest gain gets the smallest key. +0 and -0 are made equal first. */
    if (gain_per_bit == 0)
        u = 0;
    uint64_t ascending = (u >> 63) ? ~u : (u | 0x8000000000000000ULL);
    return ~ascending;
}

int64_t sb_collect_steps(const sb_alloc_problem *problem, sb_hull_step *steps)
{
    int64_t count = 0;
    int hull[SB_MAX_OPTIONS];
    for (int64_t t = 0; t < problem->ntiles; t++) {
        const int64_t *cost = problem->cost + t * problem->noptions;
        const double *loss = problem->loss + t * problem->noptions;
        int points = sb_tile_hull(cost, loss, problem->noptions, hull);
        for (int s = 0; s + 1 < points; s++) {
            sb_hull_step *step = &steps[count++];
            step->order_key = sb_gain_key(sb_gain_per_bit(cost, loss, hull[s], hull[s + 1]));
            step->tile_id = problem->tile_id ? problem->tile_id[t] : t;
            step->tile_index = t;
            step->step = s;
            step->from = hull[s];
            step->to = hull[s + 1];
            step->extra_cost = cost[hull[s + 1]] - cost[hull[s]];
        }
    }
    return count;
}

int sb_step_compare(const sb_hull_step *a, const sb_hull_step *b)
{
    if (a->order_key != b->order_key)
        return a->order_key < b->order_key ? -1 : 1;
    if (a->tile_id != b->tile_id)
        return a->tile_id < b->tile_id ? -1 : 1;
    return a->step < b->step ? -1 : a->step > b->step ? 1 : 0;
}

static int compare_steps(const void *a, const void *b) { return sb_step_compare(a, b); }

static sb_status check_problem(const sb_alloc_problem *problem, sb_alloc_result *result, sb_error *err)
{
    if (problem->noptions < 1 || problem->noptions > SB_MAX_OPTIONS)
        return sb_error_set(err, SB_ERR_INTERNAL, "allocation with %d options per tile", problem->noptions);
    result->min_cost = result->max_cost = 0;
    for (int64_t t = 0; t < problem->ntiles; t++) {
        const int64_t *cost = problem->cost + t * problem->noptions;
        const double *loss = problem->loss + t * problem->noptions;
        for (int k = 0; k < problem->noptions; k++) {
            if (!isfinite(loss[k]) || (k > 0 && cost[k] <= cost[k - 1]))
                return sb_error_set(err, SB_ERR_INTERNAL,
                                    "tile %lld: option %d has a non-finite loss or a non-increasing cost",
                                    (long long)t, k);
        }
        result->min_cost += cost[0];
        result->max_cost += cost[problem->noptions - 1];
    }
    return SB_OK;
}

sb_status sb_alloc_greedy(const sb_alloc_problem *problem, uint8_t *choice, sb_alloc_result *result, sb_error *err)
{
    memset(result, 0, sizeof *result);
    SB_TRY(check_problem(problem, result, err));
    const int n = problem->noptions;
    if (problem->budget < result->min_cost)
        return sb_error_set(err, SB_ERR_BUDGET, "the budget of %lld bits is below the cheapest allocation (%lld bits)",
                            (long long)problem->budget, (long long)result->min_cost);
    if (problem->budget >= result->max_cost) {
        result->all_max = 1;
        for (int64_t t = 0; t < problem->ntiles; t++) {
            choice[t] = (uint8_t)(n - 1);
            result->loss += problem->loss[t * n + n - 1];
        }
        result->cost = result->max_cost;
        return SB_OK;
    }
    int64_t max_steps = problem->ntiles * (n - 1);
    sb_hull_step *steps = sb_malloc((size_t)(max_steps > 0 ? max_steps : 1) * sizeof *steps, "hull steps", err);
    uint8_t *frozen = sb_calloc((size_t)(problem->ntiles > 0 ? problem->ntiles : 1), 1, "tile flags", err);
    if (!steps || !frozen) {
        free(steps);
        free(frozen);
        return SB_ERR_NOMEM;
    }
    int64_t count = sb_collect_steps(problem, steps);
    qsort(steps, (size_t)count, sizeof *steps, compare_steps);
    for (int64_t t = 0; t < problem->ntiles; t++)
        choice[t] = 0;
    int64_t left = problem->budget - result->min_cost;
    int misfit_seen = 0;
    for (int64_t i = 0; i < count; i++) {
        const sb_hull_step *step = &steps[i];
        if (frozen[step->tile_index])
            continue;
        if (step->extra_cost <= left) {
            choice[step->tile_index] = (uint8_t)step->to;
            left -= step->extra_cost;
            result->steps_taken++;
            result->steps_after_first_misfit += misfit_seen;
        } else {
            frozen[step->tile_index] = 1;
            misfit_seen = 1;
        }
    }
    result->cost = problem->budget - left;
    for (int64_t t = 0; t < problem->ntiles; t++)
        result->loss += problem->loss[t * n + choice[t]];
    free(steps);
    free(frozen);
    return SB_OK;
}

sb_status sb_alloc_exact_dp(const sb_alloc_problem *problem, uint8_t *choice, double *loss, sb_error *err)
{
    const int n = problem->noptions;
    int64_t budget = problem->budget;
    int64_t width = budget + 1;
    double *best = sb_malloc((size_t)width * sizeof *best, "dp table", err);
    double *next = sb_malloc((size_t)width * sizeof *next, "dp table", err);
    uint8_t *pick = sb_malloc((size_t)(problem->ntiles * width), "dp choices", err);
    if (!best || !next || !pick) {
        free(best);
        free(next);
        free(pick);
        return SB_ERR_NOMEM;
    }
    /* best[c] = least loss of tiles processed so far with total cost exactly <= c */
    for (int64_t c = 0; c < width; c++)
        best[c] = 0;
    for (int64_t t = 0; t < problem->ntiles; t++) {
        for (int64_t c = 0; c < width; c++) {
            next[c] = INFINITY;
            pick[t * width + c] = 0;
            for (int k = 0; k < n; k++) {
                int64_t cost = problem->cost[t * n + k];
                if (cost > c || best[c - cost] == INFINITY)
                    continue;
                double value = best[c - cost] + problem->loss[t * n + k];
                if (value < next[c]) {
                    next[c] = value;
                    pick[t * width + c] = (uint8_t)k;
                }
            }
        }
        double *swap = best;
        best = next;
        next = swap;
    }
    sb_status status = SB_OK;
    if (best[budget] == INFINITY) {
        status = sb_error_set(err, SB_ERR_BUDGET, "no allocation fits %lld bits", (long long)budget);
    } else {
        *loss = best[budget];
        int64_t c = budget;
        for (int64_t t = problem->ntiles - 1; t >= 0; t--) {
            choice[t] = pick[t * width + c];
            c -= problem->cost[t * n + choice[t]];
        }
    }
    free(best);
    free(next);
    free(pick);
    return status;
}
