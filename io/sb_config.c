#include "sb_config.h"

#include "sb_atomic.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* BLAS takes 32-bit dimensions: every size the runtime hands to it must stay below 2^31. */
static const int64_t dimension_limit = INT32_MAX;

/* A JSON integer in [minimum, maximum]; `fallback` when absent (or null) and not required. */
static sb_status get_integer(const char *path, json_t *root, const char *key, bool required, int64_t fallback,
                             int64_t minimum, int64_t maximum, int64_t *value, sb_error *err)
{
    json_t *item = json_object_get(root, key);
    if (!item || json_is_null(item)) {
        if (required)
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" is missing", path, key);
        *value = fallback;
        return SB_OK;
    }
    if (!json_is_integer(item) || json_integer_value(item) < minimum) {
        if (minimum == 1)
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be a positive integer", path, key);
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be an integer >= %lld", path, key,
                            (long long)minimum);
    }
    if (json_integer_value(item) > maximum)
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" = %lld is too large (at most %lld)", path, key,
                            (long long)json_integer_value(item), (long long)maximum);
    *value = json_integer_value(item);
    return SB_OK;
}

static sb_status get_number(const char *path, json_t *root, const char *key, double fallback, double *value,
                            sb_error *err)
{
    json_t *item = json_object_get(root, key);
    if (!item || json_is_null(item)) {
        *value = fallback;
        return SB_OK;
    }
    if (!json_is_number(item) || !(json_number_value(item) > 0) || !isfinite(json_number_value(item)))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be a positive number", path, key);
    *value = json_number_value(item);
    return SB_OK;
}

/* A JSON boolean; `fallback` when absent or null. */
static sb_status get_boolean(const char *path, json_t *root, const char *key, bool fallback, bool *value,
                             sb_error *err)
{
    json_t *item = json_object_get(root, key);
    if (!item || json_is_null(item)) {
        *value = fallback;
        return SB_OK;
    }
    /* A string "true" or a 1 would slip past a test for the JSON literal: refuse what is not a boolean. */
    if (!json_is_boolean(item))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be true or false", path, key);
    *value = json_is_true(item);
    return SB_OK;
}

static sb_status refuse_true(const char *path, json_t *root, const char *key, const char *why, sb_error *err)
{
    bool value = false;
    SB_TRY(get_boolean(path, root, key, false, &value, err));
    if (value)
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\": true is not supported (%s)", path, key, why);
    return SB_OK;
}

static sb_status parse_rope_scaling(const char *path, json_t *root, sb_model_shape *shape, sb_error *err)
{
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (!scaling || json_is_null(scaling))
        return SB_OK;
    if (!json_is_object(scaling))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"rope_scaling\" must be an object or null", path);
    json_t *type = json_object_get(scaling, "rope_type");
    if (!type)
        type = json_object_get(scaling, "type");
    const char *type_name = json_is_string(type) ? json_string_value(type) : "(none)";
    if (strcmp(type_name, "default") == 0)
        return SB_OK;
    if (strcmp(type_name, "llama3") != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: rope_scaling type \"%s\" is not supported (supported: llama3, default)", path,
                            type_name);
    shape->rope_scaling = SB_ROPE_SCALING_LLAMA3;
    SB_TRY(get_number(path, scaling, "factor", 8.0, &shape->rope_factor, err));
    SB_TRY(get_number(path, scaling, "low_freq_factor", 1.0, &shape->rope_low_freq_factor, err));
    SB_TRY(get_number(path, scaling, "high_freq_factor", 4.0, &shape->rope_high_freq_factor, err));
    SB_TRY(get_integer(path, scaling, "original_max_position_embeddings", false, 8192, 1, INT64_MAX,
                       &shape->rope_original_max_position, err));
    if (shape->rope_high_freq_factor <= shape->rope_low_freq_factor)
        return sb_error_set(err, SB_ERR_INPUT, "%s: rope_scaling needs high_freq_factor > low_freq_factor", path);
    return SB_OK;
}

