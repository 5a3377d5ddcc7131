/* The runtime's forward, backward and hooks (src/sb_model.h) against an independent, naive
 * double-precision Llama / Qwen3 / Qwen3-MoE written here from the Hugging Face formulas.
 *
 * On tiny random models (GQA and MQA, ragged FFN, head_dim != hidden/heads, tied embeddings,
 * llama3 rope scaling; Qwen3 q/k norms and attention biases; Qwen3-MoE with dense and sparse
 * layers, decoder_sparse_step, with and without norm_topk_prob, top-1 and top-2 routing):
 *  - the runtime's summed NLL equals the reference's (float vs double: 1e-5 relative);
 *  - the gradient of every linear weight (dense kinds, router, every expert) and of every
 *    attention vector (q_norm, k_norm, biases) equals central differences of the double
 *    reference (steps +-h applied exactly in double, so the differences carry no float noise
 *    and the tolerance can be tight; a step that changes a top-k choice is skipped, since the
 *    loss is not differentiable there, and counted);
 *  - an expert no token was routed to gets an exactly zero gradient; tied router
 *    probabilities go to the lower expert index;
 *  - the activation hook sees exactly the reference's linear inputs, once per weight, and for
 *    an expert exactly the reference's routed tokens (ascending) and routing weights;
 *  - gradients of a batch are the sum of its windows' gradients (summed loss, independent
 *    windows);
 *  - with 1 to 4 runtime threads (attention pairs, SGEMM blocks and routing spread over them) a
 *    run is repeatable bit for bit, and agrees with one thread to float rounding;
 *  - the workspace and cache sizes are the formulas of sb_model.h's Memory paragraph;
 *  - sb_expf stays within 1.5 ulp of exp over its range.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_model.h"
#include "sb_model_internal.h"
#include "sb_test.h"

/* Matrices of a layer are indexed 0..6 (the dense kinds) and ROUTER here. */
enum { MAX_LAYERS = 8, MAX_EXPERTS = 16, ROUTER = SB_LINEAR_KIND_COUNT, KINDS = ROUTER + 1 };

/* The three weights of an expert, in sb_linear_kind order. */
static const sb_tensor_role expert_kinds[3] = {SB_ROLE_GATE, SB_ROLE_UP, SB_ROLE_DOWN};

static sb_tensor_role role_of(int index) { return index == ROUTER ? SB_ROLE_ROUTER : (sb_tensor_role)index; }
static int index_of(sb_tensor_role role) { return role == SB_ROLE_ROUTER ? ROUTER : (int)role; }
static const char *kind_name(int index) { return sb_role_name(role_of(index)); }
static const char *vector_name(int v) { return sb_role_name(sb_vector_role((sb_vector_kind)v)); }

/* Rows and columns of matrix `index` of a layer (expert -1) or of an expert. */
static void matrix_shape(const sb_model_shape *s, int index, int64_t expert, int64_t *rows, int64_t *cols)
{
    sb_tensor_id id = {role_of(index), 0, expert};
    sb_weight_shape(s, &id, rows, cols);
}

static float *layer_matrix(const sb_layer_weights *w, int index)
{
    sb_tensor_id id = {role_of(index), 0, -1};
    return sb_layer_weight(w, &id);
}

/* ---- The reference: a plain double-precision model ---------------------------------------- */

typedef struct ref_layer {
    bool moe;
    double *attn_norm, *mlp_norm;
    double *linear[KINDS];                 /* dense kinds and the router; NULL when absent */
    double *vector[SB_VECTOR_KIND_COUNT];  /* q_norm, k_norm, biases; NULL when absent */
    double *expert[MAX_EXPERTS][3];        /* gate, up, down */
} ref_layer;

typedef struct ref_model {
    sb_model_shape shape;
    double *embed, *lm_head, *final_norm;
    ref_layer *layers;
} ref_model;

static double *to_double(const float *values, int64_t count)
{
    if (!values)
        return NULL;
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
        const sb_layer_weights *w = &model->layers[l];
        ref_layer *r = &ref->layers[l];
        r->moe = w->num_experts > 0;
        r->attn_norm = to_double(w->attn_norm, s->hidden_size);
        r->mlp_norm = to_double(w->mlp_norm, s->hidden_size);
        for (int k = 0; k < KINDS; k++) {
            int64_t rows, cols;
            matrix_shape(s, k, -1, &rows, &cols);
            r->linear[k] = to_double(layer_matrix(w, k), rows * cols);
        }
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            r->vector[v] = to_double(w->vector[v], sb_vector_length(s, (sb_vector_kind)v));
        for (int64_t e = 0; e < w->num_experts; e++)
            for (int i = 0; i < 3; i++) {
                sb_tensor_id id = {expert_kinds[i], l, e};
                int64_t rows, cols;
                sb_weight_shape(s, &id, &rows, &cols);
                r->expert[e][i] = to_double(sb_layer_weight(w, &id), rows * cols);
            }
    }
}

static void ref_free(ref_model *ref)
{
    for (int64_t l = 0; l < ref->shape.num_hidden_layers; l++) {
        ref_layer *r = &ref->layers[l];
        free(r->attn_norm);
        free(r->mlp_norm);
        for (int k = 0; k < KINDS; k++)
            free(r->linear[k]);
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            free(r->vector[v]);
        for (int e = 0; e < MAX_EXPERTS; e++)
            for (int i = 0; i < 3; i++)
                free(r->expert[e][i]);
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

static double silu(double g) { return g / (1 + exp(-g)); }

/* What the reference saw, for comparison with the hook: dense and router inputs
 * [ntokens x in_features]; per MoE layer the top-k choice of every token and each expert's
 * down_proj input per token. */
typedef struct ref_trace {
    double *inputs[MAX_LAYERS][KINDS];
    int64_t *chosen[MAX_LAYERS];            /* [ntokens x k] */
    double *weight[MAX_LAYERS];             /* [ntokens x k] */
    double *expert_act[MAX_LAYERS][MAX_EXPERTS]; /* [ntokens x moe_intermediate] */
} ref_trace;

/* The MoE block of one token: adds its output to x. Returns the token's choice in a hash. */
static uint64_t ref_moe(const ref_layer *L, const sb_model_shape *s, const double *xn, double *x, int64_t *chosen_out,
                        double *weight_out, double **act_out, double *p, double *g, double *u, double *a,
                        double *tmp)
{
    int64_t H = s->hidden_size, E = s->num_experts, K = s->num_experts_per_tok, F = s->moe_intermediate_size;
    ref_matvec(L->linear[ROUTER], xn, E, H, p);
    double max = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; e++)
        max = p[e] > max ? p[e] : max;
    for (int64_t e = 0; e < E; e++)
        sum += (p[e] = exp(p[e] - max));
    for (int64_t e = 0; e < E; e++)
        p[e] /= sum;
    int64_t chosen[MAX_EXPERTS];
    double weight[MAX_EXPERTS], total = 0;
    bool taken[MAX_EXPERTS] = {false};
    uint64_t hash = 0;
    for (int64_t j = 0; j < K; j++) { /* top-k, ties to the lower index */
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || p[e] > p[best]))
                best = e;
        taken[best] = true;
        chosen[j] = best;
        weight[j] = p[best];
        total += p[best];
        hash = hash * 31 + (uint64_t)best + 1;
    }
    for (int64_t j = 0; j < K; j++) {
        if (s->norm_topk_prob)
            weight[j] /= total;
        if (chosen_out) {
            chosen_out[j] = chosen[j];
            weight_out[j] = weight[j];
        }
        const ref_layer *Lc = L;
        int64_t e = chosen[j];
        ref_matvec(Lc->expert[e][0], xn, F, H, g);
        ref_matvec(Lc->expert[e][1], xn, F, H, u);
        for (int64_t i = 0; i < F; i++)
            a[i] = silu(g[i]) * u[i];
        if (act_out && act_out[e])
            memcpy(act_out[e], a, (size_t)F * sizeof *a);
        ref_matvec(Lc->expert[e][2], a, H, F, tmp);
        for (int64_t i = 0; i < H; i++)
            x[i] += weight[j] * tmp[i];
    }
    return hash;
}

