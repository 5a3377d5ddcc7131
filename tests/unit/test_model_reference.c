/* The runtime reproduces ../shared/reference.md (an independent float32 PyTorch
 * implementation) within 0.1% on perplexity:
 *  - stories260K-hf, tinystories_val.tok512.u32, ctx 256: first 200 windows FP32 and RTN
 *    8/4/3/2-bit g32; last 200 windows (1303..1502) FP32 and RTN 3/4-bit;
 *  - tiny-austen-kjv (the embedded copy in tests/data), heldout.txt as bytes, first 200
 *    windows: FP and RTN 8/4/3/2-bit g32;
 *  - qwen3-moe-tiny (Qwen3-MoE: q/k norms, a dense layer, 8 experts top-2), every window of
 *    heldout.txt through scalebits-eval: FP perplexity 3.5559, and the routing reference.md
 *    quotes (layer 2: experts 2 and 4 get 121 and 38 token-slots, expert 3 gets 22,526); its FP8
 *    copy (128x128 block scales, written by bench-gen-checkpoint --fp8) and that copy's
 *    dequantized BF16 copy give the same NLL bit for bit, within FP8 rounding of the BF16 one.
 * The RTN is written here from reference.md's definition, independently of the project's
 * quantizer. Also checks the token reader and window selection, and drives scalebits-eval
 * end to end (output format, exit codes, errors). The stories260K and qwen3-moe-tiny parts
 * need ../shared and are skipped (with a message) without it; the rest uses only the repository's test data.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sb_config.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_test.h"
#include "sb_tokens.h"

/* reference.md's RTN: per (row, group of 32 input columns; the last group may be short),
 * scale = (max - min) / (2^b - 1), zero = min, code = round((x - min) / scale) clamped to
 * [0, 2^b - 1], x' = code * scale + min. float32 and round-half-even, like torch.round. */
static void rtn_in_place(float *weights, int64_t rows, int64_t cols, int bits)
{
    const int64_t group = 32;
    float levels = (float)((1 << bits) - 1);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c0 = 0; c0 < cols; c0 += group) {
            float *x = weights + r * cols + c0;
            int64_t n = cols - c0 < group ? cols - c0 : group;
            float min = x[0], max = x[0];
            for (int64_t i = 1; i < n; i++) {
                min = x[i] < min ? x[i] : min;
                max = x[i] > max ? x[i] : max;
            }
            float scale = (max - min) / levels;
            for (int64_t i = 0; i < n; i++) {
                if (scale == 0.0f) {
                    x[i] = min;
                    continue;
                }
                float code = nearbyintf((x[i] - min) / scale);
                code = code < 0.0f ? 0.0f : code > levels ? levels : code;
                x[i] = code * scale + min;
            }
        }
}

typedef struct loaded {
    sb_model_config config;
    sb_checkpoint checkpoint;
} loaded;

