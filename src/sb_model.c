/* sb_model: weights, names, workspace, embedding, head (final norm, lm_head, cross-entropy) and
 * the whole-model drivers. The decoder layer itself is in sb_model_layer.c. */
#include "sb_model.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_model_internal.h"

/* ---- Names and shapes ----------------------------------------------------------------------- */

/* Rows and columns of a linear kind whose MLP width is `ffn` (router: role ROUTER). */
static void kind_shape(const sb_model_shape *shape, sb_tensor_role kind, int64_t ffn, int64_t *rows, int64_t *cols)
{
    int64_t hidden = shape->hidden_size;
    int64_t q_dim = shape->num_attention_heads * shape->head_dim;
    int64_t kv_dim = shape->num_key_value_heads * shape->head_dim;
    switch (kind) {
    case SB_ROLE_Q: *rows = q_dim; *cols = hidden; return;
    case SB_ROLE_K:
    case SB_ROLE_V: *rows = kv_dim; *cols = hidden; return;
    case SB_ROLE_O: *rows = hidden; *cols = q_dim; return;
    case SB_ROLE_GATE:
    case SB_ROLE_UP: *rows = ffn; *cols = hidden; return;
    case SB_ROLE_DOWN: *rows = hidden; *cols = ffn; return;
    case SB_ROLE_ROUTER: *rows = shape->num_experts; *cols = hidden; return;
    default: *rows = 0; *cols = 0; return;
    }
}

void sb_linear_shape(const sb_model_shape *shape, sb_linear_kind kind, int64_t *rows, int64_t *cols)
{
    if (sb_role_is_linear((sb_tensor_role)kind))
        kind_shape(shape, (sb_tensor_role)kind, shape->intermediate_size, rows, cols);
    else
        *rows = *cols = 0;
}

void sb_weight_shape(const sb_model_shape *shape, const sb_tensor_id *id, int64_t *rows, int64_t *cols)
{
    kind_shape(shape, id->role, id->expert >= 0 ? shape->moe_intermediate_size : shape->intermediate_size, rows,
               cols);
}

sb_tensor_role sb_vector_role(sb_vector_kind kind)
{
    static const sb_tensor_role roles[SB_VECTOR_KIND_COUNT] = {
        SB_ROLE_Q_NORM, SB_ROLE_K_NORM, SB_ROLE_Q_BIAS, SB_ROLE_K_BIAS, SB_ROLE_V_BIAS, SB_ROLE_O_BIAS,
    };
    return (unsigned)kind < SB_VECTOR_KIND_COUNT ? roles[kind] : SB_ROLE_OTHER;
}

int64_t sb_vector_length(const sb_model_shape *shape, sb_vector_kind kind)
{
    int64_t rows, cols;
    switch (kind) {
    case SB_VECTOR_Q_NORM:
    case SB_VECTOR_K_NORM: return shape->qk_norm ? shape->head_dim : 0;
    case SB_VECTOR_Q_BIAS:
    case SB_VECTOR_K_BIAS:
    case SB_VECTOR_V_BIAS:
    case SB_VECTOR_O_BIAS:
        sb_linear_shape(shape, (sb_linear_kind)(SB_LINEAR_Q + (kind - SB_VECTOR_Q_BIAS)), &rows, &cols);
        return shape->attention_bias ? rows : 0;
    default: return 0;
    }
}

sb_status sb_model_shape_check(const sb_model_shape *shape, sb_error *err)
{
    const struct { const char *name; int64_t value; } sizes[] = {
        {"hidden_size", shape->hidden_size},
        {"intermediate_size", shape->intermediate_size},
        {"num_attention_heads", shape->num_attention_heads},
        {"num_key_value_heads", shape->num_key_value_heads},
        {"head_dim", shape->head_dim},
        {"num_hidden_layers", shape->num_hidden_layers},
        {"vocab_size", shape->vocab_size},
    };
    /* BLAS takes 32-bit dimensions: every matrix side must stay below 2^31. */
    const int64_t blas_limit = INT32_MAX;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value <= 0 || sizes[i].value > blas_limit)
            return sb_error_set(err, SB_ERR_INPUT, "model shape: %s = %lld is out of range", sizes[i].name,
                                (long long)sizes[i].value);
    if (shape->num_attention_heads % shape->num_key_value_heads != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "model shape: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                            (long long)shape->num_attention_heads, (long long)shape->num_key_value_heads);
    if (shape->head_dim % 2 != 0)
        return sb_error_set(err, SB_ERR_INPUT, "model shape: head_dim %lld is odd (rotary pairs need it even)",
                            (long long)shape->head_dim);
    if (shape->num_attention_heads * shape->head_dim > blas_limit)
        return sb_error_set(err, SB_ERR_INPUT, "model shape: num_attention_heads x head_dim is too large");
    /* Every size derived from the shape (weights per layer, the embedding, the whole model's
     * weight count, its bytes as float32) must fit in int64 with room for bit counts: a config
     * whose products wrap would size buffers wrongly. */
    int64_t q_dim = shape->num_attention_heads * shape->head_dim, kv_dim = shape->num_key_value_heads * shape->head_dim;
    int64_t hidden = shape->hidden_size, per_layer, mlp, embedding, total;
    bool overflow = __builtin_mul_overflow(2 * (q_dim + kv_dim), hidden, &per_layer) ||
                    __builtin_mul_overflow(3 * shape->intermediate_size, hidden, &mlp) ||
                    __builtin_add_overflow(per_layer, mlp, &per_layer) ||
                    __builtin_mul_overflow(shape->vocab_size, hidden, &embedding) ||
                    __builtin_mul_overflow(per_layer, shape->num_hidden_layers, &total) ||
                    __builtin_add_overflow(total, 2 * embedding, &total);
    if (overflow || total > INT64_MAX / 64)
        return sb_error_set(err, SB_ERR_INPUT,
                            "model shape: the weight count of %lld layers of hidden %lld, intermediate %lld, vocab %lld "
                            "overflows", (long long)shape->num_hidden_layers, (long long)hidden,
                            (long long)shape->intermediate_size, (long long)shape->vocab_size);
    if (!(shape->rope_theta > 0) || !(shape->rms_norm_eps > 0))
        return sb_error_set(err, SB_ERR_INPUT, "model shape: rope_theta and rms_norm_eps must be positive");
    if (shape->architecture == SB_ARCH_QWEN3_MOE && shape->num_experts > 0) {
        if (shape->num_experts > blas_limit || shape->moe_intermediate_size <= 0 ||
            shape->moe_intermediate_size > blas_limit)
            return sb_error_set(err, SB_ERR_INPUT, "model shape: num_experts %lld or moe_intermediate_size %lld is "
                                "out of range", (long long)shape->num_experts, (long long)shape->moe_intermediate_size);
        if (shape->num_experts_per_tok < 1 || shape->num_experts_per_tok > shape->num_experts)
            return sb_error_set(err, SB_ERR_INPUT, "model shape: num_experts_per_tok %lld is not in 1..num_experts %lld",
                                (long long)shape->num_experts_per_tok, (long long)shape->num_experts);
        if (shape->decoder_sparse_step < 1)
            return sb_error_set(err, SB_ERR_INPUT, "model shape: decoder_sparse_step must be >= 1");
    }
    if (shape->rope_scaling == SB_ROPE_SCALING_LLAMA3 &&
        (!(shape->rope_factor > 0) || !(shape->rope_high_freq_factor > shape->rope_low_freq_factor) ||
         !(shape->rope_low_freq_factor > 0) || shape->rope_original_max_position <= 0))
        return sb_error_set(err, SB_ERR_INPUT,
                            "model shape: llama3 rope_scaling needs factor > 0, 0 < low_freq_factor < "
                            "high_freq_factor and original_max_position_embeddings > 0");
    return SB_OK;
}