/* Summed next-token NLL of n_windows windows of ctx tokens; *routing (may be NULL) gets a hash
 * of every top-k choice made. */
static double ref_loss(const ref_model *m, const uint32_t *tokens, int64_t n_windows, int64_t ctx, ref_trace *trace,
                       uint64_t *routing)
{
    const sb_model_shape *s = &m->shape;
    int64_t H = s->hidden_size, F = s->intermediate_size, nh = s->num_attention_heads;
    int64_t nkv = s->num_key_value_heads, hd = s->head_dim, V = s->vocab_size;
    int64_t qd = nh * hd, kvd = nkv * hd, group = nh / nkv, K = s->num_experts_per_tok;
    int64_t wide = F > s->moe_intermediate_size ? F : s->moe_intermediate_size;
    double *x = calloc((size_t)(ctx * H), sizeof *x), *xn = calloc((size_t)(ctx * H), sizeof *xn);
    double *q = calloc((size_t)(ctx * qd), sizeof *q), *k = calloc((size_t)(ctx * kvd), sizeof *k);
    double *v = calloc((size_t)(ctx * kvd), sizeof *v), *att = calloc((size_t)(ctx * qd), sizeof *att);
    double *g = calloc((size_t)wide, sizeof *g), *u = calloc((size_t)wide, sizeof *u);
    double *a = calloc((size_t)(ctx * wide), sizeof *a), *tmp = calloc((size_t)(H > V ? H : V), sizeof *tmp);
    double *p = calloc((size_t)(ctx > MAX_EXPERTS ? ctx : MAX_EXPERTS), sizeof *p);
    double loss = 0;
    uint64_t hash = 0;
    for (int64_t w = 0; w < n_windows; w++) {
        const uint32_t *tok = tokens + w * ctx;
        for (int64_t t = 0; t < ctx; t++)
            memcpy(x + t * H, m->embed + tok[t] * H, (size_t)H * sizeof *x);
        for (int64_t l = 0; l < s->num_hidden_layers; l++) {
            const ref_layer *L = &m->layers[l];
            double *const *vec = L->vector;
            for (int64_t t = 0; t < ctx; t++) {
                ref_rms_norm(x + t * H, L->attn_norm, H, s->rms_norm_eps, xn + t * H);
                ref_matvec(L->linear[SB_LINEAR_Q], xn + t * H, qd, H, q + t * qd);
                ref_matvec(L->linear[SB_LINEAR_K], xn + t * H, kvd, H, k + t * kvd);
                ref_matvec(L->linear[SB_LINEAR_V], xn + t * H, kvd, H, v + t * kvd);
                for (int64_t i = 0; vec[SB_VECTOR_Q_BIAS] && i < qd; i++)
                    q[t * qd + i] += vec[SB_VECTOR_Q_BIAS][i];
                for (int64_t i = 0; vec[SB_VECTOR_K_BIAS] && i < kvd; i++)
                    k[t * kvd + i] += vec[SB_VECTOR_K_BIAS][i];
                for (int64_t i = 0; vec[SB_VECTOR_V_BIAS] && i < kvd; i++)
                    v[t * kvd + i] += vec[SB_VECTOR_V_BIAS][i];
                /* Qwen3: RMSNorm of every head over head_dim, before the rotary embedding */
                for (int64_t h = 0; vec[SB_VECTOR_Q_NORM] && h < nh; h++)
                    ref_rms_norm(q + t * qd + h * hd, vec[SB_VECTOR_Q_NORM], hd, s->rms_norm_eps, q + t * qd + h * hd);
                for (int64_t h = 0; vec[SB_VECTOR_K_NORM] && h < nkv; h++)
                    ref_rms_norm(k + t * kvd + h * hd, vec[SB_VECTOR_K_NORM], hd, s->rms_norm_eps,
                                 k + t * kvd + h * hd);
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
                    x[t * H + j] += tmp[j] + (vec[SB_VECTOR_O_BIAS] ? vec[SB_VECTOR_O_BIAS][j] : 0.0);
                ref_rms_norm(x + t * H, L->mlp_norm, H, s->rms_norm_eps, xn + t * H);
                if (L->moe) {
                    int64_t row = w * ctx + t;
                    double *act_rows[MAX_EXPERTS] = {NULL};
                    for (int64_t e = 0; trace && e < s->num_experts; e++)
                        act_rows[e] = trace->expert_act[l][e] + row * s->moe_intermediate_size;
                    hash = hash * 1000003 + ref_moe(L, s, xn + t * H, x + t * H,
                                                    trace ? trace->chosen[l] + row * K : NULL,
                                                    trace ? trace->weight[l] + row * K : NULL,
                                                    trace ? act_rows : NULL, p, g, u, a, tmp);
                    continue;
                }
                ref_matvec(L->linear[SB_LINEAR_GATE], xn + t * H, F, H, g);
                ref_matvec(L->linear[SB_LINEAR_UP], xn + t * H, F, H, u);
                for (int64_t j = 0; j < F; j++)
                    a[t * F + j] = silu(g[j]) * u[j];
                ref_matvec(L->linear[SB_LINEAR_DOWN], a + t * F, H, F, tmp);
                for (int64_t j = 0; j < H; j++)
                    x[t * H + j] += tmp[j];
            }
            if (trace && L->moe) {
                memcpy(trace->inputs[l][ROUTER] + w * ctx * H, xn, (size_t)(ctx * H) * sizeof *xn);
            } else if (trace) {
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
    if (routing)
        *routing = hash;
    return loss;
}

/* ---- Random models --------------------------------------------------------------------------- */

static void fill_normal(float *values, int64_t count, double scale, double mean, sb_test_rng *rng)
{
    for (int64_t i = 0; values && i < count; i++)
        values[i] = (float)(mean + scale * sb_test_normal(rng));
}

static void random_model(const sb_model_shape *shape, uint64_t seed, sb_model *model)
{
    sb_error err;
    SB_CHECK_MSG(sb_model_alloc(shape, model, &err) == SB_OK, "%s", err.message);
    sb_test_rng rng = {seed};
    int64_t H = shape->hidden_size;
    fill_normal(model->embed, shape->vocab_size * H, 1.0, 0.0, &rng);
    if (!shape->tie_word_embeddings)
        fill_normal(model->lm_head, shape->vocab_size * H, 1.0 / sqrt((double)H), 0.0, &rng);
    fill_normal(model->final_norm, H, 0.2, 1.0, &rng);
    for (int64_t l = 0; l < shape->num_hidden_layers; l++) {
        sb_layer_weights *w = &model->layers[l];
        fill_normal(w->attn_norm, H, 0.2, 1.0, &rng);
        fill_normal(w->mlp_norm, H, 0.2, 1.0, &rng);
        for (int k = 0; k < KINDS; k++) {
            int64_t rows, cols;
            matrix_shape(shape, k, -1, &rows, &cols);
            /* Scaled up from 1/sqrt(in) so that attention is far from uniform (and routing too). */
            fill_normal(layer_matrix(w, k), rows * cols, 1.5 / sqrt((double)cols), 0.0, &rng);
        }
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++) {
            bool norm = v == SB_VECTOR_Q_NORM || v == SB_VECTOR_K_NORM;
            fill_normal(w->vector[v], sb_vector_length(shape, (sb_vector_kind)v), norm ? 0.2 : 0.3, norm ? 1.0 : 0.0,
                        &rng);
        }
        for (int64_t e = 0; e < w->num_experts; e++)
            for (int i = 0; i < 3; i++) {
                sb_tensor_id id = {expert_kinds[i], l, e};
                int64_t rows, cols;
                sb_weight_shape(shape, &id, &rows, &cols);
                fill_normal(sb_layer_weight(w, &id), rows * cols, 1.5 / sqrt((double)cols), 0.0, &rng);
            }
    }
}

/* ---- Collected gradients and activations ----------------------------------------------------- */

typedef struct collected_expert {
    float *grad[3];
    int grad_calls[3];
    int act_calls[3];
    int64_t rows;              /* routed rows seen by the hook */
    int64_t *token_rows;
    float *route_weights;
    float *x[3];               /* gate and down inputs (up's must be gate's pointer) */
    bool up_shares_gate;
} collected_expert;

typedef struct collected {
    const sb_model_shape *shape;
    float *grad[MAX_LAYERS][KINDS];  /* copies of each gradient */
    int grad_calls[MAX_LAYERS][KINDS];
    float *act[MAX_LAYERS][KINDS];   /* copies of each dense or router input */
    int act_calls[MAX_LAYERS][KINDS];
    float *vector[MAX_LAYERS][SB_VECTOR_KIND_COUNT];
    int vector_calls[MAX_LAYERS][SB_VECTOR_KIND_COUNT];
    collected_expert expert[MAX_LAYERS][MAX_EXPERTS];
    const float *last_gate_x;
    bool shape_error;
} collected;

static float *copy_floats(const float *values, int64_t count)
{
    float *copy = malloc((size_t)(count > 0 ? count : 1) * sizeof *copy);
    if (count > 0)
        memcpy(copy, values, (size_t)count * sizeof *copy);
    return copy;
}

static sb_status collect_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                                  sb_error *err)
{
    collected *c = user;
    int64_t want_rows, want_cols;
    sb_weight_shape(c->shape, id, &want_rows, &want_cols);
    if (rows != want_rows || cols != want_cols)
        c->shape_error = true;
    if (id->expert >= 0) {
        collected_expert *x = &c->expert[id->layer][id->expert];
        int i = id->role - SB_ROLE_GATE;
        free(x->grad[i]);
        x->grad[i] = copy_floats(grad, rows * cols);
        x->grad_calls[i]++;
        return SB_OK;
    }
    int k = index_of(id->role);
    free(c->grad[id->layer][k]);
    c->grad[id->layer][k] = copy_floats(grad, rows * cols);
    c->grad_calls[id->layer][k]++;
    return SB_OK;
}

static sb_status collect_vector(void *user, const sb_tensor_id *id, const float *grad, int64_t count, sb_error *err)
{
    collected *c = user;
    int64_t layer = id->layer;
    int kind = 0;
    while (kind < SB_VECTOR_KIND_COUNT && sb_vector_role((sb_vector_kind)kind) != id->role)
        kind++;
    if (kind == SB_VECTOR_KIND_COUNT || id->expert >= 0) {
        c->shape_error = true;
        return SB_OK;
    }
    if (count != sb_vector_length(c->shape, (sb_vector_kind)kind))
        c->shape_error = true;
    free(c->vector[layer][kind]);
    c->vector[layer][kind] = copy_floats(grad, count);
    c->vector_calls[layer][kind]++;
    return SB_OK;
}

static sb_status collect_activation(void *user, const sb_linear_input *in, sb_error *err)
{
    collected *c = user;
    int64_t rows, cols, layer = in->id.layer;
    sb_weight_shape(c->shape, &in->id, &rows, &cols);
    if (in->in_features != cols)
        c->shape_error = true;
    if (in->id.expert >= 0) {
        collected_expert *x = &c->expert[layer][in->id.expert];
        int i = in->id.role - SB_ROLE_GATE;
        x->act_calls[i]++;
        if (in->id.role == SB_ROLE_UP) {
            x->up_shares_gate = in->x == c->last_gate_x;
            return SB_OK;
        }
        if (in->id.role == SB_ROLE_GATE) {
            c->last_gate_x = in->x;
            x->rows = in->rows;
            free(x->token_rows);
            free(x->route_weights);
            x->token_rows = malloc((size_t)(in->rows + 1) * sizeof *x->token_rows);
            memcpy(x->token_rows, in->token_rows, (size_t)in->rows * sizeof *x->token_rows);
            x->route_weights = copy_floats(in->route_weights, in->rows);
        }
        if (in->rows != x->rows || !in->token_rows || !in->route_weights)
            c->shape_error = true;
        free(x->x[i]);
        x->x[i] = copy_floats(in->x, in->rows * in->in_features);
        return SB_OK;
    }
    if (in->token_rows || in->route_weights || in->rows != in->batch_rows)
        c->shape_error = true;
    int k = index_of(in->id.role);
    free(c->act[layer][k]);
    c->act[layer][k] = copy_floats(in->x, in->rows * in->in_features);
    c->act_calls[layer][k]++;
    return SB_OK;
}

static void collected_free(collected *c)
{
    for (int l = 0; l < MAX_LAYERS; l++) {
        for (int k = 0; k < KINDS; k++) {
            free(c->grad[l][k]);
            free(c->act[l][k]);
        }
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            free(c->vector[l][v]);
        for (int e = 0; e < MAX_EXPERTS; e++) {
            collected_expert *x = &c->expert[l][e];
            for (int i = 0; i < 3; i++) {
                free(x->grad[i]);
                free(x->x[i]);
            }
            free(x->token_rows);
            free(x->route_weights);
        }
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
    sb_layer_cache *caches[MAX_LAYERS] = {0};
    for (int64_t l = 0; l < model->shape.num_hidden_layers; l++)
        SB_CHECK(sb_layer_cache_create(&model->shape, l, n_windows * ctx, &caches[l], &err) == SB_OK);
    c->shape = &model->shape;
    sb_nll nll = {0, 0};
    sb_gradient_sink sink = {collect_gradient, collect_vector, c};
    status = sb_model_backward(model, tokens, n_windows, ctx, ws, caches, collect_activation, c, &sink, &nll, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    SB_CHECK(nll.count == n_windows * (ctx - 1));
    for (int64_t l = 0; l < model->shape.num_hidden_layers; l++)
        sb_layer_cache_free(caches[l]);
    sb_model_workspace_free(ws);
    return nll.sum;
}

/* ---- Parameters: every weight the gradients are checked for ---------------------------------- */

typedef struct param {
    char label[64];
    double *ref;        /* the reference's copy (perturbed in place) */
    const float *grad;  /* the runtime's gradient */
    int64_t count;
    bool expert_unused; /* an expert no row was routed to */
} param;

/* Lists the parameters of layer `l`; returns their count. */
static int layer_params(const ref_model *ref, const collected *c, int64_t l, param *out)
{
    const sb_model_shape *s = &ref->shape;
    const ref_layer *L = &ref->layers[l];
    int n = 0;
    for (int k = 0; k < KINDS; k++) {
        if (!L->linear[k])
            continue;
        int64_t rows, cols;
        matrix_shape(s, k, -1, &rows, &cols);
        out[n] = (param){"", L->linear[k], c->grad[l][k], rows * cols, false};
        snprintf(out[n++].label, 64, "layer %lld %s", (long long)l, kind_name(k));
    }
    for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++) {
        if (!L->vector[v])
            continue;
        out[n] = (param){"", L->vector[v], c->vector[l][v], sb_vector_length(s, (sb_vector_kind)v), false};
        snprintf(out[n++].label, 64, "layer %lld %s", (long long)l, vector_name(v));
    }
    for (int64_t e = 0; L->moe && e < s->num_experts; e++)
        for (int i = 0; i < 3; i++) {
            sb_tensor_id id = {expert_kinds[i], l, e};
            int64_t rows, cols;
            sb_weight_shape(s, &id, &rows, &cols);
            out[n] = (param){"", L->expert[e][i], c->expert[l][e].grad[i], rows * cols, c->expert[l][e].rows == 0};
            snprintf(out[n++].label, 64, "layer %lld expert %lld %s", (long long)l, (long long)e,
                     sb_role_name(expert_kinds[i]));
        }
    return n;
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

/* Qwen3: q/k norms, head_dim 6 != hidden / heads, biases on. */
static sb_model_shape qwen3_shape(void)
{
    sb_model_shape s = base_shape();
    s.architecture = SB_ARCH_QWEN3;
    s.qk_norm = true;
    s.attention_bias = true;
    s.head_dim = 6;
    return s;
}

/* Qwen3-MoE: layer 0 dense (mlp_only_layers [0]), then MoE layers of 6 experts of FFN 10, top 2. */
static sb_model_shape moe_shape(void)
{
    sb_model_shape s = qwen3_shape();
    s.architecture = SB_ARCH_QWEN3_MOE;
    s.attention_bias = false;
    s.num_hidden_layers = 3;
    s.num_experts = 6;
    s.num_experts_per_tok = 2;
    s.moe_intermediate_size = 10;
    s.norm_topk_prob = true;
    s.decoder_sparse_step = 1;
    s.mlp_only_layers[0] = 1; /* layer 0 */
    return s;
}

static double worst_grad_error = 0, worst_forward_error = 0, worst_hook_error = 0;
static int total_samples = 0, skipped_samples = 0, unused_experts = 0;

/* Relative max difference of a float array and a double one (the hook against the reference). */
static double relative_difference(const float *got, const double *want, int64_t count)
{
    double max_diff = 0, max_abs = 0;
    for (int64_t i = 0; i < count; i++) {
        double diff = fabs(got[i] - want[i]);
        max_diff = diff > max_diff ? diff : max_diff;
        max_abs = fabs(want[i]) > max_abs ? fabs(want[i]) : max_abs;
    }
    return max_abs > 0 ? max_diff / max_abs : max_diff;
}

static void note_hook_error(double error)
{
    worst_hook_error = error > worst_hook_error ? error : worst_hook_error;
}

/* The hook's expert inputs against the reference's routing, for MoE layer l. */
static void check_expert_hooks(const config *cfg, const collected *c, const ref_trace *trace, int64_t l,
                               int64_t ntokens)
{
    const sb_model_shape *s = &cfg->shape;
    int64_t H = s->hidden_size, F = s->moe_intermediate_size, K = s->num_experts_per_tok, routed = 0;
    for (int64_t e = 0; e < s->num_experts; e++) {
        const collected_expert *x = &c->expert[l][e];
        SB_CHECK_MSG(x->act_calls[0] == 1 && x->act_calls[1] == 1 && x->act_calls[2] == 1 && x->up_shares_gate,
                     "%s layer %lld expert %lld: hook calls %d %d %d", cfg->name, (long long)l, (long long)e,
                     x->act_calls[0], x->act_calls[1], x->act_calls[2]);
        /* the reference's tokens for e, ascending, and their weights */
        int64_t expected = 0;
        for (int64_t t = 0; t < ntokens; t++)
            for (int64_t j = 0; j < K; j++) {
                if (trace->chosen[l][t * K + j] != e)
                    continue;
                bool same = expected < x->rows && x->token_rows[expected] == t &&
                            fabs(x->route_weights[expected] - trace->weight[l][t * K + j]) < 1e-5;
                SB_CHECK_MSG(same, "%s layer %lld expert %lld: routed row %lld is not token %lld", cfg->name,
                             (long long)l, (long long)e, (long long)expected, (long long)t);
                if (same) {
                    note_hook_error(relative_difference(x->x[0] + expected * H,
                                                        trace->inputs[l][ROUTER] + t * H, H));
                    note_hook_error(relative_difference(x->x[2] + expected * F, trace->expert_act[l][e] + t * F, F));
                }
                expected++;
            }
        SB_CHECK_MSG(expected == x->rows, "%s layer %lld expert %lld: %lld rows, the reference routes %lld",
                     cfg->name, (long long)l, (long long)e, (long long)x->rows, (long long)expected);
        routed += x->rows;
        if (x->rows == 0) { /* nothing routed: an exactly zero gradient */
            unused_experts++;
            for (int i = 0; i < 3; i++) {
                sb_tensor_id id = {expert_kinds[i], l, e};
                int64_t rows, cols;
                sb_weight_shape(s, &id, &rows, &cols);
                bool zero = x->grad[i] != NULL;
                for (int64_t n = 0; zero && n < rows * cols; n++)
                    zero = x->grad[i][n] == 0.0f;
                SB_CHECK_MSG(zero, "%s layer %lld expert %lld %s: unrouted, yet a non-zero gradient", cfg->name,
                             (long long)l, (long long)e, sb_role_name(expert_kinds[i]));
            }
        }
    }
    SB_CHECK_MSG(routed == ntokens * K, "%s layer %lld: %lld routed rows for %lld tokens x %lld", cfg->name,
                 (long long)l, (long long)routed, (long long)ntokens, (long long)K);
}

/* Central differences of the reference against the runtime's gradient, `samples` entries of
 * each parameter of each layer. */
static void check_gradients(const config *cfg, ref_model *ref, const collected *c, const uint32_t *tokens,
                            sb_test_rng *rng)
{
    const double h = 1e-4;
    const int samples = 8;
    uint64_t routing;
    ref_loss(ref, tokens, cfg->n_windows, cfg->ctx, NULL, &routing);
    param *params = calloc(KINDS + SB_VECTOR_KIND_COUNT + 3 * MAX_EXPERTS, sizeof *params);
    for (int64_t l = 0; l < cfg->shape.num_hidden_layers; l++) {
        int count = layer_params(ref, c, l, params);
        for (int i = 0; i < count; i++) {
            const param *prm = &params[i];
            SB_CHECK_MSG(prm->grad, "%s %s: no gradient delivered", cfg->name, prm->label);
            if (!prm->grad)
                continue;
            double diff2 = 0, ref2 = 0;
            int used = 0;
            for (int sample = 0; sample < samples; sample++) {
                int64_t index = (int64_t)(sb_test_next(rng) % (uint64_t)prm->count);
                double saved = prm->ref[index];
                uint64_t routing_plus, routing_minus;
                prm->ref[index] = saved + h;
                double plus = ref_loss(ref, tokens, cfg->n_windows, cfg->ctx, NULL, &routing_plus);
                prm->ref[index] = saved - h;
                double minus = ref_loss(ref, tokens, cfg->n_windows, cfg->ctx, NULL, &routing_minus);
                prm->ref[index] = saved;
                total_samples++;
                if (routing_plus != routing || routing_minus != routing) {
                    skipped_samples++; /* a top-k choice changed: not differentiable here */
                    continue;
                }
                double numeric = (plus - minus) / (2 * h), analytic = prm->grad[index];
                diff2 += (analytic - numeric) * (analytic - numeric);
                ref2 += numeric * numeric;
                used++;
            }
            if (prm->expert_unused) {
                SB_CHECK_MSG(ref2 == 0, "%s %s: unrouted expert, yet the reference's loss moves", cfg->name,
                             prm->label);
                continue;
            }
            if (used == 0)
                continue;
            double error = sqrt(diff2 / ref2);
            if (!(error <= worst_grad_error))
                worst_grad_error = error;
            /* A wrong gradient (transposed, missing a term, wrong head or expert) is off by O(1). */
            SB_CHECK_MSG(error < 2e-4, "%s %s: gradient relative error %g (|g| %g)", cfg->name, prm->label, error,
                         sqrt(ref2 / used));
        }
    }
    free(params);
}

static void check_config(const config *cfg, uint64_t seed)
{
    sb_model model;
    random_model(&cfg->shape, seed, &model);
    const sb_model_shape *s = &model.shape;
    int64_t ntokens = cfg->n_windows * cfg->ctx, K = s->num_experts_per_tok;
    uint32_t *tokens = malloc((size_t)ntokens * sizeof *tokens);
    sb_test_rng rng = {seed * 7 + 1};
    for (int64_t i = 0; i < ntokens; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)s->vocab_size);

    ref_model ref;
    ref_from_model(&model, &ref);
    ref_trace trace;
    memset(&trace, 0, sizeof trace);
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        for (int k = 0; k < KINDS; k++) {
            int64_t rows, cols;
            matrix_shape(s, k, -1, &rows, &cols);
            trace.inputs[l][k] = calloc((size_t)(ntokens * cols), sizeof(double));
        }
        if (!sb_layer_is_moe(s, l))
            continue;
        trace.chosen[l] = calloc((size_t)(ntokens * K), sizeof(int64_t));
        trace.weight[l] = calloc((size_t)(ntokens * K), sizeof(double));
        for (int64_t e = 0; e < s->num_experts; e++)
            trace.expert_act[l][e] = calloc((size_t)(ntokens * s->moe_intermediate_size), sizeof(double));
    }
    double ref_nll = ref_loss(&ref, tokens, cfg->n_windows, cfg->ctx, &trace, NULL);

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

    /* The hook saw each linear input once, equal to the reference's; each gradient came once. */
    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        bool moe = sb_layer_is_moe(s, l);
        for (int k = 0; k < KINDS; k++) {
            bool present = k <= SB_LINEAR_O || (moe ? k == ROUTER : k < SB_LINEAR_KIND_COUNT);
            int expected = present ? 1 : 0;
            SB_CHECK_MSG(c.act_calls[l][k] == expected && c.grad_calls[l][k] == expected,
                         "%s layer %lld %s: %d hook calls, %d gradient calls (expected %d)", cfg->name, (long long)l,
                         kind_name(k), c.act_calls[l][k], c.grad_calls[l][k], expected);
            if (!present || !c.act[l][k])
                continue;
            int64_t rows, cols;
            matrix_shape(s, k, -1, &rows, &cols);
            double hook_error = relative_difference(c.act[l][k], trace.inputs[l][k], ntokens * cols);
            note_hook_error(hook_error);
            SB_CHECK_MSG(hook_error < 1e-5, "%s layer %lld %s: hook input differs from the reference by %g",
                         cfg->name, (long long)l, kind_name(k), hook_error);
        }
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            SB_CHECK_MSG(c.vector_calls[l][v] == (sb_vector_length(s, (sb_vector_kind)v) > 0),
                         "%s layer %lld %s: %d gradient calls", cfg->name, (long long)l,
                         vector_name(v), c.vector_calls[l][v]);
        if (moe) {
            check_expert_hooks(cfg, &c, &trace, l, ntokens);
            for (int64_t e = 0; e < s->num_experts; e++)
                for (int i = 0; i < 3; i++)
                    SB_CHECK(c.expert[l][e].grad_calls[i] == 1);
        }
    }
    SB_CHECK_MSG(worst_hook_error < 1e-5, "%s: hook inputs differ from the reference by %g", cfg->name,
                 worst_hook_error);

    /* Every gradient against central differences of the reference. */
    check_gradients(cfg, &ref, &c, tokens, &rng);

    /* Summed loss over independent windows: the batch's gradient is the sum of the windows'. */
    if (cfg->n_windows == 2) {
        collected first, second;
        memset(&first, 0, sizeof first);
        memset(&second, 0, sizeof second);
        double nll_first = run_backward(&model, tokens, 1, cfg->ctx, 1, &first);
        double nll_second = run_backward(&model, tokens + cfg->ctx, 1, cfg->ctx, 1, &second);
        SB_CHECK(fabs(nll_first + nll_second - forward.sum) < 1e-5 * fabs(forward.sum));
        param *p1 = calloc(KINDS + SB_VECTOR_KIND_COUNT + 3 * MAX_EXPERTS, sizeof *p1);
        param *p2 = calloc(KINDS + SB_VECTOR_KIND_COUNT + 3 * MAX_EXPERTS, sizeof *p2);
        param *pb = calloc(KINDS + SB_VECTOR_KIND_COUNT + 3 * MAX_EXPERTS, sizeof *pb);
        for (int64_t l = 0; l < s->num_hidden_layers; l++) {
            int count = layer_params(&ref, &first, l, p1);
            layer_params(&ref, &second, l, p2);
            layer_params(&ref, &c, l, pb);
            for (int i = 0; i < count; i++) {
                double diff = 0, norm = 0;
                for (int64_t n = 0; n < p1[i].count; n++) {
                    double sum = (double)p1[i].grad[n] + (double)p2[i].grad[n];
                    diff += (sum - pb[i].grad[n]) * (sum - pb[i].grad[n]);
                    norm += sum * sum;
                }
                SB_CHECK_MSG(norm == 0 ? diff == 0 : sqrt(diff / norm) < 1e-5,
                             "%s %s: window gradients do not add up (%g)", cfg->name, p1[i].label,
                             norm > 0 ? sqrt(diff / norm) : diff);
            }
        }
        free(p1);
        free(p2);
        free(pb);
        collected_free(&first);
        collected_free(&second);
    }

    for (int64_t l = 0; l < s->num_hidden_layers; l++) {
        for (int k = 0; k < KINDS; k++)
            free(trace.inputs[l][k]);
        free(trace.chosen[l]);
        free(trace.weight[l]);
        for (int e = 0; e < MAX_EXPERTS; e++)
            free(trace.expert_act[l][e]);
    }
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
 * ragged FFN and a last attention block of 3 queries; the MoE case adds routing over 8 experts
 * and expert GEMMs of uneven row counts. OpenBLAS's own SGEMM gives last-bit differences when a
 * product is computed as several blocks, so thread counts agree to float rounding, not to the
 * bit; one thread count must give the same bits run after run. */
static void check_threads_for(const char *label, const sb_model_shape *shape)
{
    sb_model model;
    random_model(shape, 21, &model);
    ref_model ref;
    ref_from_model(&model, &ref);
    const int64_t ctx = 131, n_windows = 3;
    uint32_t tokens[3 * 131];
    sb_test_rng rng = {99};
    for (int64_t i = 0; i < ctx * n_windows; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)shape->vocab_size);
    collected one;
    memset(&one, 0, sizeof one);
    double nll_one = run_backward(&model, tokens, n_windows, ctx, 1, &one);
    param *params[3];
    for (int i = 0; i < 3; i++)
        params[i] = calloc(KINDS + SB_VECTOR_KIND_COUNT + 3 * MAX_EXPERTS, sizeof *params[i]);
    double worst = 0;
    for (int threads = 1; threads <= 4; threads++) {
        collected first, again;
        memset(&first, 0, sizeof first);
        memset(&again, 0, sizeof again);
        double nll_first = run_backward(&model, tokens, n_windows, ctx, threads, &first);
        double nll_again = run_backward(&model, tokens, n_windows, ctx, threads, &again);
        SB_CHECK_MSG(nll_first == nll_again, "%s, %d threads: NLL %.17g then %.17g", label, threads, nll_first,
                     nll_again);
        SB_CHECK_MSG(fabs(nll_first - nll_one) < 1e-6 * fabs(nll_one), "%s, %d threads: NLL %.17g, 1 thread %.17g",
                     label, threads, nll_first, nll_one);
        for (int64_t l = 0; l < shape->num_hidden_layers; l++) {
            int count = layer_params(&ref, &first, l, params[0]);
            layer_params(&ref, &again, l, params[1]);
            layer_params(&ref, &one, l, params[2]);
            for (int i = 0; i < count; i++) {
                const param *a = &params[0][i], *b = &params[1][i], *o = &params[2][i];
                SB_CHECK_MSG(memcmp(a->grad, b->grad, (size_t)a->count * sizeof(float)) == 0,
                             "%s, %d threads: %s gradient differs between two runs", label, threads, a->label);
                double distance = relative_distance(a->grad, o->grad, a->count);
                worst = distance > worst ? distance : worst;
                SB_CHECK_MSG(distance < 1e-5, "%s, %d threads: %s gradient %g from 1 thread's", label, threads,
                             a->label, distance);
            }
            for (int k = 0; k < KINDS; k++) {
                if (!first.act[l][k])
                    continue;
                int64_t rows, cols;
                matrix_shape(shape, k, -1, &rows, &cols);
                double distance = relative_distance(first.act[l][k], one.act[l][k], ctx * n_windows * cols);
                SB_CHECK_MSG(distance < 1e-5, "%s, %d threads: layer %lld %s input %g from 1 thread's", label,
                             threads, (long long)l, kind_name(k), distance);
            }
            for (int64_t e = 0; sb_layer_is_moe(shape, l) && e < shape->num_experts; e++)
                SB_CHECK_MSG(first.expert[l][e].rows == one.expert[l][e].rows, "%s, %d threads: routing differs",
                             label, threads);
        }
        collected_free(&first);
        collected_free(&again);
    }
    printf("%s, threads 1..4: repeatable bit for bit; gradients within %.1e of 1 thread's\n", label, worst);
    for (int i = 0; i < 3; i++)
        free(params[i]);
    collected_free(&one);
    ref_free(&ref);
    sb_model_free(&model);
}

