/* config.json reading: the real configs of ../shared (the 405B one with llama3 rope scaling, the
 * Qwen3-MoE test model) and of tests/data (Qwen3-235B-A22B and Qwen3-Coder-480B-A35B, BF16 and
 * FP8) parse to the right numbers; every field we refuse is refused with a message naming the
 * file and the field. Mutations start from a valid Llama-2-7B-like config, or from a small
 * Qwen3-MoE config for the MoE and FP8 fields. */
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
        sb_test_format(fragment, sizeof fragment, "\"%s\" is missing", required[i]);
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
    /* upper bounds: BLAS takes 32-bit dimensions */
    expect_mutation_error("hidden_size", "2147483648", SB_ERR_INPUT, "\"hidden_size\" = 2147483648 is too large");
    expect_mutation_error("vocab_size", "99999999999", SB_ERR_INPUT, "\"vocab_size\" = 99999999999 is too large");
    expect_mutation_error("head_dim", "1073741824", SB_ERR_INPUT,
                          "\"num_attention_heads\" x \"head_dim\" (32 x 1073741824) exceeds 2^31 - 1");
    expect_mutation_error("rms_norm_eps", "0", SB_ERR_INPUT, "\"rms_norm_eps\" must be a positive number");
    /* other architectures */
    expect_mutation_error("model_type", "\"gpt2\"", SB_ERR_INPUT,
                          "model_type \"gpt2\" is not of the Llama or Qwen3 family");
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


/* ---- Qwen3 and Qwen3-MoE ---------------------------------------------------------------------- */

/* The shape of the Qwen3-MoE test model (../shared/models/qwen3-moe-tiny), inline. */
static const char *moe_config =
    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\", \"hidden_size\": 128,"
    " \"intermediate_size\": 384, \"moe_intermediate_size\": 128, \"num_experts\": 8,"
    " \"num_experts_per_tok\": 2, \"norm_topk_prob\": true, \"decoder_sparse_step\": 1,"
    " \"mlp_only_layers\": [0], \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32,"
    " \"num_hidden_layers\": 4, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"vocab_size\": 256,"
    " \"max_position_embeddings\": 256, \"tie_word_embeddings\": false, \"hidden_act\": \"silu\","
    " \"attention_bias\": false, \"use_sliding_window\": false, \"sliding_window\": 4096}";

/* `base` with `key` set to the JSON `value` (removed when NULL); nested "a.b" keys reach into
 * an object member. */
static char *mutate_from(const char *base, const char *key, const char *value)
{
    json_t *root = json_loads(base, 0, NULL);
    json_t *object = root;
    char path[128];
    sb_test_format(path, sizeof path, "%s", key);
    char *dot = strchr(path, '.');
    if (dot) {
        *dot = '\0';
        object = json_object_get(root, path);
        key = dot + 1;
    } else {
        key = path;
    }
    if (value)
        json_object_set_new(object, key, json_loads(value, JSON_DECODE_ANY, NULL));
    else
        json_object_del(object, key);
    char *text = json_dumps(root, 0);
    json_decref(root);
    return text;
}

static void expect_moe_error_(int line, const char *key, const char *value, const char *fragment)
{
    char *text = mutate_from(moe_config, key, value);
    expect_error_(line, text, SB_ERR_INPUT, fragment);
    free(text);
}
#define expect_moe_error(key, value, fragment) expect_moe_error_(__LINE__, key, value, fragment)

static bool parse_ok(const char *label, const char *text, sb_model_config *config)
{
    sb_error err = {0};
    sb_status status = sb_config_parse(label, text, config, &err);
    SB_CHECK_MSG(status == SB_OK, "%s: %s", label, err.message);
    return status == SB_OK;
}

