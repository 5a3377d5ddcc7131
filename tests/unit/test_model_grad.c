/* The runtime's forward, backward and hooks (src/sb_model.h) against an independent, naive
 * double-precision Llama written here from the Hugging Face formulas.
 *
 * On tiny random models (GQA and MQA, ragged FFN, head_dim != hidden/heads, tied embeddings,
 * llama3 rope scaling):
 *  - the runtime's summed NLL equals the reference's (float vs double: 1e-5 relative);
 *  - the gradient of every linear kind of every layer equals central differences of the
 *    double reference (steps +-h applied exactly in double, so the differences carry no float
 *    noise and the tolerance can be tight);
 *  - the activation hook sees exactly the reference's linear inputs, once per (layer, kind);
 *  - gradients of a batch are the sum of its windows' gradients (summed loss, independent
 *    windows);
 *  - with 1 to 4 runtime threads (attention pairs and SGEMM blocks spread over them) a run is
 *    repeatable bit for bit, and agrees with one thread to float rounding;
 *  - sb_expf stays within 1.5 ulp of exp over its range.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_model.h"
#include "sb_model_internal.h"
#include "sb_test.h"

/* ---- The reference: a plain double-precision Llama ----------------------------------------- */

typedef struct ref_layer {
    double *attn_norm, *mlp_norm;
    double *linear[SB_LINEAR_KIND_COUNT];
} ref_layer;

typedef struct ref_model {
    sb_model_shape shape;
    double *embed, *lm_head, *final_norm;
    ref_layer *layers;
} ref_model;

static double *to_double(const float *values, int64_t count)
{
    double *out = malloc((size_t)count * sizeof *out);
    for (int64_t i = 0; i < count; i++)
        out[i] = values[i];
    return out;
}

static void ref_from_model(const sb_model *model, ref_model *ref)
{
    const sb_model_shape *s = &model->shape;
    ref->shape = *s;
    ref->embed = to_double(model->embed, s->vocab_size * s->hidden_size);
    ref->lm_head = to_double(model->lm_head, s->vocab_size * s->hidden_size);
    ref->final_norm = to_double(model->final_norm, s->hidden_size);
    ref->layers = calloc((size_t)s->num_hidden_layers, sizeof *ref->layers);
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        ref->layers[l].attn_norm = to_double(model->layers[l].attn_norm, s->hidden_size);
        ref->layers[l].mlp_norm = to_double(model->layers[l].mlp_norm, s->hidden_size);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
            ref->layers[l].linear[k] = to_double(sb_layer_linear(&model->layers[l], (sb_linear_kind)k), rows * cols);
        }
    }
}

static void ref_free(ref_model *ref)
{
    for (int64_t l = 0; l < ref->shape.num_hidden_layers; l++) {
        free(ref->layers[l].attn_norm);
        free(ref->layers[l].mlp_norm);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            free(ref->layers[l].linear[k]);
    }
    free(ref->layers);
    free(ref->embed);
    free(ref->lm_head);
    free(ref->final_norm);
}

/* HF _compute_default_rope_parameters and _compute_llama3_parameters, transcribed. */
static double ref_inv_freq(const sb_model_shape *s, int64_t i)
{
    double inv_freq = 1.0 / pow(s->rope_theta, (double)(2 * i) / (double)s->head_dim);
    if (s->rope_scaling != SB_ROPE_SCALING_LLAMA3)
        return inv_freq;
    double old_context_len = (double)s->rope_original_max_position;
    double low_freq_wavelen = old_context_len / s->rope_low_freq_factor;
    double high_freq_wavelen = old_context_len / s->rope_high_freq_factor;
    double wavelen = 2 * M_PI / inv_freq;
    double inv_freq_llama = wavelen > low_freq_wavelen ? inv_freq / s->rope_factor : inv_freq;
    double smooth_factor = (old_context_len / wavelen - s->rope_low_freq_factor) /
                           (s->rope_high_freq_factor - s->rope_low_freq_factor);
    double smoothed = (1 - smooth_factor) * inv_freq_llama / s->rope_factor + smooth_factor * inv_freq_llama;
    bool is_medium_freq = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    return is_medium_freq ? smoothed : inv_freq_llama;
}