static void check_threads(void)
{
    sb_model_shape shape = base_shape();
    shape.hidden_size = 64;
    shape.intermediate_size = 172;
    shape.num_attention_heads = 8;
    shape.num_key_value_heads = 4;
    shape.head_dim = 8;
    shape.vocab_size = 300;
    check_threads_for("llama", &shape);
    shape.architecture = SB_ARCH_QWEN3_MOE;
    shape.qk_norm = true;
    shape.attention_bias = true;
    shape.num_experts = 8;
    shape.num_experts_per_tok = 3;
    shape.moe_intermediate_size = 40;
    shape.norm_topk_prob = true;
    shape.decoder_sparse_step = 1;
    check_threads_for("qwen3-moe", &shape);
}

/* A gradient consumer's error stops the pass and comes back with the layer and kind named. */
static sb_status failing_gradient(void *user, const sb_tensor_id *id, const float *grad, int64_t rows, int64_t cols,
                                  sb_error *err)
{
    return sb_error_set(err, SB_ERR_IO, "disk full");
}

static sb_status failing_vector(void *user, const sb_tensor_id *id, const float *grad, int64_t count, sb_error *err)
{
    return sb_error_set(err, SB_ERR_IO, "quota");
}

static sb_status failing_expert_hook(void *user, const sb_linear_input *input, sb_error *err)
{
    return input->id.expert == 1 && input->id.role == SB_ROLE_DOWN ? sb_error_set(err, SB_ERR_IO, "no room")
                                                                      : SB_OK;
}