static void test_qwen3(void)
{
    sb_model_config config;
    /* Llama keeps its numbers and flags: no q/k norms, no biases, no experts, no MoE layer */
    if (parse_ok("llama", base_config, &config)) {
        SB_CHECK(config.shape.architecture == SB_ARCH_LLAMA && !config.shape.qk_norm && !config.shape.attention_bias);
        SB_CHECK(config.shape.num_experts == 0 && sb_shape_moe_layers(&config.shape) == 0);
        SB_CHECK(config.fp8_block_rows == 0 && config.fp8_block_cols == 0);
        sb_config_free(&config);
    }
    /* qwen3: q/k norms; head_dim 128 when absent (Qwen3Config's default, not hidden / heads) */
    char *text = mutate("model_type", "\"qwen3\"");
    if (parse_ok("qwen3", text, &config)) {
        SB_CHECK(config.shape.architecture == SB_ARCH_QWEN3 && config.shape.qk_norm);
        SB_CHECK(config.shape.head_dim == 128 && !config.shape.attention_bias);
        SB_CHECK(config.shape.max_position_embeddings == 4096);
        SB_CHECK(!sb_layer_is_moe(&config.shape, 0) && sb_shape_dense_layers(&config.shape) == 32);
        sb_config_free(&config);
    }
    free(text);
    /* an explicit head_dim that hidden / heads does not give; attention biases on */
    json_t *root = json_loads(base_config, 0, NULL);
    json_object_set_new(root, "model_type", json_string("qwen3"));
    json_object_set_new(root, "head_dim", json_integer(96));
    json_object_set_new(root, "num_attention_heads", json_integer(30));
    json_object_set_new(root, "num_key_value_heads", json_integer(6));
    json_object_set_new(root, "attention_bias", json_true());
    json_object_set_new(root, "sliding_window", json_integer(4096)); /* ignored: use_sliding_window absent */
    json_object_del(root, "max_position_embeddings");
    text = json_dumps(root, 0);
    json_decref(root);
    if (parse_ok("qwen3 biases", text, &config)) {
        SB_CHECK(config.shape.head_dim == 96 && config.shape.num_attention_heads == 30);
        SB_CHECK(config.shape.attention_bias && config.shape.qk_norm);
        SB_CHECK(config.shape.max_position_embeddings == 32768); /* Qwen3Config's default */
        sb_config_free(&config);
    }
    char *bad = mutate_from(text, "use_sliding_window", "true");
    expect_error(bad, SB_ERR_INPUT, "\"use_sliding_window\": true is not supported");
    free(bad);
    bad = mutate_from(text, "layer_types", "[\"full_attention\", \"sliding_attention\"]");
    expect_error(bad, SB_ERR_INPUT, "\"layer_types\"[1] is not \"full_attention\"");
    free(bad);
    bad = mutate_from(text, "attention_bias", "1");
    expect_error(bad, SB_ERR_INPUT, "\"attention_bias\" must be true or false");
    free(bad);
    bad = mutate_from(text, "mlp_bias", "true");
    expect_error(bad, SB_ERR_INPUT, "\"mlp_bias\": true is not supported");
    free(bad);
    free(text);
}