/* ---- Carving one allocation into aligned buffers ------------------------------------------- */

/* Buffers are carved from one block in two passes over the same layout code: a sizing pass
 * (base NULL) and a pass that hands out pointers. 64-byte alignment suits AVX-512 loads. */
typedef struct sb_arena {
    char *base;
    size_t used;
} sb_arena;

static void *arena_take(sb_arena *arena, size_t count, size_t element_size)
{
    size_t at = arena->used; /* every size rounded up: a total is the sum of its rounded parts */
    arena->used = at + ((count * element_size + 63) & ~(size_t)63);
    return arena->base ? arena->base + at : NULL;
}

static void *arena_alloc(size_t bytes, const char *what, sb_error *err)
{
    size_t rounded = (bytes + 63) & ~(size_t)63;
    void *block = aligned_alloc(64, rounded ? rounded : 64);
    if (!block)
        sb_error_set(err, SB_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
    return block;
}

/* ---- Weights -------------------------------------------------------------------------------- */

/* `experts` is the table of expert pointers (allocated by the caller, num_experts long).
 * `linears`: arrays for the linear weights (dense as `dense_storage`, the router float32, experts
 * as `expert_storage`) too; otherwise they stay empty (shapes, no storage) for a loader that
 * fills them in another storage. */
static void layer_weights_layout(const sb_model_shape *shape, int64_t layer, sb_linear_storage dense_storage,
                                 sb_linear_storage expert_storage, sb_arena *arena, bool linears,
                                 sb_layer_weights *weights)
{
    size_t hidden = (size_t)shape->hidden_size;
    bool moe = sb_layer_is_moe(shape, layer);
    weights->attn_norm = arena_take(arena, hidden, sizeof(float));
    weights->mlp_norm = arena_take(arena, hidden, sizeof(float));
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        if (moe && k >= SB_LINEAR_GATE)
            break; /* an MoE layer has no dense MLP */
        int64_t rows, cols;
        sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
        bool bf16 = dense_storage == SB_LINEAR_STORAGE_BF16;
        void *matrix =
            linears ? arena_take(arena, (size_t)(rows * cols), bf16 ? sizeof(uint16_t) : sizeof(float)) : NULL;
        weights->linear[k] = bf16 && linears ? sb_linear_bf16(matrix, rows, cols) : sb_linear_f32(matrix, rows, cols);
    }
    for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++) {
        int64_t length = sb_vector_length(shape, (sb_vector_kind)v);
        weights->vector[v] = length > 0 ? arena_take(arena, (size_t)length, sizeof(float)) : NULL;
    }
    if (!moe)
        return;
    weights->num_experts = shape->num_experts;
    int64_t rows, cols;
    sb_tensor_id id = {SB_ROLE_ROUTER, layer, -1};
    sb_weight_shape(shape, &id, &rows, &cols);
    weights->router = sb_linear_f32(linears ? arena_take(arena, (size_t)(rows * cols), sizeof(float)) : NULL, rows, cols);
    for (id.expert = 0; id.expert < shape->num_experts; id.expert++)
        for (int i = 0; i < 3; i++) {
            id.role = (sb_tensor_role)(SB_ROLE_GATE + i);
            sb_weight_shape(shape, &id, &rows, &cols);
            bool bf16 = expert_storage == SB_LINEAR_STORAGE_BF16;
            void *matrix =
                linears ? arena_take(arena, (size_t)(rows * cols), bf16 ? sizeof(uint16_t) : sizeof(float)) : NULL;
            if (weights->experts)
                weights->experts[id.expert].linear[i] = bf16 ? sb_linear_bf16(matrix, rows, cols)
                                                             : sb_linear_f32(matrix, rows, cols);
        }
}