/* Sliding-window attention is not implemented: refuse every way a config can ask for it. Llama
 * and Mistral use it whenever "sliding_window" is set; Qwen3 only with "use_sliding_window":
 * true (transformers drops sliding_window otherwise), or per layer through "layer_types". */
static sb_status refuse_sliding_window(const char *path, json_t *root, sb_architecture architecture, sb_error *err)
{
    if (architecture == SB_ARCH_LLAMA) {
        json_t *sliding = json_object_get(root, "sliding_window");
        if (sliding && !json_is_null(sliding))
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"sliding_window\" attention is not supported", path);
        return SB_OK;
    }
    SB_TRY(refuse_true(path, root, "use_sliding_window", "sliding-window attention is not implemented", err));
    json_t *layer_types = json_object_get(root, "layer_types");
    if (layer_types && !json_is_null(layer_types)) {
        if (!json_is_array(layer_types))
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"layer_types\" must be a list of strings", path);
        size_t index;
        json_t *item;
        json_array_foreach(layer_types, index, item) {
            if (!json_is_string(item) || strcmp(json_string_value(item), "full_attention") != 0)
                return sb_error_set(err, SB_ERR_INPUT,
                                    "%s: \"layer_types\"[%zu] is not \"full_attention\" (sliding-window attention is "
                                    "not implemented)",
                                    path, index);
        }
    }
    return SB_OK;
}

/* a * b into *product; false on overflow past INT64_MAX (both non-negative). */
static bool multiply(int64_t a, int64_t b, int64_t *product)
{
    return !__builtin_mul_overflow(a, b, product);
}

static bool add(int64_t a, int64_t b, int64_t *sum) { return !__builtin_add_overflow(a, b, sum); }

/* The MoE fields of qwen3_moe, with transformers' Qwen3MoeConfig rules. */
static sb_status parse_moe(const char *path, json_t *root, sb_model_shape *shape, sb_error *err)
{
    SB_TRY(get_integer(path, root, "num_experts", true, 0, 0, dimension_limit, &shape->num_experts, err));
    SB_TRY(get_integer(path, root, "num_experts_per_tok", true, 0, 1, dimension_limit, &shape->num_experts_per_tok,
                       err));
    SB_TRY(get_integer(path, root, "moe_intermediate_size", true, 0, 1, dimension_limit,
                       &shape->moe_intermediate_size, err));
    SB_TRY(get_integer(path, root, "decoder_sparse_step", false, 1, 1, dimension_limit, &shape->decoder_sparse_step,
                       err));
    SB_TRY(get_boolean(path, root, "norm_topk_prob", false, &shape->norm_topk_prob, err));
    if (shape->num_experts > 0 && shape->num_experts_per_tok > shape->num_experts)
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"num_experts_per_tok\" (%lld) exceeds \"num_experts\" (%lld)",
                            path, (long long)shape->num_experts_per_tok, (long long)shape->num_experts);
    json_t *only = json_object_get(root, "mlp_only_layers");
    if (!only || json_is_null(only))
        return SB_OK;
    if (!json_is_array(only))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"mlp_only_layers\" must be a list of layer indices", path);
    size_t index;
    json_t *item;
    json_array_foreach(only, index, item) {
        if (!json_is_integer(item) || json_integer_value(item) < 0 ||
            json_integer_value(item) >= shape->num_hidden_layers)
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s: \"mlp_only_layers\"[%zu] is not a layer index in 0..%lld (num_hidden_layers)",
                                path, index, (long long)shape->num_hidden_layers - 1);
        int64_t layer = json_integer_value(item);
        if (layer >= SB_MAX_MLP_ONLY_LAYER)
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"mlp_only_layers\"[%zu] = %lld: layers beyond %d are not "
                                "supported in this list", path, index, (long long)layer, SB_MAX_MLP_ONLY_LAYER - 1);
        if (sb_shape_mlp_only(shape, layer))
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"mlp_only_layers\" lists layer %lld twice", path,
                                (long long)layer);
        shape->mlp_only_layers[layer / 64] |= (uint64_t)1 << (layer % 64);
    }
    return SB_OK;
}

