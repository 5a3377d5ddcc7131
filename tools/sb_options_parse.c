#include "sb_options_parse.h"

#include "sb_calib_stats.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_path.h"

void sb_options_usage(const char *program)
{
    printf("usage: %s [--model DIR] --budget BPW [--out FILE.h5] [options]\n"
           "\n"
           "Quantizes a Hugging Face Llama-family checkpoint to mixed precision: one bitwidth per\n"
           "hardware-aligned tile, chosen globally so that the stored bits per quantized weight\n"
           "(codes, scales, zeros, bit maps, padding: everything) never exceed BPW.\n"
           "Runs as one process or under mpirun/srun with any number of ranks; same result.\n"
           "\n"
           "  --model DIR            model directory (config.json + safetensors); default: the\n"
           "                         embedded tiny-austen-kjv model\n"
           "  --budget BPW           average bits per quantized weight, all stored bits counted\n"
           "  --out FILE.h5          output (default: <model>-<BPW>bpw.h5 here); written under a\n"
           "                         temporary name and renamed when complete\n"
           "  --tile RxC             tile shape (default 128x128); one bitwidth per tile\n"
           "  --group N              input columns per scale/zero group (default 128; divides C)\n"
           "  --bits LIST            allowed bitwidths, e.g. 2,3,4,8 (default; any of 1..8)\n"
           "  --sensitivity NAME     how a tile's loss at each bitwidth is estimated:\n"
           "                           mse     plain squared weight error (default; no data)\n"
           "                           act     weighted by E[x^2] of each input column (--calib or\n"
           "                                   --imatrix)\n"
           "                           fisher  weighted by the diagonal Fisher E[g^2] (--calib)\n"
           "                           taylor  ScaleBITS: first- and second-order loss change at\n"
           "                                   successive quantized reference points, moves applied\n"
           "                                   in batches checked against the real calibration loss\n"
           "  --calib FILE.u32       calibration tokens (little-endian uint32 ids)\n"
           "  --calib-text FILE      calibration text, as bytes (byte-level models)\n"
           "  --calib-ctx N          calibration window length (default 256)\n"
           "  --calib-windows N      the first N windows of the calibration data (default 64)\n"
           "  --calib-batch N        windows per forward/backward micro-batch (default 4)\n"
           "  --imatrix FILE         llama.cpp importance matrix (.dat or .gguf) as the act source\n"
           "  --save-imatrix FILE    write the calibration's E[x^2] as a llama.cpp importance matrix\n"
           "                         (.dat), for llama-quantize --imatrix or a later --imatrix run\n"
           "  --refine-rounds N      most loss-checked rounds of the taylor search (default 24)\n"
           "  --refine-windows N     calibration windows behind each round's taylor estimates,\n"
           "                         spread over them, other ones each round (default 0: all);\n"
           "                         the loss checks always use every window\n"
           "  --search NAME          scale search inside a group: weighted (default) or minmax\n"
           "  --scales FORMAT        q8 (default): 8-bit log scale and zero point per group under\n"
           "                         an F16 bound per tile (16 bits per group); f16: F16 scale and\n"
           "                         zero per group (32 bits). q8 halves the metadata (docs/FORMAT.md)\n"
           "  --reorder              permute channels so that important weights share tiles (hidden\n"
           "                         dimension, MLP channels, attention heads), folded into the\n"
           "                         model: the file holds an equivalent model, no runtime cost\n"
           "                         (docs/REORDER.md)\n"
           "  --gptq                 GPTQ error feedback across the columns of each tile, from the\n"
           "                         calibration inputs' second moments (needs --calib); tiles and\n"
           "                         their decoding are unchanged\n"
           "  --quantize-embeddings  also quantize model.embed_tokens\n"
           "  --quantize-lm-head     also quantize lm_head\n"
           "  --quantize-router      also quantize the routers of mixture-of-experts layers\n"
           "                         (mlp.gate; passed through by default: tiny and decisive)\n"
           "  --expert-min-tokens N  an expert that calibration routes fewer token-slots to is\n"
           "                         estimated as its layer's average expert (default 16, measured;\n"
           "                         0: every expert on its own statistics)\n"
           "  --report FILE.json     write a run report (bpw, tiles per bitwidth, stage times, RSS)\n"
           "  --log-json FILE        progress and messages as JSON lines\n"
           "  --threads N            worker threads per rank (default: the cores hwloc gives it)\n"
           "  --unit-weights N       split tensors larger than N weights into work units of whole\n"
           "                         tile rows (default 64M; suffixes K, M, G)\n"
           "  --resume               continue a stopped or crashed run from OUT.h5.state/ (any rank\n"
           "                         count; the same file as an uninterrupted run)\n"
           "  --debug-stop-after N   behave as if a stop was asked for after N work units (tests)\n"
           "  --debug-kill-at S:N    the last rank kills itself (SIGKILL) at unit N of stage S:\n"
           "                         curves, allocate, quantize, write (tests of --resume)\n"
           "  --debug-unit-delay MS  sleep after every work unit (tests of stopping by signal)\n"
           "  --debug-search-cache MIB  the taylor search's speed cache (tests: 0 decodes every product)\n"
           "Stopping: SIGUSR1 or SIGTERM to any rank, or a file OUT.h5.state/STOP, makes every rank\n"
           "save its work at the next unit boundary and exit with code 4; --resume continues.\n"
           "  --plan                 print the work assignment, memory per rank and output size,\n"
           "                         from config.json and headers only, and exit\n"
           "  --plan-ranks N         plan for N ranks (default: the ranks of this run)\n"
           "  --quiet, --verbose     less or more output\n"
           "  --help, --version\n",
           program);
}