static void ref_rms_norm(const double *x, const double *w, int64_t n, double eps, double *out)
{
    double ss = 0;
    for (int64_t j = 0; j < n; j++)
        ss += x[j] * x[j];
    double r = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t j = 0; j < n; j++)
        out[j] = x[j] * r * w[j];
}

/* y[out] = W[out x in] x[in] */
static void ref_matvec(const double *w, const double *x, int64_t out, int64_t in, double *y)
{
    for (int64_t o = 0; o < out; o++) {
        double acc = 0;
        for (int64_t i = 0; i < in; i++)
            acc += w[o * in + i] * x[i];
        y[o] = acc;
    }
}

/* q * cos + rotate_half(q) * sin, with rotate_half(x) = cat(-x2, x1). */
static void ref_rope(double *head, int64_t head_dim, int64_t pos, const sb_model_shape *s)
{
    int64_t half = head_dim / 2;
    double rotated[256];
    for (int64_t i = 0; i < head_dim; i++)
        rotated[i] = i < half ? -head[i + half] : head[i - half];
    for (int64_t i = 0; i < head_dim; i++) {
        double angle = (double)pos * ref_inv_freq(s, i % half);
        head[i] = head[i] * cos(angle) + rotated[i] * sin(angle);
    }
}

/* Linear inputs seen by the reference: inputs[layer][kind] is [ntokens x in_features]. */
typedef struct ref_trace {
    double *inputs[8][SB_LINEAR_KIND_COUNT];
} ref_trace;