/* Sizes the runtime multiplies: q_dim = heads x head_dim (a GEMM dimension), and the model's
 * weight and tensor counts (budget arithmetic, catalogue indices), checked for overflow so that
 * no size computed later from this config can wrap. */
static sb_status check_products(const char *path, const sb_model_shape *shape, sb_error *err)
{
    int64_t q_dim, kv_dim;
    if (!multiply(shape->num_attention_heads, shape->head_dim, &q_dim) || q_dim > dimension_limit)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: \"num_attention_heads\" x \"head_dim\" (%lld x %lld) exceeds 2^31 - 1", path,
                            (long long)shape->num_attention_heads, (long long)shape->head_dim);
    kv_dim = shape->num_key_value_heads * shape->head_dim; /* <= q_dim: heads is a multiple of kv heads */
    int64_t hidden = shape->hidden_size, moe_layers = sb_shape_moe_layers(shape);
    int64_t dense_layers = shape->num_hidden_layers - moe_layers;
    /* attention: q and o are q_dim x hidden each, k and v kv_dim x hidden; dense MLP 3 x ffn x hidden */
    int64_t attention, dense_mlp, expert, router, per_moe_layer, embedding, total, tensors;
    bool ok = multiply(2 * (q_dim + kv_dim), hidden, &attention) &&
              multiply(3 * shape->intermediate_size, hidden, &dense_mlp) &&
              multiply(3 * shape->moe_intermediate_size, hidden, &expert) &&
              multiply(shape->num_experts, hidden, &router) && multiply(expert, shape->num_experts, &per_moe_layer) &&
              add(per_moe_layer, router, &per_moe_layer) && add(per_moe_layer, attention, &per_moe_layer) &&
              add(dense_mlp, attention, &dense_mlp) && multiply(shape->vocab_size, hidden, &embedding) &&
              multiply(dense_mlp, dense_layers, &total) && multiply(per_moe_layer, moe_layers, &per_moe_layer) &&
              add(total, per_moe_layer, &total) && add(total, 2 * embedding, &total);
    if (!ok || total > INT64_MAX / 64)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: the weight count implied by \"hidden_size\", \"intermediate_size\", "
                            "\"num_hidden_layers\", \"vocab_size\"%s overflows",
                            path, shape->num_experts ? ", \"num_experts\" and \"moe_intermediate_size\"" : "");
    /* tensors: 16 per layer at most besides experts (norms, projections, biases), 3 per expert */
    ok = multiply(3 * shape->num_experts + 16, shape->num_hidden_layers, &tensors);
    if (!ok || tensors > (1 << 30))
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: \"num_experts\" x \"num_hidden_layers\" (%lld x %lld) implies more tensors than "
                            "supported (2^30)",
                            path, (long long)shape->num_experts, (long long)shape->num_hidden_layers);
    return SB_OK;
}

/* "quantization_config" of an FP8 source (the FP8 releases: quant_method fp8, fmt e4m3, one
 * weight_scale_inv per weight_block_size block). */
