/* src/sb_calib_stats.h against brute force on a small Qwen3-MoE layer fed by hand: every
 * expert's E[x^2] sums are sum w x^2 over its routed rows (w its routing weight), its Hessian
 * sum w x x^T (block-diagonal, shared by gate and up), its Fisher and gradient sums those of its
 * own gradients; the dense kinds and the router count every row with weight 1; and the
 * rarely-routed rule: below the threshold an expert (one with no row at all included) is its
 * layer's average expert (pooled E[x^2] and Hessian, mean Fisher, no gradient, share 1 / E),
 * at the threshold it keeps its own statistics and its share of the layer. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_calib_stats.h"
#include "sb_test.h"

enum { HIDDEN = 6, FFN = 4, EXPERTS = 3, TOKENS = 7, BLOCK = 4 };

static sb_model_shape moe_shape(void)
{
    sb_model_shape s;
    memset(&s, 0, sizeof s);
    s.architecture = SB_ARCH_QWEN3_MOE;
    s.hidden_size = HIDDEN;
    s.intermediate_size = 8;
    s.num_attention_heads = 2;
    s.num_key_value_heads = 1;
    s.head_dim = 4;
    s.num_hidden_layers = 2;
    s.vocab_size = 16;
    s.num_experts = EXPERTS;
    s.num_experts_per_tok = 2;
    s.moe_intermediate_size = FFN;
    s.decoder_sparse_step = 1;
    s.mlp_only_layers[0] = 1; /* layer 0 dense, layer 1 MoE */
    return s;
}

/* Routed rows of each expert: expert 0 gets 4, expert 1 gets 3, expert 2 none. */
static const int64_t routed_rows[EXPERTS] = {4, 3, 0};
static const int64_t token_rows[EXPERTS][4] = {{0, 2, 3, 6}, {1, 4, 5, 0}, {0, 0, 0, 0}};

/* Feeds one pass: the router's and the attention's inputs (every token), every expert's gate/up
 * and down inputs over its rows. */
static void feed(sb_stats_sink *sink, const float *x, const float (*act)[4 * FFN], const float (*weights)[4])
{
    sb_error err;
    sb_linear_input q = {{SB_ROLE_Q, 1, -1}, x, TOKENS, HIDDEN, NULL, NULL, TOKENS, TOKENS};
    SB_CHECK(sb_stats_on_activation(sink, &q, &err) == SB_OK);
    sb_linear_input router = q;
    router.id.role = SB_ROLE_ROUTER;
    SB_CHECK(sb_stats_on_activation(sink, &router, &err) == SB_OK);
    for (int64_t e = 0; e < EXPERTS; e++) {
        float gathered[4 * HIDDEN];
        for (int64_t r = 0; r < routed_rows[e]; r++)
            memcpy(gathered + r * HIDDEN, x + token_rows[e][r] * HIDDEN, HIDDEN * sizeof(float));
        sb_linear_input in = {{SB_ROLE_GATE, 1, e}, gathered, routed_rows[e], HIDDEN, token_rows[e], weights[e],
                              TOKENS, TOKENS};
        SB_CHECK(sb_stats_on_activation(sink, &in, &err) == SB_OK);
        in.id.role = SB_ROLE_UP;
        SB_CHECK(sb_stats_on_activation(sink, &in, &err) == SB_OK);
        in.id.role = SB_ROLE_DOWN;
        in.x = act[e];
        in.in_features = FFN;
        SB_CHECK(sb_stats_on_activation(sink, &in, &err) == SB_OK);
    }
}

static bool near(double a, double b) { return fabs(a - b) <= 1e-6 * (fabs(b) + 1e-9); }

