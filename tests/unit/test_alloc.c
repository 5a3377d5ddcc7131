/* The greedy allocation against the exact dynamic-programming optimum on small random
 * instances: always within budget, never better than the optimum (a check of the DP), and
 * within one step's gain of it (the textbook bound for the hull greedy). Prints the gap. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_alloc.h"
#include "sb_test.h"

static void check_hull(void)
{
    /* convex already: all points */
    int64_t cost[4] = {10, 20, 30, 40};
    double loss[4] = {100, 50, 30, 20};
    int hull[4];
    SB_CHECK(sb_tile_hull(cost, loss, 4, hull) == 4);
    /* a point above the chord is skipped: 100 -> 90 (gain 1/bit) then -> 30 (6/bit) */
    double bump[4] = {100, 90, 30, 20};
    int count = sb_tile_hull(cost, bump, 4, hull);
    SB_CHECK(count == 3 && hull[0] == 0 && hull[1] == 2 && hull[2] == 3);
    /* non-monotone losses: a dearer, worse option is never on the hull */
    double worse[4] = {100, 120, 30, 40};
    count = sb_tile_hull(cost, worse, 4, hull);
    SB_CHECK(count == 2 && hull[1] == 2);
    /* a flat curve (all-zero tile): only the cheapest option */
    double flat[4] = {0, 0, 0, 0};
    SB_CHECK(sb_tile_hull(cost, flat, 4, hull) == 1);
    /* collinear points are kept so that steps stay small */
    double line[4] = {40, 30, 20, 10};
    SB_CHECK(sb_tile_hull(cost, line, 4, hull) == 4);
}

static void check_gain_key(void)
{
    double values[] = {-1e300, -2.5, -1e-300, 0.0, 1e-300, 1e-9, 0.5, 2.0, 1e300};
    for (size_t i = 0; i + 1 < sizeof values / sizeof *values; i++)
        SB_CHECK(sb_gain_key(values[i]) > sb_gain_key(values[i + 1]));
    SB_CHECK(sb_gain_key(0.0) == sb_gain_key(-0.0));
}

static void random_problem(sb_test_rng *rng, int64_t ntiles, int noptions, int64_t *cost, double *loss)
{
    static const int bit_options[] = {1, 2, 3, 4, 5, 6, 8};
    for (int64_t t = 0; t < ntiles; t++) {
        int64_t weights = 1 + (int64_t)(sb_test_next(rng) % 6); /* tiles of different sizes */
        double scale = 0.1 + 10 * sb_test_uniform(rng);
        double previous = INFINITY;
        for (int k = 0; k < noptions; k++) {
            int bits = bit_options[k];
            cost[t * noptions + k] = weights * bits + 1;
            /* roughly 4^-bits, with noise that makes some curves non-convex or non-monotone */
            double value = scale * weights * pow(0.25, bits) * (0.5 + sb_test_uniform(rng));
            if (sb_test_uniform(rng) < 0.8 && value > previous)
                value = previous * sb_test_uniform(rng);
            loss[t * noptions + k] = value;
            previous = value;
        }
    }
}

static void check_against_dp(void)
{
    sb_test_rng rng = {12345};
    double worst_gap = 0, sum_gap = 0;
    int instances = 0, optimal = 0;
    for (int trial = 0; trial < 2000; trial++) {
        int64_t ntiles = 1 + (int64_t)(sb_test_next(&rng) % 9);
        int noptions = 2 + (int)(sb_test_next(&rng) % 4);
        int64_t cost[9 * 8];
        double loss[9 * 8];
        random_problem(&rng, ntiles, noptions, cost, loss);
        int64_t min_cost = 0, max_cost = 0;
        for (int64_t t = 0; t < ntiles; t++) {
            min_cost += cost[t * noptions];
            max_cost += cost[t * noptions + noptions - 1];
        }
        int64_t budget = min_cost + (int64_t)(sb_test_uniform(&rng) * (double)(max_cost - min_cost + 3));
        sb_alloc_problem problem = {ntiles, noptions, cost, loss, NULL, budget};
        uint8_t greedy[9], exact[9];
        sb_alloc_result result;
        sb_error err;
        double exact_loss;
        SB_CHECK(sb_alloc_greedy(&problem, greedy, &result, &err) == SB_OK);
        SB_CHECK(sb_alloc_exact_dp(&problem, exact, &exact_loss, &err) == SB_OK);
        int64_t used = 0;
        double greedy_loss = 0, max_step_gain = 0;
        for (int64_t t = 0; t < ntiles; t++) {
            used += cost[t * noptions + greedy[t]];
            greedy_loss += loss[t * noptions + greedy[t]];
            for (int k = 1; k < noptions; k++)
                max_step_gain = fmax(max_step_gain, loss[t * noptions] - loss[t * noptions + k]);
        }
        SB_CHECK_MSG(used <= budget, "trial %d: %lld bits used of %lld", trial, (long long)used, (long long)budget);
        SB_CHECK(used == result.cost);
        SB_CHECK_NEAR(greedy_loss, result.loss, 1e-9 * (1 + greedy_loss));
        SB_CHECK_MSG(greedy_loss >= exact_loss - 1e-9 * (1 + exact_loss), "trial %d: greedy %g beats the optimum %g",
                     trial, greedy_loss, exact_loss);
        SB_CHECK_MSG(greedy_loss <= exact_loss + max_step_gain + 1e-9, "trial %d: gap %g above one step's gain %g",
                     trial, greedy_loss - exact_loss, max_step_gain);
        double gap = exact_loss > 0 ? (greedy_loss - exact_loss) / exact_loss : 0;
        worst_gap = fmax(worst_gap, gap);
        sum_gap += gap;
        optimal += greedy_loss <= exact_loss * (1 + 1e-12) + 1e-15;
        instances++;
    }
    printf("greedy vs exact DP on %d random instances: optimal in %d (%.1f%%), mean relative gap %.4f%%, "
           "worst %.2f%%\n", instances, optimal, 100.0 * optimal / instances, 100.0 * sum_gap / instances,
           100.0 * worst_gap);
}