static void test_qwen3_moe(void)
{
    sb_model_config config;
    if (parse_ok("moe", moe_config, &config)) {
        const sb_model_shape *s = &config.shape;
        SB_CHECK(s->architecture == SB_ARCH_QWEN3_MOE && s->qk_norm && !s->attention_bias);
        SB_CHECK(s->num_experts == 8 && s->num_experts_per_tok == 2 && s->moe_intermediate_size == 128);
        SB_CHECK(s->norm_topk_prob && s->decoder_sparse_step == 1 && s->head_dim == 32);
        SB_CHECK(!sb_layer_is_moe(s, 0) && sb_layer_is_moe(s, 1) && sb_layer_is_moe(s, 2) && sb_layer_is_moe(s, 3));
        SB_CHECK(sb_shape_moe_layers(s) == 3 && sb_shape_dense_layers(s) == 1);
        sb_config_free(&config);
    }
    /* transformers' rule: sparse iff not mlp-only, experts > 0 and (layer + 1) % step == 0 */
    char *text = mutate_from(moe_config, "decoder_sparse_step", "2");
    char *text2 = mutate_from(text, "mlp_only_layers", "[3]");
    if (parse_ok("step 2", text2, &config)) {
        bool expected[4] = {false, true, false, false};
        for (int l = 0; l < 4; l++)
            SB_CHECK_MSG(sb_layer_is_moe(&config.shape, l) == expected[l], "step 2, layer %d", l);
        sb_config_free(&config);
    }
    free(text);
    free(text2);
    /* defaults: norm_topk_prob false, decoder_sparse_step 1, mlp_only_layers [] (every layer
     * sparse); head_dim = hidden / heads without one (Qwen3MoeAttention) */
    text = mutate_from(moe_config, "norm_topk_prob", NULL);
    text2 = mutate_from(text, "mlp_only_layers", NULL);
    free(text);
    text = mutate_from(text2, "decoder_sparse_step", NULL);
    free(text2);
    text2 = mutate_from(text, "head_dim", NULL);
    if (parse_ok("moe defaults", text2, &config)) {
        SB_CHECK(!config.shape.norm_topk_prob && config.shape.decoder_sparse_step == 1);
        SB_CHECK(sb_shape_moe_layers(&config.shape) == 4 && config.shape.head_dim == 32);
        sb_config_free(&config);
    }
    free(text);
    free(text2);
    /* num_experts 0: no MoE layer at all */
    text = mutate_from(moe_config, "num_experts", "0");
    if (parse_ok("no experts", text, &config)) {
        SB_CHECK(sb_shape_moe_layers(&config.shape) == 0);
        sb_config_free(&config);
    }
    free(text);

    /* refusals, each naming its field */
    expect_moe_error("num_experts", NULL, "\"num_experts\" is missing");
    expect_moe_error("num_experts_per_tok", NULL, "\"num_experts_per_tok\" is missing");
    expect_moe_error("moe_intermediate_size", NULL, "\"moe_intermediate_size\" is missing");
    expect_moe_error("num_experts", "-1", "\"num_experts\" must be an integer >= 0");
    expect_moe_error("num_experts", "8.0", "\"num_experts\" must be an integer >= 0");
    expect_moe_error("num_experts_per_tok", "9", "\"num_experts_per_tok\" (9) exceeds \"num_experts\" (8)");
    expect_moe_error("num_experts_per_tok", "0", "\"num_experts_per_tok\" must be a positive integer");
    expect_moe_error("moe_intermediate_size", "0", "\"moe_intermediate_size\" must be a positive integer");
    expect_moe_error("moe_intermediate_size", "4294967296", "\"moe_intermediate_size\" = 4294967296 is too large");
    expect_moe_error("decoder_sparse_step", "0", "\"decoder_sparse_step\" must be a positive integer");
    expect_moe_error("norm_topk_prob", "\"true\"", "\"norm_topk_prob\" must be true or false");
    expect_moe_error("mlp_only_layers", "0", "\"mlp_only_layers\" must be a list of layer indices");
    expect_moe_error("mlp_only_layers", "[0, 4]", "\"mlp_only_layers\"[1] is not a layer index in 0..3");
    expect_moe_error("mlp_only_layers", "[-1]", "\"mlp_only_layers\"[0] is not a layer index");
    expect_moe_error("mlp_only_layers", "[\"0\"]", "\"mlp_only_layers\"[0] is not a layer index");
    expect_moe_error("mlp_only_layers", "[1, 1]", "\"mlp_only_layers\" lists layer 1 twice");
    /* sizes whose products overflow: the weight count, the tensor count */
    text = mutate_from(moe_config, "hidden_size", "2147483647");
    char *text3 = mutate_from(text, "moe_intermediate_size", "2147483647");
    free(text);
    text = mutate_from(text3, "head_dim", "2");
    expect_error(text, SB_ERR_INPUT, "the weight count implied by");
    expect_error(text, SB_ERR_INPUT, "\"num_experts\" and \"moe_intermediate_size\"");
    free(text);
    free(text3);
    text = mutate_from(moe_config, "num_experts", "2000000000");
    expect_error(text, SB_ERR_INPUT, "\"num_experts\" x \"num_hidden_layers\" (2000000000 x 4) implies more tensors");
    free(text);
}

