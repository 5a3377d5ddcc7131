/* Channel reordering (src/sb_reorder.h) folded into the model changes nothing it computes:
 *  - the FP model with every permutation folded in (random permutations, and permutations
 *    sorted from real Fisher * W^2 importance) gives the original logits (max relative
 *    difference <= 1e-5, relative to the largest logit magnitude), the original NLL, and the
 *    original final hidden state once that is permuted back;
 *  - on both test models: the embedded tiny-austen-kjv (GQA 4/2, untied) and stories260K
 *    (GQA 8/4, FFN 172, tied embeddings; skipped with a message without ../shared).
 * Also: permutation validity and its errors; sorting clusters importance (the first band of
 * every shared order holds the most importance any order can give it, and the top-left tiles
 * gain); per-tensor lookups (gather, row-run reads) give exactly the tensors of the folded
 * model; statistics permuted by sb_reorder_apply_stats match those measured on the folded
 * model; the distributed recipe (per-layer contributions, partial layer ranges) gives the
 * same orders as one process.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_calib_stats.h"
#include "sb_config.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_reorder.h"
#include "sb_safetensors.h"
#include "sb_test.h"
#include "sb_tokens.h"

enum { CTX = 64, WINDOWS = 4, TILE = 16 };

/* max |a - b| / max |b|: the difference relative to the scale of the reference. */
static double max_relative(const float *a, const float *b, int64_t n)
{
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs((double)b[i]));
        worst = fmax(worst, fabs((double)a[i] - (double)b[i]));
    }
    return worst / (scale > 0 ? scale : 1);
}

static double max_relative_double(const double *a, const double *b, int64_t n)
{
    double worst = 0, scale = 0;
    for (int64_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs(b[i]));
        worst = fmax(worst, fabs(a[i] - b[i]));
    }
    return worst / (scale > 0 ? scale : 1);
}

static void set_identity32(int32_t *order, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        order[i] = (int32_t)i;
}

static void shuffle(sb_test_rng *rng, int32_t *order, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(sb_test_next(rng) % (uint64_t)(i + 1));
        int32_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* Random orders that keep GQA valid: shuffled kv heads, their groups' query heads shuffled
 * inside the group, shuffled value channels, hidden and mlp orders. */
static void random_reorder(sb_test_rng *rng, sb_reorder *r)
{
    const sb_model_shape *s = &r->shape;
    int64_t group = s->num_attention_heads / s->num_key_value_heads;
    shuffle(rng, r->hidden, s->hidden_size);
    for (int64_t layer = r->layer_begin; layer < r->layer_end; layer++) {
        sb_layer_reorder *l = sb_reorder_layer(r, layer);
        shuffle(rng, l->mlp, s->intermediate_size);
        shuffle(rng, l->kv_heads, s->num_key_value_heads);
        for (int64_t g = 0; g < s->num_key_value_heads; g++) {
            for (int64_t i = 0; i < group; i++)
                l->q_heads[g * group + i] = (int32_t)(l->kv_heads[g] * group + i);
            shuffle(rng, l->q_heads + g * group, group);
            shuffle(rng, l->head_dims + g * s->head_dim, s->head_dim);
        }
    }
}

/* ---- The model's outputs ---------------------------------------------------------------------- */

typedef struct outputs {
    float *hidden; /* [T x hidden] final residual stream (before the final norm) */
    float *logits; /* [T x vocab] */
    sb_nll nll;
} outputs;

static void outputs_free(outputs *o)
{
    free(o->hidden);
    free(o->logits);
}

/* Runs the stages; logits are lm_head * RMSNorm(x) * final_norm written out here (the runtime
 * only keeps NLLs), so they use the model's own (possibly permuted) head weights. */
static bool run(const sb_model *model, const uint32_t *tokens, outputs *out)
{
    const sb_model_shape *s = &model->shape;
    int64_t T = WINDOWS * CTX, hidden = s->hidden_size, vocab = s->vocab_size;
    out->hidden = malloc((size_t)(T * hidden) * sizeof(float));
    out->logits = malloc((size_t)(T * vocab) * sizeof(float));
    out->nll = (sb_nll){0, 0};
    sb_error err;
    sb_model_workspace *ws = NULL;
    bool ok = sb_model_workspace_create(s, CTX, WINDOWS, 1, false, &ws, &err) == SB_OK;
    ok = ok && sb_embed_forward(s, model->embed, tokens, T, out->hidden, &err) == SB_OK;
    for (int64_t l = 0; ok && l < s->num_hidden_layers; l++)
        ok = sb_layer_forward(s, l, &model->layers[l], out->hidden, WINDOWS, CTX, NULL, NULL, NULL, ws, &err) == SB_OK;
    ok = ok && sb_head_forward(s, model->final_norm, model->lm_head, out->hidden, tokens, WINDOWS, CTX, ws, &out->nll,
                               NULL, &err) == SB_OK;
    SB_CHECK_MSG(ok, "%s", err.message);
    sb_model_workspace_free(ws);
    double *normed = malloc((size_t)hidden * sizeof(double));
    for (int64_t t = 0; ok && t < T; t++) {
        const float *x = out->hidden + t * hidden;
        double squares = 0;
        for (int64_t j = 0; j < hidden; j++)
            squares += (double)x[j] * x[j];
        double inv_rms = 1.0 / sqrt(squares / (double)hidden + s->rms_norm_eps);
        for (int64_t j = 0; j < hidden; j++)
            normed[j] = x[j] * inv_rms * model->final_norm[j];
        for (int64_t v = 0; v < vocab; v++) {
            double logit = 0;
            for (int64_t j = 0; j < hidden; j++)
                logit += normed[j] * model->lm_head[v * hidden + j];
            out->logits[t * vocab + v] = (float)logit;
        }
    }
    free(normed);
    return ok;
}

/* Folded model vs original: logits, NLL and the final hidden state permuted back. */
static void compare_outputs(const char *label, const sb_reorder *r, const sb_model *model, const outputs *reference,
                            const outputs *got)
{
    const sb_model_shape *s = &model->shape;
    int64_t T = WINDOWS * CTX, hidden = s->hidden_size;
    double logits = max_relative(got->logits, reference->logits, T * s->vocab_size);
    /* new channel j holds old channel hidden[j] */
    float *back = malloc((size_t)(T * hidden) * sizeof(float));
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < hidden; j++)
            back[t * hidden + r->hidden[j]] = got->hidden[t * hidden + j];
    double states = max_relative(back, reference->hidden, T * hidden);
    double nll = fabs(got->nll.sum - reference->nll.sum) / fabs(reference->nll.sum);
    printf("  %-34s logits max rel diff %.2e   final hidden %.2e   NLL rel diff %.2e\n", label, logits, states, nll);
    SB_CHECK_MSG(logits <= 1e-5, "%s: logits differ by %.3g", label, logits);
    SB_CHECK_MSG(states <= 1e-5, "%s: hidden states differ by %.3g", label, states);
    SB_CHECK_MSG(nll <= 1e-5, "%s: NLL differs by %.3g", label, nll);
    SB_CHECK(got->nll.count == reference->nll.count);
    free(back);
}