static sb_status parse_int(const char *flag, const char *text, long low, long high, int *value, sb_error *err)
{
    char *end;
    errno = 0;
    long parsed = strtol(text, &end, 10);
    if (errno || end == text || *end != '\0' || parsed < low || parsed > high)
        return sb_error_set(err, SB_ERR_USAGE, "%s: '%s' is not an integer in %ld..%ld", flag, text, low, high);
    *value = (int)parsed;
    return SB_OK;
}

/* A plain decimal, kept exact as numerator / 10^decimals so that the bit budget
 * floor(budget x weights) is computed without rounding: the output must never exceed it. */
static sb_status parse_budget(const char *text, sb_options *options, sb_error *err)
{
    int64_t numerator = 0, denominator = 1;
    int digits = 0, decimals = 0;
    bool point = false;
    for (const char *p = text; *p; p++) {
        if (*p == '.' && !point) {
            point = true;
        } else if (*p >= '0' && *p <= '9' && digits < 15) {
            numerator = numerator * 10 + (*p - '0');
            digits++;
            if (point) {
                denominator *= 10;
                decimals++;
            }
        } else {
            return sb_error_set(err, SB_ERR_USAGE, "--budget: '%s' is not a plain decimal number of bits per weight "
                                "(e.g. 2.75)", text);
        }
    }
    (void)decimals;
    if (digits == 0 || numerator == 0 || numerator > 64 * denominator)
        return sb_error_set(err, SB_ERR_USAGE, "--budget: '%s' is not in (0, 64] bits per weight", text);
    options->budget_numerator = numerator;
    options->budget_denominator = denominator;
    options->budget = (double)numerator / (double)denominator;
    return SB_OK;
}

static sb_status parse_bits(const char *text, sb_options *options, sb_error *err)
{
    bool allowed[9] = {false};
    const char *p = text;
    while (*p) {
        char *end;
        long bits = strtol(p, &end, 10);
        if (end == p || bits < 1 || bits > 8 || (*end != ',' && *end != '\0'))
            return sb_error_set(err, SB_ERR_USAGE, "--bits: '%s' is not a comma-separated list of bitwidths 1..8",
                                text);
        allowed[bits] = true;
        p = *end == ',' ? end + 1 : end;
    }
    options->nbits = 0;
    for (int b = 1; b <= 8; b++)
        if (allowed[b])
            options->bits[options->nbits++] = b;
    if (options->nbits == 0)
        return sb_error_set(err, SB_ERR_USAGE, "--bits: no bitwidth given");
    return SB_OK;
}

/* A decimal int in [low, high] at the start of `text`; *end is where it stops. False if
 * there is none or it is out of range (strtol saturates, so no overflow is possible). */
static bool leading_int(const char *text, long low, long high, int *value, const char **end)
{
    char *stop;
    errno = 0;
    long parsed = strtol(text, &stop, 10);
    if (stop == text || errno || parsed < low || parsed > high || *text == '+' || *text == '-' || *text == ' ')
        return false;
    *value = (int)parsed;
    *end = stop;
    return true;
}

