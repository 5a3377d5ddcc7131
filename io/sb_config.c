#include "sb_config.h"

#include "sb_atomic.h"
#include "sb_model.h"
#include "sb_path.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static sb_status get_integer(const char *path, json_t *root, const char *key, bool required, int64_t fallback,
                             int64_t *value, sb_error *err)
{
    json_t *item = json_object_get(root, key);
    if (!item || json_is_null(item)) {
        if (required)
            return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" is missing", path, key);
        *value = fallback;
        return SB_OK;
    }
    if (!json_is_integer(item) || json_integer_value(item) <= 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be a positive integer", path, key);
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
    if (!json_is_number(item) || json_number_value(item) <= 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be a positive number", path, key);
    *value = json_number_value(item);
    return SB_OK;
}

static sb_status refuse_true(const char *path, json_t *root, const char *key, const char *why, sb_error *err)
{
    json_t *item = json_object_get(root, key);
    if (json_is_true(item))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\": true is not supported (%s)", path, key, why);
    /* A string "true" or a 1 would slip past a test for the JSON literal: refuse what is not a boolean. */
    if (item && !json_is_null(item) && !json_is_boolean(item))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"%s\" must be true or false", path, key);
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
    SB_TRY(get_integer(path, scaling, "original_max_position_embeddings", false, 8192,
                       &shape->rope_original_max_position, err));
    if (shape->rope_high_freq_factor <= shape->rope_low_freq_factor)
        return sb_error_set(err, SB_ERR_INPUT, "%s: rope_scaling needs high_freq_factor > low_freq_factor", path);
    return SB_OK;
}

static sb_status parse_root(const char *path, json_t *root, sb_model_config *config, sb_error *err)
{
    sb_model_shape *shape = &config->shape;
    if (!json_is_object(root))
        return sb_error_set(err, SB_ERR_FORMAT, "%s: not a JSON object", path);
    json_t *model_type = json_object_get(root, "model_type");
    const char *type = json_is_string(model_type) ? json_string_value(model_type) : "";
    if (strcmp(type, "llama") != 0 && strcmp(type, "mistral") != 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: model_type \"%s\" is not of the Llama family (llama, mistral)",
                            path, type[0] ? type : "(missing)");
    snprintf(config->model_type, sizeof config->model_type, "%s", type);
    json_t *activation = json_object_get(root, "hidden_act");
    if (activation && (!json_is_string(activation) || strcmp(json_string_value(activation), "silu") != 0))
        return sb_error_set(err, SB_ERR_INPUT, "%s: hidden_act must be \"silu\"", path);
    json_t *sliding = json_object_get(root, "sliding_window");
    if (sliding && !json_is_null(sliding))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"sliding_window\" attention is not supported", path);
    SB_TRY(refuse_true(path, root, "attention_bias", "Llama linear layers have no bias here", err));
    SB_TRY(refuse_true(path, root, "mlp_bias", "Llama linear layers have no bias here", err));
    SB_TRY(get_integer(path, root, "hidden_size", true, 0, &shape->hidden_size, err));
    SB_TRY(get_integer(path, root, "intermediate_size", true, 0, &shape->intermediate_size, err));
    SB_TRY(get_integer(path, root, "num_attention_heads", true, 0, &shape->num_attention_heads, err));
    SB_TRY(get_integer(path, root, "num_key_value_heads", false, shape->num_attention_heads,
                       &shape->num_key_value_heads, err));
    SB_TRY(get_integer(path, root, "num_hidden_layers", true, 0, &shape->num_hidden_layers, err));
    SB_TRY(get_integer(path, root, "vocab_size", true, 0, &shape->vocab_size, err));
    SB_TRY(get_integer(path, root, "max_position_embeddings", false, 2048, &shape->max_position_embeddings, err));
    int64_t default_head_dim = shape->hidden_size / shape->num_attention_heads;
    SB_TRY(get_integer(path, root, "head_dim", false, default_head_dim, &shape->head_dim, err));
    json_t *head_dim = json_object_get(root, "head_dim");
    /* Without an explicit head_dim, transformers derives it as hidden / heads: a remainder would
     * silently drop columns of q_proj, so refuse it. */
    if ((!head_dim || json_is_null(head_dim)) && shape->hidden_size % shape->num_attention_heads != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: hidden_size (%lld) is not a multiple of num_attention_heads (%lld) and no head_dim "
                            "is given",
                            path, (long long)shape->hidden_size, (long long)shape->num_attention_heads);
    SB_TRY(get_number(path, root, "rope_theta", 10000.0, &shape->rope_theta, err));
    SB_TRY(get_number(path, root, "rms_norm_eps", 1e-6, &shape->rms_norm_eps, err));
    json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_boolean(tie))
        return sb_error_set(err, SB_ERR_INPUT, "%s: \"tie_word_embeddings\" must be true or false", path);
    /* PretrainedConfig defaults tie_word_embeddings to true, but LlamaConfig and MistralConfig
     * override the default to false (their checkpoints carry lm_head.weight), and those are the
     * classes that read this file. */
    shape->tie_word_embeddings = tie ? json_is_true(tie) : false;
    if (shape->num_attention_heads % shape->num_key_value_heads != 0)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: num_attention_heads (%lld) is not a multiple of num_key_value_heads (%lld)", path,
                            (long long)shape->num_attention_heads, (long long)shape->num_key_value_heads);
    if (shape->head_dim % 2 != 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: head_dim %lld is odd; rotary embeddings need pairs", path,
                            (long long)shape->head_dim);
    SB_TRY(parse_rope_scaling(path, root, shape, err));
    /* every number bounded and every product of them overflow-checked before any caller
     * allocates from this config (src/sb_model.h) */
    if (sb_model_shape_check(shape, err) != SB_OK)
        return sb_error_prefix(err, "%s", path);
    return SB_OK;
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
    char path[SB_PATH_MAX];
    SB_TRY(sb_path_format(path, sizeof path, err, "%s/config.json", model_dir));
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
