#include "sb_model_load.h"

#include <stdio.h>
#include <stdlib.h>

#include "sb_half.h"

/* Names of the tensors that are not linear weights (sb_linear_weight_name gives those). */
static const char embed_name[] = "model.embed_tokens.weight";
static const char final_norm_name[] = "model.norm.weight";
static const char lm_head_name[] = "lm_head.weight";

sb_status sb_model_load_embed(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, float *embed,
                              sb_error *err)
{
    return fetch(source, embed_name, shape->vocab_size, shape->hidden_size, embed, err);
}

/* One matrix of a layer: in the source's own storage with `fetch_linear` (the layer allocated by
 * sb_layer_weights_alloc_norms), else as float32, or as bfloat16 (fetched as float32 and
 * narrowed; a value BF16 cannot hold exactly is refused: that storage is only for weights that
 * are BF16 values). With `weights` NULL the tensor is only checked. */
static sb_status fetch_matrix(const sb_model_shape *shape, const sb_tensor_id *id, sb_weight_fetch fetch,
                              sb_linear_fetch fetch_linear, void *source, const sb_layer_weights *weights,
                              sb_error *err)
{
    char name[256];
    int64_t rows, cols;
    sb_weight_shape(shape, id, &rows, &cols);
    sb_tensor_name_format(*id, name, sizeof name);
    if (!weights)
        return fetch(source, name, rows, cols, NULL, err); /* checked only */
    if (fetch_linear) {
        sb_linear *linear = sb_layer_matrix(weights, id);
        if (!linear)
            return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': the layer has no such weight", name);
        sb_linear_release(linear);
        return fetch_linear(source, name, rows, cols, linear, err);
    }
    const sb_linear *linear = sb_layer_matrix(weights, id);
    if (linear && linear->storage == SB_LINEAR_STORAGE_F32)
        return fetch(source, name, rows, cols, linear->f32, err);
    if (!linear || linear->storage != SB_LINEAR_STORAGE_BF16)
        return sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': no float32 or bfloat16 weight to load it into", name);
    float *values = sb_malloc((size_t)(rows * cols) * sizeof *values, "weights", err);
    if (!values)
        return SB_ERR_NOMEM;
    sb_status status = fetch(source, name, rows, cols, values, err);
    for (int64_t i = 0; status == SB_OK && i < rows * cols; i++) {
        uint16_t bits = sb_f32_to_bf16(values[i]);
        if (sb_bf16_to_f32(bits) != values[i])
            status = sb_error_set(err, SB_ERR_INTERNAL, "tensor '%s': element %lld (%g) is not a bfloat16 value",
                                  name, (long long)i, (double)values[i]);
        linear->bf16[i] = bits;
    }
    free(values);
    return status;
}

/* The tensors a layer has follow from the shape (src/sb_model.h: an MoE layer has no dense MLP
 * but a router and experts; vectors by architecture). The linear weights as float32 (or the
 * layer's bfloat16 experts) with fetch_linear NULL, else in the source's own storage. With
 * `weights` NULL each tensor is only checked (fetch with dst NULL): the same walk as a load,
 * before anything is allocated. */
static sb_status load_layer(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch,
                            sb_linear_fetch fetch_linear, void *source, sb_layer_weights *weights, sb_error *err)
{
    char name[256];
    snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)layer); /* < 80 bytes */
    SB_TRY(fetch(source, name, 1, shape->hidden_size, weights ? weights->attn_norm : NULL, err));
    snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight", (long long)layer);
    SB_TRY(fetch(source, name, 1, shape->hidden_size, weights ? weights->mlp_norm : NULL, err));
    bool moe = sb_layer_is_moe(shape, layer);
    /* the linear weights the layer has: the dense seven, or Q, K, V, O, the router and the
     * experts of an MoE layer */
    for (int k = 0; k <= SB_ROLE_ROUTER; k++) {
        sb_tensor_id id = {(sb_tensor_role)k, layer, -1};
        bool has = weights ? sb_weight_is_matrix(&id) && sb_layer_matrix(weights, &id)
                           : sb_weight_is_matrix(&id) && (k == SB_ROLE_ROUTER ? moe : !(moe && k >= SB_ROLE_GATE));
        if (has)
            SB_TRY(fetch_matrix(shape, &id, fetch, fetch_linear, source, weights, err));
    }
    int64_t experts = weights ? weights->num_experts : moe ? shape->num_experts : 0;
    for (int64_t e = 0; e < experts; e++)
        for (int k = SB_ROLE_GATE; k <= SB_ROLE_DOWN; k++) {
            sb_tensor_id id = {(sb_tensor_role)k, layer, e};
            SB_TRY(fetch_matrix(shape, &id, fetch, fetch_linear, source, weights, err));
        }
    for (int v = 0; v < SB_VECTOR_KIND_COUNT; v++) {
        if (weights ? !weights->vector[v] : sb_vector_length(shape, (sb_vector_kind)v) <= 0)
            continue;
        sb_tensor_id id = {sb_vector_role((sb_vector_kind)v), layer, -1};
        sb_tensor_name_format(id, name, sizeof name);
        SB_TRY(fetch(source, name, 1, sb_vector_length(shape, (sb_vector_kind)v), weights ? weights->vector[v] : NULL,
                     err));
    }
    return SB_OK;
}