/* Summed next-token NLL of n_windows windows of ctx tokens. */
static double ref_loss(const ref_model *m, const uint32_t *tokens, int64_t n_windows, int64_t ctx, ref_trace *trace)
{
    const sb_model_shape *s = &m->shape;
    int64_t H = s->hidden_size, F = s->intermediate_size, nh = s->num_attention_heads;
    int64_t nkv = s->num_key_value_heads, hd = s->head_dim, V = s->vocab_size;
    int64_t qd = nh * hd, kvd = nkv * hd, group = nh / nkv;
    double *x = calloc((size_t)(ctx * H), sizeof *x), *xn = calloc((size_t)(ctx * H), sizeof *xn);
    double *q = calloc((size_t)(ctx * qd), sizeof *q), *k = calloc((size_t)(ctx * kvd), sizeof *k);
    double *v = calloc((size_t)(ctx * kvd), sizeof *v), *att = calloc((size_t)(ctx * qd), sizeof *att);
    double *g = calloc((size_t)F, sizeof *g), *u = calloc((size_t)F, sizeof *u);
    double *a = calloc((size_t)(ctx * F), sizeof *a), *tmp = calloc((size_t)(H > V ? H : V), sizeof *tmp);
    double *p = calloc((size_t)ctx, sizeof *p);
    double loss = 0;
    for (int64_t w = 0; w < n_windows; w++) {
        const uint32_t *tok = tokens + w * ctx;
        for (int64_t t = 0; t < ctx; t++)
            memcpy(x + t * H, m->embed + tok[t] * H, (size_t)H * sizeof *x);
        for (int64_t l = 0; l < s->num_hidden_layers; l++) {
            const ref_layer *L = &m->layers[l];
            for (int64_t t = 0; t < ctx; t++) {
                ref_rms_norm(x + t * H, L->attn_norm, H, s->rms_norm_eps, xn + t * H);
                ref_matvec(L->linear[SB_LINEAR_Q], xn + t * H, qd, H, q + t * qd);
                ref_matvec(L->linear[SB_LINEAR_K], xn + t * H, kvd, H, k + t * kvd);
                ref_matvec(L->linear[SB_LINEAR_V], xn + t * H, kvd, H, v + t * kvd);
                for (int64_t h = 0; h < nh; h++)
                    ref_rope(q + t * qd + h * hd, hd, t, s);
                for (int64_t h = 0; h < nkv; h++)
                    ref_rope(k + t * kvd + h * hd, hd, t, s);
            }
            if (trace)
                for (int kind = SB_LINEAR_Q; kind <= SB_LINEAR_V; kind++)
                    memcpy(trace->inputs[l][kind] + w * ctx * H, xn, (size_t)(ctx * H) * sizeof *xn);
            for (int64_t h = 0; h < nh; h++) {
                int64_t kvh = h / group;
                for (int64_t t = 0; t < ctx; t++) {
                    double max = -INFINITY, sum = 0;
                    for (int64_t j = 0; j <= t; j++) {
                        double dot = 0;
                        for (int64_t d = 0; d < hd; d++)
                            dot += q[t * qd + h * hd + d] * k[j * kvd + kvh * hd + d];
                        p[j] = dot / sqrt((double)hd);
                        max = p[j] > max ? p[j] : max;
                    }
                    for (int64_t j = 0; j <= t; j++)
                        sum += (p[j] = exp(p[j] - max));
                    for (int64_t d = 0; d < hd; d++) {
                        double acc = 0;
                        for (int64_t j = 0; j <= t; j++)
                            acc += p[j] / sum * v[j * kvd + kvh * hd + d];
                        att[t * qd + h * hd + d] = acc;
                    }
                }
            }
            if (trace)
                memcpy(trace->inputs[l][SB_LINEAR_O] + w * ctx * qd, att, (size_t)(ctx * qd) * sizeof *att);
            for (int64_t t = 0; t < ctx; t++) {
                ref_matvec(L->linear[SB_LINEAR_O], att + t * qd, H, qd, tmp);
                for (int64_t j = 0; j < H; j++)
                    x[t * H + j] += tmp[j];
                ref_rms_norm(x + t * H, L->mlp_norm, H, s->rms_norm_eps, xn + t * H);
                ref_matvec(L->linear[SB_LINEAR_GATE], xn + t * H, F, H, g);
                ref_matvec(L->linear[SB_LINEAR_UP], xn + t * H, F, H, u);
                for (int64_t j = 0; j < F; j++)
                    a[t * F + j] = g[j] / (1 + exp(-g[j])) * u[j];
                ref_matvec(L->linear[SB_LINEAR_DOWN], a + t * F, H, F, tmp);
                for (int64_t j = 0; j < H; j++)
                    x[t * H + j] += tmp[j];
            }
            if (trace) {
                memcpy(trace->inputs[l][SB_LINEAR_GATE] + w * ctx * H, xn, (size_t)(ctx * H) * sizeof *xn);
                memcpy(trace->inputs[l][SB_LINEAR_UP] + w * ctx * H, xn, (size_t)(ctx * H) * sizeof *xn);
                memcpy(trace->inputs[l][SB_LINEAR_DOWN] + w * ctx * F, a, (size_t)(ctx * F) * sizeof *a);
            }
        }
        for (int64_t t = 0; t + 1 < ctx; t++) {
            ref_rms_norm(x + t * H, m->final_norm, H, s->rms_norm_eps, xn);
            ref_matvec(m->lm_head, xn, V, H, tmp);
            double max = -INFINITY, sum = 0;
            for (int64_t j = 0; j < V; j++)
                max = tmp[j] > max ? tmp[j] : max;
            for (int64_t j = 0; j < V; j++)
                sum += exp(tmp[j] - max);
            loss += max + log(sum) - tmp[tok[t + 1]];
        }
    }
    free(x); free(xn); free(q); free(k); free(v); free(att); free(g); free(u); free(a); free(tmp); free(p);
    return loss;
}

/* ---- Random models --------------------------------------------------------------------------- */

static void fill_normal(float *values, int64_t count, double scale, double mean, sb_test_rng *rng)
{
    for (int64_t i = 0; i < count; i++)
        values[i] = (float)(mean + scale * sb_test_normal(rng));
}