static sb_status default_output(sb_options *options, sb_error *err)
{
    const char *model = options->model_dir;
    size_t length = strlen(model);
    while (length > 1 && model[length - 1] == '/')
        length--;
    size_t start = length;
    while (start > 0 && model[start - 1] != '/')
        start--;
    return sb_path_format(options->out_path, sizeof options->out_path, err, "%.*s-%gbpw.h5", (int)(length - start),
                          model + start, options->budget);
}

sb_status sb_options_parse(int argc, char **argv, sb_options *options, sb_error *err)
{
    memset(options, 0, sizeof *options);
    options->model_dir = SB_DEFAULT_MODEL_DIR;
    options->tile_rows = options->tile_cols = 128;
    options->group = 128;
    options->nbits = 4;
    options->bits[0] = 2; options->bits[1] = 3; options->bits[2] = 4; options->bits[3] = 8;
    options->sensitivity = SB_SENSITIVITY_MSE;
    options->search = SB_SEARCH_WEIGHTED;
    options->scales = SB_SCALES_Q8;
    options->unit_weights = 64000000;
    options->calib_ctx = 256;
    options->calib_windows = 64;
    options->calib_batch = 4;
    options->refine_rounds = 24;
    options->refine_windows = 0;
    options->debug_search_cache_mib = -1;
    options->expert_min_tokens = SB_EXPERT_MIN_ROWS;
    options->verbosity = 1;
    /* provenance only: a command line longer than the buffer is cut, and says so */
    size_t used = 0;
    for (int i = 0; i < argc && used + 1 < sizeof options->command_line; i++) {
        int wrote = snprintf(options->command_line + used, sizeof options->command_line - used, "%s%s", i ? " " : "",
                             argv[i]);
        used = wrote < 0 || (size_t)wrote >= sizeof options->command_line - used ? sizeof options->command_line
                                                                                  : used + (size_t)wrote;
    }
    if (used >= sizeof options->command_line)
        memcpy(options->command_line + sizeof options->command_line - 4, "...", 4);
    bool out_given = false, sensitivity_given = false;
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        /* accept --flag=value as well as --flag value */
        char flag_name[64];
        const char *inline_value = NULL;
        const char *equals = strchr(flag, '=');
        if (strncmp(flag, "--", 2) == 0 && equals && (size_t)(equals - flag) < sizeof flag_name) {
            snprintf(flag_name, sizeof flag_name, "%.*s", (int)(equals - flag), flag);
            flag = flag_name;
            inline_value = equals + 1;
        }
#define VALUE()                                                                                          \
    (inline_value ? inline_value                                                                          \
     : (i + 1 < argc) ? argv[++i]                                                                         \
                      : (sb_error_set(err, SB_ERR_USAGE, "%s needs a value", flag), (const char *)NULL))
        const char *value = NULL;
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0) {
            options->show_help = true;
        } else if (strcmp(flag, "--version") == 0) {
            options->show_version = true;
        } else if (strcmp(flag, "--model") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->model_dir = value;
        } else if (strcmp(flag, "--budget") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_budget(value, options, err));
            options->budget_given = true;
        } else if (strcmp(flag, "--out") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            /* never cut: a truncated --out would write somewhere the user did not ask for */
            SB_TRY(sb_path_check_length("--out", value, err));
            SB_TRY(sb_path_format(options->out_path, sizeof options->out_path, err, "%s", value));
            out_given = true;
        } else if (strcmp(flag, "--tile") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int rows = 0, cols = 0;
            const char *end = value;
            bool ok = leading_int(value, 1, 65536, &rows, &end);
            if (ok && *end == 'x')
                ok = leading_int(end + 1, 1, 65536, &cols, &end);
            else
                cols = rows;
            if (!ok || *end != '\0')
                return sb_error_set(err, SB_ERR_USAGE, "--tile: '%s' is not RxC or N with sides in 1..65536 (e.g. "
                                    "128x128)", value);
            options->tile_rows = rows;
            options->tile_cols = cols;
        } else if (strcmp(flag, "--group") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 1, 65536, &options->group, err));
        } else if (strcmp(flag, "--bits") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_bits(value, options, err));
        } else if (strcmp(flag, "--sensitivity") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            sensitivity_given = true;
            if (strcmp(value, "mse") == 0) options->sensitivity = SB_SENSITIVITY_MSE;
            else if (strcmp(value, "act") == 0) options->sensitivity = SB_SENSITIVITY_ACT;
            else if (strcmp(value, "fisher") == 0) options->sensitivity = SB_SENSITIVITY_FISHER;
            else if (strcmp(value, "taylor") == 0) options->sensitivity = SB_SENSITIVITY_TAYLOR;
            else return sb_error_set(err, SB_ERR_USAGE, "--sensitivity: '%s' is not one of mse, act, fisher, taylor", value);
        } else if (strcmp(flag, "--search") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            if (strcmp(value, "minmax") == 0) options->search = SB_SEARCH_MINMAX;
            else if (strcmp(value, "weighted") == 0) options->search = SB_SEARCH_WEIGHTED;
            else return sb_error_set(err, SB_ERR_USAGE, "--search: '%s' is not minmax or weighted", value);
        } else if (strcmp(flag, "--scales") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            if (strcmp(value, "f16") == 0) options->scales = SB_SCALES_F16;
            else if (strcmp(value, "q8") == 0) options->scales = SB_SCALES_Q8;
            else return sb_error_set(err, SB_ERR_USAGE, "--scales: '%s' is not f16 or q8", value);
        } else if (strcmp(flag, "--report") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->report_path = value;
        } else if (strcmp(flag, "--log-json") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->log_json_path = value;
        } else if (strcmp(flag, "--quantize-embeddings") == 0) {
            options->quantize_embeddings = true;
        } else if (strcmp(flag, "--reorder") == 0) {
            options->reorder = true;
        } else if (strcmp(flag, "--gptq") == 0) {
            options->gptq = true;
        } else if (strcmp(flag, "--quantize-lm-head") == 0) {
            options->quantize_lm_head = true;
        } else if (strcmp(flag, "--quantize-router") == 0) {
            options->quantize_router = true;
        } else if (strcmp(flag, "--expert-min-tokens") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 0, 1 << 30, &parsed, err));
            options->expert_min_tokens = parsed;
        } else if (strcmp(flag, "--threads") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 1, 4096, &options->threads, err));
        } else if (strcmp(flag, "--unit-weights") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            char *end;
            double amount = strtod(value, &end);
            double unit = *end == 'K' ? 1e3 : *end == 'M' ? 1e6 : *end == 'G' ? 1e9 : 1;
            if (unit != 1)
                end++;
            if (end == value || *end != '\0' || !(amount * unit >= 1) || amount * unit > 1e15)
                return sb_error_set(err, SB_ERR_USAGE, "--unit-weights: '%s' is not a count like 64M", value);
            options->unit_weights = (int64_t)(amount * unit);
        } else if (strcmp(flag, "--calib") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->calib_tokens = value;
        } else if (strcmp(flag, "--calib-text") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->calib_text = value;
        } else if (strcmp(flag, "--calib-ctx") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 2, 1 << 20, &parsed, err));
            options->calib_ctx = parsed;
        } else if (strcmp(flag, "--calib-windows") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 1, 1 << 24, &parsed, err));
            options->calib_windows = parsed;
        } else if (strcmp(flag, "--calib-batch") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 1, 1 << 16, &parsed, err));
            options->calib_batch = parsed;
        } else if (strcmp(flag, "--imatrix") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->imatrix_path = value;
        } else if (strcmp(flag, "--save-imatrix") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            options->save_imatrix = value;
        } else if (strcmp(flag, "--refine-rounds") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 1, 10000, &options->refine_rounds, err));
        } else if (strcmp(flag, "--refine-windows") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 0, 1 << 24, &parsed, err));
            options->refine_windows = parsed;
        } else if (strcmp(flag, "--resume") == 0) {
            options->resume = true;
        } else if (strcmp(flag, "--debug-stop-after") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            int parsed;
            SB_TRY(parse_int(flag, value, 1, 1 << 30, &parsed, err));
            options->debug_stop_after = parsed;
        } else if (strcmp(flag, "--debug-kill-at") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            const char *colon = strchr(value, ':');
            size_t stage_length = colon ? (size_t)(colon - value) : 0;
            int unit = 0;
            const char *end = colon;
            bool ok = colon && stage_length > 0 && stage_length < sizeof options->debug_kill_stage &&
                      strspn(value, "abcdefghijklmnopqrstuvwxyz") == stage_length &&
                      leading_int(colon + 1, 0, INT32_MAX, &unit, &end) && *end == '\0';
            if (!ok)
                return sb_error_set(err, SB_ERR_USAGE, "--debug-kill-at: '%s' is not STAGE:N", value);
            memcpy(options->debug_kill_stage, value, stage_length);
            options->debug_kill_stage[stage_length] = '\0';
            options->debug_kill_unit = unit;
        } else if (strcmp(flag, "--debug-search-cache") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 0, 1 << 20, &options->debug_search_cache_mib, err));
        } else if (strcmp(flag, "--debug-unit-delay") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 0, 600000, &options->debug_unit_delay_ms, err));
        } else if (strcmp(flag, "--plan") == 0) {
            options->plan_only = true;
        } else if (strcmp(flag, "--plan-ranks") == 0) {
            if (!(value = VALUE())) return SB_ERR_USAGE;
            SB_TRY(parse_int(flag, value, 1, 1 << 24, &options->plan_ranks, err));
            options->plan_only = true;
        } else if (strcmp(flag, "--quiet") == 0 || strcmp(flag, "-q") == 0) {
            options->verbosity = 0;
        } else if (strcmp(flag, "--verbose") == 0 || strcmp(flag, "-v") == 0) {
            options->verbosity = 2;
        } else {
            return sb_error_set(err, SB_ERR_USAGE, "unknown option '%s' (see --help)", argv[i]);
        }
