/* The command line of scalebits-mpi (tools/sb_options_parse.h): every flag sets what it says,
 * in both spellings (--flag value, --flag=value); every bad value and every contradictory
 * combination is SB_ERR_USAGE naming the flag; values are never cut or wrapped (an --out longer
 * than the limit is refused, not truncated; a huge --tile is refused, not wrapped). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "sb_options_parse.h"
#include "sb_path.h"
#include "sb_test.h"

enum { MAX_ARGS = 32 };

/* Parses "scalebits-mpi" followed by the NULL-terminated arguments. */
static sb_status parse(sb_options *options, sb_error *err, ...)
{
    char *argv[MAX_ARGS] = {(char *)"scalebits-mpi"};
    int argc = 1;
    va_list args;
    va_start(args, err);
    const char *arg;
    while ((arg = va_arg(args, const char *)) && argc < MAX_ARGS)
        argv[argc++] = (char *)arg;
    va_end(args);
    sb_error_clear(err);
    return sb_options_parse(argc, argv, options, err);
}

/* Expects SB_ERR_USAGE with `needle` in the message. */
#define REFUSED(needle, ...)                                                                            \
    do {                                                                                                \
        sb_options o_;                                                                                  \
        sb_error e_;                                                                                    \
        sb_status s_ = parse(&o_, &e_, __VA_ARGS__, NULL);                                              \
        SB_CHECK_MSG(s_ == SB_ERR_USAGE && strstr(e_.message, needle), "%s: status %d, message '%s'", \
                     needle, (int)s_, e_.message);                                                      \
    } while (0)