static void random_model(const sb_model_shape *shape, uint64_t seed, sb_model *model)
{
    sb_error err;
    SB_CHECK(sb_model_alloc(shape, model, &err) == SB_OK);
    sb_test_rng rng = {seed};
    int64_t H = shape->hidden_size;
    fill_normal(model->embed, shape->vocab_size * H, 1.0, 0.0, &rng);
    if (!shape->tie_word_embeddings)
        fill_normal(model->lm_head, shape->vocab_size * H, 1.0 / sqrt((double)H), 0.0, &rng);
    fill_normal(model->final_norm, H, 0.2, 1.0, &rng);
    for (int64_t l = 0; l < shape->num_hidden_layers; l++) {
        fill_normal(model->layers[l].attn_norm, H, 0.2, 1.0, &rng);
        fill_normal(model->layers[l].mlp_norm, H, 0.2, 1.0, &rng);
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
            /* Scaled up from 1/sqrt(in) so that attention is far from uniform. */
            fill_normal(sb_layer_linear(&model->layers[l], (sb_linear_kind)k), rows * cols, 1.5 / sqrt((double)cols),
                        0.0, &rng);
        }
    }
}

/* ---- Collected gradients and activations ----------------------------------------------------- */

typedef struct collected {
    const sb_model_shape *shape;
    float *grad[8][SB_LINEAR_KIND_COUNT];  /* copies of each gradient */
    int grad_calls[8][SB_LINEAR_KIND_COUNT];
    float *act[8][SB_LINEAR_KIND_COUNT];   /* copies of each linear input */
    int act_calls[8][SB_LINEAR_KIND_COUNT];
    int64_t act_rows;
    bool shape_error;
} collected;

static sb_status collect_gradient(void *user, int64_t layer, sb_linear_kind kind, const float *grad, int64_t rows,
                                  int64_t cols, sb_error *err)
{
    collected *c = user;
    int64_t want_rows, want_cols;
    sb_linear_shape(c->shape, kind, &want_rows, &want_cols);
    if (rows != want_rows || cols != want_cols)
        c->shape_error = true;
    free(c->grad[layer][kind]);
    c->grad[layer][kind] = malloc((size_t)(rows * cols) * sizeof(float));
    memcpy(c->grad[layer][kind], grad, (size_t)(rows * cols) * sizeof(float));
    c->grad_calls[layer][kind]++;
    return SB_OK;
}

static sb_status collect_activation(void *user, int64_t layer, sb_linear_kind kind, const float *x, int64_t ntokens,
                                    int64_t in_features, sb_error *err)
{
    collected *c = user;
    int64_t rows, cols;
    sb_linear_shape(c->shape, kind, &rows, &cols);
    if (in_features != cols)
        c->shape_error = true;
    free(c->act[layer][kind]);
    c->act[layer][kind] = malloc((size_t)(ntokens * in_features) * sizeof(float));
    memcpy(c->act[layer][kind], x, (size_t)(ntokens * in_features) * sizeof(float));
    c->act_calls[layer][kind]++;
    c->act_rows = ntokens;
    return SB_OK;
}

static void collected_free(collected *c)
{
    for (int l = 0; l < 8; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            free(c->grad[l][k]);
            free(c->act[l][k]);
        }
    memset(c, 0, sizeof *c);
}

