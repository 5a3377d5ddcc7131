#include "sb_model_load.h"

#include <stdio.h>

/* Names of the tensors that are not linear weights (sb_linear_weight_name gives those). */
static const char embed_name[] = "model.embed_tokens.weight";
static const char final_norm_name[] = "model.norm.weight";
static const char lm_head_name[] = "lm_head.weight";

sb_status sb_model_load_embed(const sb_model_shape *shape, sb_weight_fetch fetch, void *source, float *embed,
                              sb_error *err)
{
    return fetch(source, embed_name, shape->vocab_size, shape->hidden_size, embed, err);
}

/* The linear weights as float32 (fetch_linear NULL) or from the source's own storage. */
static sb_status load_layer(const sb_model_shape *shape, int64_t layer, sb_weight_fetch fetch,
                            sb_linear_fetch fetch_linear, void *source, sb_layer_weights *weights, sb_error *err)
{
    char name[256];
    snprintf(name, sizeof name, "model.layers.%lld.input_layernorm.weight", (long long)layer);
    SB_TRY(fetch(source, name, 1, shape->hidden_size, weights->attn_norm, err));
    snprintf(name, sizeof name, "model.layers.%lld.post_attention_layernorm.weight", (long long)layer);
    SB_TRY(fetch(source, name, 1, shape->hidden_size, weights->mlp_norm, err));
    for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
        int64_t rows, cols;
        sb_linear_shape(shape, (sb_linear_kind)k, &rows, &cols);
        sb_linear_weight_name(layer, (sb_linear_kind)k, name, sizeof name);
        if (fetch_linear) {
            sb_linear_release(&weights->linear[k]);
            SB_TRY(fetch_linear(source, name, rows, cols, &weights->linear[k], err));
        } else {
            SB_TRY(fetch(source, name, rows, cols, sb_layer_linear(weights, (sb_linear_kind)k), err));
        }
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
    return sb_checkpoint_read_rows(checkpoint, tensor, 0, sb_tensor_rows(tensor), safetensors->check_finite, dst,
                                   err);
}

sb_status sb_model_load_checkpoint(const sb_model_shape *shape, const sb_checkpoint *checkpoint, sb_model *model,
                                   sb_error *err)
{
    SB_TRY(sb_model_alloc(shape, model, err));
    sb_safetensors_source source = {checkpoint, true};
    sb_status status = sb_model_load(sb_safetensors_fetch, &source, model, err);
    if (status != SB_OK)
        sb_model_free(model);
    return status;
}