int main(void)
{
    sb_options o;
    sb_error err;

    /* defaults */
    SB_CHECK(parse(&o, &err, "--budget", "3", NULL) == SB_OK);
    SB_CHECK(o.budget == 3 && o.budget_numerator == 3 && o.budget_denominator == 1 && o.budget_given);
    SB_CHECK(o.tile_rows == 128 && o.tile_cols == 128 && o.group == 128);
    SB_CHECK(o.nbits == 4 && o.bits[0] == 2 && o.bits[1] == 3 && o.bits[2] == 4 && o.bits[3] == 8);
    SB_CHECK(o.sensitivity == SB_SENSITIVITY_MSE && o.search == SB_SEARCH_WEIGHTED && o.scales == SB_SCALES_Q8);
    SB_CHECK(o.unit_weights == 64000000 && o.calib_ctx == 256 && o.calib_windows == 64 && o.calib_batch == 4);
    SB_CHECK(o.refine_rounds == 24 && o.refine_windows == 0 && o.verbosity == 1 && !o.resume && !o.reorder && !o.gptq);
    SB_CHECK(strcmp(o.out_path, "tiny-austen-kjv-3bpw.h5") == 0);
    SB_CHECK(strcmp(o.command_line, "scalebits-mpi --budget 3") == 0);

    /* every flag, both spellings */
    SB_CHECK(parse(&o, &err, "--model", "/m/llama/", "--budget=2.75", "--out", "x.h5", "--tile", "64x32", "--group=16",
                   "--bits", "8,2,3,2", "--search", "minmax", "--scales=f16", "--report", "r.json", "--log-json",
                   "l.json", "--threads", "3", "--unit-weights", "2.5M", "--quiet", NULL) == SB_OK);
    SB_CHECK(strcmp(o.model_dir, "/m/llama/") == 0 && o.budget_numerator == 275 && o.budget_denominator == 100);
    SB_CHECK(strcmp(o.out_path, "x.h5") == 0 && o.tile_rows == 64 && o.tile_cols == 32 && o.group == 16);
    SB_CHECK(o.nbits == 3 && o.bits[0] == 2 && o.bits[1] == 3 && o.bits[2] == 8);
    SB_CHECK(o.search == SB_SEARCH_MINMAX && o.scales == SB_SCALES_F16 && o.threads == 3);
    SB_CHECK(strcmp(o.report_path, "r.json") == 0 && strcmp(o.log_json_path, "l.json") == 0);
    SB_CHECK(o.unit_weights == 2500000 && o.verbosity == 0);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--model", "/m/llama/", NULL) == SB_OK &&
             strcmp(o.out_path, "llama-3bpw.h5") == 0);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--tile", "32", "--group", "32", "--verbose", NULL) == SB_OK &&
             o.tile_rows == 32 && o.tile_cols == 32 && o.verbosity == 2);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--calib", "c.u32", "--sensitivity", "taylor", "--calib-ctx", "64",
                   "--calib-windows", "8", "--calib-batch", "2", "--refine-rounds", "5", "--refine-windows", "4",
                   "--gptq", "--reorder", "--save-imatrix", "i.dat", NULL) == SB_OK);
    SB_CHECK(o.sensitivity == SB_SENSITIVITY_TAYLOR && strcmp(o.calib_tokens, "c.u32") == 0 && o.calib_ctx == 64 &&
             o.calib_windows == 8 && o.calib_batch == 2 && o.refine_rounds == 5 && o.refine_windows == 4 && o.gptq &&
             o.reorder &&
             strcmp(o.save_imatrix, "i.dat") == 0);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--calib-text", "t.txt", "--sensitivity", "fisher", NULL) == SB_OK &&
             o.sensitivity == SB_SENSITIVITY_FISHER && strcmp(o.calib_text, "t.txt") == 0);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--imatrix", "m.gguf", NULL) == SB_OK &&
             o.sensitivity == SB_SENSITIVITY_ACT && strcmp(o.imatrix_path, "m.gguf") == 0);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--quantize-embeddings", "--quantize-lm-head", NULL) == SB_OK &&
             o.quantize_embeddings && o.quantize_lm_head);
    SB_CHECK(parse(&o, &err, "--budget", "3", "--resume", "--debug-stop-after", "2", "--debug-kill-at", "write:7",
                   "--debug-unit-delay", "10", NULL) == SB_OK);
    SB_CHECK(o.resume && o.debug_stop_after == 2 && strcmp(o.debug_kill_stage, "write") == 0 &&
             o.debug_kill_unit == 7 && o.debug_unit_delay_ms == 10);
    SB_CHECK(parse(&o, &err, "--plan-ranks", "64", NULL) == SB_OK && o.plan_only && o.plan_ranks == 64 &&
             o.budget_numerator == 16);
    SB_CHECK(parse(&o, &err, "--plan", NULL) == SB_OK && o.plan_only);
    SB_CHECK(parse(&o, &err, "--help", "--frobnicate", NULL) == SB_ERR_USAGE); /* the whole line is parsed */
    SB_CHECK(parse(&o, &err, "--help", NULL) == SB_OK && o.show_help);
    SB_CHECK(parse(&o, &err, "-h", NULL) == SB_OK && o.show_help);
    SB_CHECK(parse(&o, &err, "--version", NULL) == SB_OK && o.show_version);
    SB_CHECK(parse(&o, &err, "--budget", "64", NULL) == SB_OK && o.budget == 64);
    SB_CHECK(parse(&o, &err, "--budget", "0.001", NULL) == SB_OK && o.budget_denominator == 1000);

    /* bad values */
    REFUSED("--budget is required", "--out", "x.h5");
    REFUSED("--budget", "--budget", "abc");
    REFUSED("--budget", "--budget", "0");
    REFUSED("--budget", "--budget", "64.01");
    REFUSED("--budget", "--budget", "-3");
    REFUSED("--budget", "--budget", "1e3");
    REFUSED("--budget", "--budget", "");
    REFUSED("--budget", "--budget", "1.2.3");
    REFUSED("--tile", "--budget", "3", "--tile", "12xq");
    REFUSED("--tile", "--budget", "3", "--tile", "0x128");
    REFUSED("--tile", "--budget", "3", "--tile", "65537");
    REFUSED("--tile", "--budget", "3", "--tile", "99999999999x1");  /* no int overflow */
    REFUSED("--tile", "--budget", "3", "--tile", "4294967424x128"); /* 2^32 + 128 must not wrap to 128 */
    REFUSED("--tile", "--budget", "3", "--tile", "-128x128");
    REFUSED("--tile", "--budget", "3", "--tile", "128x");
    REFUSED("--tile", "--budget", "3", "--tile", "x128");
    REFUSED("--tile", "--budget", "3", "--tile", "128x128x1");
    REFUSED("--group", "--budget", "3", "--group", "0");
    REFUSED("--group", "--budget", "3", "--group", "2147483648");
    REFUSED("--group 48", "--budget", "3", "--tile", "64x64", "--group", "48");
    REFUSED("--bits", "--budget", "3", "--bits", "9");
    REFUSED("--bits", "--budget", "3", "--bits", "0");
    REFUSED("--bits", "--budget", "3", "--bits", "2,,3");
    REFUSED("--bits", "--budget", "3", "--bits", "2,x");
    REFUSED("--bits", "--budget", "3", "--bits", "");
    REFUSED("--sensitivity", "--budget", "3", "--sensitivity", "psychic");
    REFUSED("--search", "--budget", "3", "--search", "greedy");
    REFUSED("--scales", "--budget", "3", "--scales", "q4");
    REFUSED("--threads", "--budget", "3", "--threads", "0");
    REFUSED("--threads", "--budget", "3", "--threads", "4097");
    REFUSED("--threads", "--budget", "3", "--threads", "3x");
    REFUSED("--unit-weights", "--budget", "3", "--unit-weights", "64Q");
    REFUSED("--unit-weights", "--budget", "3", "--unit-weights", "0");
    REFUSED("--unit-weights", "--budget", "3", "--unit-weights", "1e30");
    REFUSED("--calib-ctx", "--budget", "3", "--calib-ctx", "1");
    REFUSED("--calib-windows", "--budget", "3", "--calib-windows", "0");
    REFUSED("--calib-batch", "--budget", "3", "--calib-batch", "99999999999");
    REFUSED("--refine-rounds", "--budget", "3", "--refine-rounds", "0");
    REFUSED("--refine-windows", "--budget", "3", "--refine-windows", "-1");
    REFUSED("--debug-kill-at", "--budget", "3", "--debug-kill-at", "write");
    REFUSED("--debug-kill-at", "--budget", "3", "--debug-kill-at", "Write:1");
    REFUSED("--debug-kill-at", "--budget", "3", "--debug-kill-at", "write:-1");
    REFUSED("--debug-kill-at", "--budget", "3", "--debug-kill-at", "write:99999999999999999999");
    REFUSED("--debug-kill-at", "--budget", "3", "--debug-kill-at", "averyveryveryveryverylongstagename:1");
    REFUSED("--plan-ranks", "--plan-ranks", "0");
    REFUSED("needs a value", "--budget");
    REFUSED("needs a value", "--budget", "3", "--out");
    REFUSED("takes no value", "--budget", "3", "--resume=yes");
    REFUSED("--frobnicate", "--budget", "3", "--frobnicate");
    REFUSED("unknown option", "--budget", "3", "stray");

    /* combinations */
    REFUSED("--calib or --calib-text", "--budget", "3", "--calib", "a", "--calib-text", "b");
    REFUSED("--sensitivity act", "--budget", "3", "--sensitivity", "act");
    REFUSED("--sensitivity fisher", "--budget", "3", "--sensitivity", "fisher");
    REFUSED("--sensitivity taylor", "--budget", "3", "--sensitivity", "taylor");
    REFUSED("--gptq", "--budget", "3", "--gptq");
    REFUSED("--gptq", "--budget", "3", "--calib", "c", "--gptq", "--quantize-embeddings");
    REFUSED("--save-imatrix", "--budget", "3", "--save-imatrix", "x.dat");
    REFUSED("--sensitivity fisher", "--budget", "3", "--calib", "c", "--sensitivity", "fisher", "--quantize-lm-head");

    /* paths are never cut: the longest accepted --out is kept whole, one byte more is refused */
    size_t limit = SB_PATH_MAX - SB_PATH_ROOM;
    char *longest = malloc(limit + 2);
    memset(longest, 'o', limit + 1);
    longest[limit] = '\0';
    SB_CHECK(parse(&o, &err, "--budget", "3", "--out", longest, NULL) == SB_OK && strlen(o.out_path) == limit);
    longest[limit] = 'o';
    longest[limit + 1] = '\0';
    SB_CHECK(parse(&o, &err, "--budget", "3", "--out", longest, NULL) == SB_ERR_USAGE && strstr(err.message, "--out"));
    REFUSED("--out", "--budget", "3", "--out", "");
    free(longest);
    return sb_test_finish("test_options");
}