/* Forward + backward of the runtime over `n_windows` windows; fills `c`, returns the NLL. */
static double run_backward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx, int threads,
                           collected *c)
{
    sb_error err;
    sb_model_workspace *ws = NULL;
    sb_status status = sb_model_workspace_create(&model->shape, ctx, n_windows, threads, true, &ws, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    sb_layer_cache *caches[8] = {0};
    for (int64_t l = 0; l < model->shape.num_hidden_layers; l++)
        SB_CHECK(sb_layer_cache_create(&model->shape, n_windows * ctx, &caches[l], &err) == SB_OK);
    c->shape = &model->shape;
    sb_nll nll = {0, 0};
    status = sb_model_backward(model, tokens, n_windows, ctx, ws, caches, collect_activation, c, collect_gradient, c,
                               &nll, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    SB_CHECK(nll.count == n_windows * (ctx - 1));
    for (int64_t l = 0; l < model->shape.num_hidden_layers; l++)
        sb_layer_cache_free(caches[l]);
    sb_model_workspace_free(ws);
    return nll.sum;
}

/* ---- The checks ------------------------------------------------------------------------------ */

typedef struct config {
    const char *name;
    sb_model_shape shape;
    int64_t ctx, n_windows;
} config;

static sb_model_shape base_shape(void)
{
    sb_model_shape s;
    memset(&s, 0, sizeof s);
    s.hidden_size = 16;
    s.intermediate_size = 22; /* ragged: a multiple of nothing useful */
    s.num_attention_heads = 4;
    s.num_key_value_heads = 2;
    s.head_dim = 4;
    s.num_hidden_layers = 2;
    s.vocab_size = 13;
    s.max_position_embeddings = 64;
    s.rope_theta = 10000.0;
    s.rms_norm_eps = 1e-5;
    return s;
}

static double worst_grad_error = 0, worst_forward_error = 0, worst_hook_error = 0;

static void check_config(const config *cfg, uint64_t seed)
{
    sb_model model;
    random_model(&cfg->shape, seed, &model);
    const sb_model_shape *s = &model.shape;
    int64_t ntokens = cfg->n_windows * cfg->ctx;
    uint32_t *tokens = malloc((size_t)ntokens * sizeof *tokens);
    sb_test_rng rng = {seed * 7 + 1};
    for (int64_t i = 0; i < ntokens; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)s->vocab_size);

    ref_model ref;
    ref_from_model(&model, &ref);
    ref_trace trace;
    memset(&trace, 0, sizeof trace);
    for (int64_t l = 0; l < s->num_hidden_layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
            trace.inputs[l][k] = calloc((size_t)(ntokens * cols), sizeof(double));
        }
    double ref_nll = ref_loss(&ref, tokens, cfg->n_windows, cfg->ctx, &trace);

    /* Forward only (sb_model_forward) and forward+backward give the reference NLL. */
    sb_error err;
    sb_model_workspace *ws = NULL;
    SB_CHECK(sb_model_workspace_create(s, cfg->ctx, cfg->n_windows, 1, false, &ws, &err) == SB_OK);
    sb_nll forward = {0, 0};
    SB_CHECK(sb_model_forward(&model, tokens, cfg->n_windows, cfg->ctx, ws, NULL, NULL, &forward, &err) == SB_OK);
    sb_model_workspace_free(ws);
    collected c;
    memset(&c, 0, sizeof c);
    double backward_nll = run_backward(&model, tokens, cfg->n_windows, cfg->ctx, 1, &c);
    double forward_error = fabs(forward.sum - ref_nll) / fabs(ref_nll);
    if (forward_error > worst_forward_error)
        worst_forward_error = forward_error;
    SB_CHECK_MSG(forward_error < 1e-5, "%s: runtime NLL %.9g, reference %.9g", cfg->name, forward.sum, ref_nll);
    SB_CHECK_MSG(backward_nll == forward.sum, "%s: NLL of backward %.9g != forward %.9g", cfg->name, backward_nll,
                 forward.sum);
    SB_CHECK(!c.shape_error);

    /* The hook saw each linear input once, equal to the reference's. */
    for (int64_t l = 0; l < s->num_hidden_layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
            SB_CHECK_MSG(c.act_calls[l][k] == 1 && c.grad_calls[l][k] == 1, "%s layer %lld %s: %d hook calls, %d "
                         "gradient calls", cfg->name, (long long)l, sb_linear_kind_name((sb_linear_kind)k),
                         c.act_calls[l][k], c.grad_calls[l][k]);
            if (!c.act[l][k])
                continue;
            double max_diff = 0, max_abs = 0;
            for (int64_t i = 0; i < ntokens * cols; i++) {
                double diff = fabs(c.act[l][k][i] - trace.inputs[l][k][i]);
                max_diff = diff > max_diff ? diff : max_diff;
                max_abs = fabs(trace.inputs[l][k][i]) > max_abs ? fabs(trace.inputs[l][k][i]) : max_abs;
            }
            double hook_error = max_diff / max_abs;
            worst_hook_error = hook_error > worst_hook_error ? hook_error : worst_hook_error;
            SB_CHECK_MSG(hook_error < 1e-5, "%s layer %lld %s: hook input differs from the reference by %g",
                         cfg->name, (long long)l, sb_linear_kind_name((sb_linear_kind)k), hook_error);
        }

    /* Every linear kind's gradient against central differences of the reference. */
    const double h = 1e-4;
    const int samples = 10;
    for (int64_t l = 0; l < s->num_hidden_layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
            int64_t rows, cols;
            sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
            double *weights = ref.layers[l].linear[k];
            double diff2 = 0, ref2 = 0;
            for (int sample = 0; sample < samples; sample++) {
                int64_t index = (int64_t)(sb_test_next(&rng) % (uint64_t)(rows * cols));
                double saved = weights[index];
                weights[index] = saved + h;
                double plus = ref_loss(&ref, tokens, cfg->n_windows, cfg->ctx, NULL);
                weights[index] = saved - h;
                double minus = ref_loss(&ref, tokens, cfg->n_windows, cfg->ctx, NULL);
                weights[index] = saved;
                double numeric = (plus - minus) / (2 * h);
                double analytic = c.grad[l][k] ? c.grad[l][k][index] : NAN;
                diff2 += (analytic - numeric) * (analytic - numeric);
                ref2 += numeric * numeric;
            }
            double error = sqrt(diff2 / ref2);
            if (!(error <= worst_grad_error))
                worst_grad_error = error;
            /* A wrong gradient (transposed, missing a term, wrong head) is off by O(1). */
            SB_CHECK_MSG(error < 2e-4, "%s layer %lld %s: gradient relative error %g (|g| %g)", cfg->name,
                         (long long)l, sb_linear_kind_name((sb_linear_kind)k), error, sqrt(ref2 / samples));
        }

    /* Summed loss over independent windows: the batch's gradient is the sum of the windows'. */
    if (cfg->n_windows == 2) {
        collected first, second;
        memset(&first, 0, sizeof first);
        memset(&second, 0, sizeof second);
        double nll_first = run_backward(&model, tokens, 1, cfg->ctx, 1, &first);
        double nll_second = run_backward(&model, tokens + cfg->ctx, 1, cfg->ctx, 1, &second);
        SB_CHECK(fabs(nll_first + nll_second - forward.sum) < 1e-5 * fabs(forward.sum));
        for (int64_t l = 0; l < s->num_hidden_layers; l++)
            for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
                int64_t rows, cols;
                sb_linear_shape(s, (sb_linear_kind)k, &rows, &cols);
                double diff = 0, norm = 0;
                for (int64_t i = 0; i < rows * cols; i++) {
                    double sum = (double)first.grad[l][k][i] + (double)second.grad[l][k][i];
                    diff += (sum - c.grad[l][k][i]) * (sum - c.grad[l][k][i]);
                    norm += sum * sum;
                }
                SB_CHECK_MSG(sqrt(diff / norm) < 1e-5, "%s layer %lld %s: window gradients do not add up (%g)",
                             cfg->name, (long long)l, sb_linear_kind_name((sb_linear_kind)k), sqrt(diff / norm));
            }
        collected_free(&first);
        collected_free(&second);
    }


    for (int64_t l = 0; l < s->num_hidden_layers; l++)
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            free(trace.inputs[l][k]);
    collected_free(&c);
    ref_free(&ref);
    free(tokens);
    sb_model_free(&model);
}