static sb_status layer_weights_alloc(const sb_model_shape *shape, int64_t layer, sb_linear_storage dense_storage,
                                     sb_linear_storage expert_storage, bool linears, sb_layer_weights *weights,
                                     sb_error *err)
{
    memset(weights, 0, sizeof *weights);
    if (expert_storage != SB_LINEAR_STORAGE_F32 && expert_storage != SB_LINEAR_STORAGE_BF16)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer weights: experts cannot be held as %s",
                            sb_linear_storage_name(expert_storage));
    if (dense_storage != SB_LINEAR_STORAGE_F32 && dense_storage != SB_LINEAR_STORAGE_BF16)
        return sb_error_set(err, SB_ERR_INTERNAL, "layer weights: linear weights cannot be held as %s",
                            sb_linear_storage_name(dense_storage));
    SB_TRY(sb_model_shape_check(shape, err));
    if (sb_layer_is_moe(shape, layer) &&
        !(weights->experts = sb_calloc((size_t)shape->num_experts, sizeof *weights->experts, "expert table", err)))
        return SB_ERR_NOMEM;
    sb_expert_weights *experts = weights->experts;
    sb_arena arena = {NULL, 0};
    weights->experts = NULL; /* sizing pass: no pointers handed out */
    layer_weights_layout(shape, layer, dense_storage, expert_storage, &arena, linears, weights);
    weights->experts = experts;
    arena.base = arena_alloc(arena.used, "layer weights", err);
    if (!arena.base) {
        free(experts);
        memset(weights, 0, sizeof *weights);
        return SB_ERR_NOMEM;
    }
    arena.used = 0;
    layer_weights_layout(shape, layer, dense_storage, expert_storage, &arena, linears, weights);
    weights->storage = arena.base;
    return SB_OK;
}

sb_status sb_layer_weights_alloc(const sb_model_shape *shape, int64_t layer, sb_layer_weights *weights,
                                 sb_error *err)
{
    return layer_weights_alloc(shape, layer, SB_LINEAR_STORAGE_F32, SB_LINEAR_STORAGE_F32, true, weights, err);
}

sb_status sb_layer_weights_alloc_as(const sb_model_shape *shape, int64_t layer, sb_linear_storage dense_storage,
                                    sb_linear_storage expert_storage, sb_layer_weights *weights, sb_error *err)
{
    return layer_weights_alloc(shape, layer, dense_storage, expert_storage, true, weights, err);
}

sb_status sb_layer_weights_alloc_norms(const sb_model_shape *shape, int64_t layer, sb_layer_weights *weights,
                                       sb_error *err)
{
    return layer_weights_alloc(shape, layer, SB_LINEAR_STORAGE_F32, SB_LINEAR_STORAGE_F32, false, weights, err);
}

sb_status sb_layer_weights_drop_matrices(const sb_model_shape *shape, sb_layer_weights *weights, sb_error *err)
{
    size_t hidden = (size_t)shape->hidden_size;
    sb_arena arena = {NULL, 0};
    arena_take(&arena, hidden, sizeof(float));
    arena_take(&arena, hidden, sizeof(float));
    for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
        if (weights->vector[v])
            arena_take(&arena, (size_t)sb_vector_length(shape, (sb_vector_kind)v), sizeof(float));
    arena.base = arena_alloc(arena.used, "layer norms", err);
    if (!arena.base)
        return SB_ERR_NOMEM;
    arena.used = 0;
    float *attn_norm = arena_take(&arena, hidden, sizeof(float)), *mlp_norm = arena_take(&arena, hidden, sizeof(float));
    memcpy(attn_norm, weights->attn_norm, hidden * sizeof(float));
    memcpy(mlp_norm, weights->mlp_norm, hidden * sizeof(float));
    weights->attn_norm = attn_norm;
    weights->mlp_norm = mlp_norm;
    for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
        if (weights->vector[v]) {
            size_t length = (size_t)sb_vector_length(shape, (sb_vector_kind)v);
            float *copy = arena_take(&arena, length, sizeof(float));
            memcpy(copy, weights->vector[v], length * sizeof(float));
            weights->vector[v] = copy;
        }
    free(weights->storage);
    weights->storage = arena.base;
    /* what a linear owns (a packed matrix) goes too; views just empty */
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        sb_linear_release(&weights->linear[k]);
        weights->linear[k] = sb_linear_f32(NULL, weights->linear[k].rows, weights->linear[k].cols);
    }
    sb_linear_release(&weights->router);
    weights->router = sb_linear_f32(NULL, weights->router.rows, weights->router.cols);
    for (int64_t e = 0; e < weights->num_experts; e++)
        for (int i = 0; i < 3; i++) {
            sb_linear *linear = &weights->experts[e].linear[i];
            sb_linear_release(linear);
            *linear = sb_linear_f32(NULL, linear->rows, linear->cols);
        }
    return SB_OK;
}

void sb_layer_weights_free(sb_layer_weights *weights)
{
    if (weights) {
        for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++)
            sb_linear_release(&weights->linear[k]);
        sb_linear_release(&weights->router);
        for (int64_t e = 0; weights->experts && e < weights->num_experts; e++)
            for (int i = 0; i < 3; i++)
                sb_linear_release(&weights->experts[e].linear[i]);
        free(weights->storage);
        free(weights->experts);
        memset(weights, 0, sizeof *weights);
    }
}

float *sb_layer_linear(const sb_layer_weights *weights, sb_linear_kind kind)
{
    if ((unsigned)kind >= SB_LINEAR_KIND_COUNT || weights->linear[kind].storage != SB_LINEAR_STORAGE_F32)
        return NULL;
    return weights->linear[kind].f32;
}

sb_linear *sb_layer_matrix(const sb_layer_weights *weights, const sb_tensor_id *id)
{
    sb_layer_weights *w = (sb_layer_weights *)weights; /* the caller's: it may fill them */
    if (id->role == SB_ROLE_ROUTER && id->expert < 0)
        return w->num_experts > 0 ? &w->router : NULL;
    if (!sb_role_is_linear(id->role))
        return NULL;
    if (id->expert < 0)
        return w->linear[id->role].rows > 0 ? &w->linear[id->role] : NULL;
    if (id->expert >= w->num_experts || id->role < SB_ROLE_GATE)
        return NULL;
    return &w->experts[id->expert].linear[id->role - SB_ROLE_GATE];
}

