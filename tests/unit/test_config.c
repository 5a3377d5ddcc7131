/* config.json reading: the real configs of ../shared (the 405B one with llama3 rope scaling) and
 * of tests/data parse to the right numbers; every field we refuse is refused with a message
 * naming the file and the field. Mutations start from a valid Llama-2-7B-like config. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "sb_config.h"
#include "sb_test.h"

static const char *base_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096,"
    " \"intermediate_size\": 11008, \"num_attention_heads\": 32, \"num_key_value_heads\": 32,"
    " \"num_hidden_layers\": 32, \"vocab_size\": 32000, \"max_position_embeddings\": 4096,"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"hidden_act\": \"silu\","
    " \"tie_word_embeddings\": false, \"attention_bias\": false, \"rope_scaling\": null}";

/* base_config with `key` set to the JSON `value` (or removed when `value` is NULL). */
static char *mutate(const char *key, const char *value)
{
    json_t *root = json_loads(base_config, 0, NULL);
    if (value) {
        json_t *item = json_loads(value, JSON_DECODE_ANY, NULL);
        if (!item) {
            fprintf(stderr, "bad test JSON %s\n", value);
            exit(1);
        }
        json_object_set_new(root, key, item);
    } else {
        json_object_del(root, key);
    }
    char *text = json_dumps(root, 0);
    json_decref(root);
    return text;
}

static void expect_error_(int line, const char *text, sb_status status, const char *fragment)
{
    sb_model_config config;
    sb_error err = {0};
    sb_status got = sb_config_parse("models/x/config.json", text, &config, &err);
    SB_CHECK_MSG(got == status, "line %d: status %s, expected %s (%s)", line, sb_status_name(got),
                 sb_status_name(status), err.message);
    SB_CHECK_MSG(strstr(err.message, "models/x/config.json"), "line %d: message '%s' lacks the path", line,
                 err.message);
    SB_CHECK_MSG(strstr(err.message, fragment), "line %d: message '%s' lacks '%s'", line, err.message, fragment);
    SB_CHECK(config.path == NULL && config.json_text == NULL);
    if (got == SB_OK)
        sb_config_free(&config);
}
#define expect_error(text, status, fragment) expect_error_(__LINE__, text, status, fragment)

static void expect_mutation_error_(int line, const char *key, const char *value, sb_status status,
                                   const char *fragment)
{
    char *text = mutate(key, value);
    expect_error_(line, text, status, fragment);
    free(text);
}
#define expect_mutation_error(key, value, status, fragment) \
    expect_mutation_error_(__LINE__, key, value, status, fragment)