/* Relative L2 distance of two float arrays. */
static double relative_distance(const float *a, const float *b, int64_t count)
{
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < count; i++) {
        diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        norm += (double)b[i] * b[i];
    }
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

/* Large enough that every SGEMM is split over the runtime's threads (sb_gemm grids), with a
 * ragged FFN and a last attention block of 3 queries. OpenBLAS's own SGEMM gives last-bit
 * differences when a product is computed as several blocks, so thread counts agree to float
 * rounding, not to the bit; one thread count must give the same bits run after run. */
static void check_threads(void)
{
    sb_model_shape shape = base_shape();
    shape.hidden_size = 64;
    shape.intermediate_size = 172;
    shape.num_attention_heads = 8;
    shape.num_key_value_heads = 4;
    shape.head_dim = 8;
    shape.vocab_size = 300;
    sb_model model;
    random_model(&shape, 21, &model);
    const int64_t ctx = 131, n_windows = 3;
    uint32_t tokens[3 * 131];
    sb_test_rng rng = {99};
    for (int64_t i = 0; i < ctx * n_windows; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)shape.vocab_size);
    collected one;
    memset(&one, 0, sizeof one);
    double nll_one = run_backward(&model, tokens, n_windows, ctx, 1, &one);
    double worst = 0;
    for (int threads = 1; threads <= 4; threads++) {
        collected first, again;
        memset(&first, 0, sizeof first);
        memset(&again, 0, sizeof again);
        double nll_first = run_backward(&model, tokens, n_windows, ctx, threads, &first);
        double nll_again = run_backward(&model, tokens, n_windows, ctx, threads, &again);
        SB_CHECK_MSG(nll_first == nll_again, "%d threads: NLL %.17g then %.17g", threads, nll_first, nll_again);
        SB_CHECK_MSG(fabs(nll_first - nll_one) < 1e-6 * fabs(nll_one), "%d threads: NLL %.17g, 1 thread %.17g",
                     threads, nll_first, nll_one);
        for (int64_t l = 0; l < shape.num_hidden_layers; l++)
            for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
                int64_t rows, cols;
                sb_linear_shape(&shape, (sb_linear_kind)k, &rows, &cols);
                const char *name = sb_linear_kind_name((sb_linear_kind)k);
                SB_CHECK_MSG(memcmp(first.grad[l][k], again.grad[l][k], (size_t)(rows * cols) * sizeof(float)) == 0,
                             "%d threads: layer %lld %s gradient differs between two runs", threads, (long long)l,
                             name);
                double distance = relative_distance(first.grad[l][k], one.grad[l][k], rows * cols);
                worst = distance > worst ? distance : worst;
                SB_CHECK_MSG(distance < 1e-5, "%d threads: layer %lld %s gradient %g from 1 thread's", threads,
                             (long long)l, name, distance);
                distance = relative_distance(first.act[l][k], one.act[l][k], ctx * n_windows * cols);
                SB_CHECK_MSG(distance < 1e-5, "%d threads: layer %lld %s input %g from 1 thread's", threads,
                             (long long)l, name, distance);
            }
        collected_free(&first);
        collected_free(&again);
    }
    printf("threads 1..4: repeatable bit for bit; gradients within %.1e of 1 thread's\n", worst);
    collected_free(&one);
    sb_model_free(&model);
}