static void test_fp8_quantization_config(void)
{
    sb_model_config config;
    const char *fp8 = "{\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"activation_scheme\": \"dynamic\","
                      " \"weight_block_size\": [128, 64]}";
    char *text = mutate_from(moe_config, "quantization_config", fp8);
    if (parse_ok("fp8", text, &config)) {
        SB_CHECK(config.fp8_block_rows == 128 && config.fp8_block_cols == 64);
        sb_config_free(&config);
    }
    const struct {
        const char *key, *value, *fragment;
    } bad[] = {
        {"quantization_config.quant_method", "\"gptq\"", "quantization_config.quant_method \"gptq\" is not supported"},
        {"quantization_config.quant_method", NULL, "quant_method \"(missing)\""},
        {"quantization_config.fmt", "\"e5m2\"", "quantization_config.fmt must be \"e4m3\""},
        {"quantization_config.weight_block_size", NULL, "quantization_config.weight_block_size is missing"},
        {"quantization_config.weight_block_size", "[128]", "weight_block_size must be [rows, cols]"},
        {"quantization_config.weight_block_size", "[128, 0]", "weight_block_size[1] must be a positive integer"},
        {"quantization_config.weight_block_size", "[\"128\", 128]", "weight_block_size[0] must be a positive"},
        {"quantization_config", "\"fp8\"", "\"quantization_config\" must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *mutated = mutate_from(text, bad[i].key, bad[i].value);
        expect_error(mutated, SB_ERR_INPUT, bad[i].fragment);
        free(mutated);
    }
    free(text);
    /* the same block on a Llama config (a Llama FP8 release) */
    text = mutate("quantization_config", fp8);
    if (parse_ok("llama fp8", text, &config)) {
        SB_CHECK(config.fp8_block_rows == 128 && config.shape.architecture == SB_ARCH_LLAMA);
        sb_config_free(&config);
    }
    free(text);
}

/* Reads `path` and parses it; false (with a check failure) on error. */
static bool load_file(const char *path, sb_model_config *config)
{
    FILE *file = fopen(path, "rb");
    SB_CHECK_MSG(file != NULL, "%s: cannot open", path);
    if (!file)
        return false;
    static char text[1 << 16];
    size_t got = fread(text, 1, sizeof text - 1, file);
    fclose(file);
    text[got] = '\0';
    return parse_ok(path, text, config);
}

/* The published Qwen3 MoE configs in tests/data/configs (BF16 and FP8). */
static void test_qwen_configs(void)
{
    static const struct {
        const char *file;
        int64_t layers, hidden, heads, kv_heads, experts, moe_ffn, ffn, max_positions;
        double theta;
        bool fp8;
    } models[] = {
        {"qwen3-235b-a22b.config.json", 94, 4096, 64, 4, 128, 1536, 12288, 40960, 1e6, false},
        {"qwen3-235b-a22b-fp8.config.json", 94, 4096, 64, 4, 128, 1536, 12288, 40960, 1e6, true},
        {"qwen3-coder-480b-a35b.config.json", 62, 6144, 96, 8, 160, 2560, 8192, 262144, 1e7, false},
        {"qwen3-coder-480b-a35b-fp8.config.json", 62, 6144, 96, 8, 160, 2560, 8192, 262144, 1e7, true},
    };
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        char path[4096];
        sb_test_format(path, sizeof path, "%s/configs/%s", sb_test_data_dir(), models[i].file);
        sb_model_config config;
        if (!load_file(path, &config))
            continue;
        const sb_model_shape *s = &config.shape;
        SB_CHECK_MSG(s->architecture == SB_ARCH_QWEN3_MOE && s->num_hidden_layers == models[i].layers &&
                         s->hidden_size == models[i].hidden && s->num_attention_heads == models[i].heads &&
                         s->num_key_value_heads == models[i].kv_heads && s->head_dim == 128 &&
                         s->num_experts == models[i].experts && s->num_experts_per_tok == 8 &&
                         s->moe_intermediate_size == models[i].moe_ffn && s->intermediate_size == models[i].ffn &&
                         s->vocab_size == 151936 && s->rope_theta == models[i].theta &&
                         s->max_position_embeddings == models[i].max_positions && s->rms_norm_eps == 1e-6 &&
                         s->norm_topk_prob && s->decoder_sparse_step == 1 && !s->tie_word_embeddings &&
                         s->qk_norm && !s->attention_bias,
                     "%s: numbers differ from the published config", models[i].file);
        /* mlp_only_layers [] and step 1: every layer is sparse */
        SB_CHECK(sb_shape_moe_layers(s) == models[i].layers);
        SB_CHECK(config.fp8_block_rows == (models[i].fp8 ? 128 : 0) && config.fp8_block_cols == config.fp8_block_rows);
        sb_config_free(&config);
    }
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
    sb_test_format(path, sizeof path, "%s/config.json", dir);
    FILE *file = fopen(path, "w");
    fputs("{\"model_type\": \"llama\"}", file);
    fclose(file);
    SB_CHECK(sb_config_load(dir, &config, &err) == SB_ERR_INPUT);
    SB_CHECK(strstr(err.message, path) && strstr(err.message, "\"hidden_size\" is missing"));
    sb_test_remove_tree(dir);
    free(dir);

    /* the embedded default model */
    sb_test_format(path, sizeof path, "%s/tiny-austen-kjv", sb_test_data_dir());
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 128 && config.shape.num_key_value_heads == 2 && config.shape.head_dim == 32);
    sb_config_free(&config);

    const char *shared = sb_test_shared_dir();
    if (!shared)
        return;
    sb_test_format(path, sizeof path, "%s/models/stories260K-hf", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 64 && config.shape.intermediate_size == 172);
    SB_CHECK(config.shape.num_attention_heads == 8 && config.shape.num_key_value_heads == 4);
    SB_CHECK(config.shape.head_dim == 8 && config.shape.num_hidden_layers == 5 && config.shape.vocab_size == 512);
    SB_CHECK(config.shape.tie_word_embeddings);
    SB_CHECK(config.shape.rms_norm_eps == 1e-5);
    sb_config_free(&config);

    sb_test_format(path, sizeof path, "%s/models/austen-256", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 256 && config.shape.intermediate_size == 768);
    SB_CHECK(config.shape.num_attention_heads == 8 && config.shape.num_key_value_heads == 2);
    SB_CHECK(config.shape.num_hidden_layers == 6 && config.shape.vocab_size == 256);
    SB_CHECK(!config.shape.tie_word_embeddings);
    sb_config_free(&config);

    sb_test_format(path, sizeof path, "%s/models/tiny-austen-kjv", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.hidden_size == 128 && config.shape.num_hidden_layers == 4);
    sb_config_free(&config);

    /* Llama 3.1 405B: the planning configuration (no weights) */
    sb_test_format(path, sizeof path, "%s/models/configs/llama-3.1-405b.config.json", shared);
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

    /* the Qwen3-MoE test model */
    sb_test_format(path, sizeof path, "%s/models/qwen3-moe-tiny", shared);
    SB_CHECK_MSG(sb_config_load(path, &config, &err) == SB_OK, "%s", err.message);
    SB_CHECK(config.shape.architecture == SB_ARCH_QWEN3_MOE && config.shape.num_experts == 8);
    SB_CHECK(config.shape.num_experts_per_tok == 2 && config.shape.moe_intermediate_size == 128);
    SB_CHECK(!sb_layer_is_moe(&config.shape, 0) && sb_layer_is_moe(&config.shape, 3));
    sb_config_free(&config);
}