static void test_base_and_defaults(void)
{
    sb_model_config config;
    sb_error err = {0};
    SB_CHECK_MSG(sb_config_parse("base", base_config, &config, &err) == SB_OK, "%s", err.message);
    const sb_model_shape *shape = &config.shape;
    SB_CHECK(shape->hidden_size == 4096 && shape->intermediate_size == 11008);
    SB_CHECK(shape->num_attention_heads == 32 && shape->num_key_value_heads == 32 && shape->head_dim == 128);
    SB_CHECK(shape->num_hidden_layers == 32 && shape->vocab_size == 32000);
    SB_CHECK(shape->rope_scaling == SB_ROPE_SCALING_NONE);
    SB_CHECK(!shape->tie_word_embeddings);
    SB_CHECK(strcmp(config.model_type, "llama") == 0 && strcmp(config.json_text, base_config) == 0);
    SB_CHECK(strcmp(config.path, "base") == 0);
    sb_config_free(&config);

    /* defaults: kv heads = heads; LlamaConfig's tie_word_embeddings default is false; eps, theta */
    char *text = mutate("num_key_value_heads", NULL);
    json_t *root = json_loads(text, 0, NULL);
    free(text);
    json_object_del(root, "tie_word_embeddings");
    json_object_del(root, "rms_norm_eps");
    json_object_del(root, "rope_theta");
    json_object_del(root, "max_position_embeddings");
    text = json_dumps(root, 0);
    json_decref(root);
    SB_CHECK_MSG(sb_config_parse("defaults", text, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.num_key_value_heads == 32);
    SB_CHECK(!config.shape.tie_word_embeddings);
    SB_CHECK(config.shape.rms_norm_eps == 1e-6 && config.shape.rope_theta == 10000.0);
    SB_CHECK(config.shape.max_position_embeddings == 2048);
    sb_config_free(&config);
    free(text);

    /* mistral is of the family; an explicit head_dim that differs from hidden / heads is kept */
    text = mutate("model_type", "\"mistral\"");
    SB_CHECK(sb_config_parse("mistral", text, &config, &err) == SB_OK);
    SB_CHECK(strcmp(config.model_type, "mistral") == 0);
    sb_config_free(&config);
    free(text);
    text = mutate("head_dim", "96");
    SB_CHECK(sb_config_parse("head_dim", text, &config, &err) == SB_OK);
    SB_CHECK(config.shape.head_dim == 96);
    sb_config_free(&config);
    free(text);
    /* rope_scaling "default" is the absence of scaling */
    text = mutate("rope_scaling", "{\"rope_type\": \"default\"}");
    SB_CHECK(sb_config_parse("default rope", text, &config, &err) == SB_OK);
    SB_CHECK(config.shape.rope_scaling == SB_ROPE_SCALING_NONE);
    sb_config_free(&config);
    free(text);
}

static void test_refusals(void)
{
    /* missing required fields */
    const char *required[] = {"hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                              "vocab_size"};
    for (int i = 0; i < 5; i++) {
        char fragment[128];
        snprintf(fragment, sizeof fragment, "\"%s\" is missing", required[i]);
        expect_mutation_error(required[i], NULL, SB_ERR_INPUT, fragment);
    }
    /* wrong types and values */
    expect_mutation_error("hidden_size", "\"4096\"", SB_ERR_INPUT, "\"hidden_size\" must be a positive integer");
    expect_mutation_error("hidden_size", "4096.5", SB_ERR_INPUT, "\"hidden_size\" must be a positive integer");
    expect_mutation_error("num_hidden_layers", "0", SB_ERR_INPUT, "\"num_hidden_layers\" must be a positive integer");
    expect_mutation_error("vocab_size", "-5", SB_ERR_INPUT, "\"vocab_size\"");
    expect_mutation_error("num_key_value_heads", "true", SB_ERR_INPUT, "\"num_key_value_heads\"");
    expect_mutation_error("rms_norm_eps", "\"1e-5\"", SB_ERR_INPUT, "\"rms_norm_eps\" must be a positive number");
    expect_mutation_error("rope_theta", "-1", SB_ERR_INPUT, "\"rope_theta\"");
    expect_mutation_error("tie_word_embeddings", "\"yes\"", SB_ERR_INPUT, "\"tie_word_embeddings\" must be true or false");
    expect_mutation_error("hidden_act", "\"gelu\"", SB_ERR_INPUT, "hidden_act must be \"silu\"");
    expect_mutation_error("hidden_act", "7", SB_ERR_INPUT, "hidden_act");
    expect_mutation_error("head_dim", "\"128\"", SB_ERR_INPUT, "\"head_dim\"");
    expect_mutation_error("head_dim", "127", SB_ERR_INPUT, "head_dim 127 is odd");
    /* other architectures */
    expect_mutation_error("model_type", "\"gpt2\"", SB_ERR_INPUT, "model_type \"gpt2\" is not of the Llama family");
    expect_mutation_error("model_type", "\"qwen2\"", SB_ERR_INPUT, "\"qwen2\"");
    expect_mutation_error("model_type", NULL, SB_ERR_INPUT, "model_type \"(missing)\"");
    expect_mutation_error("model_type", "3", SB_ERR_INPUT, "model_type");
    /* rope scaling */
    expect_mutation_error("rope_scaling", "{\"type\": \"linear\", \"factor\": 2.0}", SB_ERR_INPUT,
                          "rope_scaling type \"linear\" is not supported");
    expect_mutation_error("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4.0}", SB_ERR_INPUT,
                          "rope_scaling type \"yarn\" is not supported");
    expect_mutation_error("rope_scaling", "{\"type\": \"dynamic\", \"factor\": 2.0}", SB_ERR_INPUT, "\"dynamic\"");
    expect_mutation_error("rope_scaling", "{\"factor\": 2.0}", SB_ERR_INPUT, "rope_scaling type \"(none)\"");
    expect_mutation_error("rope_scaling", "\"llama3\"", SB_ERR_INPUT, "\"rope_scaling\" must be an object or null");
    expect_mutation_error("rope_scaling",
                          "{\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4.0, "
                          "\"high_freq_factor\": 1.0}",
                          SB_ERR_INPUT, "high_freq_factor > low_freq_factor");
    expect_mutation_error("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": -8.0}", SB_ERR_INPUT, "\"factor\"");
    /* biases, sliding windows */
    expect_mutation_error("attention_bias", "true", SB_ERR_INPUT, "\"attention_bias\": true is not supported");
    expect_mutation_error("mlp_bias", "true", SB_ERR_INPUT, "\"mlp_bias\": true is not supported");
    expect_mutation_error("attention_bias", "\"true\"", SB_ERR_INPUT, "\"attention_bias\" must be true or false");
    expect_mutation_error("sliding_window", "4096", SB_ERR_INPUT, "\"sliding_window\"");
    /* head counts */
    expect_mutation_error("num_key_value_heads", "6", SB_ERR_INPUT,
                          "num_attention_heads (32) is not a multiple of num_key_value_heads (6)");
    expect_mutation_error("num_key_value_heads", "64", SB_ERR_INPUT, "not a multiple of num_key_value_heads (64)");
    expect_mutation_error("num_attention_heads", "30", SB_ERR_INPUT,
                          "hidden_size (4096) is not a multiple of num_attention_heads (30)");
    /* not JSON, not an object */
    expect_error("{\"model_type\": \"llama\",", SB_ERR_FORMAT, "not valid JSON");
    expect_error("[1, 2]", SB_ERR_FORMAT, "not a JSON object");
    expect_error("{\"model_type\": \"llama\", \"model_type\": \"llama\"}", SB_ERR_FORMAT, "duplicate");
}

static void test_load_files(void)
{
    sb_model_config config;
    sb_error err = {0};
    /* a directory without config.json */
    char *dir = sb_test_temp_dir("config");
    SB_CHECK(sb_config_load(dir, &config, &err) == SB_ERR_IO);
    SB_CHECK(strstr(err.message, dir) && strstr(err.message, "config.json"));
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *file = fopen(path, "w");
    fputs("{\"model_type\": \"llama\"}", file);
    fclose(file);
    SB_CHECK(sb_config_load(dir, &config, &err) == SB_ERR_INPUT);
    SB_CHECK(strstr(err.message, path) && strstr(err.message, "\"hidden_size\" is missing"));
    sb_test_remove_tree(dir);
    free(dir);

    /* the embedded default model */
    snprintf(path, sizeof path, "%s/tiny-austen-kjv", sb_test_data_dir());
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 128 && config.shape.num_key_value_heads == 2 && config.shape.head_dim == 32);
    sb_config_free(&config);

    const char *shared = sb_test_shared_dir();
    if (!shared)
        return;
    snprintf(path, sizeof path, "%s/models/stories260K-hf", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 64 && config.shape.intermediate_size == 172);
    SB_CHECK(config.shape.num_attention_heads == 8 && config.shape.num_key_value_heads == 4);
    SB_CHECK(config.shape.head_dim == 8 && config.shape.num_hidden_layers == 5 && config.shape.vocab_size == 512);
    SB_CHECK(config.shape.tie_word_embeddings);
    SB_CHECK(config.shape.rms_norm_eps == 1e-5);
    sb_config_free(&config);

    snprintf(path, sizeof path, "%s/models/austen-256", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 256 && config.shape.intermediate_size == 768);
    SB_CHECK(config.shape.num_attention_heads == 8 && config.shape.num_key_value_heads == 2);
    SB_CHECK(config.shape.num_hidden_layers == 6 && config.shape.vocab_size == 256);
    SB_CHECK(!config.shape.tie_word_embeddings);
    sb_config_free(&config);

    snprintf(path, sizeof path, "%s/models/tiny-austen-kjv", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 128 && config.shape.num_hidden_layers == 4);
    sb_config_free(&config);

    /* Llama 3.1 405B: the planning configuration (no weights) */
    snprintf(path, sizeof path, "%s/models/configs/llama-3.1-405b.config.json", shared);
    sb_test_require_file(path);
    file = fopen(path, "rb");
    char text[8192];
    size_t got = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[got] = '\0';
    SB_CHECK_MSG(sb_config_parse(path, text, &config, &err) == SB_OK, "%s", err.message);
    const sb_model_shape *shape = &config.shape;
    SB_CHECK(shape->hidden_size == 16384 && shape->intermediate_size == 53248);
    SB_CHECK(shape->num_attention_heads == 128 && shape->num_key_value_heads == 8 && shape->head_dim == 128);
    SB_CHECK(shape->num_hidden_layers == 126 && shape->vocab_size == 128256);
    SB_CHECK(shape->max_position_embeddings == 131072 && !shape->tie_word_embeddings);
    SB_CHECK(shape->rope_theta == 500000.0);
    SB_CHECK(shape->rope_scaling == SB_ROPE_SCALING_LLAMA3);
    SB_CHECK(shape->rope_factor == 8.0 && shape->rope_low_freq_factor == 1.0 && shape->rope_high_freq_factor == 4.0);
    SB_CHECK(shape->rope_original_max_position == 8192);
    sb_config_free(&config);
}

int main(void)
{
    test_base_and_defaults();
    test_refusals();
    test_load_files();
    return sb_test_finish("test_config");
}