static sb_status parse_quantization(const char *path, json_t *root, sb_model_config *config, sb_error *err)
{
    json_t *quant = json_object_get(root, "quantization_config");
    if (!quant || json_is_null(quant))
        return SB_OK;
    if (!json_is_object(quant))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"quantization_config\" must be an object", path);
    json_t *method = json_object_get(quant, "quant_method");
    const char *method_name = json_is_string(method) ? json_string_value(method) : "(missing)";
    if (strcmp(method_name, "fp8") != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: quantization_config.quant_method \"%s\" is not supported (only \"fp8\" sources with "
                            "block scales are read; dequantize the checkpoint first)",
                            path, method_name);
    json_t *format = json_object_get(quant, "fmt");
    if (format && !json_is_null(format) && (!json_is_string(format) || strcmp(json_string_value(format), "e4m3") != 0))
        return sb_error_set(err, SB_ERR_INPUT, "%s: quantization_config.fmt must be \"e4m3\" (the only FP8 format read)",
                            path);
    json_t *block = json_object_get(quant, "weight_block_size");
    if (!block || json_is_null(block))
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: quantization_config.weight_block_size is missing (per-tensor FP8 scales are not "
                            "supported; block scales are)",
                            path);
    if (!json_is_array(block) || json_array_size(block) != 2)
        return sb_error_set(err, SB_ERR_INPUT, "%s: quantization_config.weight_block_size must be [rows, cols]", path);
    int64_t sizes[2];
    for (int d = 0; d < 2; d++) {
        json_t *item = json_array_get(block, (size_t)d);
        if (!json_is_integer(item) || json_integer_value(item) < 1 || json_integer_value(item) > dimension_limit)
            return sb_error_set(err, SB_ERR_INPUT,
                                "%s: quantization_config.weight_block_size[%d] must be a positive integer below 2^31",
                                path, d);
        sizes[d] = json_integer_value(item);
    }
    config->fp8_block_rows = sizes[0];
    config->fp8_block_cols = sizes[1];
    return SB_OK;
}

static sb_status parse_root(const char *path, json_t *root, sb_model_config *config, sb_error *err)
{
    sb_model_shape *shape = &config->shape;
    if (!json_is_object(root))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: not a JSON object", path);
    json_t *model_type = json_object_get(root, "model_type");
    const char *type = json_is_string(model_type) ? json_string_value(model_type) : "";
    if (strcmp(type, "llama") == 0 || strcmp(type, "mistral") == 0)
        shape->architecture = SB_ARCH_LLAMA;
    else if (strcmp(type, "qwen3") == 0)
        shape->architecture = SB_ARCH_QWEN3;
    else if (strcmp(type, "qwen3_moe") == 0)
        shape->architecture = SB_ARCH_QWEN3_MOE;
    else
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: model_type \"%s\" is not of the Llama or Qwen3 family (llama, mistral, qwen3, "
                            "qwen3_moe)",
                            path, type[0] ? type : "(missing)");
    bool llama = shape->architecture == SB_ARCH_LLAMA;
    snprintf(config->model_type, sizeof config->model_type, "%s", type);
    json_t *activation = json_object_get(root, "hidden_act");
    if (activation && (!json_is_string(activation) || strcmp(json_string_value(activation), "silu") != 0))
        return sb_error_set(err, SB_ERR_INPUT, "%s: hidden_act must be \"silu\"", path);
    SB_TRY(refuse_sliding_window(path, root, shape->architecture, err));
    if (llama)
        SB_TRY(refuse_true(path, root, "attention_bias", "Llama linear layers have no bias here", err));
    else
        SB_TRY(get_boolean(path, root, "attention_bias", false, &shape->attention_bias, err));
    SB_TRY(refuse_true(path, root, "mlp_bias", "MLP linear layers have no bias here", err));
    shape->qk_norm = !llama;
    SB_TRY(get_integer(path, root, "hidden_size", true, 0, 1, dimension_limit, &shape->hidden_size, err));
    SB_TRY(get_integer(path, root, "intermediate_size", true, 0, 1, dimension_limit, &shape->intermediate_size, err));
    SB_TRY(get_integer(path, root, "num_attention_heads", true, 0, 1, dimension_limit, &shape->num_attention_heads,
                       err));
    SB_TRY(get_integer(path, root, "num_key_value_heads", false, shape->num_attention_heads, 1, dimension_limit,
                       &shape->num_key_value_heads, err));
    SB_TRY(get_integer(path, root, "num_hidden_layers", true, 0, 1, dimension_limit, &shape->num_hidden_layers, err));
    SB_TRY(get_integer(path, root, "vocab_size", true, 0, 1, dimension_limit, &shape->vocab_size, err));
    /* LlamaConfig's default context is 2048, Qwen3Config's and Qwen3MoeConfig's 32768. */
    SB_TRY(get_integer(path, root, "max_position_embeddings", false, llama ? 2048 : 32768, 1, INT64_MAX,
                       &shape->max_position_embeddings, err));
    /* Qwen3Config has head_dim = 128 by default; LlamaConfig and the Qwen3-MoE attention derive it
     * as hidden / heads, where a remainder would silently drop columns of q_proj: refuse it. */
    json_t *head_dim = json_object_get(root, "head_dim");
    bool explicit_head_dim = head_dim && !json_is_null(head_dim);
    bool derived = !explicit_head_dim && shape->architecture != SB_ARCH_QWEN3;
    if (derived && shape->hidden_size % shape->num_attention_heads != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: hidden_size (%lld) is not a multiple of num_attention_heads (%lld) and no head_dim "
                            "is given",
                            path, (long long)shape->hidden_size, (long long)shape->num_attention_heads);
    int64_t default_head_dim = derived ? shape->hidden_size / shape->num_attention_heads : 128;
    SB_TRY(get_integer(path, root, "head_dim", false, default_head_dim, 1, dimension_limit, &shape->head_dim, err));
    SB_TRY(get_number(path, root, "rope_theta", 10000.0, &shape->rope_theta, err));
    SB_TRY(get_number(path, root, "rms_norm_eps", 1e-6, &shape->rms_norm_eps, err));
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"tie_word_embeddings\" must be true or false", path);
    /* PretrainedConfig defaults tie_word_embeddings to true, but LlamaConfig, MistralConfig,
     * Qwen3Config and Qwen3MoeConfig override the default to false (their checkpoints carry
     * lm_head.weight), and those are the classes that read this file. */
    shape->tie_word_embeddings = tie ? json_is_true(tie) : false;
    if (shape->num_attention_heads % shape->num_key_value_heads != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: num_attention_heads (%lld) is not a multiple of num_key_value_heads (%lld)", path,
                            (long long)shape->num_attention_heads, (long long)shape->num_key_value_heads);
    if (shape->head_dim % 2 != 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: head_dim %lld is odd; rotary embeddings need pairs", path,
                            (long long)shape->head_dim);
    if (shape->architecture == SB_ARCH_QWEN3_MOE)
        SB_TRY(parse_moe(path, root, shape, err));
    SB_TRY(check_products(path, shape, err));
    SB_TRY(parse_quantization(path, root, config, err));
    return parse_rope_scaling(path, root, shape, err);
}