static void check_edges(void)
{
    int64_t cost[6] = {10, 20, 40, 10, 20, 40};
    double loss[6] = {9, 3, 1, 8, 2, 0.5};
    uint8_t choice[2];
    sb_alloc_result result;
    sb_error err;
    sb_alloc_problem problem = {2, 3, cost, loss, NULL, 19};
    SB_CHECK(sb_alloc_greedy(&problem, choice, &result, &err) == SB_ERR_BUDGET);
    SB_CHECK(strstr(err.message, "cheapest") != NULL);
    problem.budget = 20;
    SB_CHECK(sb_alloc_greedy(&problem, choice, &result, &err) == SB_OK && choice[0] == 0 && choice[1] == 0);
    problem.budget = 80;
    SB_CHECK(sb_alloc_greedy(&problem, choice, &result, &err) == SB_OK && result.all_max && choice[0] == 2 &&
             choice[1] == 2);
    /* ties in gain per bit go to the lower global tile id: both tiles gain 6/10 per bit */
    double tied[6] = {9, 3, 3, 9, 3, 3};
    int64_t ids[2] = {7, 5};
    sb_alloc_problem tie = {2, 3, cost, tied, ids, 30};
    SB_CHECK(sb_alloc_greedy(&tie, choice, &result, &err) == SB_OK && choice[0] == 0 && choice[1] == 1);
    /* a misfit freezes its tile, but a later, smaller step of another tile is still taken */
    int64_t c2[4] = {10, 100, 10, 12};
    double l2[4] = {1000, 0, 10, 9.99};
    sb_alloc_problem skip = {2, 2, c2, l2, NULL, 25};
    SB_CHECK(sb_alloc_greedy(&skip, choice, &result, &err) == SB_OK && choice[0] == 0 && choice[1] == 1);
    SB_CHECK(result.steps_after_first_misfit == 1);
}

static void check_order_invariance(void)
{
    /* the allocation of a tile depends on its id, not on its position in the arrays */
    sb_test_rng rng = {99};
    enum { N = 200, K = 4 };
    int64_t cost[N * K], cost2[N * K], ids[N], ids2[N];
    double loss[N * K], loss2[N * K];
    random_problem(&rng, N, K, cost, loss);
    int perm[N];
    for (int i = 0; i < N; i++) {
        perm[i] = i;
        ids[i] = i;
    }
    for (int i = N - 1; i > 0; i--) {
        int j = (int)(sb_test_next(&rng) % (uint64_t)(i + 1));
        int s = perm[i]; perm[i] = perm[j]; perm[j] = s;
    }
    for (int i = 0; i < N; i++) {
        ids2[i] = perm[i];
        memcpy(&cost2[i * K], &cost[perm[i] * K], K * sizeof *cost);
        memcpy(&loss2[i * K], &loss[perm[i] * K], K * sizeof *loss);
    }
    uint8_t a[N], b[N];
    sb_alloc_result ra, rb;
    sb_error err;
    sb_alloc_problem pa = {N, K, cost, loss, ids, 0}, pb = {N, K, cost2, loss2, ids2, 0};
    int64_t min_cost = 0;
    for (int i = 0; i < N; i++)
        min_cost += cost[i * K];
    pa.budget = pb.budget = min_cost * 2;
    SB_CHECK(sb_alloc_greedy(&pa, a, &ra, &err) == SB_OK);
    SB_CHECK(sb_alloc_greedy(&pb, b, &rb, &err) == SB_OK);
    for (int i = 0; i < N; i++)
        SB_CHECK(b[i] == a[perm[i]]);
}

int main(void)
{
    check_hull();
    check_gain_key();
    check_against_dp();
    check_edges();
    check_order_invariance();
    return sb_test_finish("test_alloc");
}