/* sb_shape_moe_layers counts in closed form (the fuzz test found a qwen3_moe config.json with
 * 2^31 - 1 layers taking seconds per call, counted one by one): it equals the count of
 * sb_layer_is_moe over every layer, for random steps, mlp-only lists and layer counts, and
 * gives the closed form's value at 2^31 - 1 layers. */
static void test_moe_layer_count(void)
{
    sb_test_rng rng = {12};
    for (int trial = 0; trial < 300; trial++) {
        sb_model_shape shape;
        memset(&shape, 0, sizeof shape);
        shape.architecture = trial % 10 == 0 ? SB_ARCH_QWEN3 : SB_ARCH_QWEN3_MOE;
        shape.num_experts = trial % 7 == 0 ? 0 : 8;
        shape.decoder_sparse_step = 1 + (int64_t)(sb_test_next(&rng) % 5);
        shape.num_hidden_layers = (int64_t)(sb_test_next(&rng) % (trial % 3 == 0 ? 6000 : 40));
        for (int k = (int)(sb_test_next(&rng) % 6); k > 0; k--) {
            int64_t layer = (int64_t)(sb_test_next(&rng) % SB_MAX_MLP_ONLY_LAYER);
            shape.mlp_only_layers[layer / 64] |= (uint64_t)1 << (layer % 64);
        }
        int64_t brute = 0;
        for (int64_t layer = 0; layer < shape.num_hidden_layers; layer++)
            brute += sb_layer_is_moe(&shape, layer);
        SB_CHECK_MSG(sb_shape_moe_layers(&shape) == brute, "trial %d: %lld MoE layers, counted %lld", trial,
                     (long long)sb_shape_moe_layers(&shape), (long long)brute);
        SB_CHECK(sb_shape_dense_layers(&shape) == shape.num_hidden_layers - brute);
    }
    sb_model_shape shape;
    memset(&shape, 0, sizeof shape);
    shape.architecture = SB_ARCH_QWEN3_MOE;
    shape.num_experts = 8;
    shape.decoder_sparse_step = 3;
    shape.num_hidden_layers = INT32_MAX;
    shape.mlp_only_layers[0] = (uint64_t)1 << 2 | (uint64_t)1 << 3; /* layer 2 is sparse, layer 3 is not */
    SB_CHECK(sb_shape_moe_layers(&shape) == INT32_MAX / 3 - 1);
}

int main(void)
{
    test_moe_layer_count();
    test_base_and_defaults();
    test_refusals();
    test_qwen3();
    test_qwen3_moe();
    test_fp8_quantization_config();
    test_qwen_configs();
    test_load_files();
    return sb_test_finish("test_config");
}
