#include "sb_global_alloc.h"

#include "sb_agree.h"
#include "sb_mpi.h"

#include <stdlib.h>
#include <string.h>

typedef sb_step_order step_order; /* shorter, inside this file */

int sb_step_order_compare(const sb_step_order *a, const sb_step_order *b)
{
    if (a->key != b->key)
        return a->key < b->key ? -1 : 1;
    if (a->tile != b->tile)
        return a->tile < b->tile ? -1 : 1;
    return a->step < b->step ? -1 : a->step > b->step ? 1 : 0;
}

sb_step_order sb_step_order_of(const sb_hull_step *step)
{
    step_order order = {step->order_key, (uint64_t)step->tile_id, (uint64_t)step->step};
    return order;
}

static int compare_steps(const void *a, const void *b) { return sb_step_compare(a, b); }

/* Local extra bits of the steps strictly before `position` (binary search on sorted steps). */
int64_t sb_steps_before(const sb_hull_step *steps, const int64_t *prefix, int64_t count, const sb_step_order *position)
{
    int64_t lo = 0, hi = count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        step_order here = sb_step_order_of(&steps[mid]);
        if (sb_step_order_compare(&here, position) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return prefix[lo];
}

static sb_status global_sum(MPI_Comm comm, int64_t local, int64_t *total, sb_error *err)
{
    return SB_MPI_CALL(err, MPI_Allreduce(&local, total, 1, MPI_INT64_T, MPI_SUM, comm));
}

/* Bisection over one 64-bit field of the order, the others fixed: the largest value v in
 * [lo, hi] with sb_steps_before(order with field = v) <= limit. Requires it to hold at lo. */
static sb_status bisect_field(MPI_Comm comm, const sb_hull_step *steps, const int64_t *prefix, int64_t count,
                              step_order *position, uint64_t *field, uint64_t lo, uint64_t hi, int64_t limit,
                              int *rounds, sb_error *err)
{
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2 + 1;
        *field = mid;
        int64_t total;
        SB_TRY(global_sum(comm, sb_steps_before(steps, prefix, count, position), &total, err));
        (*rounds)++;
        if (total <= limit)
            lo = mid;
        else
            hi = mid - 1;
    }
    *field = lo;
    return SB_OK;
}

/* Lexicographic minimum of (key, tile, step), carrying the step's extra bits along. */
static void min_candidate(void *in, void *inout, int *length, MPI_Datatype *type)
{
    (void)type;
    const uint64_t *a = in;
    uint64_t *b = inout;
    for (int i = 0; i < *length; i++, a += 4, b += 4) {
        step_order x = {a[0], a[1], a[2]}, y = {b[0], b[1], b[2]};
        if (sb_step_order_compare(&x, &y) < 0)
            memcpy(b, a, 4 * sizeof *a);
    }
}

sb_status sb_global_order_limit(MPI_Comm comm, const sb_hull_step *steps, const int64_t *prefix, int64_t count,
                                int64_t limit, sb_step_order *position, int *rounds, sb_error *err)
{
    int local_rounds = 0;
    int *counter = rounds ? rounds : &local_rounds;
    int64_t total;
    SB_TRY(global_sum(comm, prefix[count], &total, err));
    if (total <= limit) {
        position->key = position->tile = position->step = UINT64_MAX;
        return SB_OK;
    }
    /* bits before (0, 0, 0) are none: the bisection invariant holds at the start */
    *position = (sb_step_order){0, 0, 0};
    SB_TRY(bisect_field(comm, steps, prefix, count, position, &position->key, 0, UINT64_MAX, limit, counter, err));
    SB_TRY(bisect_field(comm, steps, prefix, count, position, &position->tile, 0, UINT64_MAX, limit, counter, err));
    return bisect_field(comm, steps, prefix, count, position, &position->step, 0, UINT64_MAX, limit, counter, err);
}