/* ---- Calibration statistics -------------------------------------------------------------------- */

static bool calibrate(const sb_model *model, const uint32_t *tokens, sb_layer_stats *stats)
{
    const sb_model_shape *s = &model->shape;
    sb_error err;
    sb_model_workspace *ws = NULL;
    sb_layer_cache **caches = calloc((size_t)s->num_hidden_layers, sizeof *caches);
    bool ok = sb_model_workspace_create(s, CTX, WINDOWS, 1, true, &ws, &err) == SB_OK;
    for (int64_t l = 0; ok && l < s->num_hidden_layers; l++)
        ok = sb_layer_stats_create(s, l, true, true, true, &stats[l], &err) == SB_OK &&
             sb_layer_cache_create(s, l, WINDOWS * CTX, &caches[l], &err) == SB_OK;
    sb_stats_sink sink = {stats, 0, s->num_hidden_layers};
    sb_gradient_sink gradients = {sb_stats_on_gradient, NULL, &sink};
    sb_nll nll = {0, 0};
    ok = ok && sb_model_backward(model, tokens, WINDOWS, CTX, ws, caches, sb_stats_on_activation, &sink, &gradients,
                                 &nll, &err) == SB_OK;
    SB_CHECK_MSG(ok, "%s", err.message);
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        stats[l].scored_tokens = nll.count;
        sb_layer_cache_free(caches[l]);
    }
    free(caches);
    sb_model_workspace_free(ws);
    return ok;
}

/* Element importance F * W^2 of every linear weight, and its marginals. */
typedef struct importance {
    float *element[SB_LINEAR_KIND_COUNT]; /* [rows x cols] */
    double *row[SB_LINEAR_KIND_COUNT], *col[SB_LINEAR_KIND_COUNT];
} importance;

static void importance_compute(const sb_model *model, const sb_layer_stats *stats, importance *imp,
                               sb_layer_importance *marginals)
{
    for (int64_t l = 0; l < model->shape.num_hidden_layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(&model->shape, (sb_linear_kind)k, &rows, &cols);
            const float *w = sb_layer_linear(&model->layers[l], (sb_linear_kind)k);
            importance *m = &imp[l];
            m->element[k] = malloc((size_t)(rows * cols) * sizeof(float));
            for (int64_t i = 0; i < rows * cols; i++)
                m->element[k][i] = stats[l].fisher_sum[k][i] * w[i] * w[i];
            m->row[k] = calloc((size_t)rows, sizeof(double));
            m->col[k] = calloc((size_t)cols, sizeof(double));
            sb_reorder_marginals(w, NULL, stats[l].fisher_sum[k], rows, cols, m->row[k], m->col[k]);
            marginals[l].row[k] = m->row[k];
            marginals[l].col[k] = m->col[k];
        }
}

static void importance_free(importance *imp, int64_t layers)
{
    for (int64_t l = 0; l < layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            free(imp[l].element[k]);
            free(imp[l].row[k]);
            free(imp[l].col[k]);
        }
}

