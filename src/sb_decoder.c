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
    float scale;                 /* 1 / sqrt(head_dim) */
    float *rope_cos, *rope_sin;  /* [max_positions x head_dim / 2] */
    float *keys, *values;        /* [layers x max_positions x kv_dim]: rotated keys, values */
    float *x, *normed, *inv_rms; /* [max_batch x hidden], [max_batch] */
    float *q, *k, *v, *attn;     /* [max_batch x q_dim | kv_dim] */
    float *gate, *up;            /* [max_batch x intermediate] */
    float *scores;               /* [threads x max_positions] */
    size_t bytes;
    void *storage;
};

static float *take(char **cursor, size_t count)
{
    float *p = (float *)*cursor;
    *cursor += (count * sizeof(float) + 63) & ~(size_t)63;
    return p;
}

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
    d->k = take(&cursor, batch * (size_t)d->kv_dim);
    d->v = take(&cursor, batch * (size_t)d->kv_dim);
    d->attn = take(&cursor, batch * (size_t)d->q_dim);
    d->gate = take(&cursor, batch * (size_t)s->intermediate_size);
    d->up = take(&cursor, batch * (size_t)s->intermediate_size);
    d->scores = take(&cursor, (size_t)d->threads * positions);
    return (size_t)(cursor - base);
}

sb_status sb_decoder_create(const sb_model *model, int64_t max_positions, int64_t max_batch, int threads,
                            sb_decoder **decoder, sb_error *err)
{
    *decoder = NULL;
    SB_TRY(sb_model_shape_check(&model->shape, err));
    const sb_model_shape *shape = &model->shape;
    if (shape->qk_norm || shape->attention_bias || shape->num_experts > 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "the decoder runs Llama-architecture models; this one has %s (Qwen3): evaluate it with "
                            "scalebits-eval", shape->num_experts > 0 ? "mixture-of-experts layers"
                                              : shape->qk_norm ? "q/k norms" : "attention biases");
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

/* Rotate-half rotary embedding of `rows` rows of `heads` heads, row i at position p0 + i (the
 * same float operations as the window runtime's). */
static void rope(const sb_decoder *d, float *matrix, int64_t rows, int64_t heads, int64_t p0)
{
    int64_t head_dim = d->shape.head_dim, half = head_dim / 2, ld = heads * head_dim;
    for (int64_t row = 0; row < rows; row++) {
        const float *c = d->rope_cos + (p0 + row) * half, *s = d->rope_sin + (p0 + row) * half;
        for (int64_t head = 0; head < heads; head++) {
            float *x = matrix + row * ld + head * head_dim;
            for (int64_t i = 0; i < half; i++) {
                float a = x[i], b = x[i + half];
                x[i] = a * c[i] - b * s[i];
                x[i + half] = b * c[i] + a * s[i];
            }
        }
    }
}

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

static inline float sigmoid(float x) { return 1.0f / (1.0f + sb_expf(-x)); }

static sb_status layer_step(sb_decoder *d, int64_t layer, int64_t n, sb_error *err)
{
    const sb_model_shape *s = &d->shape;
    const sb_layer_weights *w = &d->model->layers[layer];
    int64_t hidden = s->hidden_size, ffn = s->intermediate_size, p0 = d->length;
    int threads = d->threads;
    size_t cache_offset = (size_t)layer * (size_t)d->max_positions * (size_t)d->kv_dim;
    float *keys = d->keys + cache_offset, *values = d->values + cache_offset;

    sb_rms_norm_rows(d->x, w->attn_norm, n, hidden, s->rms_norm_eps, d->normed, d->inv_rms, threads);
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_Q], d->normed, n, 0.0f, d->q, threads, err));
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_K], d->normed, n, 0.0f, d->k, threads, err));
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_V], d->normed, n, 0.0f, d->v, threads, err));
    rope(d, d->q, n, s->num_attention_heads, p0);
    rope(d, d->k, n, s->num_key_value_heads, p0);
    memcpy(keys + p0 * d->kv_dim, d->k, (size_t)(n * d->kv_dim) * sizeof(float));
    memcpy(values + p0 * d->kv_dim, d->v, (size_t)(n * d->kv_dim) * sizeof(float));
    int64_t units = n * s->num_attention_heads;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t unit = 0; unit < units; unit++)
        attend(d, keys, values, unit / s->num_attention_heads, unit % s->num_attention_heads, p0,
               d->scores + (size_t)omp_get_thread_num() * (size_t)d->max_positions);
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_O], d->attn, n, 1.0f, d->x, threads, err));

    sb_rms_norm_rows(d->x, w->mlp_norm, n, hidden, s->rms_norm_eps, d->normed, d->inv_rms, threads);
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_GATE], d->normed, n, 0.0f, d->gate, threads, err));
    SB_TRY(sb_linear_forward(&w->linear[SB_LINEAR_UP], d->normed, n, 0.0f, d->up, threads, err));
    int64_t count = n * ffn;
#pragma omp parallel for simd num_threads(threads) schedule(static)
    for (int64_t i = 0; i < count; i++)
        d->gate[i] = (d->gate[i] * sigmoid(d->gate[i])) * d->up[i];
    return sb_linear_forward(&w->linear[SB_LINEAR_DOWN], d->gate, n, 1.0f, d->x, threads, err);
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