float *sb_layer_weight(const sb_layer_weights *weights, const sb_tensor_id *id)
{
    const sb_linear *linear = sb_layer_matrix(weights, id);
    return linear && linear->storage == SB_LINEAR_STORAGE_F32 ? linear->f32 : NULL;
}

static sb_status model_alloc(const sb_model_shape *shape, bool linears, sb_model *model, sb_error *err)
{
    memset(model, 0, sizeof *model);
    SB_TRY(sb_model_shape_check(shape, err));
    model->shape = *shape;
    size_t table = (size_t)(shape->vocab_size * shape->hidden_size);
    model->embed = arena_alloc(table * sizeof(float), "the embedding", err);
    model->final_norm = arena_alloc((size_t)shape->hidden_size * sizeof(float), "the final norm", err);
    model->lm_head = shape->tie_word_embeddings ? model->embed
                                                : arena_alloc(table * sizeof(float), "lm_head", err);
    model->layers = sb_calloc((size_t)shape->num_hidden_layers, sizeof *model->layers, "layer table", err);
    if (!model->embed || !model->final_norm || !model->lm_head || !model->layers) {
        sb_model_free(model);
        return SB_ERR_NOMEM;
    }
    for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++) {
        sb_status status = layer_weights_alloc(shape, layer, SB_LINEAR_STORAGE_F32, SB_LINEAR_STORAGE_F32, linears,
                                               &model->layers[layer], err);
        if (status != SB_OK) {
            sb_model_free(model);
            return status;
        }
    }
    return SB_OK;
}

sb_status sb_model_alloc(const sb_model_shape *shape, sb_model *model, sb_error *err)
{
    return model_alloc(shape, true, model, err);
}

sb_status sb_model_alloc_norms(const sb_model_shape *shape, sb_model *model, sb_error *err)
{
    return model_alloc(shape, false, model, err);
}

void sb_model_free(sb_model *model)
{
    if (!model)
        return;
    if (model->layers)
        for (int64_t layer = 0; layer < model->shape.num_hidden_layers; layer++)
            sb_layer_weights_free(&model->layers[layer]);
    free(model->layers);
    if (model->lm_head != model->embed)
        free(model->lm_head);
    free(model->embed);
    free(model->final_norm);
    memset(model, 0, sizeof *model);
}

/* ---- Rotary tables -------------------------------------------------------------------------- */

/* Inverse frequencies as Hugging Face computes them: theta^(-2i/head_dim), then, for
 * rope_scaling "llama3", _compute_llama3_parameters: wavelengths longer than
 * original_max / low_freq_factor are divided by `factor`, shorter than original_max /
 * high_freq_factor kept, and those between interpolated smoothly. Rounded to float32 like
 * the float32 `inv_freq` buffer of the reference. */
static float rope_inv_freq(const sb_model_shape *shape, int64_t i)
{
    double inv_freq = 1.0 / pow(shape->rope_theta, (double)(2 * i) / (double)shape->head_dim);
    if (shape->rope_scaling == SB_ROPE_SCALING_LLAMA3) {
        double factor = shape->rope_factor;
        double old_context = (double)shape->rope_original_max_position;
        double low_freq_wavelen = old_context / shape->rope_low_freq_factor;
        double high_freq_wavelen = old_context / shape->rope_high_freq_factor;
        double wavelen = 2.0 * M_PI / inv_freq;
        if (wavelen > low_freq_wavelen) {
            inv_freq /= factor;
        } else if (wavelen >= high_freq_wavelen) {
            double smooth = (old_context / wavelen - shape->rope_low_freq_factor) /
                            (shape->rope_high_freq_factor - shape->rope_low_freq_factor);
            inv_freq = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq;
        }
    }
    return (float)inv_freq;
}

void sb_rope_tables(const sb_model_shape *shape, int64_t ctx, float *cos_table, float *sin_table)
{
    int64_t half = shape->head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        float inv_freq = rope_inv_freq(shape, i);
        for (int64_t position = 0; position < ctx; position++) {
            /* The reference multiplies position and frequency in float32, then takes cos/sin. */
            float angle = (float)position * inv_freq;
            cos_table[position * half + i] = (float)cos((double)angle);
            sin_table[position * half + i] = (float)sin((double)angle);
        }
    }
}

/* ---- Workspace and cache -------------------------------------------------------------------- */

/* The largest linear weight of the model (for the gradient buffer): the attention's, the dense
 * MLP's if a layer has one, the router's and an expert's if a layer is sparse. */
static size_t largest_weight(const sb_model_shape *shape)
{
    bool dense = sb_shape_dense_layers(shape) > 0, moe = sb_shape_moe_layers(shape) > 0;
    size_t largest = 0;
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        bool mlp = k >= SB_LINEAR_GATE;
        int64_t rows = 0, cols = 0;
        if (!mlp || dense)
            sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
        largest = (size_t)(rows * cols) > largest ? (size_t)(rows * cols) : largest;
        if (mlp && moe) {
            sb_tensor_id expert = {(sb_tensor_role)k, 0, 0};
            sb_weight_shape(shape, &expert, &rows, &cols);
            largest = (size_t)(rows * cols) > largest ? (size_t)(rows * cols) : largest;
        }
    }
    size_t router = moe ? (size_t)(shape->num_experts * shape->hidden_size) : 0;
    return router > largest ? router : largest;
}