/* Importance in rows [0, row_band) x cols [0, col_band) of a permuted copy of `element`. */
static double block_sum(const sb_reorder *r, int k, int64_t layer, const float *element, int64_t row_band,
                        int64_t col_band)
{
    sb_error err;
    sb_tensor_perm perm;
    SB_CHECK(sb_reorder_tensor_perm(r, (sb_tensor_role)k, layer, &perm, &err) == SB_OK);
    float *copy = malloc((size_t)(perm.rows * perm.cols) * sizeof(float));
    sb_reorder_gather(&perm, element, sizeof(float), 0, perm.rows, copy);
    double sum = 0;
    for (int64_t i = 0; i < perm.rows && i < row_band; i++)
        for (int64_t j = 0; j < perm.cols && j < col_band; j++)
            sum += copy[i * perm.cols + j];
    free(copy);
    return sum;
}

/* Sorting clusters: for every shared order, the importance in its first band of TILE channels,
 * summed over the tensors sharing it, is at least the identity's (it is the maximum); and the
 * top-left TILE x TILE tiles of all linear weights together hold more than before. */
static void check_clustering(const sb_model_shape *s, const sb_reorder *sorted, const sb_reorder *identity,
                             const importance *imp)
{
    double hidden_before = 0, hidden_after = 0, tiles_before = 0, tiles_after = 0, total = 0;
    bool bands_ok = true;
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        static const int hidden_cols[] = {SB_LINEAR_Q, SB_LINEAR_K, SB_LINEAR_V, SB_LINEAR_GATE, SB_LINEAR_UP};
        static const int hidden_rows[] = {SB_LINEAR_O, SB_LINEAR_DOWN};
        for (int i = 0; i < 5; i++) {
            hidden_before += block_sum(identity, hidden_cols[i], l, imp[l].element[hidden_cols[i]], INT64_MAX, TILE);
            hidden_after += block_sum(sorted, hidden_cols[i], l, imp[l].element[hidden_cols[i]], INT64_MAX, TILE);
        }
        for (int i = 0; i < 2; i++) {
            hidden_before += block_sum(identity, hidden_rows[i], l, imp[l].element[hidden_rows[i]], TILE, INT64_MAX);
            hidden_after += block_sum(sorted, hidden_rows[i], l, imp[l].element[hidden_rows[i]], TILE, INT64_MAX);
        }
        /* mlp band: first TILE rows of gate and up, first TILE columns of down */
        double mlp_before = 0, mlp_after = 0;
        for (int k = SB_LINEAR_GATE; k <= SB_LINEAR_UP; k++) {
            mlp_before += block_sum(identity, k, l, imp[l].element[k], TILE, INT64_MAX);
            mlp_after += block_sum(sorted, k, l, imp[l].element[k], TILE, INT64_MAX);
        }
        mlp_before += block_sum(identity, SB_LINEAR_DOWN, l, imp[l].element[SB_LINEAR_DOWN], INT64_MAX, TILE);
        mlp_after += block_sum(sorted, SB_LINEAR_DOWN, l, imp[l].element[SB_LINEAR_DOWN], INT64_MAX, TILE);
        bands_ok = bands_ok && mlp_after >= mlp_before * (1 - 1e-12);
        /* head band: first head of q rows, k rows, v rows and o columns */
        double heads_before = 0, heads_after = 0;
        int64_t hd = s->head_dim;
        for (int k = SB_LINEAR_Q; k <= SB_LINEAR_V; k++) {
            heads_before += block_sum(identity, k, l, imp[l].element[k], hd, INT64_MAX);
            heads_after += block_sum(sorted, k, l, imp[l].element[k], hd, INT64_MAX);
        }
        heads_before += block_sum(identity, SB_LINEAR_O, l, imp[l].element[SB_LINEAR_O], INT64_MAX, hd);
        heads_after += block_sum(sorted, SB_LINEAR_O, l, imp[l].element[SB_LINEAR_O], INT64_MAX, hd);
        SB_CHECK_MSG(mlp_after >= mlp_before * (1 - 1e-12), "layer %lld mlp band %.6g < %.6g", (long long)l,
                     mlp_after, mlp_before);
        SB_CHECK_MSG(heads_after >= heads_before * (1 - 1e-12), "layer %lld head band %.6g < %.6g", (long long)l,
                     heads_after, heads_before);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            tiles_before += block_sum(identity, k, l, imp[l].element[k], TILE, TILE);
            tiles_after += block_sum(sorted, k, l, imp[l].element[k], TILE, TILE);
            total += block_sum(identity, k, l, imp[l].element[k], INT64_MAX, INT64_MAX);
        }
    }
    printf("  importance in the first %d hidden channels of every linear weight: %.2f%% -> %.2f%%\n", TILE,
           100 * hidden_before / total, 100 * hidden_after / total);
    printf("  importance in the top-left %dx%d tiles: %.2f%% -> %.2f%% of all linear weights' importance\n", TILE,
           TILE, 100 * tiles_before / total, 100 * tiles_after / total);
    SB_CHECK_MSG(hidden_after >= hidden_before * (1 - 1e-12), "hidden band %.6g < %.6g", hidden_after, hidden_before);
    SB_CHECK_MSG(hidden_after > hidden_before, "sorting did not raise the hidden band (%.6g)", hidden_after);
    SB_CHECK_MSG(tiles_after > tiles_before, "top-left tiles %.6g <= %.6g", tiles_after, tiles_before);
    SB_CHECK(bands_ok);
}

/* ---- Per-tensor lookups ------------------------------------------------------------------------ */

typedef struct matrix_reader {
    const float *data;
    int64_t cols;
    int calls;
} matrix_reader;

