/* Bad input, end to end: every broken checkpoint, config or option makes scalebits-mpi exit
 * non-zero with one line that names the file, the tensor and what is wrong, and leaves no
 * output file (nor a temporary one). Under mpirun -n 3, a corrupt tensor that only one rank
 * reads ends every rank, with that rank's message, without a hang.
 * FP8 sources (a generated FP8 Llama, scalebits-mpi): a weight without its scale, a mis-shaped
 * or non-finite scale, a NaN code, a config without the block size. Qwen3-MoE (a generated
 * one, scalebits-eval, which runs it): the router's shape wrong, an expert missing (also under
 * mpirun -n 2), num_experts_per_tok > num_experts, an FP8 expert without its scale. */
#include <fcntl.h>
#include <math.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_safetensors.h"
#include "sb_test.h"

static char work[4096], model[4200], build[4096];

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return strdup("");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = calloc(1, (size_t)size + 1);
    if (fread(text, 1, (size_t)size, f) != (size_t)size)
        text[0] = '\0';
    fclose(f);
    return text;
}

static void shell(const char *command)
{
    if (system(command) != 0) {
        fprintf(stderr, "setup command failed: %s\n", command);
        exit(1);
    }
}

/* A fresh copy of the embedded model in work/model. */
static void fresh_model(void)
{
    char command[12000];
    snprintf(command, sizeof command, "rm -rf '%s' && cp -r '%s/tiny-austen-kjv' '%s' && rm -f '%s'/*.h5 '%s'/.*tmp*",
             model, sb_test_data_dir(), model, work, work);
    shell(command);
}

/* Runs `tool` (under mpirun -n `ranks` if ranks > 0) with `args`; expects failure with every
 * string in `expect` on the one error line and no output file. */
static void expect_tool_failure(const char *tool, const char *label, int ranks, const char *args, int expected_rc,
                                const char *const *expect)
{
    char command[16000], log[4200];
    snprintf(log, sizeof log, "%s/log.txt", work);
    const char *mpiexec = getenv("SB_MPIEXEC") ? getenv("SB_MPIEXEC") : "mpirun";
    if (ranks > 0)
        snprintf(command, sizeof command, "cd '%s' && %s --timeout 120 -n %d '%s/%s' %s > '%s' 2>&1", work, mpiexec,
                 ranks, build, tool, args, log);
    else
        snprintf(command, sizeof command, "cd '%s' && '%s/%s' %s > '%s' 2>&1", work, build, tool, args, log);
    int raw = system(command);
    int rc = WIFEXITED(raw) ? WEXITSTATUS(raw) : 255;
    char *text = read_text(log);
    int error_lines = 0;
    const char *error_line = NULL;
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s: error: ", tool);
    for (const char *p = text; (p = strstr(p, prefix)); p++) {
        error_lines++;
        error_line = p;
    }
    SB_CHECK_MSG(rc != 0 && rc != 110, "%s: exit code %d (110 = mpirun timeout, a hang)", label, rc);
    if (expected_rc)
        SB_CHECK_MSG(rc == expected_rc, "%s: exit code %d, expected %d", label, rc, expected_rc);
    SB_CHECK_MSG(error_lines == 1, "%s: %d error lines in:\n%s", label, error_lines, text);
    for (int i = 0; expect[i]; i++)
        SB_CHECK_MSG(error_line && strstr(error_line, expect[i]), "%s: '%s' not in:\n%s", label, expect[i], text);
    char check[8400];
    snprintf(check, sizeof check, "ls -A '%s' | grep -E '\\.h5|tmp' > /dev/null", work);
    SB_CHECK_MSG(system(check) != 0, "%s: an output or temporary file was left in %s", label, work);
    printf("%-34s rc=%d  %s", label, rc, error_line ? error_line : "(no error line)\n");
    free(text);
}

static void expect_failure(const char *label, int ranks, const char *args, int expected_rc, const char *const *expect)
{
    expect_tool_failure("scalebits-mpi", label, ranks, args, expected_rc, expect);
}

/* Rewrites model.safetensors with its header changed by `edit` (data kept). */
typedef void (*header_edit)(json_t *header);

