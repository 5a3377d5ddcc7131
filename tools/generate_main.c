/* scalebits-generate: text from a model, straight from a scalebits file's packed tiles (or from
 * the float checkpoint), with the project's runtime: a KV-cache decoder (src/sb_decoder.h), the
 * packed kernels (src/sb_kernel.h) and a seeded sampler (src/sb_sample.h).
 *
 *   load model -> tokenizer -> prompt tokens -> prefill -> sample, decode, print (streamed)
 *   -> prompt and generation tokens/s on stderr
 *
 * Llama, Qwen3 and Qwen3-MoE models (whatever the decoder runs), experts packed like any linear.
 * One process, no MPI.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_config.h"
#include "sb_decoder.h"
#include "sb_error.h"
#include "sb_h5_reader.h"
#include "sb_h5_source.h"
#include "sb_kernel.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_sample.h"
#include "sb_tokenizer.h"
#include "sb_tokens.h"

/* Prompt tokens per prefill batch: large enough to run the products as matrix-matrix ones,
 * small enough that the activations of a 7B-wide model stay a few tens of MB. */
enum { PREFILL_BATCH = 128, DEFAULT_MAX_CONTEXT = 4096 };

typedef struct generate_options {
    const char *model_dir;
    const char *quantized_path;
    bool dequantize;
    const char *prompt;
    const char *prompt_tokens_path;
    const char *tokenizer_path;
    int64_t max_tokens;
    double temperature, top_p;
    uint64_t seed;
    int threads;
    int64_t ctx; /* 0: the model's max_position_embeddings, at most DEFAULT_MAX_CONTEXT */
} generate_options;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: scalebits-generate [--quantized FILE.h5 [--dequantize] | --model DIR]\n"
            "                          (--prompt TEXT | --prompt-tokens FILE.u32) [--tokenizer FILE]\n"
            "                          [--max-tokens 256] [--temperature 0.8] [--top-p 0.9] [--seed 42]\n"
            "                          [--threads N] [--ctx N]\n"
            "\n"
            "Writes the prompt and its continuation to stdout as it is generated, then prompt and\n"
            "generation tokens/s to stderr. The same seed, model and options give the same text.\n"
            "\n"
            "  --quantized FILE   a scalebits HDF5 file, its linear weights kept packed and multiplied by\n"
            "                     the packed kernels (SCALEBITS_ISA=scalar|avx2|avx512 picks a path)\n"
            "  --dequantize       decode the file's weights to float32 first (the reference path)\n"
            "  --model DIR        a Hugging Face Llama, Qwen3 or Qwen3-MoE checkpoint in float (default:\n"
            "                     the embedded model %s)\n"
            "  --prompt TEXT      the prompt as text: bytes for byte-level models (vocab 256), else\n"
            "                     through --tokenizer\n"
            "  --prompt-tokens F  the prompt as little-endian uint32 token ids (any model)\n"
            "  --tokenizer FILE   a llama2.c tokenizer file (e.g. stories260K's tok512.bin): text in and\n"
            "                     out for models that are not byte-level; without one, such a model reads\n"
            "                     --prompt-tokens and writes token ids\n"
            "  --max-tokens N     tokens to generate (default 256); stops earlier at the end of the\n"
            "                     context, or at a llama2.c tokenizer's BOS or EOS token\n"
            "  --temperature T    0 picks the most likely token; default 0.8\n"
            "  --top-p P          sample from the smallest set of tokens holding P of the probability\n"
            "                     (default 0.9; 1 samples from all)\n"
            "  --seed S           the sampler's seed (default 42)\n"
            "  --threads N        threads (default 1)\n"
            "  --ctx N            positions of the KV cache (default: the model's max_position_embeddings,\n"
            "                     at most %d); a prompt longer than this is an error\n",
            SB_DEFAULT_MODEL_DIR, DEFAULT_MAX_CONTEXT);
}