sb_status sb_global_alloc(MPI_Comm comm, const sb_alloc_problem *problem, uint8_t *choice,
                          sb_global_alloc_stats *stats, sb_error *err)
{
    memset(stats, 0, sizeof *stats);
    const int n = problem->noptions;
    int64_t local_min = 0, local_max = 0;
    for (int64_t t = 0; t < problem->ntiles; t++) {
        local_min += problem->cost[t * n];
        local_max += problem->cost[t * n + n - 1];
        choice[t] = 0;
    }
    SB_TRY(global_sum(comm, local_min, &stats->min_cost, err));
    SB_TRY(global_sum(comm, local_max, &stats->max_cost, err));
    if (problem->budget < stats->min_cost)
        return sb_error_set(err, SB_ERR_BUDGET, "the budget of %lld bits is below the cheapest allocation (%lld bits)",
                            (long long)problem->budget, (long long)stats->min_cost);
    if (problem->budget >= stats->max_cost) {
        stats->all_max = 1;
        stats->cost = stats->max_cost;
        for (int64_t t = 0; t < problem->ntiles; t++)
            choice[t] = (uint8_t)(n - 1);
        return SB_OK;
    }
    int64_t capacity = problem->ntiles * (n - 1);
    sb_hull_step *steps = sb_malloc((size_t)(capacity > 0 ? capacity : 1) * sizeof *steps, "hull steps", err);
    int64_t *prefix = sb_malloc((size_t)(capacity + 1) * sizeof *prefix, "step prefix sums", err);
    uint8_t *applied = sb_calloc((size_t)(problem->ntiles > 0 ? problem->ntiles : 1), 1, "tile steps", err);
    MPI_Datatype candidate_type = MPI_DATATYPE_NULL;
    MPI_Op candidate_op = MPI_OP_NULL;
    /* every rank has its buffers before the first collective of the search */
    sb_status status = sb_agree(comm, !steps || !prefix || !applied ? SB_ERR_NOMEM : SB_OK, err);
    if (status != SB_OK)
        goto done;
    int64_t count = sb_collect_steps(problem, steps);
    qsort(steps, (size_t)count, sizeof *steps, compare_steps);
    prefix[0] = 0;
    for (int64_t i = 0; i < count; i++)
        prefix[i + 1] = prefix[i] + steps[i].extra_cost;
    int64_t room = problem->budget - stats->min_cost;
    int64_t all_steps_bits;
    if ((status = global_sum(comm, prefix[count], &all_steps_bits, err)) != SB_OK)
        goto done;
    /* Phase 1: the critical step. Everything strictly before it fits and is taken. */
    step_order critical = {UINT64_MAX, UINT64_MAX, UINT64_MAX};
    int64_t taken_bits = all_steps_bits;
    if (all_steps_bits > room) {
        if ((status = sb_global_order_limit(comm, steps, prefix, count, room, &critical, &stats->bisection_rounds,
                                            err)) != SB_OK)
            goto done;
        if ((status = global_sum(comm, sb_steps_before(steps, prefix, count, &critical), &taken_bits, err)) != SB_OK)
            goto done;
    }
    int64_t last_taken = 0;
    for (int64_t i = 0; i < count; i++) {
        step_order here = sb_step_order_of(&steps[i]);
        if (sb_step_order_compare(&here, &critical) >= 0)
            break;
        choice[steps[i].tile_index] = (uint8_t)steps[i].to;
        applied[steps[i].tile_index]++;
        stats->steps_taken++;
        last_taken = i + 1;
    }
    int64_t steps_taken_local = stats->steps_taken;
    (void)last_taken;
    int64_t left = room - taken_bits;
    /* Phase 2: after the critical step (which freezes its tile), take every later step that is
     * its tile's next one and fits, in global order. */
    if (all_steps_bits > room) {
        if ((status = SB_MPI_CALL(err, MPI_Type_contiguous(4, MPI_UINT64_T, &candidate_type))) != SB_OK ||
            (status = SB_MPI_CALL(err, MPI_Type_commit(&candidate_type))) != SB_OK ||
            (status = SB_MPI_CALL(err, MPI_Op_create(min_candidate, 1, &candidate_op))) != SB_OK)
            goto done;
        step_order cursor = critical;
        int64_t scan_from = 0;
        while (scan_from < count) {
            step_order here = sb_step_order_of(&steps[scan_from]);
            if (sb_step_order_compare(&here, &cursor) > 0)
                break;
            scan_from++;
        }
        for (;;) {
            uint64_t local[4] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, 0}, best[4];
            int64_t found = -1;
            for (int64_t i = scan_from; i < count; i++) {
                const sb_hull_step *step = &steps[i];
                if (applied[step->tile_index] == step->step && step->extra_cost <= left) {
                    found = i;
                    break;
                }
            }
            if (found >= 0) {
                local[0] = steps[found].order_key;
                local[1] = (uint64_t)steps[found].tile_id;
                local[2] = (uint64_t)steps[found].step;
                local[3] = (uint64_t)steps[found].extra_cost;
            }
            if ((status = SB_MPI_CALL(err, MPI_Allreduce(local, best, 1, candidate_type, candidate_op, comm))) != SB_OK)
                goto done;
            stats->skip_rounds++;
            if (best[0] == UINT64_MAX && best[1] == UINT64_MAX)
                break;
            if (found >= 0 && memcmp(local, best, 3 * sizeof *local) == 0) {
                choice[steps[found].tile_index] = (uint8_t)steps[found].to;
                applied[steps[found].tile_index]++;
            }
            left -= (int64_t)best[3];
            stats->steps_after_first_misfit++;
            cursor.key = best[0];
            cursor.tile = best[1];
            cursor.step = best[2];
            while (scan_from < count) {
                step_order here = sb_step_order_of(&steps[scan_from]);
                if (sb_step_order_compare(&here, &cursor) > 0)
                    break;
                scan_from++;
            }
        }
    }
    int64_t total_taken;
    if ((status = global_sum(comm, steps_taken_local, &total_taken, err)) != SB_OK)
        goto done;
    stats->steps_taken = total_taken + stats->steps_after_first_misfit;
    stats->cost = problem->budget - left;
done:
    /* freeing is local; a failure here cannot hide the search's own status */
    if (candidate_op != MPI_OP_NULL)
        SB_MPI_CALL(NULL, MPI_Op_free(&candidate_op));
    if (candidate_type != MPI_DATATYPE_NULL)
        SB_MPI_CALL(NULL, MPI_Type_free(&candidate_type));
    free(steps);
    free(prefix);
    free(applied);
    return status;
}