sb_status sb_model_load_layer(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch, void *source,
                              sb_layer_weights *weights, sb_error *err)
{
    return load_layer(shape, layer, fetch, NULL, source, weights, err);
}

sb_status sb_model_load_layer_linears(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch,
                                      sb_linear_fetch fetch_linear, void *source, sb_layer_weights *weights,
                                      sb_error *err)
{
    return load_layer(shape, layer, fetch, fetch_linear, source, weights, err);
}

sb_status sb_model_load_head(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, float *final_norm,
                             float *lm_head, sb_error *err)
{
    SB_TRY(fetch(source, final_norm_name, 1, shape->hidden_size, final_norm, err));
    if (shape->tie_word_embeddings)
        return SB_OK;
    return fetch(source, lm_head_name, shape->vocab_size, shape->hidden_size, lm_head, err);
}

sb_status sb_model_load(sb_weight_fetch fetch, void *source, sb_model *model, sb_error *err)
{
    return sb_model_load_linears(fetch, NULL, source, model, err);
}

sb_status sb_model_load_linears(sb_weight_fetch fetch, sb_linear_fetch fetch_linear, void *source, sb_model *model,
                                sb_error *err)
{
    const sb_model_shape *shape = &model->shape;
    SB_TRY(sb_model_load_embed(shape, fetch, source, model->embed, err));
    for (int64_t layer = 0; layer < shape->num_hidden_layers; layer++)
        SB_TRY(load_layer(shape, layer, fetch, fetch_linear, source, &model->layers[layer], err));
    return sb_model_load_head(shape, fetch, source, model->final_norm,
                              shape->tie_word_embeddings ? NULL : model->lm_head, err);
}

sb_status sb_model_check_source(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, int64_t layer_begin,
                                int64_t layer_end, bool embed, bool head, sb_error *err)
{
    SB_TRY(sb_model_shape_check(shape, err));
    if (embed)
        SB_TRY(sb_model_load_embed(shape, fetch, source, NULL, err));
    for (int64_t layer = layer_begin; layer < layer_end; layer++)
        SB_TRY(sb_model_load_layer(shape, layer, fetch, source, NULL, err));
    return head ? sb_model_load_head(shape, fetch, source, NULL, NULL, err) : SB_OK;
}

sb_status sb_safetensors_fetch(void *source, const char *tensor_name, int64_t rows, int64_t cols, float *dst,
                               sb_error *err)
{
    const sb_safetensors_source *safetensors = source;
    const sb_checkpoint *checkpoint = safetensors->checkpoint;
    const sb_tensor_info *tensor = sb_checkpoint_find(checkpoint, tensor_name);
    if (!tensor)
        return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' is missing (the config implies it)", checkpoint->dir,
                            tensor_name);
    bool shape_ok = (tensor->ndim == 2 && tensor->shape[0] == rows && tensor->shape[1] == cols) ||
                    (tensor->ndim == 1 && rows == 1 && tensor->shape[0] == cols);
    if (!shape_ok) {
        char actual[128];
        if (tensor->ndim == 1)
            snprintf(actual, sizeof actual, "[%lld]", (long long)tensor->shape[0]);
        else if (tensor->ndim == 2)
            snprintf(actual, sizeof actual, "[%lld, %lld]", (long long)tensor->shape[0], (long long)tensor->shape[1]);
        else
            snprintf(actual, sizeof actual, "%d dimensions", tensor->ndim);
        char expected[128];
        if (rows == 1)
            snprintf(expected, sizeof expected, "[%lld]", (long long)cols);
        else
            snprintf(expected, sizeof expected, "[%lld, %lld]", (long long)rows, (long long)cols);
        return sb_error_set(err, SB_ERR_INPUT, "%s: tensor '%s' has shape %s, but config.json implies %s",
                            checkpoint->files[tensor->file_index].path, tensor_name, actual, expected);
    }
    if (!dst)
        return SB_OK; /* checked only (sb_model_check_source) */
    return sb_checkpoint_read_rows(checkpoint, tensor, 0, sb_tensor_rows(tensor), safetensors->check_finite, dst,
                                   err);
}

sb_status sb_model_load_checkpoint(const sb_model_shape *shape, const sb_checkpoint *checkpoint, sb_model *model,
                                   sb_error *err)
{
    sb_safetensors_source source = {checkpoint, true};
    /* every tensor present with its shape before the model is allocated from the config */
    SB_TRY(sb_model_check_source(shape, sb_safetensors_fetch, &source, 0, shape->num_hidden_layers, true, true, err));
    SB_TRY(sb_model_alloc(shape, model, err));
    sb_status status = sb_model_load(sb_safetensors_fetch, &source, model, err);
    if (status != SB_OK)
        sb_model_free(model);
    return status;
}
