#include "sb_decoder.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "sb_gemm.h"
#include "sb_linear.h"
#include "sb_model_internal.h"

struct sb_decoder {
    const sb_model *model;
    sb_model_shape shape;
    int64_t max_positions, max_batch, length;
    int threads;
    int64_t q_dim, kv_dim;
    int64_t ffn_width;           /* widest MLP: intermediate (dense layers), moe_intermediate */
    float scale;                 /* 1 / sqrt(head_dim) */
    float *rope_cos, *rope_sin;  /* [max_positions x head_dim / 2] */
    float *keys, *values;        /* [layers x max_positions x kv_dim]: rotated keys, values */
    float *x, *normed, *inv_rms; /* [max_batch x hidden], [max_batch] */
    float *q, *attn;             /* [max_batch x q_dim] (k and v go straight to the cache) */
    float *q_inv_rms, *k_inv_rms; /* qk_norm: [max_batch x heads | kv_heads] */
    float *scores;               /* [threads x max_positions] */
    sb_moe_buffers mlp;          /* gate, up, act [max_batch x ffn_width]; the rest for MoE layers */
    size_t bytes;
    void *storage;
};

static void *take_bytes(char **cursor, size_t count, size_t size)
{
    void *p = *cursor;
    *cursor += (count * size + 63) & ~(size_t)63;
    return p;
}

static float *take(char **cursor, size_t count) { return take_bytes(cursor, count, sizeof(float)); }

/* Lays the buffers out from `base` (NULL: only sizes them); returns the bytes used. */
static size_t layout(sb_decoder *d, char *base)
{
    const sb_model_shape *s = &d->shape;
    size_t positions = (size_t)d->max_positions, batch = (size_t)d->max_batch;
    char *cursor = base;
    size_t half = (size_t)(s->head_dim / 2), cache = (size_t)s->num_hidden_layers * positions * (size_t)d->kv_dim;
    d->rope_cos = take(&cursor, positions * half);
    d->rope_sin = take(&cursor, positions * half);
    d->keys = take(&cursor, cache);
    d->values = take(&cursor, cache);
    d->x = take(&cursor, batch * (size_t)s->hidden_size);
    d->normed = take(&cursor, batch * (size_t)s->hidden_size);
    d->inv_rms = take(&cursor, batch);
    d->q = take(&cursor, batch * (size_t)d->q_dim);
    d->attn = take(&cursor, batch * (size_t)d->q_dim);
    if (s->qk_norm) {
        d->q_inv_rms = take(&cursor, batch * (size_t)s->num_attention_heads);
        d->k_inv_rms = take(&cursor, batch * (size_t)s->num_key_value_heads);
    }
    d->scores = take(&cursor, (size_t)d->threads * positions);
    sb_moe_buffers *m = &d->mlp;
    size_t ffn = (size_t)d->ffn_width, hidden = (size_t)s->hidden_size;
    m->threads = d->threads;
    m->gate = take(&cursor, batch * ffn);
    m->up = take(&cursor, batch * ffn);
    m->act = take(&cursor, batch * ffn);
    if (sb_shape_moe_layers(s) > 0) {
        size_t experts = (size_t)s->num_experts, slots = batch * (size_t)s->num_experts_per_tok;
        m->probs = take(&cursor, batch * experts);
        m->top_expert = take_bytes(&cursor, slots, sizeof(int32_t));
        m->top_weight = take(&cursor, slots);
        m->routing.offset = take_bytes(&cursor, experts + 1, sizeof(int64_t));
        m->routing.token = take_bytes(&cursor, slots, sizeof(int64_t));
        m->routing.slot = take_bytes(&cursor, slots, sizeof(int64_t));
        m->routing.weight = take(&cursor, slots);
        m->gathered = take(&cursor, batch * hidden);
        m->expert_out = take(&cursor, batch * hidden);
        m->moe_out = take(&cursor, batch * hidden);
    }
    return (size_t)(cursor - base);
}