static sb_status read_matrix_rows(void *user, int64_t row_begin, int64_t row_count, void *dst, sb_error *err)
{
    matrix_reader *reader = user;
    reader->calls++;
    memcpy(dst, reader->data + row_begin * reader->cols, (size_t)(row_count * reader->cols) * sizeof(float));
    return SB_OK;
}

/* Gathering `original` by the lookup of (role, layer), whole and by row blocks through a
 * reader, gives exactly `folded` (the tensor of the model the reordering was applied to). */
static bool lookup_matches(const sb_reorder *r, sb_tensor_role role, int64_t layer, const float *original,
                           const float *folded)
{
    sb_error err;
    sb_tensor_perm perm;
    if (sb_reorder_tensor_perm(r, role, layer, &perm, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        return false;
    }
    size_t n = (size_t)(perm.rows * perm.cols);
    float *dst = malloc(n * sizeof(float));
    sb_reorder_gather(&perm, original, sizeof(float), 0, perm.rows, dst);
    bool same = memcmp(dst, folded, n * sizeof(float)) == 0;
    memset(dst, 0, n * sizeof(float));
    matrix_reader reader = {original, perm.cols, 0};
    const int64_t block = 7; /* not a divisor of any dimension: ragged last block */
    for (int64_t r0 = 0; r0 < perm.rows; r0 += block) {
        int64_t count = perm.rows - r0 < block ? perm.rows - r0 : block;
        SB_CHECK(sb_reorder_read_rows(&perm, sizeof(float), read_matrix_rows, &reader, r0, count,
                                      dst + r0 * perm.cols, &err) == SB_OK);
    }
    same = same && memcmp(dst, folded, n * sizeof(float)) == 0;
    if (!perm.row_src) /* an identity row order reads each block in one call */
        SB_CHECK(reader.calls == (perm.rows + block - 1) / block);
    free(dst);
    SB_CHECK_MSG(same, "%s of layer %lld: the lookup does not give the folded tensor", sb_role_name(role),
                 (long long)layer);
    return same;
}

static void check_lookups(const sb_reorder *r, const sb_model *original, const sb_model *folded)
{
    const sb_model_shape *s = &original->shape;
    int checked = 0;
    checked += lookup_matches(r, SB_ROLE_EMBED, -1, original->embed, folded->embed);
    checked += lookup_matches(r, SB_ROLE_FINAL_NORM, -1, original->final_norm, folded->final_norm);
    if (!s->tie_word_embeddings)
        checked += lookup_matches(r, SB_ROLE_LM_HEAD, -1, original->lm_head, folded->lm_head);
    else
        SB_CHECK(folded->lm_head == folded->embed);
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        checked += lookup_matches(r, SB_ROLE_ATTN_NORM, l, original->layers[l].attn_norm, folded->layers[l].attn_norm);
        checked += lookup_matches(r, SB_ROLE_MLP_NORM, l, original->layers[l].mlp_norm, folded->layers[l].mlp_norm);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            checked += lookup_matches(r, (sb_tensor_role)k, l, sb_layer_linear(&original->layers[l], (sb_linear_kind)k),
                                      sb_layer_linear(&folded->layers[l], (sb_linear_kind)k));
    }
    printf("  per-tensor lookups: %d tensors gathered and read by row blocks equal the folded model's\n", checked);
}

/* Statistics of the original model permuted by sb_reorder_apply_stats = statistics measured on
 * the folded model (float rounding aside). */
static void check_stats(const sb_reorder *r, sb_layer_stats *original, const sb_layer_stats *folded, int64_t layers)
{
    sb_error err;
    double act = 0, fisher = 0, grad = 0;
    for (int64_t l = 0; l < layers; l++) {
        SB_CHECK(sb_reorder_apply_stats(r, &original[l], &err) == SB_OK);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t n = original[l].rows[k] * original[l].cols[k];
            act = fmax(act, max_relative_double(original[l].act_sum[k], folded[l].act_sum[k], original[l].cols[k]));
            fisher = fmax(fisher, max_relative(original[l].fisher_sum[k], folded[l].fisher_sum[k], n));
            grad = fmax(grad, max_relative(original[l].grad_sum[k], folded[l].grad_sum[k], n));
        }
    }
    printf("  statistics permuted vs measured on the folded model: act %.2e  fisher %.2e  grad %.2e\n", act, fisher,
           grad);
    SB_CHECK_MSG(act <= 1e-5 && fisher <= 1e-4 && grad <= 1e-4, "act %.3g fisher %.3g grad %.3g", act, fisher, grad);
}

/* ---- The distributed recipe --------------------------------------------------------------------- */

/* Two "ranks" holding layers [0, split) and [split, L): each computes its layers' orders and
 * hidden contributions, the contributions are gathered and summed in layer order: the same
 * orders, bit for bit, as sb_reorder_from_importance in one process. */