static void check_callback_error(void)
{
    sb_model_shape shapes[2] = {base_shape(), moe_shape()};
    const char *expected[2] = {"layer 1 down_proj gradient: disk full", "layer 2 expert 0 down_proj gradient: disk full"};
    for (int i = 0; i < 2; i++) {
        sb_model_shape shape = shapes[i];
        sb_model model;
        random_model(&shape, 5, &model);
        sb_error err;
        sb_model_workspace *ws = NULL;
        SB_CHECK(sb_model_workspace_create(&shape, 7, 1, 1, true, &ws, &err) == SB_OK);
        sb_layer_cache *caches[MAX_LAYERS];
        for (int l = 0; l < shape.num_hidden_layers; l++)
            SB_CHECK(sb_layer_cache_create(&shape, l, 7, &caches[l], &err) == SB_OK);
        uint32_t tokens[7] = {1, 2, 3, 4, 5, 6, 7};
        sb_nll nll = {0, 0};
        sb_gradient_sink sink = {failing_gradient, NULL, NULL};
        sb_status status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, &sink, &nll, &err);
        SB_CHECK(status == SB_ERR_IO);
        SB_CHECK_MSG(strstr(err.message, expected[i]) != NULL, "%s", err.message);
        if (i == 1) {
            /* a hook's error on an expert names the expert; a vector consumer's error its vector */
            status = sb_model_backward(&model, tokens, 1, 7, ws, caches, failing_expert_hook, NULL, &sink, &nll, &err);
            SB_CHECK_MSG(status == SB_ERR_IO && strstr(err.message, "layer 1 expert 1 down_proj activations: no room"),
                         "%s", err.message);
            sb_gradient_sink vectors = {collect_gradient, failing_vector, NULL};
            collected c;
            memset(&c, 0, sizeof c);
            c.shape = &shape;
            vectors.user = &c;
            status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, &vectors, &nll, &err);
            SB_CHECK_MSG(status == SB_ERR_IO && strstr(err.message, "layer 2 q_norm gradient: quota"), "%s",
                         err.message);
            collected_free(&c);
        }
        tokens[3] = 13; /* = vocab_size */
        status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, &sink, &nll, &err);
        SB_CHECK(status == SB_ERR_INPUT);
        SB_CHECK_MSG(strstr(err.message, "token 13 at batch position 3") != NULL, "%s", err.message);
        /* a cache made for a dense layer refused by an MoE layer */
        if (i == 1) {
            sb_layer_cache *dense_cache = caches[0];
            caches[0] = caches[1];
            caches[1] = dense_cache;
            tokens[3] = 4;
            status = sb_model_backward(&model, tokens, 1, 7, ws, caches, NULL, NULL, &sink, &nll, &err);
            SB_CHECK_MSG(status == SB_ERR_INTERNAL && strstr(err.message, "activation cache made for a"), "%s",
                         err.message);
        }
        for (int l = 0; l < shape.num_hidden_layers; l++)
            sb_layer_cache_free(caches[l]);
        sb_model_workspace_free(ws);
        sb_model_free(&model);
    }
}