sb_status sb_config_parse(const char *path, const char *json_text, sb_model_config *config, sb_error *err)
{
    memset(config, 0, sizeof *config);
    json_error_t json_error;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &json_error);
    if (!root)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", path, json_error.text,
                            json_error.line, json_error.column);
    sb_status status = parse_root(path, root, config, err);
    json_decref(root);
    if (status == SB_OK) {
        config->path = strdup(path);
        config->json_text = strdup(json_text);
        if (!config->path || !config->json_text)
            status = sb_error_set(err, SB_ERR_NOMEM, "out of memory reading %s", path);
    }
    if (status != SB_OK)
        sb_config_free(config);
    return status;
}

sb_status sb_config_load(const char *model_dir, sb_model_config *config, sb_error *err)
{
    memset(config, 0, sizeof *config);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    struct stat st;
    if (stat(path, &st) != 0)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot open (every model directory needs its config.json)", path);
    if (st.st_size > 16 * 1024 * 1024)
        return sb_error_set(err, SB_ERR_FORMAT, "%s: implausible size for a config.json", path);
    uint8_t *bytes = NULL;
    size_t size = 0;
    SB_TRY(sb_read_file(path, &bytes, &size, err));
    char *text = (char *)bytes;
    sb_status status = sb_config_parse(path, text, config, err);
    free(text);
    return status;
}

void sb_config_free(sb_model_config *config)
{
    free(config->path);
    free(config->json_text);
    memset(config, 0, sizeof *config);
}

sb_checkpoint_options sb_config_checkpoint_options(const sb_model_config *config)
{
    return (sb_checkpoint_options){config->fp8_block_rows, config->fp8_block_cols};
}