/* A gradient consumer's error stops the pass and comes back with the layer and kind named. */
static sb_status failing_gradient(void *user, int64_t layer, sb_linear_kind kind, const float *grad, int64_t rows,
                                  int64_t cols, sb_error *err)
{
    return sb_error_set(err, SB_ERR_IO, "disk full");
}

static void check_callback_error(void)
{
    sb_model_shape shape = base_shape();
    sb_model model;
    random_model(&shape, 5, &model);
    sb_error err;
    sb_model_workspace *ws = NULL;
    SB_CHECK(sb_model_workspace_create(&shape, 7, 1, 1, true, &ws, &err) == SB_OK);
    sb_layer_cache *caches[2];
    for (int l = 0; l < 2; l++)
        SB_CHECK(sb_layer_cache_create(&shape, 7, &caches[l], &err) == SB_OK);
    uint32_t tokens[7] = {1, 2, 3, 4, 5, 6, 7};
    sb_nll nll = {0, 0};
    sb_status status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, failing_gradient, NULL, &nll,
                                         &err);
    SB_CHECK(status == SB_ERR_IO);
    SB_CHECK_MSG(strstr(err.message, "layer 1 down_proj gradient: disk full") != NULL, "%s", err.message);
    tokens[3] = 13; /* = vocab_size */
    status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, failing_gradient, NULL, &nll, &err);
    SB_CHECK(status == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "token 13 at batch position 3") != NULL, "%s", err.message);
    for (int l = 0; l < 2; l++)
        sb_layer_cache_free(caches[l]);
    sb_model_workspace_free(ws);
    sb_model_free(&model);
}