sb_status sb_decoder_create(const sb_model *model, int64_t max_positions, int64_t max_batch, int threads,
                            sb_decoder **decoder, sb_error *err)
{
    *decoder = NULL;
    SB_TRY(sb_model_shape_check(&model->shape, err));
    for (int64_t layer = 0; layer < model->shape.num_hidden_layers; layer++)
        SB_TRY(sb_layer_check(&model->shape, layer, &model->layers[layer], NULL, err));
    if (max_positions < 1 || max_batch < 1 || threads < 1 || max_positions > ((int64_t)1 << 24))
        return sb_error_set(err, SB_ERR_USAGE, "decoder: need 1 <= positions <= 2^24, batch >= 1, threads >= 1 "
                            "(got %lld, %lld, %d)", (long long)max_positions, (long long)max_batch, threads);
    sb_decoder *d = sb_calloc(1, sizeof *d, "decoder", err);
    if (!d)
        return SB_ERR_NOMEM;
    d->model = model;
    d->shape = model->shape;
    d->max_positions = max_positions;
    d->max_batch = max_batch < max_positions ? max_batch : max_positions;
    d->threads = threads;
    d->q_dim = d->shape.num_attention_heads * d->shape.head_dim;
    d->kv_dim = d->shape.num_key_value_heads * d->shape.head_dim;
    int64_t dense_ffn = sb_shape_dense_layers(&d->shape) > 0 ? d->shape.intermediate_size : 0;
    int64_t expert_ffn = sb_shape_moe_layers(&d->shape) > 0 ? d->shape.moe_intermediate_size : 0;
    d->ffn_width = dense_ffn > expert_ffn ? dense_ffn : expert_ffn;
    d->scale = (float)(1.0 / sqrt((double)d->shape.head_dim));
    d->bytes = layout(d, NULL);
    d->storage = aligned_alloc(64, d->bytes);
    if (!d->storage) {
        size_t bytes = d->bytes;
        free(d);
        return sb_error_set(err, SB_ERR_NOMEM, "decoder: cannot allocate %zu bytes for %lld positions (KV cache)",
                            bytes, (long long)max_positions);
    }
    layout(d, d->storage);
    sb_rope_tables(&d->shape, max_positions, d->rope_cos, d->rope_sin);
    *decoder = d;
    return SB_OK;
}

void sb_decoder_free(sb_decoder *d)
{
    if (d) {
        free(d->storage);
        free(d);
    }
}

void sb_decoder_reset(sb_decoder *d) { d->length = 0; }
int64_t sb_decoder_length(const sb_decoder *d) { return d->length; }
int64_t sb_decoder_max_positions(const sb_decoder *d) { return d->max_positions; }
size_t sb_decoder_bytes(const sb_decoder *d) { return d->bytes + sizeof *d; }

/* Causal attention of row i (position p0 + i), head h, over the cached positions 0..p0+i. */
static void attend(const sb_decoder *d, const float *keys, const float *values, int64_t row, int64_t head, int64_t p0,
                   float *scores)
{
    int64_t head_dim = d->shape.head_dim, kv_head = head / (d->shape.num_attention_heads / d->shape.num_key_value_heads);
    const float *q = d->q + row * d->q_dim + head * head_dim;
    float *out = d->attn + row * d->q_dim + head * head_dim;
    int64_t count = p0 + row + 1;
    float max = -INFINITY;
    for (int64_t j = 0; j < count; j++) {
        const float *k = keys + j * d->kv_dim + kv_head * head_dim;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < head_dim; i++)
            dot += q[i] * k[i];
        scores[j] = dot * d->scale;
        max = scores[j] > max ? scores[j] : max;
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < count; j++) {
        scores[j] = sb_expf(scores[j] - max);
        sum += scores[j];
    }
    float inv_sum = 1.0f / sum;
    memset(out, 0, (size_t)head_dim * sizeof(float));
    for (int64_t j = 0; j < count; j++) {
        const float *v = values + j * d->kv_dim + kv_head * head_dim;
        float p = scores[j] * inv_sum;
#pragma omp simd
        for (int64_t i = 0; i < head_dim; i++)
            out[i] += p * v[i];
    }
}

/* One layer over the n rows at positions p0.., as the window runtime's layer forward
 * (src/sb_model_layer.c) computes it with the shared pieces of src/sb_model_internal.h; only the
 * attention differs (over the cache). */