static void workspace_layout(sb_model_workspace *ws, sb_arena *arena)
{
    const sb_model_shape *shape = &ws->shape;
    size_t tokens = (size_t)ws->max_tokens, hidden = (size_t)shape->hidden_size;
    size_t ffn = (size_t)ws->ffn_width, heads = (size_t)shape->num_attention_heads;
    size_t half = (size_t)(shape->head_dim / 2), threads = (size_t)ws->threads;
    size_t scratch = threads * SB_ATTENTION_BLOCK * (size_t)ws->ctx;
    ws->rope_cos = arena_take(arena, (size_t)ws->ctx * half, sizeof(float));
    ws->rope_sin = arena_take(arena, (size_t)ws->ctx * half, sizeof(float));
    ws->x = arena_take(arena, tokens * hidden, sizeof(float));
    ws->normed = arena_take(arena, tokens * hidden, sizeof(float));
    ws->inv_rms = arena_take(arena, tokens, sizeof(float));
    ws->q = arena_take(arena, tokens * (size_t)ws->q_dim, sizeof(float));
    ws->k = arena_take(arena, tokens * (size_t)ws->kv_dim, sizeof(float));
    ws->v = arena_take(arena, tokens * (size_t)ws->kv_dim, sizeof(float));
    ws->attn = arena_take(arena, tokens * (size_t)ws->q_dim, sizeof(float));
    ws->row_max = arena_take(arena, tokens * heads, sizeof(float));
    ws->row_inv_sum = arena_take(arena, tokens * heads, sizeof(float));
    ws->gate = arena_take(arena, tokens * ffn, sizeof(float));
    ws->up = arena_take(arena, tokens * ffn, sizeof(float));
    ws->act = arena_take(arena, tokens * ffn, sizeof(float));
    ws->scores = arena_take(arena, scratch, sizeof(float));
    ws->logits = arena_take(arena, (size_t)ws->head_rows * (size_t)shape->vocab_size, sizeof(float));
    ws->row_nll = arena_take(arena, tokens, sizeof(double));
    if (shape->qk_norm) {
        ws->q_inv_rms = arena_take(arena, tokens * heads, sizeof(float));
        ws->k_inv_rms = arena_take(arena, tokens * (size_t)shape->num_key_value_heads, sizeof(float));
    }
    bool moe = sb_shape_moe_layers(shape) > 0;
    size_t experts = (size_t)shape->num_experts, slots = tokens * (size_t)shape->num_experts_per_tok;
    if (moe) {
        ws->probs = arena_take(arena, tokens * experts, sizeof(float));
        ws->top_expert = arena_take(arena, slots, sizeof(int32_t));
        ws->top_weight = arena_take(arena, slots, sizeof(float));
        ws->routing.offset = arena_take(arena, experts + 1, sizeof(int64_t));
        ws->routing.token = arena_take(arena, slots, sizeof(int64_t));
        ws->routing.slot = arena_take(arena, slots, sizeof(int64_t));
        ws->routing.weight = arena_take(arena, slots, sizeof(float));
        ws->gathered = arena_take(arena, tokens * hidden, sizeof(float));
        ws->expert_out = arena_take(arena, tokens * hidden, sizeof(float));
        ws->moe_out = arena_take(arena, tokens * hidden, sizeof(float));
    }
    if (ws->with_backward) {
        ws->dx = arena_take(arena, tokens * hidden, sizeof(float));
        ws->d_normed = arena_take(arena, tokens * hidden, sizeof(float));
        ws->d_scores = arena_take(arena, scratch, sizeof(float));
        ws->grad = arena_take(arena, largest_weight(shape), sizeof(float));
        int64_t longest = 0;
        for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++)
            longest = sb_vector_length(shape, (sb_vector_kind)v) > longest ? sb_vector_length(shape, (sb_vector_kind)v)
                                                                           : longest;
        if (longest > 0)
            ws->vector_grad = arena_take(arena, (size_t)longest, sizeof(double));
        if (moe)
            ws->d_weight = arena_take(arena, slots, sizeof(float));
    }
}

/* The sizes a workspace is laid out from. */
static void workspace_sizes(sb_model_workspace *ws, const sb_model_shape *shape, int64_t ctx, int64_t max_windows,
                            int threads, bool with_backward)
{
    ws->shape = *shape;
    ws->ctx = ctx;
    ws->max_windows = max_windows;
    ws->max_tokens = max_windows * ctx;
    ws->threads = threads;
    ws->with_backward = with_backward;
    ws->q_dim = shape->num_attention_heads * shape->head_dim;
    ws->kv_dim = shape->num_key_value_heads * shape->head_dim;
    int64_t dense_ffn = sb_shape_dense_layers(shape) > 0 ? shape->intermediate_size : 0;
    int64_t expert_ffn = sb_shape_moe_layers(shape) > 0 ? shape->moe_intermediate_size : 0;
    ws->ffn_width = dense_ffn > expert_ffn ? dense_ffn : expert_ffn;
    int64_t head_rows = SB_HEAD_CHUNK_FLOATS / shape->vocab_size;
    ws->head_rows = head_rows < 1 ? 1 : head_rows > ws->max_tokens ? ws->max_tokens : head_rows;
}

sb_status sb_model_workspace_create(const sb_model_shape *shape, int64_t ctx, int64_t max_windows, int threads,
                                    bool with_backward, sb_model_workspace **workspace, sb_error *err)
{
    *workspace = NULL;
    SB_TRY(sb_model_shape_check(shape, err));
    if (ctx < 2 || max_windows < 1 || threads < 1)
        return sb_error_set(err, SB_ERR_USAGE, "model workspace: need ctx >= 2, windows >= 1, threads >= 1 "
                            "(got ctx %lld, windows %lld, threads %d)", (long long)ctx, (long long)max_windows,
                            threads);
    int64_t per_token = shape->num_attention_heads;
    if (sb_shape_moe_layers(shape) > 0) /* experts per token, for the routing tables */
        per_token = shape->num_experts_per_tok > per_token ? shape->num_experts_per_tok : per_token;
    if (max_windows > INT32_MAX / ctx || max_windows * ctx * per_token > INT32_MAX)
        return sb_error_set(err, SB_ERR_USAGE, "model workspace: %lld windows of %lld tokens is too large a batch",
                            (long long)max_windows, (long long)ctx);
    sb_model_workspace *ws = sb_calloc(1, sizeof *ws, "model workspace", err);
    if (!ws)
        return SB_ERR_NOMEM;
    workspace_sizes(ws, shape, ctx, max_windows, threads, with_backward);
    sb_arena arena = {NULL, 0};
    workspace_layout(ws, &arena);
    arena.base = arena_alloc(arena.used, "model workspace", err);
    if (!arena.base) {
        free(ws);
        return SB_ERR_NOMEM;
    }
    ws->bytes = arena.used;
    arena.used = 0;
    workspace_layout(ws, &arena);
    ws->storage = arena.base;
    sb_rope_tables(shape, ctx, ws->rope_cos, ws->rope_sin);
    *workspace = ws;
    return SB_OK;
}