static void rewrite_header(header_edit edit)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", model);
    FILE *f = fopen(path, "rb");
    uint64_t length = 0;
    if (!f || fread(&length, 8, 1, f) != 1)
        exit(1);
    char *header = malloc(length + 1);
    if (fread(header, 1, length, f) != length)
        exit(1);
    header[length] = '\0';
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    size_t data_bytes = (size_t)size - 8 - length;
    char *data = malloc(data_bytes);
    fseek(f, (long)(8 + length), SEEK_SET);
    if (fread(data, 1, data_bytes, f) != data_bytes)
        exit(1);
    fclose(f);
    json_t *root = json_loads(header, 0, NULL);
    edit(root);
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    size_t new_length = (strlen(text) + 7) / 8 * 8;
    f = fopen(path, "wb");
    uint64_t le = new_length;
    fwrite(&le, 8, 1, f);
    fwrite(text, 1, strlen(text), f);
    for (size_t i = strlen(text); i < new_length; i++)
        fputc(' ', f);
    fwrite(data, 1, data_bytes, f);
    fclose(f);
    free(text);
    json_decref(root);
    free(header);
    free(data);
}

static void set_end_offset_past_file(json_t *h)
{
    json_t *offsets = json_object_get(json_object_get(h, "model.layers.1.mlp.up_proj.weight"), "data_offsets");
    json_array_set_new(offsets, 1, json_integer(json_integer_value(json_array_get(offsets, 1)) + 10000000));
    json_array_set_new(offsets, 0, json_integer(json_integer_value(json_array_get(offsets, 0)) + 10000000));
}

static void make_overlap(json_t *h)
{
    json_t *a = json_object_get(json_object_get(h, "model.layers.0.self_attn.q_proj.weight"), "data_offsets");
    json_t *b = json_object_get(json_object_get(h, "model.layers.0.self_attn.k_proj.weight"), "data_offsets");
    int64_t begin = json_integer_value(json_array_get(a, 0));
    int64_t k_bytes = json_integer_value(json_array_get(b, 1)) - json_integer_value(json_array_get(b, 0));
    json_array_set_new(b, 0, json_integer(begin + 2));
    json_array_set_new(b, 1, json_integer(begin + 2 + k_bytes));
}

static void wrong_dtype(json_t *h)
{
    json_object_set_new(json_object_get(h, "model.layers.2.mlp.gate_proj.weight"), "dtype", json_string("I8"));
}

static void shape_against_config(json_t *h)
{
    /* same byte count, shape the config does not allow */
    json_t *shape = json_object_get(json_object_get(h, "model.layers.0.self_attn.o_proj.weight"), "shape");
    json_array_set_new(shape, 0, json_integer(64));
    json_array_set_new(shape, 1, json_integer(256));
}

static void size_mismatch(json_t *h)
{
    json_t *shape = json_object_get(json_object_get(h, "model.layers.3.mlp.down_proj.weight"), "shape");
    json_array_set_new(shape, 1, json_integer(353));
}

static void drop_tensor(json_t *h) { json_object_del(h, "model.layers.2.self_attn.v_proj.weight"); }

/* Writes a 16-bit value at element `index` of tensor `name`. */
static void poke_bf16(const char *name, int64_t index, uint16_t value)
{
    sb_checkpoint checkpoint;
    sb_error err;
    if (sb_checkpoint_open(model, &checkpoint, &err) != SB_OK)
        exit(1);
    const sb_tensor_info *info = sb_checkpoint_find(&checkpoint, name);
    int fd = open(checkpoint.files[info->file_index].path, O_WRONLY);
    if (pwrite(fd, &value, 2, (off_t)(info->data_offset + (uint64_t)index * 2)) != 2)
        exit(1);
    close(fd);
    sb_checkpoint_close(&checkpoint);
}

static void write_file(const char *name, const char *text)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", model, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* A fresh model generated by bench-gen-checkpoint with `options`, in work/model. */
static void fresh_generated(const char *options)
{
    char command[12000];
    snprintf(command, sizeof command, "rm -rf '%s' && '%s/bench/bench-gen-checkpoint' --out '%s' %s >/dev/null", model,
             build, model, options);
    shell(command);
}

/* Overwrites `count` bytes at byte `offset` of tensor `name`'s data, found from the header (the
 * reader would hide a scale tensor). */