#undef VALUE
        if (inline_value && !value && strcmp(flag, "--help") != 0)
            return sb_error_set(err, SB_ERR_USAGE, "%s takes no value", flag);
    }
    if (options->show_help || options->show_version)
        return SB_OK;
    if (options->tile_cols % options->group != 0)
        return sb_error_set(err, SB_ERR_USAGE, "--group %d must divide the tile width %d (a group may not straddle tiles)",
                            options->group, options->tile_cols);
    bool calibration = options->calib_tokens || options->calib_text;
    if (options->calib_tokens && options->calib_text)
        return sb_error_set(err, SB_ERR_USAGE, "give --calib or --calib-text, not both");
    if (options->imatrix_path && !sensitivity_given)
        options->sensitivity = SB_SENSITIVITY_ACT;
    if (options->sensitivity == SB_SENSITIVITY_ACT && !calibration && !options->imatrix_path)
        return sb_error_set(err, SB_ERR_USAGE, "--sensitivity act needs calibration data (--calib FILE.u32 or "
                            "--calib-text FILE) or a llama.cpp importance matrix (--imatrix FILE)");
    if ((options->sensitivity == SB_SENSITIVITY_FISHER || options->sensitivity == SB_SENSITIVITY_TAYLOR) && !calibration)
        return sb_error_set(err, SB_ERR_USAGE, "--sensitivity %s needs calibration data (--calib FILE.u32 or "
                            "--calib-text FILE): it measures gradients", sb_sensitivity_name(options->sensitivity));
    if (options->gptq && !calibration)
        return sb_error_set(err, SB_ERR_USAGE, "--gptq needs calibration data (--calib or --calib-text): it uses the "
                            "second moments of each layer's inputs");
    if (options->gptq && (options->quantize_embeddings || options->quantize_lm_head))
        return sb_error_set(err, SB_ERR_USAGE, "--gptq covers the seven linear kinds of the layers; quantize the "
                            "embedding or lm_head without it");
    if (options->save_imatrix && !calibration)
        return sb_error_set(err, SB_ERR_USAGE, "--save-imatrix needs calibration data (--calib or --calib-text)");
    if (options->sensitivity != SB_SENSITIVITY_MSE && options->sensitivity != SB_SENSITIVITY_ACT &&
        (options->quantize_embeddings || options->quantize_lm_head))
        return sb_error_set(err, SB_ERR_USAGE, "--sensitivity %s measures the seven linear kinds of the layers; "
                            "quantize the embedding or lm_head with --sensitivity mse or act",
                            sb_sensitivity_name(options->sensitivity));
    if (!options->budget_given && !options->plan_only)
        return sb_error_set(err, SB_ERR_USAGE, "--budget is required (bits per quantized weight, e.g. --budget 2.75)");
    if (!options->budget_given) {
        options->budget_numerator = 16;
        options->budget_denominator = 1;
        options->budget = 16;
    }
    if (!out_given)
        SB_TRY(default_output(options, err));
    return SB_OK;
}