void sb_model_workspace_free(sb_model_workspace *workspace)
{
    if (workspace) {
        free(workspace->storage);
        free(workspace);
    }
}

size_t sb_model_workspace_bytes(const sb_model_workspace *workspace) { return workspace->bytes; }

size_t sb_model_workspace_bytes_for(const sb_model_shape *shape, int64_t ctx, int64_t max_windows, int threads,
                                    bool with_backward)
{
    sb_model_workspace ws;
    memset(&ws, 0, sizeof ws);
    workspace_sizes(&ws, shape, ctx, max_windows, threads, with_backward);
    sb_arena arena = {NULL, 0};
    workspace_layout(&ws, &arena);
    return arena.used;
}

sb_status sb_workspace_check_batch(const sb_model_workspace *ws, int64_t n_windows, int64_t ctx, sb_error *err)
{
    if (n_windows < 1 || ctx < 2 || ctx > ws->ctx || n_windows > ws->max_tokens / ctx)
        return sb_error_set(err, SB_ERR_INTERNAL,
                            "batch of %lld windows x %lld tokens does not fit the model workspace "
                            "(ctx <= %lld, at most %lld tokens)",
                            (long long)n_windows, (long long)ctx, (long long)ws->ctx, (long long)ws->max_tokens);
    return SB_OK;
}

static void cache_layout(const sb_model_shape *shape, int64_t layer, int64_t max_tokens, sb_arena *arena,
                         sb_layer_cache *cache)
{
    size_t tokens = (size_t)max_tokens, hidden = (size_t)shape->hidden_size;
    size_t q_dim = (size_t)(shape->num_attention_heads * shape->head_dim);
    size_t kv_dim = (size_t)(shape->num_key_value_heads * shape->head_dim);
    size_t heads = (size_t)shape->num_attention_heads, kv_heads = (size_t)shape->num_key_value_heads;
    cache->x_in = arena_take(arena, tokens * hidden, sizeof(float));
    cache->inv_rms_attn = arena_take(arena, tokens, sizeof(float));
    cache->q = arena_take(arena, tokens * q_dim, sizeof(float));
    cache->k = arena_take(arena, tokens * kv_dim, sizeof(float));
    cache->v = arena_take(arena, tokens * kv_dim, sizeof(float));
    cache->row_max = arena_take(arena, tokens * heads, sizeof(float));
    cache->row_inv_sum = arena_take(arena, tokens * heads, sizeof(float));
    cache->attn = arena_take(arena, tokens * q_dim, sizeof(float));
    cache->x_mid = arena_take(arena, tokens * hidden, sizeof(float));
    cache->inv_rms_mlp = arena_take(arena, tokens, sizeof(float));
    if (shape->qk_norm) {
        cache->q_raw = arena_take(arena, tokens * q_dim, sizeof(float));
        cache->k_raw = arena_take(arena, tokens * kv_dim, sizeof(float));
        cache->q_inv_rms = arena_take(arena, tokens * heads, sizeof(float));
        cache->k_inv_rms = arena_take(arena, tokens * kv_heads, sizeof(float));
    }
    if (sb_layer_is_moe(shape, layer)) {
        size_t slots = tokens * (size_t)shape->num_experts_per_tok, ffn = (size_t)shape->moe_intermediate_size;
        cache->gate = arena_take(arena, slots * ffn, sizeof(float));
        cache->up = arena_take(arena, slots * ffn, sizeof(float));
        cache->probs = arena_take(arena, tokens * (size_t)shape->num_experts, sizeof(float));
        cache->top_expert = arena_take(arena, slots, sizeof(int32_t));
        cache->top_weight = arena_take(arena, slots, sizeof(float));
    } else {
        size_t ffn = (size_t)shape->intermediate_size;
        cache->gate = arena_take(arena, tokens * ffn, sizeof(float));
        cache->up = arena_take(arena, tokens * ffn, sizeof(float));
    }
}

size_t sb_layer_cache_bytes(const sb_model_shape *shape, int64_t layer, int64_t ntokens)
{
    sb_layer_cache cache;
    sb_arena arena = {NULL, 0};
    cache_layout(shape, layer, ntokens, &arena, &cache);
    return arena.used;
}

sb_status sb_layer_cache_create(const sb_model_shape *shape, int64_t layer, int64_t max_tokens,
                                sb_layer_cache **cache, sb_error *err)
{
    *cache = NULL;
    SB_TRY(sb_model_shape_check(shape, err));
    if (max_tokens < 1)
        return sb_error_set(err, SB_ERR_USAGE, "layer cache: max_tokens must be positive");
    sb_layer_cache *made = sb_calloc(1, sizeof *made, "layer cache", err);
    if (!made)
        return SB_ERR_NOMEM;
    sb_arena arena = {NULL, 0};
    cache_layout(shape, layer, max_tokens, &arena, made);
    arena.base = arena_alloc(arena.used, "layer activation cache", err);
    if (!arena.base) {
        free(made);
        return SB_ERR_NOMEM;
    }
    arena.used = 0;
    cache_layout(shape, layer, max_tokens, &arena, made);
    made->storage = arena.base;
    made->max_tokens = max_tokens;
    made->layer = layer;
    made->moe = sb_layer_is_moe(shape, layer);
    *cache = made;
    return SB_OK;
}

void sb_layer_cache_free(sb_layer_cache *cache)
{
    if (cache) {
        free(cache->storage);
        free(cache);
    }
}

/* ---- RMSNorm -------------------------------------------------------------------------------- */