static void poke_raw(const char *name, int64_t offset, const void *bytes, size_t count)
{
    char path[4300];
    snprintf(path, sizeof path, "%s/model.safetensors", model);
    FILE *f = fopen(path, "r+b");
    uint64_t length = 0;
    if (!f || fread(&length, 8, 1, f) != 1)
        exit(1);
    char *header = calloc(1, length + 1);
    if (fread(header, 1, length, f) != length)
        exit(1);
    json_t *root = json_loads(header, 0, NULL);
    json_t *offsets = json_object_get(json_object_get(root, name), "data_offsets");
    if (!offsets)
        exit(1);
    fseek(f, (long)(8 + length + (uint64_t)json_integer_value(json_array_get(offsets, 0)) + (uint64_t)offset), SEEK_SET);
    fwrite(bytes, 1, count, f);
    fclose(f);
    json_decref(root);
    free(header);
}

/* config.json with `key` set to the JSON `value` (removed when NULL). */
static void edit_config(const char *key, const char *value)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/config.json", model);
    json_t *root = json_load_file(path, 0, NULL);
    if (value)
        json_object_set_new(root, key, json_loads(value, JSON_DECODE_ANY, NULL));
    else
        json_object_del(root, key);
    json_dump_file(root, path, JSON_INDENT(2));
    json_decref(root);
}

static void drop_up_scale(json_t *h) { json_object_del(h, "model.layers.1.mlp.up_proj.weight_scale_inv"); }
static void drop_expert_scale(json_t *h) { json_object_del(h, "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv"); }
static void drop_expert(json_t *h) { json_object_del(h, "model.layers.2.mlp.experts.5.up_proj.weight"); }

static void misshape_scale(json_t *h)
{
    /* q_proj 64 x 64 in blocks of 32 x 32 has scales [2, 2]; [1, 4] holds as many bytes */
    json_t *shape = json_object_get(json_object_get(h, "model.layers.0.self_attn.q_proj.weight_scale_inv"), "shape");
    json_array_set_new(shape, 0, json_integer(1));
    json_array_set_new(shape, 1, json_integer(4));
}

static void misshape_router(json_t *h)
{
    json_t *shape = json_object_get(json_object_get(h, "model.layers.1.mlp.gate.weight"), "shape");
    json_array_set_new(shape, 0, json_integer(16));
    json_array_set_new(shape, 1, json_integer(32));
}

/* FP8 sources through scalebits-mpi, Qwen3-MoE through scalebits-eval. */
static void check_fp8_and_moe(void)
{
    char args[8000];
    snprintf(args, sizeof args, "--model '%s' --budget 3 --tile 32x32 --group 32 --out out.h5", model);
    const char *fp8_llama = "--small --layers 4 --fp8 --fp8-block 32x32";

    fresh_generated(fp8_llama);
    rewrite_header(drop_up_scale);
    expect_failure("FP8 weight without its scale", 0, args, 1,
                   (const char *[]){"model.safetensors", "tensor 'model.layers.1.mlp.up_proj.weight' is F8_E4M3",
                                    "its scale tensor", "is missing", NULL});
    fresh_generated(fp8_llama);
    rewrite_header(misshape_scale);
    expect_failure("FP8 scale mis-shaped", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.0.self_attn.q_proj.weight_scale_inv",
                                    "shape [1, 4]", "needs [2, 2]", NULL});
    fresh_generated(fp8_llama);
    float nan_value = NAN;
    poke_raw("model.layers.2.mlp.down_proj.weight_scale_inv", 4, &nan_value, 4);
    expect_failure("FP8 scale not finite", 0, args, 1,
                   (const char *[]){"model.safetensors", "tensor 'model.layers.2.mlp.down_proj.weight_scale_inv'",
                                    "block (0, 1) is not finite and positive", NULL});
    fresh_generated(fp8_llama);
    float negative = -0.5f;
    poke_raw("model.layers.0.mlp.gate_proj.weight_scale_inv", 0, &negative, 4);
    expect_failure("FP8 scale negative", 0, args, 1,
                   (const char *[]){"model.layers.0.mlp.gate_proj.weight_scale_inv", "not finite and positive", NULL});
    fresh_generated(fp8_llama);
    uint8_t nan_code = 0x7f;
    poke_raw("model.layers.3.self_attn.k_proj.weight", 64 + 3, &nan_code, 1);
    expect_failure("FP8 NaN code", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.3.self_attn.k_proj.weight",
                                    "NaN (F8_E4M3 code 0x7F) at row 1, column 3", NULL});
    fresh_generated(fp8_llama);
    edit_config("quantization_config", NULL);
    expect_failure("FP8 without a block size", 0, args, 1,
                   (const char *[]){"model.safetensors", "is F8_E4M3",
                                    "no quantization_config.weight_block_size", NULL});

    /* Qwen3-MoE: scalebits-eval loads and runs it */
    char text[4200];
    snprintf(text, sizeof text, "%s/tiny-austen-kjv/heldout.txt", sb_test_data_dir());
    snprintf(args, sizeof args, "--model '%s' --text '%s' --windows 2 --ctx 64", model, text);
    const char *moe = "--small --arch qwen3-moe --layers 3";
    fresh_generated(moe);
    rewrite_header(misshape_router);
    expect_tool_failure("scalebits-eval", "router shape wrong", 0, args, 1,
                        (const char *[]){"model.safetensors", "tensor 'model.layers.1.mlp.gate.weight'",
                                         "shape [16, 32]", "config.json implies [8, 64]", NULL});
    fresh_generated(moe);
    rewrite_header(drop_expert);
    expect_tool_failure("scalebits-eval", "expert missing", 0, args, 1,
                        (const char *[]){model, "tensor 'model.layers.2.mlp.experts.5.up_proj.weight' is missing",
                                         NULL});
    expect_tool_failure("scalebits-eval", "expert missing, 2 ranks", 2, args, 1,
                        (const char *[]){"model.layers.2.mlp.experts.5.up_proj.weight", "missing", NULL});
    fresh_generated(moe);
    edit_config("num_experts_per_tok", "9");
    expect_tool_failure("scalebits-eval", "experts per token > experts", 0, args, 1,
                        (const char *[]){"config.json", "\"num_experts_per_tok\" (9) exceeds \"num_experts\" (8)",
                                         NULL});
    fresh_generated("--small --arch qwen3-moe --layers 3 --fp8 --fp8-block 32x32");
    rewrite_header(drop_expert_scale);
    expect_tool_failure("scalebits-eval", "FP8 expert without its scale", 0, args, 1,
                        (const char *[]){"model.safetensors",
                                         "tensor 'model.layers.1.mlp.experts.3.down_proj.weight' is F8_E4M3",
                                         "is missing", NULL});
}