static void check_distributed(const sb_model_shape *s, const sb_layer_importance *marginals, const sb_reorder *whole)
{
    sb_error err;
    int64_t layers = s->num_hidden_layers, split = layers / 2;
    double *contributions = malloc((size_t)(layers * s->hidden_size) * sizeof(double));
    sb_reorder part[2];
    int64_t ranges[2][2] = {{0, split}, {split, layers}};
    bool same = true;
    for (int p = 0; p < 2; p++) {
        SB_CHECK(sb_reorder_create(s, ranges[p][0], ranges[p][1], &part[p], &err) == SB_OK);
        for (int64_t l = ranges[p][0]; l < ranges[p][1]; l++) {
            SB_CHECK(sb_reorder_layer_from_importance(&part[p], l, &marginals[l], NULL, &err) == SB_OK);
            sb_reorder_layer_hidden_score(s, &marginals[l], contributions + l * s->hidden_size);
        }
    }
    for (int p = 0; p < 2; p++) {
        SB_CHECK(sb_reorder_hidden_from_contributions(&part[p], contributions, NULL, &err) == SB_OK);
        same = same && memcmp(part[p].hidden, whole->hidden, (size_t)s->hidden_size * sizeof(int32_t)) == 0;
        for (int64_t l = ranges[p][0]; l < ranges[p][1]; l++)
            for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
                sb_tensor_perm a, b;
                SB_CHECK(sb_reorder_tensor_perm(&part[p], (sb_tensor_role)k, l, &a, &err) == SB_OK);
                SB_CHECK(sb_reorder_tensor_perm(whole, (sb_tensor_role)k, l, &b, &err) == SB_OK);
                same = same && (!a.row_src) == (!b.row_src) && (!a.col_src) == (!b.col_src);
                same = same && (!a.row_src || memcmp(a.row_src, b.row_src, (size_t)a.rows * 4) == 0);
                same = same && (!a.col_src || memcmp(a.col_src, b.col_src, (size_t)a.cols * 4) == 0);
            }
        /* a layer the part does not hold is refused, naming it */
        sb_tensor_perm perm;
        int64_t outside = p == 0 ? layers - 1 : 0;
        SB_CHECK(sb_reorder_tensor_perm(&part[p], SB_ROLE_Q, outside, &perm, &err) == SB_ERR_INTERNAL);
        SB_CHECK_MSG(strstr(err.message, "not among the layers held") != NULL, "%s", err.message);
    }
    SB_CHECK_MSG(same, "orders computed on two partial reorderings differ from the whole-model ones");
    sb_reorder_free(&part[0]);
    sb_reorder_free(&part[1]);
    free(contributions);
}

/* ---- One model ------------------------------------------------------------------------------------ */