void sb_rms_norm_rows(const float *x, const float *weight, int64_t rows, int64_t cols, double eps, float *out,
                      float *inv_rms, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        const float *in = x + row * cols;
        double sum_squares = 0.0;
#pragma omp simd reduction(+ : sum_squares)
        for (int64_t j = 0; j < cols; j++)
            sum_squares += (double)in[j] * (double)in[j];
        inv_rms[row] = (float)(1.0 / sqrt(sum_squares / (double)cols + eps));
    }
    sb_rms_norm_apply(x, inv_rms, weight, rows, cols, out, threads);
}

void sb_rms_norm_apply(const float *x, const float *inv_rms, const float *weight, int64_t rows, int64_t cols,
                       float *out, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        const float *in = x + row * cols;
        float *o = out + row * cols, scale = inv_rms[row];
#pragma omp simd
        for (int64_t j = 0; j < cols; j++)
            o[j] = (in[j] * scale) * weight[j];
    }
}

void sb_rms_norm_backward(const float *x, const float *inv_rms, const float *weight, const float *d_out,
                          int64_t rows, int64_t cols, bool accumulate, float *dx, int threads)
{
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t row = 0; row < rows; row++) {
        const float *in = x + row * cols, *d = d_out + row * cols;
        float *o = dx + row * cols, scale = inv_rms[row];
        double dot = 0.0; /* sum_j g_j * xhat_j */
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < cols; j++)
            dot += (double)(d[j] * weight[j]) * (double)(in[j] * scale);
        float mean_dot = (float)(dot / (double)cols);
        if (accumulate) {
#pragma omp simd
            for (int64_t j = 0; j < cols; j++)
                o[j] += scale * (d[j] * weight[j] - (in[j] * scale) * mean_dot);
        } else {
#pragma omp simd
            for (int64_t j = 0; j < cols; j++)
                o[j] = scale * (d[j] * weight[j] - (in[j] * scale) * mean_dot);
        }
    }
}

/* ---- Embedding and head --------------------------------------------------------------------- */

static sb_status check_tokens(const sb_model_shape *shape, const uint32_t *tokens, int64_t ntokens, sb_error *err)
{
    for (int64_t i = 0; i < ntokens; i++)
        if ((int64_t)tokens[i] >= shape->vocab_size)
            return sb_error_set(err, SB_ERR_INPUT, "token %u at batch position %lld is >= vocab_size %lld",
                                tokens[i], (long long)i, (long long)shape->vocab_size);
    return SB_OK;
}

sb_status sb_embed_forward(const sb_model_shape *shape, const float *embed, const uint32_t *tokens,
                           int64_t ntokens, float *x, sb_error *err)
{
    SB_TRY(check_tokens(shape, tokens, ntokens, err));
    size_t row_bytes = (size_t)shape->hidden_size * sizeof(float);
    for (int64_t i = 0; i < ntokens; i++)
        memcpy(x + i * shape->hidden_size, embed + (int64_t)tokens[i] * shape->hidden_size, row_bytes);
    return SB_OK;
}

/* Cross-entropy of one row of logits against `target`; with `gradient`, the row is replaced
 * by d NLL / d logits = softmax - onehot(target). Sums in double: a vocabulary of 10^5 terms
 * in float would lose the small ones. */
SB_SIMD_CLONES
static double cross_entropy_row(float *logits, int64_t vocab, uint32_t target, bool gradient)
{
    float max = logits[0];
#pragma omp simd reduction(max : max)
    for (int64_t j = 0; j < vocab; j++)
        max = logits[j] > max ? logits[j] : max;
    float target_logit = logits[target];
    double sum = 0.0;
    if (gradient) {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < vocab; j++) {
            logits[j] = sb_expf(logits[j] - max);
            sum += (double)logits[j];
        }
        float inv_sum = (float)(1.0 / sum);
#pragma omp simd
        for (int64_t j = 0; j < vocab; j++)
            logits[j] *= inv_sum;
        logits[target] -= 1.0f;
    } else {
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < vocab; j++)
            sum += (double)sb_expf(logits[j] - max);
    }
    return (double)max + log(sum) - (double)target_logit;
}

static sb_status head_forward(const sb_model_shape *shape, const float *final_norm, const float *lm_head,
                              const float *x, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                              sb_model_workspace *ws, sb_nll *nll, float *dx, sb_error *err)
{
    SB_TRY(sb_workspace_check_batch(ws, n_windows, ctx, err));
    if (dx && !ws->with_backward)
        return sb_error_set(err, SB_ERR_INTERNAL, "head gradient asked of a workspace made without backward");
    int64_t hidden = shape->hidden_size, vocab = shape->vocab_size, ntokens = n_windows * ctx;
    SB_TRY(check_tokens(shape, tokens, ntokens, err));
    int threads = ws->threads;
    bool gradient = dx != NULL;
    for (int64_t row0 = 0; row0 < ntokens; row0 += ws->head_rows) {
        int64_t rows = ntokens - row0 < ws->head_rows ? ntokens - row0 : ws->head_rows;
        float *normed = ws->normed + row0 * hidden;
        float *inv_rms = ws->inv_rms + row0;
        sb_rms_norm_rows(x + row0 * hidden, final_norm, rows, hidden, shape->rms_norm_eps, normed, inv_rms,
                         threads);
        sb_gemm(threads, false, true, rows, vocab, hidden, 1.0f, normed, hidden, lm_head, hidden, 0.0f, ws->logits,
                vocab);
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t i = 0; i < rows; i++) {
            int64_t row = row0 + i;
            float *logits = ws->logits + i * vocab;
            if (row % ctx == ctx - 1) { /* the window's last token predicts nothing in it */
                ws->row_nll[row] = 0.0;
                if (gradient)
                    memset(logits, 0, (size_t)vocab * sizeof(float));
                continue;
            }
            ws->row_nll[row] = cross_entropy_row(logits, vocab, tokens[row + 1], gradient);
        }
        if (gradient) {
            float *d_normed = ws->d_normed + row0 * hidden;
            sb_gemm(threads, false, false, rows, hidden, vocab, 1.0f, ws->logits, vocab, lm_head, hidden, 0.0f,
                    d_normed, hidden);
            sb_rms_norm_backward(x + row0 * hidden, inv_rms, final_norm, d_normed, rows, hidden, false,
                                 dx + row0 * hidden, threads);
        }
    }
    double sum = 0.0; /* in row order: the same total for any thread count */
    for (int64_t row = 0; row < ntokens; row++)
        sum += ws->row_nll[row];
    nll->sum += sum;
    nll->count += n_windows * (ctx - 1);
    return SB_OK;
}