static bool load(const char *dir, loaded *m)
{
    sb_error err;
    sb_status status = sb_config_load(dir, &m->config, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status != SB_OK)
        return false;
    status = sb_checkpoint_open(dir, &m->checkpoint, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    return status == SB_OK;
}

/* Perplexity of windows [first, first + n) at ctx 256 with FP weights (rtn_bits 0) or RTN. */
static double perplexity(const loaded *m, const sb_window_range *range, int rtn_bits, double *mean_nll)
{
    sb_error err;
    sb_model model;
    sb_status status = sb_model_load_checkpoint(&m->config.shape, &m->checkpoint, &model, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status != SB_OK)
        return NAN;
    if (rtn_bits > 0)
        for (int64_t l = 0; l < model.shape.num_hidden_layers; l++)
            for (int k = 0; k < SB_LINEAR_KIND_COUNT; k++) {
                int64_t rows, cols;
                sb_linear_shape(&model.shape, (sb_linear_kind)k, &rows, &cols);
                rtn_in_place(sb_layer_linear(&model.layers[l], (sb_linear_kind)k), rows, cols, rtn_bits);
            }
    sb_model_workspace *ws = NULL;
    SB_CHECK(sb_model_workspace_create(&model.shape, 256, 16, 1, false, &ws, &err) == SB_OK);
    sb_nll nll = {0, 0};
    status = sb_model_forward(&model, range->tokens, range->n_windows, 256, ws, NULL, NULL, &nll, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    SB_CHECK(nll.count == range->n_windows * 255);
    sb_model_workspace_free(ws);
    sb_model_free(&model);
    *mean_nll = nll.sum / (double)nll.count;
    return exp(*mean_nll);
}

typedef struct reference_row {
    const char *label;
    bool from_end;
    int rtn_bits; /* 0: FP */
    double perplexity, nll; /* nll 0: not given */
} reference_row;

static void check_rows(const char *model_name, const loaded *m, const sb_tokens *tokens, const reference_row *rows,
                       int nrows)
{
    sb_error err;
    for (int i = 0; i < nrows; i++) {
        sb_window_range range;
        SB_CHECK(sb_tokens_windows(tokens, 256, 200, rows[i].from_end, &range, &err) == SB_OK);
        double nll;
        double got = perplexity(m, &range, rows[i].rtn_bits, &nll);
        double relative = fabs(got - rows[i].perplexity) / rows[i].perplexity;
        printf("%-16s %-22s perplexity %9.4f (reference %9.4f, %+.4f%%)  nll %.5f\n", model_name, rows[i].label, got,
               rows[i].perplexity, 100.0 * (got - rows[i].perplexity) / rows[i].perplexity, nll);
        SB_CHECK_MSG(relative < 1e-3, "%s %s: perplexity %.4f, reference %.4f", model_name, rows[i].label, got,
                     rows[i].perplexity);
        if (rows[i].nll > 0)
            SB_CHECK_MSG(fabs(nll - rows[i].nll) < 1e-3 * rows[i].nll, "%s %s: nll %.5f, reference %.5f",
                         model_name, rows[i].label, nll, rows[i].nll);
    }
}

static void check_stories(const char *shared)
{
    char dir[4096], token_path[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K-hf", shared);
    snprintf(token_path, sizeof token_path, "%s/data/tinystories_val.tok512.u32", shared);
    loaded m;
    if (!load(dir, &m))
        return;
    sb_error err;
    sb_tokens tokens;
    sb_status status = sb_tokens_read_u32(token_path, m.config.shape.vocab_size, &tokens, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status == SB_OK) {
        /* reference.md: 384,909 ids; the last 200 windows of 256 are windows 1303..1502. */
        SB_CHECK(tokens.count == 384909);
        sb_window_range range;
        SB_CHECK(sb_tokens_windows(&tokens, 256, 200, true, &range, &err) == SB_OK);
        SB_CHECK(range.first_window == 1303 && range.total_windows == 1503 && range.n_windows == 200);
        SB_CHECK(range.tokens == tokens.ids + 1303 * 256);
        SB_CHECK(sb_tokens_windows(&tokens, 256, 200, false, &range, &err) == SB_OK && range.first_window == 0);
        SB_CHECK(sb_tokens_windows(&tokens, 256, 1504, false, &range, &err) == SB_ERR_INPUT);
        SB_CHECK_MSG(strstr(err.message, "only 1503 whole windows") != NULL, "%s", err.message);
        static const reference_row rows[] = {
            {"first 200 FP32", false, 0, 4.1512, 1.42340},   {"first 200 RTN 8-bit", false, 8, 4.1535, 1.42394},
            {"first 200 RTN 4-bit", false, 4, 4.5540, 1.51601}, {"first 200 RTN 3-bit", false, 3, 6.9300, 1.93586},
            {"first 200 RTN 2-bit", false, 2, 254.46, 5.53913}, {"last 200 FP32", true, 0, 6.1359, 0},
            {"last 200 RTN 3-bit", true, 3, 10.343, 0},         {"last 200 RTN 4-bit", true, 4, 6.7477, 0},
        };
        check_rows("stories260K", &m, &tokens, rows, (int)(sizeof rows / sizeof rows[0]));
        sb_tokens_free(&tokens);
    }
    sb_checkpoint_close(&m.checkpoint);
    sb_config_free(&m.config);
}

static void check_austen(const char *dir)
{
    loaded m;
    if (!load(dir, &m))
        return;
    char text_path[4096];
    snprintf(text_path, sizeof text_path, "%s/heldout.txt", dir);
    sb_error err;
    sb_tokens tokens;
    sb_status status = sb_tokens_read_bytes(text_path, m.config.shape.vocab_size, &tokens, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    if (status == SB_OK) {
        SB_CHECK(tokens.count == 154393);
        static const reference_row rows[] = {
            {"first 200 FP", false, 0, 3.3824, 1.21858},        {"first 200 RTN 8-bit", false, 8, 3.3825, 1.21862},
            {"first 200 RTN 4-bit", false, 4, 3.4065, 1.22570}, {"first 200 RTN 3-bit", false, 3, 3.4868, 1.24900},
            {"first 200 RTN 2-bit", false, 2, 4.2567, 1.44848},
        };
        check_rows("tiny-austen-kjv", &m, &tokens, rows, (int)(sizeof rows / sizeof rows[0]));
        sb_tokens_free(&tokens);
    }
    sb_checkpoint_close(&m.checkpoint);
    sb_config_free(&m.config);
}

/* ---- Token files ------------------------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t size)
{
    FILE *file = fopen(path, "wb");
    SB_CHECK(file != NULL);
    if (file) {
        SB_CHECK(fwrite(data, 1, size, file) == size);
        fclose(file);
    }
}

static void check_token_files(const char *tmp)
{
    char path[4096];
    sb_error err;
    sb_tokens tokens;
    /* little-endian on disk whatever the host */
    const uint8_t ids[] = {1, 0, 0, 0, 0xff, 1, 0, 0, 7, 0, 0, 0, 0, 2, 0, 0};
    snprintf(path, sizeof path, "%s/ids.u32", tmp);
    write_file(path, ids, sizeof ids);
    SB_CHECK(sb_tokens_read_u32(path, 1024, &tokens, &err) == SB_OK);
    SB_CHECK(tokens.count == 4 && tokens.ids[0] == 1 && tokens.ids[1] == 511 && tokens.ids[3] == 512);
    sb_tokens_free(&tokens);
    /* id 512 at position 3 with vocab 512 */
    SB_CHECK(sb_tokens_read_u32(path, 512, &tokens, &err) == SB_ERR_INPUT);
    SB_CHECK_MSG(strstr(err.message, "ids.u32: token id 512 at position 3") != NULL, "%s", err.message);
    SB_CHECK(tokens.ids == NULL);
    write_file(path, ids, 7);
    SB_CHECK(sb_tokens_read_u32(path, 1024, &tokens, &err) == SB_ERR_FORMAT);
    SB_CHECK_MSG(strstr(err.message, "7 bytes is not a whole number") != NULL, "%s", err.message);
    snprintf(path, sizeof path, "%s/missing.u32", tmp);
    SB_CHECK(sb_tokens_read_u32(path, 1024, &tokens, &err) == SB_ERR_IO);
    SB_CHECK(strstr(err.message, "missing.u32") != NULL);

    snprintf(path, sizeof path, "%s/text.txt", tmp);
    write_file(path, "Hello\xff", 6);
    SB_CHECK(sb_tokens_read_bytes(path, 256, &tokens, &err) == SB_OK);
    SB_CHECK(tokens.count == 6 && tokens.ids[0] == 'H' && tokens.ids[5] == 255);
    sb_window_range range;
    SB_CHECK(sb_tokens_windows(&tokens, 2, 0, false, &range, &err) == SB_OK && range.n_windows == 3);
    SB_CHECK(sb_tokens_windows(&tokens, 4, 1, true, &range, &err) == SB_OK && range.first_window == 0);
    SB_CHECK(sb_tokens_windows(&tokens, 7, 0, false, &range, &err) == SB_ERR_INPUT);
    sb_tokens_free(&tokens);
    SB_CHECK(sb_tokens_read_bytes(path, 128, &tokens, &err) == SB_ERR_INPUT);
}

/* ---- scalebits-eval end to end ----------------------------------------------------------------- */

/* Runs a command; returns its exit status and its first output line (stdout and stderr). */
static int run_command(const char *command, char *line, size_t line_size)
{
    line[0] = '\0';
    FILE *pipe = popen(command, "r");
    if (!pipe)
        return -1;
    if (!fgets(line, (int)line_size, pipe))
        line[0] = '\0';
    char rest[4096];
    while (fgets(rest, sizeof rest, pipe))
        ;
    int status = pclose(pipe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void check_eval_tool(const char *austen_dir, const char *shared)
{
    const char *build = getenv("SB_BUILD_DIR");
    char tool[4096], command[12288], line[4096];
    snprintf(tool, sizeof tool, "%s/scalebits-eval", build ? build : ".");
    if (access(tool, X_OK) != 0) {
        printf("SKIP: the scalebits-eval checks (%s is not built)\n", tool);
        return;
    }

    /* The tool's figure for the first 8 windows equals the library's. */
    loaded m;
    if (!load(austen_dir, &m))
        return;
    char text_path[4096];
    snprintf(text_path, sizeof text_path, "%s/heldout.txt", austen_dir);
    sb_error err;
    sb_tokens tokens;
    SB_CHECK(sb_tokens_read_bytes(text_path, 256, &tokens, &err) == SB_OK);
    sb_window_range range;
    SB_CHECK(sb_tokens_windows(&tokens, 256, 8, false, &range, &err) == SB_OK);
    double nll;
    double expected = perplexity(&m, &range, 0, &nll);
    char expected_line[256];
    snprintf(expected_line, sizeof expected_line, "perplexity=%.4f nll=%.5f tokens=2040\n", expected, nll);
    snprintf(command, sizeof command, "'%s' --model '%s' --text '%s' --windows 8 --batch 3 2>&1", tool, austen_dir,
             text_path);
    SB_CHECK(run_command(command, line, sizeof line) == 0);
    SB_CHECK_MSG(strcmp(line, expected_line) == 0, "got '%s', expected '%s'", line, expected_line);
    snprintf(command, sizeof command, "'%s' --model '%s' --text '%s' --windows 8 --from-end --json 2>&1", tool,
             austen_dir, text_path);
    SB_CHECK(run_command(command, line, sizeof line) == 0);
    SB_CHECK_MSG(strstr(line, "\"tokens\": 2040") && strstr(line, "\"windows\": 8") &&
                     strstr(line, "\"first_window\": 595") && strstr(line, "\"tokens_per_second\""),
                 "%s", line);
    sb_tokens_free(&tokens);
    sb_checkpoint_close(&m.checkpoint);
    sb_config_free(&m.config);

    /* Bad options: usage, exit 2. */
    snprintf(command, sizeof command, "'%s' --model '%s' 2>&1", tool, austen_dir);
    SB_CHECK(run_command(command, line, sizeof line) == 2);
    SB_CHECK_MSG(strstr(line, "exactly one of --tokens") != NULL, "%s", line);
    snprintf(command, sizeof command, "'%s' --text x --windows 0 2>&1", tool);
    SB_CHECK(run_command(command, line, sizeof line) == 2);
    snprintf(command, sizeof command, "'%s' --text x --bogus 2>&1", tool);
    SB_CHECK(run_command(command, line, sizeof line) == 2);
    /* More windows than the text has: all of them (reference.md's "first 200 windows" of a
     * shorter text); a text without a whole window is an error, one line, exit 1. */
    snprintf(command, sizeof command, "'%s' --model '%s' --text '%s' --windows 1000 --json --batch 64 2>&1", tool,
             austen_dir, text_path);
    SB_CHECK(run_command(command, line, sizeof line) == 0);
    SB_CHECK_MSG(strstr(line, "\"windows\": 603") && strstr(line, "\"first_window\": 0"), "%s", line);
    snprintf(command, sizeof command, "'%s' --model '%s' --text '%s' --ctx 200000 2>&1", tool, austen_dir, text_path);
    SB_CHECK(run_command(command, line, sizeof line) == 1);
    SB_CHECK_MSG(strncmp(line, "scalebits-eval: error: ", 23) == 0 && strstr(line, "do not make one window of 200000"), "%s",
                 line);
    snprintf(command, sizeof command, "'%s' --model '%s' --quantized q.h5 --text '%s' 2>&1", tool, austen_dir,
             text_path);
    SB_CHECK(run_command(command, line, sizeof line) == 1);
    SB_CHECK_MSG(strstr(line, "q.h5") && strstr(line, "cannot open"), "%s", line);
    if (shared) {
        snprintf(command, sizeof command, "'%s' --model '%s/models/stories260K-hf' --text '%s' 2>&1", tool, shared,
                 text_path);
        SB_CHECK(run_command(command, line, sizeof line) == 1);
        SB_CHECK_MSG(strstr(line, "vocab_size 512") && strstr(line, "--tokens"), "%s", line);
    }
}

/* ---- qwen3-moe-tiny ------------------------------------------------------------------------ */

/* The integer after `"key": ` in a JSON line, or -1. */
static double json_number(const char *line, const char *key)
{
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\": ", key);
    const char *at = strstr(line, pattern);
    return at ? strtod(at + strlen(pattern), NULL) : -1;
}

/* Element [layer][expert] of the JSON array-of-arrays after `"key": [`, or -1. */
static long long json_cell(const char *line, const char *key, int layer, int expert)
{
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\": [", key);
    const char *at = strstr(line, pattern);
    if (!at)
        return -1;
    at += strlen(pattern);
    for (int l = 0; l < layer; l++) /* skip whole layers: "null" or "[...]" */
        at = strchr(at, *at == 'n' ? ',' : ']') + (*at == 'n' ? 2 : 3);
    if (*at != '[')
        return -1;
    at++;
    for (int e = 0; e < expert; e++)
        at = strchr(at, ',') + 2;
    return strtoll(at, NULL, 10);
}

/* NLL of the first `windows` windows of heldout.txt with a model directory's weights. */
static double model_nll(const char *dir, const sb_tokens *tokens, int64_t windows)
{
    sb_error err;
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_model model;
    if (sb_config_load(dir, &config, &err) != SB_OK) {
        SB_CHECK_MSG(false, "%s", err.message);
        return NAN;
    }
    sb_checkpoint_options source = sb_config_checkpoint_options(&config);
    sb_status status = sb_checkpoint_open_with(dir, &source, &checkpoint, &err);
    if (status == SB_OK)
        status = sb_model_load_checkpoint(&config.shape, &checkpoint, &model, &err);
    SB_CHECK_MSG(status == SB_OK, "%s", err.message);
    sb_nll nll = {0, 0};
    if (status == SB_OK) {
        sb_model_workspace *ws = NULL;
        SB_CHECK(sb_model_workspace_create(&model.shape, 256, 8, 2, false, &ws, &err) == SB_OK);
        SB_CHECK(sb_model_forward(&model, tokens->ids, windows, 256, ws, NULL, NULL, &nll, &err) == SB_OK);
        sb_model_workspace_free(ws);
        sb_model_free(&model);
        sb_checkpoint_close(&checkpoint);
    }
    sb_config_free(&config);
    return nll.sum / (double)nll.count;
}

static void check_qwen_moe(const char *shared)
{
    const char *build = getenv("SB_BUILD_DIR");
    char eval[4096], generator[4096], dir[4096], text[4096], command[16384], line[4096];
    snprintf(eval, sizeof eval, "%s/scalebits-eval", build ? build : ".");
    snprintf(generator, sizeof generator, "%s/bench/bench-gen-checkpoint", build ? build : ".");
    snprintf(dir, sizeof dir, "%s/models/qwen3-moe-tiny", shared);
    snprintf(text, sizeof text, "%s/heldout.txt", dir);
    if (access(eval, X_OK) != 0 || access(generator, X_OK) != 0) {
        printf("SKIP: qwen3-moe-tiny (%s or %s is not built)\n", eval, generator);
        return;
    }
    /* reference.md's protocol: every window of 256 bytes; --windows 200 takes all 131 */
    snprintf(command, sizeof command, "'%s' --model '%s' --text '%s' --windows 200 --json 2>&1", eval, dir, text);
    SB_CHECK(run_command(command, line, sizeof line) == 0);
    double perplexity = json_number(line, "perplexity");
    printf("qwen3-moe-tiny   every window (131)     perplexity %9.4f (reference    3.5559, %+.4f%%)\n", perplexity,
           100.0 * (perplexity - 3.5559) / 3.5559);
    SB_CHECK_MSG(fabs(perplexity - 3.5559) < 1e-3 * 3.5559, "qwen3-moe-tiny: perplexity %.4f, reference 3.5559: %s",
                 perplexity, line);
    SB_CHECK(json_number(line, "windows") == 131 && json_number(line, "tokens") == 33405);
    long long expert2 = json_cell(line, "tokens_per_expert", 2, 2), expert4 = json_cell(line, "tokens_per_expert", 2, 4);
    long long expert3 = json_cell(line, "tokens_per_expert", 2, 3);
    printf("qwen3-moe-tiny   layer 2 routing        experts 2, 4, 3: %lld, %lld, %lld token-slots (reference 121, "
           "38, 22526)\n", expert2, expert4, expert3);
    SB_CHECK_MSG(expert2 == 121 && expert4 == 38 && expert3 == 22526, "%s", line);
    SB_CHECK_MSG(strstr(line, "\"tokens_per_expert\": [null, [") != NULL, "layer 0 is dense: %s", line);

    /* the FP8 copy and its dequantized BF16 copy: the same values, so the same NLL bit for bit */
    char *tmp = sb_test_temp_dir("qwen-fp8");
    char fp8[4200], bf16[4200];
    snprintf(fp8, sizeof fp8, "%s/fp8", tmp);
    snprintf(bf16, sizeof bf16, "%s/bf16", tmp);
    snprintf(command, sizeof command,
             "'%s' --out '%s' --from '%s' --fp8 >/dev/null 2>&1 && '%s' --out '%s' --from '%s' --dtype bf16 >/dev/null "
             "2>&1",
             generator, fp8, dir, generator, bf16, fp8);
    SB_CHECK(system(command) == 0);
    sb_tokens tokens;
    sb_error err;
    SB_CHECK(sb_tokens_read_bytes(text, 256, &tokens, &err) == SB_OK);
    double nll_source = model_nll(dir, &tokens, 16), nll_fp8 = model_nll(fp8, &tokens, 16);
    double nll_dequantized = model_nll(bf16, &tokens, 16);
    printf("qwen3-moe-tiny   first 16 windows       nll %.7f BF16, %.7f FP8 copy, %.7f its BF16 copy\n", nll_source,
           nll_fp8, nll_dequantized);
    SB_CHECK_MSG(nll_fp8 == nll_dequantized, "FP8 copy %.9g, dequantized copy %.9g", nll_fp8, nll_dequantized);
    /* FP8 rounds each weight by at most 1/16 of itself: the loss moves, a little */
    SB_CHECK(nll_fp8 != nll_source && fabs(nll_fp8 - nll_source) < 0.01 * nll_source);
    sb_tokens_free(&tokens);
    sb_test_remove_tree(tmp);
    free(tmp);
}

int main(void)
{
    char austen_dir[4096];
    snprintf(austen_dir, sizeof austen_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    char *tmp = sb_test_temp_dir("model-reference");
    check_token_files(tmp);
    sb_test_remove_tree(tmp);
    free(tmp);

    double start = sb_now();
    check_austen(austen_dir);
    const char *shared = sb_test_shared_dir();
    if (shared)
        check_stories(shared);
    else
        printf("SKIP: the stories260K rows (../shared is absent; its model and text are never committed)\n");
    printf("reference rows evaluated in %.1f s\n", sb_now() - start);
    check_eval_tool(austen_dir, shared);
    if (shared)
        check_qwen_moe(shared);
    else
        printf("SKIP: the qwen3-moe-tiny rows (../shared is absent)\n");
    return sb_test_finish("test_model_reference");
}