static void check_model(const char *label, const char *dir, const char *token_path, bool token_bytes)
{
    printf("%s:\n", label);
    double start = sb_now();
    sb_error err;
    sb_model_config config;
    sb_checkpoint checkpoint;
    if (sb_config_load(dir, &config, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        return;
    }
    if (sb_checkpoint_open(dir, &checkpoint, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        sb_config_free(&config);
        return;
    }
    const sb_model_shape *s = &config.shape;
    int64_t layers = s->num_hidden_layers;
    sb_tokens tokens;
    sb_status status = token_bytes ? sb_tokens_read_bytes(token_path, s->vocab_size, &tokens, &err)
                                   : sb_tokens_read_u32(token_path, s->vocab_size, &tokens, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    SB_CHECK(status != SB_OK || tokens.count >= 2 * WINDOWS * CTX);
    if (status != SB_OK) {
        sb_checkpoint_close(&checkpoint);
        sb_config_free(&config);
        return;
    }
    /* calibrate on the first windows, evaluate on the next ones */
    const uint32_t *calib_tokens = tokens.ids, *eval_tokens = tokens.ids + WINDOWS * CTX;

    sb_model original, random_folded, sorted_folded;
    SB_CHECK(sb_model_load_checkpoint(s, &checkpoint, &original, &err) == SB_OK);
    SB_CHECK(sb_model_load_checkpoint(s, &checkpoint, &random_folded, &err) == SB_OK);
    SB_CHECK(sb_model_load_checkpoint(s, &checkpoint, &sorted_folded, &err) == SB_OK);
    outputs reference = {0}, got = {0};
    run(&original, eval_tokens, &reference);

    /* identity: folding changes nothing at all */
    sb_reorder identity;
    SB_CHECK(sb_reorder_create(s, 0, layers, &identity, &err) == SB_OK);
    SB_CHECK(sb_reorder_is_identity(&identity));

    /* random orders */
    sb_reorder random_orders;
    SB_CHECK(sb_reorder_create(s, 0, layers, &random_orders, &err) == SB_OK);
    sb_test_rng rng = {0x5eed + (uint64_t)s->hidden_size};
    random_reorder(&rng, &random_orders);
    SB_CHECK_MSG(sb_reorder_commit(&random_orders, &err) == SB_OK, "%s", err.message);
    SB_CHECK(!sb_reorder_is_identity(&random_orders));
    SB_CHECK(sb_reorder_apply_model(&random_orders, &random_folded, &err) == SB_OK);
    run(&random_folded, eval_tokens, &got);
    compare_outputs("random permutations:", &random_orders, &original, &reference, &got);
    outputs_free(&got);
    check_lookups(&random_orders, &original, &random_folded);

    /* negative control: what the reordering must not do is visible. Swapping one rotary pair's
     * two members inside head 0 of q and of k (consistently, so q.k without the rotation would
     * not change) reverses that pair's rotation and changes the logits. */
    {
        sb_model broken;
        SB_CHECK(sb_model_load_checkpoint(s, &checkpoint, &broken, &err) == SB_OK);
        int64_t hd = s->head_dim, group = s->num_attention_heads / s->num_key_value_heads;
        int32_t *q_rows = malloc((size_t)(s->num_attention_heads * hd) * sizeof(int32_t));
        int32_t *k_rows = malloc((size_t)(s->num_key_value_heads * hd) * sizeof(int32_t));
        set_identity32(q_rows, s->num_attention_heads * hd);
        set_identity32(k_rows, s->num_key_value_heads * hd);
        for (int64_t h = 0; h < group; h++) /* every query head that attends with kv head 0 */
            q_rows[h * hd] = (int32_t)(h * hd + hd / 2), q_rows[h * hd + hd / 2] = (int32_t)(h * hd);
        k_rows[0] = (int32_t)(hd / 2), k_rows[hd / 2] = 0;
        sb_tensor_perm q_perm = {s->num_attention_heads * hd, s->hidden_size, q_rows, NULL};
        sb_tensor_perm k_perm = {s->num_key_value_heads * hd, s->hidden_size, k_rows, NULL};
        SB_CHECK(sb_reorder_permute(&q_perm, sb_layer_linear(&broken.layers[0], SB_LINEAR_Q), sizeof(float), &err) == SB_OK);
        SB_CHECK(sb_reorder_permute(&k_perm, sb_layer_linear(&broken.layers[0], SB_LINEAR_K), sizeof(float), &err) == SB_OK);
        run(&broken, eval_tokens, &got);
        double changed = max_relative(got.logits, reference.logits, WINDOWS * CTX * s->vocab_size);
        printf("  control: a rotary pair swapped inside a q/k head: logits max rel diff %.2e (must be large)\n",
               changed);
        SB_CHECK_MSG(changed > 1e-3, "swapping a rotary pair changed the logits by only %.3g", changed);
        outputs_free(&got);
        free(q_rows);
        free(k_rows);
        sb_model_free(&broken);
    }

    /* orders sorted from Fisher * W^2 measured on calibration windows */
    sb_layer_stats *stats = calloc((size_t)layers, sizeof *stats);
    sb_layer_stats *folded_stats = calloc((size_t)layers, sizeof *folded_stats);
    importance *imp = calloc((size_t)layers, sizeof *imp);
    sb_layer_importance *marginals = calloc((size_t)layers, sizeof *marginals);
    calibrate(&original, calib_tokens, stats);
    importance_compute(&original, stats, imp, marginals);
    sb_reorder sorted;
    SB_CHECK(sb_reorder_create(s, 0, layers, &sorted, &err) == SB_OK);
    SB_CHECK_MSG(sb_reorder_from_importance(&sorted, marginals, NULL, NULL, &err) == SB_OK, "%s", err.message);
    SB_CHECK(!sb_reorder_is_identity(&sorted));
    SB_CHECK(sb_reorder_apply_model(&sorted, &sorted_folded, &err) == SB_OK);
    run(&sorted_folded, eval_tokens, &got);
    compare_outputs("orders sorted from Fisher * W^2:", &sorted, &original, &reference, &got);
    outputs_free(&got);
    check_lookups(&sorted, &original, &sorted_folded);
    check_clustering(s, &sorted, &identity, imp);
    calibrate(&sorted_folded, calib_tokens, folded_stats);
    check_stats(&sorted, stats, folded_stats, layers);
    check_distributed(s, marginals, &sorted);

    /* the pieces a pipeline rank applies (embedding, its layers, the head) give the same model */
    sb_model pieces;
    SB_CHECK(sb_model_load_checkpoint(s, &checkpoint, &pieces, &err) == SB_OK);
    SB_CHECK(sb_reorder_apply_embed(&sorted, pieces.embed, &err) == SB_OK);
    for (int64_t l = layers - 1; l >= 0; l--)
        SB_CHECK(sb_reorder_apply_layer(&sorted, l, &pieces.layers[l], &err) == SB_OK);
    SB_CHECK(sb_reorder_apply_head(&sorted, pieces.final_norm, s->tie_word_embeddings ? NULL : pieces.lm_head,
                                   &err) == SB_OK);
    bool same = memcmp(pieces.embed, sorted_folded.embed, (size_t)(s->vocab_size * s->hidden_size) * 4) == 0 &&
                memcmp(pieces.lm_head, sorted_folded.lm_head, (size_t)(s->vocab_size * s->hidden_size) * 4) == 0 &&
                memcmp(pieces.final_norm, sorted_folded.final_norm, (size_t)s->hidden_size * 4) == 0;
    for (int64_t l = 0; l < layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
            same = same && memcmp(sb_layer_linear(&pieces.layers[l], (sb_linear_kind)k),
                                  sb_layer_linear(&sorted_folded.layers[l], (sb_linear_kind)k),
                                  (size_t)(rows * cols) * 4) == 0;
        }
    SB_CHECK_MSG(same, "applying the pieces differs from applying the whole model");
    sb_model_free(&pieces);

    /* options: only the mlp order */
    sb_reorder mlp_only;
    sb_reorder_options only_mlp = {false, true, false, false};
    SB_CHECK(sb_reorder_create(s, 0, layers, &mlp_only, &err) == SB_OK);
    SB_CHECK(sb_reorder_from_importance(&mlp_only, marginals, NULL, &only_mlp, &err) == SB_OK);
    SB_CHECK(mlp_only.hidden_identity);
    for (int64_t l = 0; l < layers; l++) {
        const sb_layer_reorder *a = sb_reorder_layer(&mlp_only, l), *b = sb_reorder_layer(&sorted, l);
        SB_CHECK(a->q_identity && a->k_identity && a->v_identity && a->o_identity);
        SB_CHECK(memcmp(a->mlp, b->mlp, (size_t)s->intermediate_size * 4) == 0);
    }
    sb_reorder_free(&mlp_only);

    for (int64_t l = 0; l < layers; l++) {
        sb_layer_stats_free(&stats[l]);
        sb_layer_stats_free(&folded_stats[l]);
    }
    importance_free(imp, layers);
    free(imp);
    free(marginals);
    free(stats);
    free(folded_stats);
    outputs_free(&reference);
    sb_reorder_free(&sorted);
    sb_reorder_free(&random_orders);
    sb_reorder_free(&identity);
    sb_model_free(&sorted_folded);
    sb_model_free(&random_folded);
    sb_model_free(&original);
    sb_tokens_free(&tokens);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    printf("  (%.2f s)\n", sb_now() - start);
}

/* ---- Validity, sorting and the generic permutations on a synthetic shape ---------------------- */

static sb_model_shape small_shape(void)
{
    sb_model_shape s = {0};
    s.hidden_size = 16;
    s.intermediate_size = 24;
    s.num_attention_heads = 4;
    s.num_key_value_heads = 2;
    s.head_dim = 4;
    s.num_hidden_layers = 2;
    s.vocab_size = 32;
    s.max_position_embeddings = 64;
    s.rope_theta = 10000;
    s.rms_norm_eps = 1e-5;
    return s;
}

static void check_validity(void)
{
    sb_model_shape s = small_shape();
    sb_error err;
    sb_reorder r;
    SB_CHECK(sb_reorder_create(&s, 0, 3, &r, &err) == SB_ERR_INPUT);
    SB_CHECK(sb_reorder_create(&s, 0, 2, &r, &err) == SB_OK);
    SB_CHECK(r.committed && sb_reorder_is_identity(&r));
    sb_tensor_perm perm;
    SB_CHECK(sb_reorder_tensor_perm(&r, SB_ROLE_DOWN, 1, &perm, &err) == SB_OK);
    SB_CHECK(perm.rows == 16 && perm.cols == 24 && !perm.row_src && !perm.col_src);
    SB_CHECK(sb_reorder_tensor_perm(&r, SB_ROLE_OTHER, 0, &perm, &err) == SB_ERR_INPUT);
    SB_CHECK(sb_reorder_tensor_perm(&r, SB_ROLE_Q, 2, &perm, &err) == SB_ERR_INTERNAL);

    /* a repeated index */
    r.hidden[3] = 5;
    SB_CHECK(sb_reorder_commit(&r, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "hidden order is not a permutation: 5 appears twice") != NULL, "%s", err.message);
    SB_CHECK(!r.committed);
    SB_CHECK(sb_reorder_tensor_perm(&r, SB_ROLE_Q, 0, &perm, &err) == SB_ERR_INTERNAL);
    r.hidden[3] = 3;
    /* out of range */
    sb_layer_reorder *l1 = sb_reorder_layer(&r, 1);
    l1->mlp[0] = 24;
    SB_CHECK(sb_reorder_commit(&r, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "layer 1: mlp (intermediate) order: entry 0 is 24") != NULL, "%s", err.message);
    l1->mlp[0] = 0;
    /* a query head moved to another key/value head's group */
    l1->q_heads[0] = 2, l1->q_heads[2] = 0;
    SB_CHECK(sb_reorder_commit(&r, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "query head 2 moves to position 0") && strstr(err.message, "grouped-query"),
                 "%s", err.message);
    /* ... which is fine once the key/value heads move with them */
    l1->q_heads[1] = 3, l1->q_heads[3] = 1;
    l1->kv_heads[0] = 1, l1->kv_heads[1] = 0;
    SB_CHECK_MSG(sb_reorder_commit(&r, &err) == SB_OK, "%s", err.message);
    SB_CHECK(!sb_reorder_is_identity(&r));
    /* derived attention orders: kv head 1 first, head_dim rows at a time */
    SB_CHECK(l1->k_rows[0] == 4 && l1->k_rows[3] == 7 && l1->k_rows[4] == 0);
    SB_CHECK(l1->q_rows[0] == 8 && l1->q_rows[4] == 12 && l1->q_rows[8] == 0);
    /* value channels inside a head: v rows of the kv head and o columns of its query heads */
    l1->head_dims[0] = 2, l1->head_dims[2] = 0;
    SB_CHECK(sb_reorder_commit(&r, &err) == SB_OK);
    SB_CHECK(l1->v_rows[0] == 6 && l1->v_rows[2] == 4 && l1->v_rows[1] == 5);
    SB_CHECK(l1->o_cols[0] == 10 && l1->o_cols[4] == 14 && l1->o_cols[8] == 0 && l1->o_cols[10] == 2);
    SB_CHECK(l1->k_rows[0] == 4 && l1->k_rows[2] == 6); /* k rows never move inside a head */
    l1->head_dims[4] = 1;
    SB_CHECK(sb_reorder_commit(&r, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "value channel (key/value head position 1)") != NULL, "%s", err.message);
    sb_reorder_free(&r);

    /* sorting: descending, ties by index, NaN refused */
    const double scores[] = {1, 3, 3, 0, -1, 3};
    int32_t order[6];
    SB_CHECK(sb_reorder_sort_descending(scores, 6, order, "test", &err) == SB_OK);
    SB_CHECK(order[0] == 1 && order[1] == 2 && order[2] == 5 && order[3] == 0 && order[4] == 3 && order[5] == 4);
    const double with_nan[] = {1, NAN};
    SB_CHECK(sb_reorder_sort_descending(with_nan, 2, order, "test", &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "test channel 1 is NaN") != NULL, "%s", err.message);

    /* marginals: row-block calls in order give the same bits as one call */
    float w[6] = {1, -2, 3, 0.5f, 4, -1};
    float e[6] = {2, 1, 0.5f, 3, 1, 2};
    double scale[3] = {1, 10, 100}, rows_a[2] = {0}, cols_a[3] = {0}, rows_b[2] = {0}, cols_b[3] = {0};
    sb_reorder_marginals(w, scale, e, 2, 3, rows_a, cols_a);
    sb_reorder_marginals(w, scale, e, 1, 3, rows_b, cols_b);
    sb_reorder_marginals(w + 3, scale, e + 3, 1, 3, rows_b + 1, cols_b);
    SB_CHECK(rows_a[0] == 2 + 40 + 450 && cols_a[2] == 450 + 200);
    SB_CHECK(memcmp(rows_a, rows_b, sizeof rows_a) == 0 && memcmp(cols_a, cols_b, sizeof cols_a) == 0);
}

/* In-place permutation = out-of-place gather = brute force, for element sizes 2, 4, 8 and 3. */
static void check_generic_permute(void)
{
    sb_test_rng rng = {77};
    sb_error err;
    enum { ROWS = 13, COLS = 11 };
    int32_t row_src[ROWS], col_src[COLS];
    for (int i = 0; i < ROWS; i++)
        row_src[i] = i;
    for (int j = 0; j < COLS; j++)
        col_src[j] = j;
    shuffle(&rng, row_src, ROWS);
    shuffle(&rng, col_src, COLS);
    const size_t sizes[] = {2, 4, 8, 3};
    for (int s = 0; s < 4; s++) {
        size_t size = sizes[s];
        for (int variant = 0; variant < 3; variant++) {
            sb_tensor_perm perm = {ROWS, COLS, variant != 1 ? row_src : NULL, variant != 2 ? col_src : NULL};
            unsigned char src[ROWS * COLS * 8], in_place[ROWS * COLS * 8], gathered[ROWS * COLS * 8],
                expected[ROWS * COLS * 8];
            for (size_t i = 0; i < ROWS * COLS * size; i++)
                src[i] = (unsigned char)sb_test_next(&rng);
            for (int i = 0; i < ROWS; i++)
                for (int j = 0; j < COLS; j++) {
                    int si = perm.row_src ? perm.row_src[i] : i, sj = perm.col_src ? perm.col_src[j] : j;
                    memcpy(expected + ((size_t)i * COLS + j) * size, src + ((size_t)si * COLS + sj) * size, size);
                }
            memcpy(in_place, src, ROWS * COLS * size);
            SB_CHECK(sb_reorder_permute(&perm, in_place, size, &err) == SB_OK);
            sb_reorder_gather(&perm, src, size, 0, ROWS, gathered);
            SB_CHECK_MSG(memcmp(in_place, expected, ROWS * COLS * size) == 0, "in place, size %zu", size);
            SB_CHECK_MSG(memcmp(gathered, expected, ROWS * COLS * size) == 0, "gather, size %zu", size);
            /* a middle block of rows */
            sb_reorder_gather(&perm, src, size, 4, 5, gathered);
            SB_CHECK(memcmp(gathered, expected + 4 * COLS * size, 5 * COLS * size) == 0);
        }
    }
}

int main(void)
{
    check_validity();
    check_generic_permute();

    char dir[4096], text[4200];
    snprintf(dir, sizeof dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    snprintf(text, sizeof text, "%s/heldout.txt", dir);
    check_model("tiny-austen-kjv (embedded; GQA 4/2, untied)", dir, text, true);

    const char *shared = sb_test_shared_dir();
    char stories[4200], stories_tokens[4200], probe[4400];
    snprintf(stories, sizeof stories, "%s/models/stories260K-hf", shared ? shared : "../shared");
    snprintf(stories_tokens, sizeof stories_tokens, "%s/data/tinystories_val.tok512.u32", shared ? shared : "../shared");
    snprintf(probe, sizeof probe, "%s/model.safetensors", stories);
    if (shared && access(probe, R_OK) == 0 && access(stories_tokens, R_OK) == 0) {
        check_model("stories260K (GQA 8/4, FFN 172, tied)", stories, stories_tokens, false);
    } else {
        printf("SKIP: stories260K (%s or %s is absent; fetched models are never committed)\n", probe, stories_tokens);
        int status = sb_test_finish("test_reorder");
        return status != 0 ? status : 77;
    }
    return sb_test_finish("test_reorder");
}