int main(void)
{
    const char *build_dir = getenv("SB_BUILD_DIR");
    snprintf(build, sizeof build, "%s", build_dir ? build_dir : "build");
    char *dir = sb_test_temp_dir("bad-input");
    snprintf(work, sizeof work, "%s", dir);
    snprintf(model, sizeof model, "%s/model", work);
    char args[8000];
    snprintf(args, sizeof args, "--model '%s' --budget 3 --out out.h5", model);
    char command[9000];

    fresh_model();
    snprintf(command, sizeof command, "truncate -s 900000 '%s/model.safetensors'", model);
    shell(command);
    expect_failure("truncated file", 0, args, 1, (const char *[]){"model.safetensors", "truncated", NULL});

    fresh_model();
    snprintf(command, sizeof command, "printf 'garbage!garbage!' | dd of='%s/model.safetensors' bs=1 seek=8 conv=notrunc 2>/dev/null", model);
    shell(command);
    expect_failure("corrupt header", 0, args, 1, (const char *[]){"model.safetensors", "not valid JSON", NULL});

    fresh_model();
    snprintf(command, sizeof command, "printf '\\377\\377\\377\\377\\377\\377\\000\\000' | dd of='%s/model.safetensors' bs=1 conv=notrunc 2>/dev/null", model);
    shell(command);
    expect_failure("header length beyond file", 0, args, 1, (const char *[]){"model.safetensors", "header length", NULL});

    fresh_model();
    rewrite_header(set_end_offset_past_file);
    expect_failure("offsets out of range", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.1.mlp.up_proj.weight", "past the end", NULL});

    fresh_model();
    rewrite_header(make_overlap);
    expect_failure("overlapping tensors", 0, args, 1, (const char *[]){"model.safetensors", "overlap", NULL});

    fresh_model();
    rewrite_header(wrong_dtype);
    expect_failure("wrong dtype", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.2.mlp.gate_proj.weight", "I8", NULL});

    fresh_model();
    rewrite_header(size_mismatch);
    expect_failure("shape x dtype != bytes", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.3.mlp.down_proj.weight", "bytes", NULL});

    fresh_model();
    rewrite_header(shape_against_config);
    expect_failure("shape contradicts config.json", 0, args, 1,
                   (const char *[]){"model.layers.0.self_attn.o_proj.weight", "config.json", "[128, 128]", NULL});

    fresh_model();
    rewrite_header(drop_tensor);
    expect_failure("missing tensor", 0, args, 1,
                   (const char *[]){"model.layers.2.self_attn.v_proj.weight", "missing", NULL});

    fresh_model();
    write_file("model.safetensors.index.json",
               "{\"metadata\": {}, \"weight_map\": {\"model.embed_tokens.weight\": \"model.safetensors\", "
               "\"lm_head.weight\": \"model-00002-of-00002.safetensors\"}}");
    expect_failure("missing shard", 0, args, 1,
                   (const char *[]){"model.safetensors.index.json", "model-00002-of-00002.safetensors", "missing", NULL});

    fresh_model();
    poke_bf16("model.layers.1.self_attn.q_proj.weight", 128 * 5 + 7, 0x7fc0);
    expect_failure("NaN weight", 0, args, 1,
                   (const char *[]){"model.safetensors", "model.layers.1.self_attn.q_proj.weight", "NaN at row 5, column 7", NULL});

    fresh_model();
    poke_bf16("model.layers.0.mlp.down_proj.weight", 3, 0xff80);
    expect_failure("Inf weight", 0, args, 1,
                   (const char *[]){"model.layers.0.mlp.down_proj.weight", "Inf at row 0, column 3", NULL});

    fresh_model();
    snprintf(command, sizeof command, "rm '%s/config.json'", model);
    shell(command);
    expect_failure("missing config.json", 0, args, 1, (const char *[]){"config.json", "cannot open", NULL});

    fresh_model();
    write_file("config.json", "{\"model_type\": \"llama\", \"hidden_size\": 128,");
    expect_failure("corrupt config.json", 0, args, 1, (const char *[]){"config.json", "not valid JSON", NULL});

    fresh_model();
    write_file("config.json", "{\"model_type\": \"gpt2\", \"hidden_size\": 128}");
    expect_failure("not a Llama config", 0, args, 1, (const char *[]){"config.json", "gpt2", NULL});

    fresh_model();
    snprintf(args, sizeof args, "--model '%s' --budget 3 --out /nonexistent-dir/out.h5", model);
    expect_failure("unwritable output path", 0, args, 1, (const char *[]){"/nonexistent-dir/out.h5", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget 3 --out '%s/config.json/out.h5'", model, model);
    expect_failure("output under a file", 0, args, 1, (const char *[]){"out.h5", NULL});

    snprintf(args, sizeof args, "--model '%s' --budget 1.5 --out out.h5", model);
    expect_failure("impossible budget", 0, args, 3, (const char *[]){"cannot be met", "feasible budgets are", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget 3 --frobnicate --out out.h5", model);
    expect_failure("unknown flag", 0, args, 2, (const char *[]){"--frobnicate", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget 3 --tile 12xq --out out.h5", model);
    expect_failure("bad tile", 0, args, 2, (const char *[]){"--tile", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget 3 --tile 64x64 --group 48 --out out.h5", model);
    expect_failure("group not dividing tile", 0, args, 2, (const char *[]){"--group 48", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget abc --out out.h5", model);
    expect_failure("budget not a number", 0, args, 2, (const char *[]){"--budget", NULL});
    snprintf(args, sizeof args, "--model '%s/nothing-here' --budget 3 --out out.h5", work);
    expect_failure("model directory missing", 0, args, 1, (const char *[]){"nothing-here", NULL});

    /* Distributed: only the rank that owns layer 3 reads it; every rank must still exit. */
    fresh_model();
    poke_bf16("model.layers.3.mlp.down_proj.weight", 10, 0x7fc0);
    snprintf(args, sizeof args, "--model '%s' --budget 3 --out out.h5", model);
    expect_failure("NaN on one rank of 3", 3, args, 1,
                   (const char *[]){"rank 2", "model.layers.3.mlp.down_proj.weight", "NaN", NULL});
    fresh_model();
    snprintf(command, sizeof command, "truncate -s 1500000 '%s/model.safetensors'", model);
    shell(command);
    expect_failure("truncated under 3 ranks", 3, args, 1, (const char *[]){"truncated", NULL});
    snprintf(args, sizeof args, "--model '%s' --budget 3 --bits 9 --out out.h5", model);
    expect_failure("bad option under 3 ranks", 3, args, 2, (const char *[]){"--bits", NULL});

    check_fp8_and_moe();

    sb_test_remove_tree(work);
    free(dir);
    return sb_test_finish("test_bad_input");
}