/* Equal router probabilities go to the lower expert index (the runtime's documented rule):
 * experts 2 and 5 get the same router row, the others a zero row, so every token's top-1 is a
 * tie, between 2 and 5 (their logit positive) or between 0, 1, 3 and 4 (negative). Expert 5 and
 * experts 1, 3, 4 must never be chosen. */
static void check_ties(void)
{
    sb_model_shape shape = moe_shape();
    shape.num_experts_per_tok = 1;
    sb_model model;
    random_model(&shape, 31, &model);
    for (int64_t l = 1; l < shape.num_hidden_layers; l++) {
        float *router = model.layers[l].router.f32;
        int64_t H = shape.hidden_size;
        for (int64_t e = 0; e < shape.num_experts; e++)
            for (int64_t j = 0; j < H; j++)
                router[e * H + j] = e == 2 || e == 5 ? router[2 * H + j] : 0.0f;
    }
    uint32_t tokens[2 * 9];
    sb_test_rng rng = {5};
    for (int i = 0; i < 18; i++)
        tokens[i] = (uint32_t)(sb_test_next(&rng) % (uint64_t)shape.vocab_size);
    collected c;
    memset(&c, 0, sizeof c);
    run_backward(&model, tokens, 2, 9, 2, &c);
    for (int64_t l = 1; l < shape.num_hidden_layers; l++) {
        int64_t counts[MAX_EXPERTS];
        for (int64_t e = 0; e < shape.num_experts; e++)
            counts[e] = c.expert[l][e].rows;
        SB_CHECK_MSG(counts[0] + counts[2] == 18 && counts[1] == 0 && counts[3] == 0 && counts[4] == 0 &&
                         counts[5] == 0 && counts[0] > 0 && counts[2] > 0,
                     "layer %lld: ties not broken to the lower index (rows %lld %lld %lld %lld %lld %lld)",
                     (long long)l, (long long)counts[0], (long long)counts[1], (long long)counts[2],
                     (long long)counts[3], (long long)counts[4], (long long)counts[5]);
        /* one expert of weight 1: p of the tied pair is 1/2 each, renormalised to 1 */
        for (int64_t i = 0; i < counts[2]; i++)
            SB_CHECK(c.expert[l][2].route_weights[i] == 1.0f);
    }
    collected_free(&c);
    sb_model_free(&model);
}