static void check_names(void)
{
    char name[128];
    sb_linear_weight_name(3, SB_LINEAR_Q, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.3.self_attn.q_proj.weight") == 0);
    sb_linear_weight_name(12, SB_LINEAR_DOWN, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.12.mlp.down_proj.weight") == 0);
    SB_CHECK(strcmp(sb_linear_kind_name(SB_LINEAR_UP), "up_proj") == 0);
}

static void check_expf(void)
{
    double worst = 0;
    for (float x = -87.0f; x <= 88.0f; x += 0.000731f) {
        double exact = exp((double)x), got = sb_expf(x);
        int exponent;
        frexp(exact, &exponent);
        double ulp = ldexp(1.0, exponent - 24); /* float spacing at `exact` */
        double error = fabs(got - exact) / ulp;
        worst = error > worst ? error : worst;
    }
    printf("sb_expf: worst error %.2f ulp over [-87, 88]\n", worst);
    SB_CHECK(worst < 1.5);
    SB_CHECK(sb_expf(-INFINITY) < 1e-37f && sb_expf(-INFINITY) >= 0);
    SB_CHECK(isfinite(sb_expf(INFINITY)) && isfinite(sb_expf(NAN)));
    SB_CHECK(sb_expf(0.0f) == 1.0f);
}

int main(void)
{
    check_names();
    check_expf();

    config gqa = {"gqa", base_shape(), 7, 2};

    config llama3 = {"llama3-rope", base_shape(), 7, 2};
    /* head_dim 8 and theta 100 give wavelengths 6.3, 19.9, 62.8 and 199: with original max 64
     * and factors 1 / 4 they fall in all three llama3 regimes (kept, interpolated, divided). */
    llama3.shape.hidden_size = 32;
    llama3.shape.head_dim = 8;
    llama3.shape.rope_theta = 100.0;
    llama3.shape.rope_scaling = SB_ROPE_SCALING_LLAMA3;
    llama3.shape.rope_factor = 8.0;
    llama3.shape.rope_low_freq_factor = 1.0;
    llama3.shape.rope_high_freq_factor = 4.0;
    llama3.shape.rope_original_max_position = 64;

    config tied = {"tied-mqa", base_shape(), 9, 2};
    /* Tied embeddings, one KV head, head_dim 6 so that q_dim (18) != hidden (16). */
    tied.shape.tie_word_embeddings = true;
    tied.shape.num_attention_heads = 3;
    tied.shape.num_key_value_heads = 1;
    tied.shape.head_dim = 6;

    config long_window = {"ctx-150", base_shape(), 150, 1};
    /* More than two attention blocks of 64 queries, ragged last block. */
    long_window.shape.num_hidden_layers = 1;

    check_config(&gqa, 11);
    check_config(&llama3, 12);
    check_config(&tied, 13);
    check_config(&long_window, 14);
    check_callback_error();
    check_threads();
    printf("worst relative errors: forward NLL %.2e, hook inputs %.2e, gradients (L2 over samples) %.2e\n",
           worst_forward_error, worst_hook_error, worst_grad_error);
    return sb_test_finish("test_model_grad");
}