sb_status sb_head_forward(const sb_model_shape *shape, const float *final_norm, const float *lm_head,
                          const float *x, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                          sb_model_workspace *ws, sb_nll *nll, float *dx, sb_error *err)
{
    int previous = sb_blas_hold(ws->threads);
    sb_status status = head_forward(shape, final_norm, lm_head, x, tokens, n_windows, ctx, ws, nll, dx, err);
    sb_blas_release(previous);
    return status;
}

/* ---- Whole model ---------------------------------------------------------------------------- */

sb_status sb_model_forward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                           sb_model_workspace *ws, sb_activation_fn hook, void *hook_user, sb_nll *nll,
                           sb_error *err)
{
    const sb_model_shape *shape = &model->shape;
    if (ctx < 2 || ctx > ws->ctx)
        return sb_error_set(err, SB_ERR_INTERNAL, "ctx %lld does not fit the model workspace (2..%lld)",
                            (long long)ctx, (long long)ws->ctx);
    int64_t batch_windows = ws->max_tokens / ctx;
    for (int64_t first = 0; first < n_windows; first += batch_windows) {
        int64_t count = n_windows - first < batch_windows ? n_windows - first : batch_windows;
        const uint32_t *batch = tokens + first * ctx;
        SB_TRY(sb_embed_forward(shape, model->embed, batch, count * ctx, ws->x, err));
        for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++)
            SB_TRY(sb_layer_forward(shape, layer, &model->layers[layer], ws->x, count, ctx, NULL, hook, hook_user,
                                    ws, err));
        SB_TRY(sb_head_forward(shape, model->final_norm, model->lm_head, ws->x, batch, count, ctx, ws, nll, NULL,
                               err));
    }
    return SB_OK;
}

sb_status sb_model_backward(const sb_model *model, const uint32_t *tokens, int64_t n_windows, int64_t ctx,
                            sb_model_workspace *ws, sb_layer_cache *const *caches, sb_activation_fn hook,
                            void *hook_user, const sb_gradient_sink *sink, sb_nll *nll, sb_error *err)
{
    const sb_model_shape *shape = &model->shape;
    if (!ws->with_backward)
        return sb_error_set(err, SB_ERR_INTERNAL, "model backward needs a workspace made with_backward");
    SB_TRY(sb_workspace_check_batch(ws, n_windows, ctx, err));
    SB_TRY(sb_embed_forward(shape, model->embed, tokens, n_windows * ctx, ws->x, err));
    for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++)
        SB_TRY(sb_layer_forward(shape, layer, &model->layers[layer], ws->x, n_windows, ctx, caches[layer], hook,
                                hook_user, ws, err));
    SB_TRY(sb_head_forward(shape, model->final_norm, model->lm_head, ws->x, tokens, n_windows, ctx, ws, nll, ws->dx,
                           err));
    for (int64_t layer = shape->num_hidden_layers - 1; layer >= 0; layer--)
        SB_TRY(sb_layer_backward(shape, layer, &model->layers[layer], caches[layer], ws->dx, sink, ws, err));
    return SB_OK;
}

/* Matmul FLOPs per token of the linear layers (2 per weight), of lm_head, and per causal
 * (query, key) pair of one head-dimension product (2 per element) summed over heads and layers. */
static void flop_parts(const sb_model_shape *shape, int64_t n_windows, int64_t ctx, double *linear, double *head,
                       double *attention_product)
{
    double tokens = (double)(n_windows * ctx), attention_params = 0.0, dense_params = 0.0, expert_params = 0.0;
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        int64_t rows, cols;
        sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
        *(k <= SB_LINEAR_O ? &attention_params : &dense_params) += (double)(rows * cols);
        sb_tensor_id expert = {(sb_tensor_role)k, 0, 0};
        sb_weight_shape(shape, &expert, &rows, &cols);
        expert_params += k >= SB_LINEAR_GATE ? (double)(rows * cols) : 0.0;
    }
    /* a token of an MoE layer multiplies by the router and by its k experts */
    double moe_params = (double)(shape->num_experts * shape->hidden_size) +
                        (double)shape->num_experts_per_tok * expert_params;
    double moe_layers = (double)sb_shape_moe_layers(shape), dense_layers = (double)sb_shape_dense_layers(shape);
    *linear = 2.0 * tokens *
              (attention_params * (double)shape->num_hidden_layers + dense_params * dense_layers +
               moe_params * moe_layers);
    *head = 2.0 * (double)(shape->vocab_size * shape->hidden_size) * tokens;
    /* Query t attends to t + 1 keys. */
    double pairs = (double)n_windows * (double)ctx * (double)(ctx + 1) / 2.0;
    *attention_product = pairs * 2.0 * (double)(shape->num_attention_heads * shape->head_dim) *
                         (double)shape->num_hidden_layers;
}

double sb_model_forward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx)
{
    double linear, head, product;
    flop_parts(shape, n_windows, ctx, &linear, &head, &product);
    return linear + head + 2.0 * product; /* QK^T, PV */
}

double sb_model_backward_flops(const sb_model_shape *shape, int64_t n_windows, int64_t ctx)
{
    double linear, head, product;
    flop_parts(shape, n_windows, ctx, &linear, &head, &product);
    return 2.0 * linear + head + 5.0 * product;
}