static void check_names(void)
{
    char name[128];
    sb_linear_weight_name(3, SB_LINEAR_Q, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.3.self_attn.q_proj.weight") == 0);
    sb_linear_weight_name(12, SB_LINEAR_DOWN, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.12.mlp.down_proj.weight") == 0);
    /* the names of the weights the runtime reports, as the classifier writes them */
    sb_tensor_id router = {SB_ROLE_ROUTER, 2, -1};
    sb_tensor_name_format(router, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.2.mlp.gate.weight") == 0);
    sb_tensor_id expert = {SB_ROLE_UP, 5, 17};
    sb_tensor_name_format(expert, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.5.mlp.experts.17.up_proj.weight") == 0);
    sb_tensor_id k_norm = {sb_vector_role(SB_VECTOR_K_NORM), 1, -1};
    sb_tensor_name_format(k_norm, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.1.self_attn.k_norm.weight") == 0);
    sb_tensor_id o_bias = {sb_vector_role(SB_VECTOR_O_BIAS), 1, -1};
    sb_tensor_name_format(o_bias, name, sizeof name);
    SB_CHECK(strcmp(name, "model.layers.1.self_attn.o_proj.bias") == 0);
    SB_CHECK(strcmp(sb_linear_kind_name(SB_LINEAR_UP), "up_proj") == 0);
    SB_CHECK(strcmp(sb_role_name(SB_ROLE_ROUTER), "router") == 0);
    /* shapes */
    sb_model_shape s = moe_shape();
    int64_t rows, cols;
    sb_weight_shape(&s, &expert, &rows, &cols);
    SB_CHECK(rows == 10 && cols == 16);
    expert.role = SB_ROLE_DOWN;
    sb_weight_shape(&s, &expert, &rows, &cols);
    SB_CHECK(rows == 16 && cols == 10);
    sb_weight_shape(&s, &router, &rows, &cols);
    SB_CHECK(rows == 6 && cols == 16);
    SB_CHECK(sb_vector_length(&s, SB_VECTOR_Q_NORM) == 6 && sb_vector_length(&s, SB_VECTOR_Q_BIAS) == 0);
    s = qwen3_shape();
    SB_CHECK(sb_vector_length(&s, SB_VECTOR_Q_BIAS) == 24 && sb_vector_length(&s, SB_VECTOR_O_BIAS) == 16);
}

/* ---- Memory: the formulas of sb_model.h -------------------------------------------------------- */

static size_t aligned(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* The cache of layer l for T tokens, from the header's formula (4-byte units, arrays aligned). */
static size_t cache_formula(const sb_model_shape *s, int64_t l, size_t T)
{
    size_t H = (size_t)s->hidden_size, qd = (size_t)(s->num_attention_heads * s->head_dim);
    size_t kvd = (size_t)(s->num_key_value_heads * s->head_dim), heads = (size_t)s->num_attention_heads;
    size_t kvh = (size_t)s->num_key_value_heads, K = (size_t)s->num_experts_per_tok;
    size_t bytes = 2 * aligned(4 * T * H) + 2 * aligned(4 * T) + 2 * aligned(4 * T * qd) + 2 * aligned(4 * T * kvd) +
                   2 * aligned(4 * T * heads);
    if (s->qk_norm)
        bytes += aligned(4 * T * qd) + aligned(4 * T * kvd) + aligned(4 * T * heads) + aligned(4 * T * kvh);
    if (sb_layer_is_moe(s, l))
        bytes += 2 * aligned(4 * T * K * (size_t)s->moe_intermediate_size) + aligned(4 * T * (size_t)s->num_experts) +
                 2 * aligned(4 * T * K);
    else
        bytes += 2 * aligned(4 * T * (size_t)s->intermediate_size);
    return bytes;
}

/* The workspace, from the header's formula. */
static size_t workspace_formula(const sb_model_shape *s, size_t ctx, size_t windows, size_t threads, bool backward)
{
    size_t T = ctx * windows, H = (size_t)s->hidden_size, qd = (size_t)(s->num_attention_heads * s->head_dim);
    size_t kvd = (size_t)(s->num_key_value_heads * s->head_dim), heads = (size_t)s->num_attention_heads;
    size_t E = (size_t)s->num_experts, K = (size_t)s->num_experts_per_tok, V = (size_t)s->vocab_size;
    bool moe = sb_shape_moe_layers(s) > 0, dense = sb_shape_dense_layers(s) > 0;
    size_t ffn = 0;
    ffn = dense && (size_t)s->intermediate_size > ffn ? (size_t)s->intermediate_size : ffn;
    ffn = moe && (size_t)s->moe_intermediate_size > ffn ? (size_t)s->moe_intermediate_size : ffn;
    size_t head_rows = (size_t)(1 << 24) / V;
    head_rows = head_rows < 1 ? 1 : head_rows > T ? T : head_rows;
    size_t scratch = threads * 64 * ctx;
    size_t bytes = 2 * aligned(4 * ctx * (size_t)(s->head_dim / 2)) + 2 * aligned(4 * T * H) + aligned(4 * T) +
                   2 * aligned(4 * T * qd) + 2 * aligned(4 * T * kvd) + 2 * aligned(4 * T * heads) +
                   3 * aligned(4 * T * ffn) + aligned(4 * scratch) + aligned(4 * head_rows * V) + aligned(8 * T);
    if (s->qk_norm)
        bytes += aligned(4 * T * heads) + aligned(4 * T * (size_t)s->num_key_value_heads);
    if (moe)
        bytes += aligned(4 * T * E) + 2 * aligned(4 * T * K) + aligned(8 * (E + 1)) + 2 * aligned(8 * T * K) +
                 aligned(4 * T * K) + 3 * aligned(4 * T * H);
    if (backward) {
        size_t largest = 0, longest = 0;
        for (int k = 0; k <= ROUTER; k++) {
            bool mlp = k >= SB_LINEAR_GATE && k <= SB_LINEAR_DOWN;
            int64_t rows = 0, cols = 0;
            if (k <= SB_LINEAR_O || (mlp && dense) || (k == ROUTER && moe))
                matrix_shape(s, k, -1, &rows, &cols);
            largest = (size_t)(rows * cols) > largest ? (size_t)(rows * cols) : largest;
            sb_tensor_id expert = {role_of(k), 0, 0};
            if (mlp && moe)
                sb_weight_shape(s, &expert, &rows, &cols);
            largest = (size_t)(rows * cols) > largest ? (size_t)(rows * cols) : largest;
        }
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            longest = (size_t)sb_vector_length(s, (sb_vector_kind)v) > longest ? (size_t)sb_vector_length(s, (sb_vector_kind)v)
                                                                              : longest;
        bytes += 2 * aligned(4 * T * H) + aligned(4 * scratch) + aligned(4 * largest) + (longest ? aligned(8 * longest) : 0) +
                 (moe ? aligned(4 * T * K) : 0);
    }
    return bytes;
}

static void check_memory(void)
{
    sb_model_shape shapes[3] = {base_shape(), qwen3_shape(), moe_shape()};
    shapes[2].num_hidden_layers = 4;
    shapes[2].decoder_sparse_step = 2; /* layers 1 and 3 sparse, 0 and 2 dense */
    int checked = 0;
    for (int i = 0; i < 3; i++) {
        const sb_model_shape *s = &shapes[i];
        for (int64_t l = 0; l < s->num_hidden_layers; l++)
            for (size_t T = 1; T <= 300; T += 37) {
                SB_CHECK_MSG(sb_layer_cache_bytes(s, l, (int64_t)T) == cache_formula(s, l, T),
                             "shape %d layer %lld, %zu tokens: cache %zu bytes, formula %zu", i, (long long)l, T,
                             sb_layer_cache_bytes(s, l, (int64_t)T), cache_formula(s, l, T));
                checked++;
            }
        for (int backward = 0; backward < 2; backward++)
            for (int threads = 1; threads <= 3; threads += 2) {
                sb_model_workspace *ws = NULL;
                sb_error err;
                SB_CHECK(sb_model_workspace_create(s, 19, 3, threads, backward, &ws, &err) == SB_OK);
                size_t formula = workspace_formula(s, 19, 3, (size_t)threads, backward);
                SB_CHECK_MSG(ws && sb_model_workspace_bytes(ws) == formula,
                             "shape %d: workspace %zu bytes, formula %zu", i, ws ? sb_model_workspace_bytes(ws) : 0,
                             formula);
                sb_model_workspace_free(ws);
                checked++;
            }
    }
    printf("memory: %d cache and workspace sizes equal the header's formulas\n", checked);
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
    check_memory();

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

    /* Qwen3 dense: q/k norms over head_dim 6 (q_dim 24 != hidden 16), biases on q/k/v/o. */
    config qwen3 = {"qwen3", qwen3_shape(), 7, 2};
    /* Qwen3-MoE: a dense layer, then two MoE layers of 6 experts, top 2, renormalised. */
    config moe = {"qwen3-moe", moe_shape(), 7, 2};
    /* top 1 of 16 experts over 8 tokens: most experts get no token (zero gradients); no
     * renormalisation (the weight is the softmax probability itself); every layer sparse;
     * biases on */
    config sparse = {"qwen3-moe-top1", moe_shape(), 8, 1};
    sparse.shape.num_experts = 16;
    sparse.shape.num_experts_per_tok = 1;
    sparse.shape.norm_topk_prob = false;
    sparse.shape.attention_bias = true;
    sparse.shape.mlp_only_layers[0] = 0;
    sparse.shape.num_hidden_layers = 2;
    /* decoder_sparse_step 2: layers 1 and 3 sparse; top 3 of 5 without renormalisation */
    config step = {"qwen3-moe-step2", moe_shape(), 6, 2};
    step.shape.num_hidden_layers = 4;
    step.shape.mlp_only_layers[0] = 0;
    step.shape.decoder_sparse_step = 2;
    step.shape.num_experts = 5;
    step.shape.num_experts_per_tok = 3;
    step.shape.norm_topk_prob = false;

    check_config(&gqa, 11);
    check_config(&llama3, 12);
    check_config(&tied, 13);
    check_config(&long_window, 14);
    check_config(&qwen3, 15);
    check_config(&moe, 16);
    check_config(&sparse, 17);
    check_config(&step, 18);
    SB_CHECK_MSG(unused_experts >= 10, "only %d unrouted experts: the zero-gradient case is not exercised",
                 unused_experts);
    SB_CHECK_MSG(skipped_samples * 20 <= total_samples, "%d of %d finite-difference samples crossed a top-k change",
                 skipped_samples, total_samples);
    check_ties();
    check_callback_error();
    check_threads();
    printf("worst relative errors: forward NLL %.2e, hook inputs %.2e, gradients (L2 over samples) %.2e\n",
           worst_forward_error, worst_hook_error, worst_grad_error);
    printf("finite differences: %d samples, %d skipped (a top-k choice changed); %d unrouted experts with zero "
           "gradients\n",
           total_samples, skipped_samples, unused_experts);
    return sb_test_finish("test_model_grad");
}