static bool parse_int64(const char *text, int64_t min, int64_t max, int64_t *value)
{
    char *end;
    errno = 0;
    long long parsed = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || errno || parsed < min || parsed > max)
        return false;
    *value = parsed;
    return true;
}

static bool parse_double(const char *text, double *value)
{
    char *end;
    double parsed = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !isfinite(parsed))
        return false;
    *value = parsed;
    return true;
}

static sb_status parse_options(int argc, char **argv, generate_options *o, sb_error *err)
{
    static const struct option long_options[] = {
        {"model", required_argument, NULL, 'm'},       {"quantized", required_argument, NULL, 'q'},
        {"dequantize", no_argument, NULL, 'D'},        {"prompt", required_argument, NULL, 'p'},
        {"prompt-tokens", required_argument, NULL, 'P'}, {"tokenizer", required_argument, NULL, 'k'},
        {"max-tokens", required_argument, NULL, 'n'},  {"temperature", required_argument, NULL, 't'},
        {"top-p", required_argument, NULL, 'o'},       {"seed", required_argument, NULL, 's'},
        {"threads", required_argument, NULL, 'j'},     {"ctx", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},              {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->max_tokens = 256;
    o->temperature = 0.8;
    o->top_p = 0.9;
    o->seed = 42;
    o->threads = 1;
    bool model_given = false;
    int64_t value;
    opterr = 0;
    int option;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'm': o->model_dir = optarg; model_given = true; break;
        case 'q': o->quantized_path = optarg; break;
        case 'D': o->dequantize = true; break;
        case 'p': o->prompt = optarg; break;
        case 'P': o->prompt_tokens_path = optarg; break;
        case 'k': o->tokenizer_path = optarg; break;
        case 'h': usage(stdout); exit(0);
        case 'n':
            if (!parse_int64(optarg, 0, INT32_MAX, &o->max_tokens))
                return sb_error_set(err, SB_ERR_USAGE, "--max-tokens must be an integer >= 0 (got '%s')", optarg);
            break;
        case 't':
            if (!parse_double(optarg, &o->temperature) || o->temperature < 0.0)
                return sb_error_set(err, SB_ERR_USAGE, "--temperature must be a number >= 0 (got '%s')", optarg);
            break;
        case 'o':
            if (!parse_double(optarg, &o->top_p) || !(o->top_p > 0.0 && o->top_p <= 1.0))
                return sb_error_set(err, SB_ERR_USAGE, "--top-p must be in (0, 1] (got '%s')", optarg);
            break;
        case 's':
            if (!parse_int64(optarg, 0, INT64_MAX, &value))
                return sb_error_set(err, SB_ERR_USAGE, "--seed must be an integer >= 0 (got '%s')", optarg);
            o->seed = (uint64_t)value;
            break;
        case 'j':
            if (!parse_int64(optarg, 1, 4096, &value))
                return sb_error_set(err, SB_ERR_USAGE, "--threads must be an integer in 1..4096 (got '%s')", optarg);
            o->threads = (int)value;
            break;
        case 'c':
            if (!parse_int64(optarg, 1, (int64_t)1 << 24, &o->ctx))
                return sb_error_set(err, SB_ERR_USAGE, "--ctx must be an integer in 1..2^24 (got '%s')", optarg);
            break;
        default:
            return sb_error_set(err, SB_ERR_USAGE, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return sb_error_set(err, SB_ERR_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!o->prompt == !o->prompt_tokens_path)
        return sb_error_set(err, SB_ERR_USAGE, "give exactly one of --prompt TEXT and --prompt-tokens FILE.u32");
    if (model_given && o->quantized_path)
        return sb_error_set(err, SB_ERR_USAGE, "give one of --quantized FILE.h5 and --model DIR");
    if (o->dequantize && !o->quantized_path)
        return sb_error_set(err, SB_ERR_USAGE, "--dequantize applies to --quantized FILE.h5 only");
    if (!o->model_dir)
        o->model_dir = SB_DEFAULT_MODEL_DIR;
    return SB_OK;
}

typedef struct session {
    sb_model_config config;
    sb_model model;
    sb_kernel kernel;
    const char *weights; /* "packed (avx2)", "dequantized", "float" */
    char weights_text[64];
    sb_tokenizer tokenizer;
    bool have_tokenizer;
    uint32_t *prompt;
    int64_t prompt_count;
} session;

static sb_status load_model(const generate_options *o, session *s, sb_error *err)
{
    if (o->quantized_path) {
        sb_h5_reader reader;
        SB_TRY(sb_h5_reader_open(o->quantized_path, &reader, err));
        sb_status status = sb_h5_reader_config(&reader, &s->config, err);
        if (status == SB_OK && !o->dequantize) {
            status = sb_kernel_choose(&s->kernel, err);
            if (status == SB_OK)
                status = sb_model_load_h5_packed(&s->config.shape, &reader, &s->kernel, &s->model, err);
            snprintf(s->weights_text, sizeof s->weights_text, "packed, %s kernels", sb_isa_name(s->kernel.isa));
            s->weights = s->weights_text;
        } else if (status == SB_OK) {
            status = sb_model_load_h5(&s->config.shape, &reader, &s->model, err);
            s->weights = "dequantized to float32";
        }
        sb_h5_reader_close(&reader);
        return status;
    }
    SB_TRY(sb_config_load(o->model_dir, &s->config, err));
    sb_checkpoint checkpoint;
    SB_TRY(sb_checkpoint_open(o->model_dir, &checkpoint, err));
    sb_status status = sb_model_load_checkpoint(&s->config.shape, &checkpoint, &s->model, err);
    sb_checkpoint_close(&checkpoint);
    s->weights = "float32";
    return status;
}

static sb_status load_prompt(const generate_options *o, session *s, sb_error *err)
{
    int64_t vocab = s->config.shape.vocab_size;
    if (o->tokenizer_path) {
        SB_TRY(sb_tokenizer_load_llama2c(o->tokenizer_path, vocab, &s->tokenizer, err));
        s->have_tokenizer = true;
    } else if (vocab == 256) {
        sb_tokenizer_bytes(&s->tokenizer);
        s->have_tokenizer = true;
    }
    if (o->prompt_tokens_path) {
        sb_tokens tokens;
        SB_TRY(sb_tokens_read_u32(o->prompt_tokens_path, vocab, &tokens, err));
        s->prompt = tokens.ids;
        s->prompt_count = tokens.count;
        free(tokens.path);
    } else {
        if (!s->have_tokenizer)
            return sb_error_set(err, SB_ERR_USAGE,
                                "this model has a vocabulary of %lld tokens, not bytes: give --tokenizer FILE (a "
                                "llama2.c tokenizer) to use --prompt TEXT, or the prompt as --prompt-tokens FILE.u32",
                                (long long)vocab);
        SB_TRY(sb_tokenizer_encode(&s->tokenizer, o->prompt, strlen(o->prompt), true, &s->prompt, &s->prompt_count,
                                   err));
    }
    if (s->prompt_count < 1)
        return sb_error_set(err, SB_ERR_INPUT, "the prompt is empty: nothing to continue");
    return SB_OK;
}

/* Writes token `token` (after `previous`) to stdout: its text (nothing for BOS, which only
 * marks where a text starts), or its id. */
static void emit(const session *s, int64_t previous, uint32_t token)
{
    if (s->have_tokenizer && (int64_t)token == sb_tokenizer_bos(&s->tokenizer))
        return;
    if (!s->have_tokenizer) {
        printf("%s%u", previous < 0 ? "" : " ", token);
    } else {
        const char *piece;
        char byte[1];
        size_t length = sb_tokenizer_piece(&s->tokenizer, previous, token, &piece, byte);
        fwrite(piece, 1, length, stdout);
    }
    fflush(stdout);
}

static sb_status generate(const generate_options *o, session *s, sb_error *err)
{
    const sb_model_shape *shape = &s->config.shape;
    int64_t ctx = o->ctx ? o->ctx
                         : (shape->max_position_embeddings < DEFAULT_MAX_CONTEXT ? shape->max_position_embeddings
                                                                                  : DEFAULT_MAX_CONTEXT);
    if (s->prompt_count > ctx)
        return sb_error_set(err, SB_ERR_INPUT,
                            "the prompt is %lld tokens long, longer than the context of %lld positions (%s)",
                            (long long)s->prompt_count, (long long)ctx,
                            o->ctx ? "--ctx" : "the model's max_position_embeddings");
    sb_decoder *decoder;
    SB_TRY(sb_decoder_create(&s->model, ctx, PREFILL_BATCH, o->threads, &decoder, err));
    sb_sampler sampler;
    sb_status status = sb_sampler_create(shape->vocab_size, o->temperature, o->top_p, o->seed, &sampler, err);
    float *logits = sb_malloc((size_t)shape->vocab_size * sizeof(float), "logits", err);
    if (status != SB_OK || !logits) {
        sb_decoder_free(decoder);
        free(logits);
        if (status == SB_OK)
            sb_sampler_free(&sampler);
        return status != SB_OK ? status : SB_ERR_NOMEM;
    }
    int64_t previous = -1;
    for (int64_t i = 0; i < s->prompt_count; i++) {
        emit(s, previous, s->prompt[i]);
        previous = s->prompt[i];
    }
    double start = sb_now();
    status = sb_decoder_feed(decoder, s->prompt, s->prompt_count, logits, err);
    double prompt_seconds = sb_now() - start;
    int64_t generated = 0;
    const char *stopped = "--max-tokens reached";
    start = sb_now();
    bool llama2c = s->have_tokenizer && !s->tokenizer.bytes;
    while (status == SB_OK && generated < o->max_tokens) {
        uint32_t token = sb_sample(&sampler, logits);
        if (llama2c && (token == 1 || token == 2)) {
            stopped = "end of text";
            break;
        }
        emit(s, previous, token);
        previous = token;
        generated++;
        if (generated == o->max_tokens)
            break;
        if (sb_decoder_length(decoder) == ctx) {
            stopped = "the context is full";
            break;
        }
        status = sb_decoder_feed(decoder, &token, 1, logits, err);
    }
    double generate_seconds = sb_now() - start;
    if (s->have_tokenizer)
        printf("\n");
    fflush(stdout);
    if (status == SB_OK)
        fprintf(stderr,
                "scalebits-generate: prompt %lld tokens in %.3f s (%.1f tokens/s); generated %lld tokens in %.3f s "
                "(%.1f tokens/s), stopped: %s; weights %s, %d thread(s), peak RSS %.1f MiB\n",
                (long long)s->prompt_count, prompt_seconds,
                prompt_seconds > 0 ? (double)s->prompt_count / prompt_seconds : 0.0, (long long)generated,
                generate_seconds, generate_seconds > 0 ? (double)generated / generate_seconds : 0.0, stopped,
                s->weights, o->threads, (double)sb_peak_rss_bytes() / 1048576.0);
    free(logits);
    sb_sampler_free(&sampler);
    sb_decoder_free(decoder);
    return status;
}

int main(int argc, char **argv)
{
    sb_error err;
    sb_error_clear(&err);
    generate_options options;
    sb_status status = parse_options(argc, argv, &options, &err);
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-generate: %s\n", err.message);
        usage(stderr);
        return sb_status_exit_code(status);
    }
    session s;
    memset(&s, 0, sizeof s);
    status = load_model(&options, &s, &err);
    if (status == SB_OK)
        status = load_prompt(&options, &s, &err);
    if (status == SB_OK)
        status = generate(&options, &s, &err);
    if (status != SB_OK)
        fprintf(stderr, "scalebits-generate: error: %s\n", err.message);
    free(s.prompt);
    if (s.have_tokenizer)
        sb_tokenizer_free(&s.tokenizer);
    sb_model_free(&s.model);
    sb_config_free(&s.config);
    return sb_status_exit_code(status);
}