static sb_status layer_step(sb_decoder *d, int64_t layer, int64_t n, sb_error *err)
{
    const sb_model_shape *s = &d->shape;
    const sb_layer_weights *w = &d->model->layers[layer];
    float *const *vector = w->vector;
    int64_t hidden = s->hidden_size, p0 = d->length;
    int threads = d->threads;
    size_t cache_offset = (size_t)layer * (size_t)d->max_positions * (size_t)d->kv_dim;
    float *keys = d->keys + cache_offset, *values = d->values + cache_offset;

    sb_rms_norm_rows(d->x, w->attn_norm, n, hidden, s->rms_norm_eps, d->normed, d->inv_rms, threads);
    /* q and k straight to their places: the query buffer, the cache */
    sb_rope_view rope = {d->rope_cos, d->rope_sin, p0, d->max_positions};
    float *k = keys + p0 * d->kv_dim, *v = values + p0 * d->kv_dim;
    SB_TRY(sb_project_heads(s, d->normed, n, &w->linear[SB_LINEAR_Q], vector[SB_VECTOR_Q_BIAS],
                            vector[SB_VECTOR_Q_NORM], s->num_attention_heads, d->q, d->q, d->q_inv_rms, &rope, threads,
                            err));
    SB_TRY(sb_project_heads(s, d->normed, n, &w->linear[SB_LINEAR_K], vector[SB_VECTOR_K_BIAS],
                            vector[SB_VECTOR_K_NORM], s->num_key_value_heads, k, k, d->k_inv_rms, &rope, threads,
                            err));
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_V], d->normed, n, 0.0f, v, threads, err));
    if (vector[SB_VECTOR_V_BIAS])
        sb_add_bias(v, n, d->kv_dim, vector[SB_VECTOR_V_BIAS], threads);
    int64_t units = n * s->num_attention_heads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t unit = 0; unit < units; unit++)
        attend(d, keys, values, unit / s->num_attention_heads, unit % s->num_attention_heads, p0,
               d->scores + (size_t)omp_get_thread_num() * (size_t)d->max_positions);
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_O], d->attn, n, 1.0f, d->x, threads, err));
    if (vector[SB_VECTOR_O_BIAS])
        sb_add_bias(d->x, n, hidden, vector[SB_VECTOR_O_BIAS], threads);

    sb_rms_norm_rows(d->x, w->mlp_norm, n, hidden, s->rms_norm_eps, d->normed, d->inv_rms, threads);
    if (sb_layer_is_moe(s, layer))
        return sb_moe_forward(s, layer, w, d->normed, n, n, d->x, NULL, NULL, NULL, &d->mlp, err);
    const sb_moe_buffers *m = &d->mlp;
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_GATE], d->normed, n, 0.0f, m->gate, threads, err));
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_UP], d->normed, n, 0.0f, m->up, threads, err));
    sb_swiglu_forward(m->gate, m->up, n, s->intermediate_size, m->act, threads);
    return sb_linear_forward(&w->linear[SB_LINEAR_DOWN], m->act, n, 1.0f, d->x, threads, err);
}

static sb_status feed(sb_decoder *d, const uint32_t *tokens, int64_t ntokens, float *logits, sb_error *err)
{
    const sb_model_shape *s = &d->shape;
    for (int64_t done = 0; done < ntokens;) {
        int64_t n = ntokens - done < d->max_batch ? ntokens - done : d->max_batch;
        SB_TRY(sb_embed_forward(s, d->model->embed, tokens + done, n, d->x, err));
        for (int64_t layer = 0; layer < s->num_hidden_layers; layer++) {
            sb_status status = layer_step(d, layer, n, err);
            if (status != SB_OK)
                return sb_error_prefix(err, "layer %lld", (long long)layer);
        }
        d->length += n;
        done += n;
        if (done == ntokens) {
            const float *last = d->x + (n - 1) * s->hidden_size;
            sb_rms_norm_rows(last, d->model->final_norm, 1, s->hidden_size, s->rms_norm_eps, d->normed, d->inv_rms, 1);
            sb_gemm(d->threads, false, true, 1, s->vocab_size, s->hidden_size, 1.0f, d->normed, s->hidden_size,
                    d->model->lm_head, s->hidden_size, 0.0f, logits, s->vocab_size);
        }
    }
    return SB_OK;
}

sb_status sb_decoder_feed(sb_decoder *d, const uint32_t *tokens, int64_t ntokens, float *logits, sb_error *err)
{
    if (ntokens < 1)
        return sb_error_set(err, SB_ERR_INPUT, "decoder: nothing to feed");
    if (ntokens > d->max_positions - d->length)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%lld tokens do not fit the context: %lld of its %lld positions are used",
                            (long long)ntokens, (long long)d->length, (long long)d->max_positions);
    for (int64_t i = 0; i < ntokens; i++)
        if ((int64_t)tokens[i] >= d->shape.vocab_size)
            return sb_error_set(err, SB_ERR_INPUT, "token %u (at %lld) is >= vocab_size %lld", tokens[i], (long long)i,
                                (long long)d->shape.vocab_size);
    int previous = sb_blas_hold(d->threads);
    sb_status status = feed(d, tokens, ntokens, logits, err);
    sb_blas_release(previous);
    return status;
}