int main(void)
{
    sb_model_shape shape = moe_shape();
    sb_test_rng rng = {31};
    sb_error err;
    float x[TOKENS * HIDDEN], act[EXPERTS][4 * FFN], weights[EXPERTS][4];
    for (int i = 0; i < TOKENS * HIDDEN; i++)
        x[i] = (float)sb_test_normal(&rng);
    for (int e = 0; e < EXPERTS; e++)
        for (int i = 0; i < 4 * FFN; i++)
            act[e][i] = (float)sb_test_normal(&rng);
    for (int e = 0; e < EXPERTS; e++)
        for (int r = 0; r < 4; r++)
            weights[e][r] = (float)(0.2 + 0.6 * sb_test_uniform(&rng));

    /* which weights each layer has, and where */
    sb_layer_stats stats[2];
    SB_CHECK(sb_layer_stats_create(&shape, 0, true, true, true, &stats[0], &err) == SB_OK);
    SB_CHECK(sb_layer_stats_create(&shape, 1, true, true, true, &stats[1], &err) == SB_OK);
    SB_CHECK(stats[0].count == 7 && stats[0].num_experts == 0);
    SB_CHECK(stats[1].count == 5 + 3 * EXPERTS && stats[1].num_experts == EXPERTS);
    sb_tensor_id down2 = {SB_ROLE_DOWN, 1, 2};
    SB_CHECK(sb_layer_stats_index(&shape, 1, &down2) == 5 + 3 * 2 + 2);
    SB_CHECK(sb_layer_stats_find(&stats[1], &down2)->rows == HIDDEN && sb_layer_stats_find(&stats[1], &down2)->cols == FFN);
    SB_CHECK(!sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, -1})); /* no dense MLP */
    SB_CHECK(!sb_layer_stats_find(&stats[0], &(sb_tensor_id){SB_ROLE_ROUTER, 0, -1}));
    SB_CHECK(!sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, EXPERTS}));

    /* E[x^2] sums against brute force */
    sb_stats_sink sink = {stats, 0, 2};
    feed(&sink, x, act, weights);
    bool act_ok = true;
    for (int64_t e = 0; e < EXPERTS; e++) {
        const sb_weight_stats *gate = sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, e});
        const sb_weight_stats *down = sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, e});
        double weight = 0;
        for (int64_t r = 0; r < routed_rows[e]; r++)
            weight += weights[e][r];
        act_ok &= gate->act_rows == routed_rows[e] && near(gate->act_weight, weight) && near(down->act_weight, weight);
        for (int64_t j = 0; j < HIDDEN; j++) {
            double sum = 0;
            for (int64_t r = 0; r < routed_rows[e]; r++)
                sum += weights[e][r] * x[token_rows[e][r] * HIDDEN + j] * x[token_rows[e][r] * HIDDEN + j];
            act_ok &= near(gate->act_sum[j], sum);
        }
        for (int64_t j = 0; j < FFN; j++) {
            double sum = 0;
            for (int64_t r = 0; r < routed_rows[e]; r++)
                sum += weights[e][r] * act[e][r * FFN + j] * act[e][r * FFN + j];
            act_ok &= near(down->act_sum[j], sum);
        }
    }
    const sb_weight_stats *router = sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_ROUTER, 1, -1});
    double column0 = 0;
    for (int64_t t = 0; t < TOKENS; t++)
        column0 += x[t * HIDDEN] * x[t * HIDDEN];
    act_ok &= router->act_weight == TOKENS && near(router->act_sum[0], column0) && stats[1].act_tokens == TOKENS;
    SB_CHECK_MSG(act_ok, "E[x^2] sums differ from brute force");

    /* Hessians: a second pass gathers sum w x x^T of each distinct input, block-diagonal */
    SB_CHECK(sb_layer_stats_add_hessian(&stats[1], BLOCK, &err) == SB_OK);
    feed(&sink, x, act, weights);
    bool hessian_ok = true;
    for (int64_t e = 0; e < 2; e++) {
        double weight;
        const float *h = sb_layer_stats_hessian(&stats[1], &(sb_tensor_id){SB_ROLE_UP, 1, e}, &weight);
        hessian_ok &= h == sb_layer_stats_hessian(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, e}, NULL);
        for (int64_t i = 0; h && i < HIDDEN; i++)
            for (int64_t j = 0; j < HIDDEN; j++) {
                if (i / BLOCK != j / BLOCK)
                    continue;
                double sum = 0;
                for (int64_t r = 0; r < routed_rows[e]; r++)
                    sum += weights[e][r] * x[token_rows[e][r] * HIDDEN + i] * x[token_rows[e][r] * HIDDEN + j];
                /* block b (columns b*BLOCK ..) is stored at b * BLOCK^2, width = its column count */
                int64_t b0 = i / BLOCK * BLOCK, width = HIDDEN - b0 < BLOCK ? HIDDEN - b0 : BLOCK;
                /* float32 sums (SSYRK) against double: within float rounding of the rows' scale */
                hessian_ok &= fabs(h[b0 * BLOCK + (i - b0) * width + (j - b0)] - sum) <= 1e-5;
            }
    }
    SB_CHECK_MSG(hessian_ok, "weighted Hessians differ from brute force");

    /* gradients of expert 0's down and of the router, twice */
    float grad[HIDDEN * FFN];
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < HIDDEN * FFN; i++)
            grad[i] = (float)(i % 5) - 2.0f + (float)pass;
        SB_CHECK(sb_stats_on_gradient(&sink, &(sb_tensor_id){SB_ROLE_DOWN, 1, 0}, grad, HIDDEN, FFN, &err) == SB_OK);
        SB_CHECK(sb_stats_on_gradient(&sink, &(sb_tensor_id){SB_ROLE_DOWN, 1, 1}, grad, HIDDEN, FFN, &err) == SB_OK);
    }
    const sb_weight_stats *down0 = sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, 0});
    double g3 = 3 % 5 - 2.0;
    SB_CHECK(down0->fisher_sum[3] == (float)(g3 * g3 + (g3 + 1) * (g3 + 1)) && down0->grad_sum[3] == (float)(2 * g3 + 1));
    stats[1].scored_tokens = TOKENS - 1;

    /* the rule at threshold 4: expert 0 (4 rows) keeps its own, 1 (3 rows) and 2 (none) pool */
    SB_CHECK(sb_layer_stats_pool(&stats[1], 4, &err) == SB_OK);
    sb_weight_view own = sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, 0});
    SB_CHECK(!own.pooled && own.act_sum == down0->act_sum && own.grad_sum == down0->grad_sum);
    SB_CHECK(near(own.share, down0->act_weight / TOKENS));
    bool pooled_ok = true;
    for (int64_t e = 1; e < EXPERTS; e++) {
        sb_weight_view view = sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, e});
        pooled_ok &= view.pooled && view.grad_sum == NULL && near(view.share, 1.0 / EXPERTS);
        double weight = 0;
        for (int64_t k = 0; k < EXPERTS; k++)
            weight += sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, k})->act_weight;
        pooled_ok &= near(view.act_weight, weight);
        for (int64_t j = 0; j < FFN; j++) {
            double sum = 0;
            for (int64_t k = 0; k < EXPERTS; k++)
                sum += sb_layer_stats_find(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, k})->act_sum[j];
            pooled_ok &= near(view.act_sum[j], sum);
        }
        /* the experts' mean Fisher: (F0 + F1 + 0) / 3 */
        pooled_ok &= near(view.fisher_sum[3], 2.0 * down0->fisher_sum[3] / EXPERTS);
        double pooled_weight;
        sb_weight_view gate = sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_UP, 1, e});
        const float *h0 = sb_layer_stats_hessian(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, 0}, &pooled_weight);
        const float *h1 = sb_layer_stats_hessian(&stats[1], &(sb_tensor_id){SB_ROLE_GATE, 1, 1}, NULL);
        pooled_ok &= gate.pooled && near(gate.hessian[1], (double)h0[1] + h1[1]);
    }
    SB_CHECK_MSG(pooled_ok, "the pooled estimate of rarely routed experts is wrong");
    /* at the threshold an expert is its own: threshold 3 makes expert 1 (3 rows) its own again */
    SB_CHECK(sb_layer_stats_pool(&stats[1], 3, &err) == SB_OK);
    SB_CHECK(!sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, 1}).pooled);
    SB_CHECK(sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_DOWN, 1, 2}).pooled);
    /* dense kinds and the router: their own statistics, share 1 */
    sb_weight_view q = sb_layer_stats_view(&stats[1], &(sb_tensor_id){SB_ROLE_Q, 1, -1});
    SB_CHECK(!q.pooled && q.share == 1.0 && q.act_weight == TOKENS);
    /* a statistic the layer does not have is an internal error, not a crash */
    sb_linear_input stray = {{SB_ROLE_GATE, 1, -1}, x, TOKENS, HIDDEN, NULL, NULL, TOKENS, TOKENS};
    SB_CHECK(sb_stats_on_activation(&sink, &stray, &err) == SB_ERR_INTERNAL);
    sb_layer_stats_free(&stats[0]);
    sb_layer_stats_free(&stats[1]);
    return sb_test_finish("test_calib_stats");
}
