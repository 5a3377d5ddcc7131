/* scalebits-eval: perplexity of a model (FP checkpoint or scalebits HDF5 file) over
 * non-overlapping windows of a token stream, with the project's own runtime (src/sb_model.h).
 *
 *   read config -> open checkpoint or file -> load weights -> read tokens -> choose windows
 *   -> forward in batches -> one result line
 *
 * One process holds the whole model; under mpirun the model runs as a pipeline over the ranks
 * (mpi/sb_pipeline.h), each holding only its layers, with the same result bit for bit.
 */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_agree.h"
#include "sb_blas_start.h"
#include "sb_config.h"
#include "sb_error.h"
#include "sb_log.h"
#include "sb_model.h"
#include "sb_h5_reader.h"
#include "sb_h5_source.h"
#include "sb_kernel.h"
#include "sb_model_load.h"
#include "sb_mpi.h"
#include "sb_pipeline.h"
#include "sb_routing_stats.h"
#include "sb_safetensors.h"
#include "sb_tokens.h"

typedef struct eval_options {
    const char *model_dir;
    bool model_given;
    const char *quantized_path;
    const char *tokens_path;
    const char *text_path;
    int64_t ctx;
    int64_t windows; /* 0: every whole window; more than the stream has: all of them */
    bool from_end;
    int64_t batch;
    int threads;     /* 0: OpenBLAS's own default */
    bool json;
    bool help;
    bool dequantize; /* --quantized decoded to float32 instead of kept packed */
} eval_options;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: scalebits-eval [--model DIR] [--quantized FILE.h5 [--dequantize]] (--tokens FILE.u32 | --text FILE)\n"
            "                      [--ctx 256] [--windows N] [--from-end] [--batch 16] [--threads N] [--json]\n"
            "\n"
            "Perplexity over non-overlapping windows of --ctx tokens; in each window tokens 2..ctx are\n"
            "scored against the prediction from the tokens before them.\n"
            "\n"
            "  --model DIR        Hugging Face Llama checkpoint (config.json + safetensors)\n"
            "                     (default: the embedded test model %s)\n"
            "  --quantized FILE   evaluate a scalebits HDF5 file, its linear weights kept packed in memory\n"
            "                     and multiplied by the packed kernels (float or 16-bit activations; the\n"
            "                     kernel path is the CPU's best, or SCALEBITS_ISA=scalar|avx2|avx512);\n"
            "                     its stored config.json is used unless --model is given\n"
            "  --dequantize       with --quantized: decode the weights to float32 first and run the float\n"
            "                     runtime (the reference the packed path is checked against)\n"
            "  --tokens FILE      little-endian uint32 token ids\n"
            "  --text FILE        text read as bytes (byte-level models with vocab_size 256 only)\n"
            "  --ctx N            window length in tokens (default 256)\n"
            "  --windows N        the first N whole windows, or all of them if there are fewer (default: all)\n"
            "  --from-end         the last N whole windows instead of the first\n"
            "  --batch B          windows per forward batch (default 16; memory grows with B)\n"
            "  --threads N        OpenBLAS and OpenMP threads (default: OpenBLAS's default)\n"
            "  --json             print one JSON object instead of the key=value line\n"
            "\n"
            "Output: perplexity=P nll=L tokens=N (L: mean NLL per scored token, natural log; N: scored\n"
            "tokens). --json adds windows, first_window, ctx, seconds (forward passes only),\n"
            "tokens_per_second (every token fed to the model, windows x ctx, per second), weights\n"
            "(float, packed or dequantized), isa (the packed kernels' path), load_seconds (reading the\n"
            "weights) and peak_rss_bytes (this process's peak resident memory); for a\n"
            "mixture-of-experts model also tokens_per_expert and scored_tokens_per_expert: per layer\n"
            "(null for a dense one) the token-slots routed to each expert, over every token / over\n"
            "the tokens whose next-token prediction is scored.\n",
            SB_DEFAULT_MODEL_DIR);
}

static bool parse_count(const char *text, int64_t min, int64_t *value)
{
    char *end;
    long long parsed = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || parsed < min)
        return false;
    *value = parsed;
    return true;
}

/* Returns SB_OK, or SB_ERR_USAGE with the reason in err. */
static sb_status parse_options(int argc, char **argv, eval_options *options, sb_error *err)
{
    static const struct option long_options[] = {
        {"model", required_argument, NULL, 'm'},   {"quantized", required_argument, NULL, 'q'},
        {"tokens", required_argument, NULL, 't'},  {"text", required_argument, NULL, 'x'},
        {"ctx", required_argument, NULL, 'c'},     {"windows", required_argument, NULL, 'w'},
        {"from-end", no_argument, NULL, 'e'},      {"batch", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 'j'}, {"json", no_argument, NULL, 'J'},
        {"dequantize", no_argument, NULL, 'D'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    memset(options, 0, sizeof *options);
    options->model_dir = SB_DEFAULT_MODEL_DIR;
    options->ctx = 256;
    options->batch = 16;
    opterr = 0;
    int option;
    int64_t value;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'm': options->model_dir = optarg; options->model_given = true; break;
        case 'q': options->quantized_path = optarg; break;
        case 't': options->tokens_path = optarg; break;
        case 'x': options->text_path = optarg; break;
        case 'e': options->from_end = true; break;
        case 'J': options->json = true; break;
        case 'D': options->dequantize = true; break;
        case 'h': options->help = true; return SB_OK;
        case 'c':
            if (!parse_count(optarg, 2, &options->ctx))
                return sb_error_set(err, SB_ERR_USAGE, "--ctx must be an integer >= 2 (got '%s')", optarg);
            break;
        case 'w':
            if (!parse_count(optarg, 1, &options->windows))
                return sb_error_set(err, SB_ERR_USAGE, "--windows must be a positive integer (got '%s')", optarg);
            break;
        case 'b':
            if (!parse_count(optarg, 1, &options->batch))
                return sb_error_set(err, SB_ERR_USAGE, "--batch must be a positive integer (got '%s')", optarg);
            break;
        case 'j':
            if (!parse_count(optarg, 1, &value) || value > 4096)
                return sb_error_set(err, SB_ERR_USAGE, "--threads must be an integer in 1..4096 (got '%s')", optarg);
            options->threads = (int)value;
            break;
        default:
            return sb_error_set(err, SB_ERR_USAGE, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return sb_error_set(err, SB_ERR_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!options->tokens_path == !options->text_path)
        return sb_error_set(err, SB_ERR_USAGE, "give exactly one of --tokens FILE.u32 and --text FILE");
    if (options->dequantize && !options->quantized_path)
        return sb_error_set(err, SB_ERR_USAGE, "--dequantize applies to --quantized FILE.h5 only");
    if (options->from_end && options->windows == 0)
        return sb_error_set(err, SB_ERR_USAGE, "--from-end needs --windows N (how many windows from the end)");
    return SB_OK;
}

/* The windows to score: the first (or last) --windows, all of them when the stream has fewer
 * (reference.md's protocols say "the first 200 windows" of texts that have 131). */
static sb_status choose_windows(const eval_options *options, const sb_tokens *tokens, sb_window_range *range,
                                sb_error *err)
{
    SB_TRY(sb_tokens_windows(tokens, options->ctx, 0, false, range, err));
    int64_t wanted = options->windows > 0 && options->windows < range->total_windows ? options->windows : 0;
    return sb_tokens_windows(tokens, options->ctx, wanted, wanted > 0 && options->from_end, range, err);
}

static sb_status read_tokens(const eval_options *options, const sb_model_shape *shape, sb_tokens *tokens,
                             sb_error *err)
{
    if (options->tokens_path)
        return sb_tokens_read_u32(options->tokens_path, shape->vocab_size, tokens, err);
    if (shape->vocab_size != 256)
        return sb_error_set(err, SB_ERR_INPUT,
                            "--text %s: this model has vocab_size %lld, and --text only serves byte-level models "
                            "(vocab_size 256, token id = byte value); no tokenizer is available here: tokenize the "
                            "text yourself and pass the ids with --tokens FILE.u32",
                            options->text_path, (long long)shape->vocab_size);
    return sb_tokens_read_bytes(options->text_path, shape->vocab_size, tokens, err);
}

typedef struct eval_result {
    sb_nll nll;
    sb_window_range range;
    double seconds;
    double load_seconds;
    const char *weights; /* "float", "packed", "dequantized" */
    const char *isa;     /* the packed kernels' path, or NULL */
    sb_routing_stats routing; /* counters of the MoE layers (none for a dense model) */
} eval_result;

/* The packed kernels to run with (NULL: float32 weights), chosen once at start-up. */
static sb_status choose_kernel(const eval_options *options, sb_kernel *kernel, const sb_kernel **chosen,
                               eval_result *result, sb_error *err)
{
    *chosen = NULL;
    result->weights = !options->quantized_path ? "float" : options->dequantize ? "dequantized" : "packed";
    result->isa = NULL;
    if (!options->quantized_path || options->dequantize)
        return SB_OK;
    SB_TRY(sb_kernel_choose(kernel, err));
    *chosen = kernel;
    result->isa = sb_isa_name(kernel->isa);
    return SB_OK;
}

static sb_status run(const eval_options *options, eval_result *result, sb_error *err)
{
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_model model;
    sb_tokens tokens;
    sb_model_workspace *workspace = NULL;
    memset(&checkpoint, 0, sizeof checkpoint);
    memset(&model, 0, sizeof model);
    memset(&tokens, 0, sizeof tokens);
    memset(result, 0, sizeof *result);
    sb_kernel kernel;
    const sb_kernel *packed;
    SB_TRY(choose_kernel(options, &kernel, &packed, result, err));

    /* With --quantized, the file's linear weights stay packed and run on the kernels (or, with
     * --dequantize, are decoded per docs/FORMAT.md to float32), the others come from
     * /passthrough, and its stored config.json describes the model unless --model is given. */
    sb_status status;
    double load_start = sb_now();
    if (options->quantized_path) {
        sb_h5_reader reader;
        SB_TRY(sb_h5_reader_open(options->quantized_path, &reader, err));
        status = options->model_given ? sb_config_load(options->model_dir, &config, err)
                                      : sb_h5_reader_config(&reader, &config, err);
        if (status == SB_OK)
            status = packed ? sb_model_load_h5_packed(&config.shape, &reader, packed, &model, err)
                            : sb_model_load_h5(&config.shape, &reader, &model, err);
        sb_h5_reader_close(&reader);
        if (status != SB_OK) {
            sb_config_free(&config);
            return status;
        }
    } else {
        SB_TRY(sb_config_load(options->model_dir, &config, err));
        sb_checkpoint_options source = sb_config_checkpoint_options(&config);
        status = sb_checkpoint_open_with(options->model_dir, &source, &checkpoint, err);
        if (status == SB_OK)
            status = sb_model_load_checkpoint(&config.shape, &checkpoint, &model, err);
    }
    result->load_seconds = sb_now() - load_start;
    const sb_model_shape *shape = &config.shape;
    if (status == SB_OK)
        status = read_tokens(options, shape, &tokens, err);
    if (status == SB_OK)
        status = choose_windows(options, &tokens, &result->range, err);
    if (status == SB_OK && options->ctx > shape->max_position_embeddings)
        fprintf(stderr, "scalebits-eval: warning: --ctx %lld exceeds the model's max_position_embeddings %lld\n",
                (long long)options->ctx, (long long)shape->max_position_embeddings);
    if (status == SB_OK) {
        int64_t batch = options->batch < result->range.n_windows ? options->batch : result->range.n_windows;
        int threads = options->threads > 0 ? options->threads : openblas_get_num_threads();
        status = sb_model_workspace_create(shape, options->ctx, batch, threads, false, &workspace, err);
    }
    if (status == SB_OK)
        status = sb_routing_stats_create(shape, &result->routing, err);
    if (status == SB_OK) {
        double start = sb_now();
        bool moe = result->routing.experts > 0;
        status = sb_model_forward(&model, result->range.tokens, result->range.n_windows, options->ctx, workspace,
                                  moe ? sb_routing_stats_hook : NULL, &result->routing, &result->nll, err);
        result->seconds = sb_now() - start;
    }
    sb_model_workspace_free(workspace);
    sb_tokens_free(&tokens);
    sb_model_free(&model);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    return status;
}

/* With more than one rank: the model as a pipeline over the ranks (mpi/sb_pipeline.h), each
 * holding only its layers, read from the checkpoint or the scalebits file; the same result as
 * one process, bit for bit. Collective. */
static sb_status run_pipeline(const eval_options *options, eval_result *result, sb_error *err)
{
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_h5_reader reader;
    sb_tokens tokens;
    memset(&config, 0, sizeof config);
    memset(&checkpoint, 0, sizeof checkpoint);
    memset(&reader, 0, sizeof reader);
    memset(&tokens, 0, sizeof tokens);
    memset(result, 0, sizeof *result);
    bool have_reader = false;
    sb_kernel kernel;
    const sb_kernel *packed;
    sb_status status = choose_kernel(options, &kernel, &packed, result, err);
    if (status == SB_OK && options->quantized_path) {
        status = sb_h5_reader_open(options->quantized_path, &reader, err);
        have_reader = status == SB_OK;
        if (status == SB_OK)
            status = options->model_given ? sb_config_load(options->model_dir, &config, err)
                                          : sb_h5_reader_config(&reader, &config, err);
    } else if (status == SB_OK) {
        status = sb_config_load(options->model_dir, &config, err);
        sb_checkpoint_options source = sb_config_checkpoint_options(&config);
        if (status == SB_OK)
            status = sb_checkpoint_open_with(options->model_dir, &source, &checkpoint, err);
    }
    if (status == SB_OK)
        status = read_tokens(options, &config.shape, &tokens, err);
    if (status == SB_OK)
        status = choose_windows(options, &tokens, &result->range, err);
    status = sb_agree(MPI_COMM_WORLD, status, err);
    if (status == SB_OK) {
        sb_safetensors_source st_source = {&checkpoint, true};
        sb_h5_source h5_source = {.reader = &reader, .kernel = packed};
        sb_pipeline pipeline;
        int threads = options->threads > 0 ? options->threads : 1;
        double load_start = sb_now();
        status = options->quantized_path
                     ? sb_pipeline_create_linears(MPI_COMM_WORLD, &config.shape, sb_h5_fetch,
                                                  packed ? sb_h5_fetch_linear : NULL, &h5_source, threads, &pipeline,
                                                  err)
                     : sb_pipeline_create(MPI_COMM_WORLD, &config.shape, sb_safetensors_fetch, &st_source, threads,
                                          &pipeline, err);
        result->load_seconds = sb_now() - load_start;
        if (status == SB_OK) {
            /* the pass is collective: every rank must have its counters before it starts */
            status = sb_agree(MPI_COMM_WORLD, sb_routing_stats_create(&config.shape, &result->routing, err), err);
            if (status == SB_OK) {
                double start = sb_now();
                sb_pass_request request = {.routing = result->routing.experts > 0 ? &result->routing : NULL};
                status = sb_pipeline_pass(&pipeline, result->range.tokens, result->range.n_windows, options->ctx,
                                          options->batch, &request, &result->nll, err);
                result->seconds = sb_now() - start;
            }
            sb_pipeline_free(&pipeline);
        }
        if (status == SB_OK && result->routing.experts > 0) {
            /* each stage counted its own layers: the sums are the model's */
            sb_routing_stats *r = &result->routing;
            int cells = 0, layers = 0;
            status = sb_mpi_count(r->layers * r->experts, "the routing counters", &cells, err);
            if (status == SB_OK)
                status = sb_mpi_count(r->layers, "the routing counters", &layers, err);
            if (status == SB_OK)
                status = SB_MPI_CALL(err, MPI_Allreduce(MPI_IN_PLACE, r->slots, cells, MPI_INT64_T, MPI_SUM,
                                                        MPI_COMM_WORLD));
            if (status == SB_OK)
                status = SB_MPI_CALL(err, MPI_Allreduce(MPI_IN_PLACE, r->scored_slots, cells, MPI_INT64_T, MPI_SUM,
                                                        MPI_COMM_WORLD));
            if (status == SB_OK)
                status = SB_MPI_CALL(err, MPI_Allreduce(MPI_IN_PLACE, r->weight, cells, MPI_DOUBLE, MPI_SUM,
                                                        MPI_COMM_WORLD));
            if (status == SB_OK)
                status = SB_MPI_CALL(err, MPI_Allreduce(MPI_IN_PLACE, r->tokens, layers, MPI_INT64_T, MPI_SUM,
                                                        MPI_COMM_WORLD));
        }
    }
    sb_tokens_free(&tokens);
    if (have_reader)
        sb_h5_reader_close(&reader);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    return status;
}

static void print_result(const eval_options *options, const eval_result *result)
{
    double mean_nll = result->nll.sum / (double)result->nll.count;
    double perplexity = exp(mean_nll);
    if (!options->json) {
        printf("perplexity=%.4f nll=%.5f tokens=%lld\n", perplexity, mean_nll, (long long)result->nll.count);
        return;
    }
    double fed = (double)(result->range.n_windows * options->ctx);
    printf("{\"perplexity\": %.6f, \"nll\": %.7f, \"tokens\": %lld, \"windows\": %lld, \"first_window\": %lld, "
           "\"ctx\": %lld, \"seconds\": %.4f, \"tokens_per_second\": %.1f, \"weights\": \"%s\", \"isa\": %s%s%s, "
           "\"load_seconds\": %.4f, \"peak_rss_bytes\": %lld",
           perplexity, mean_nll, (long long)result->nll.count, (long long)result->range.n_windows,
           (long long)result->range.first_window, (long long)options->ctx, result->seconds,
           result->seconds > 0 ? fed / result->seconds : 0.0, result->weights, result->isa ? "\"" : "",
           result->isa ? result->isa : "null", result->isa ? "\"" : "", result->load_seconds,
           (long long)sb_peak_rss_bytes());
    const sb_routing_stats *r = &result->routing;
    for (int which = 0; which < 2 && r->experts > 0; which++) {
        const int64_t *counts = which == 0 ? r->slots : r->scored_slots;
        printf(", \"%s\": [", which == 0 ? "tokens_per_expert" : "scored_tokens_per_expert");
        for (int64_t l = 0; l < r->layers; l++) {
            printf("%s", l ? ", " : "");
            if (r->tokens[l] == 0) {
                printf("null");
                continue;
            }
            for (int64_t e = 0; e < r->experts; e++)
                printf("%s%lld", e ? ", " : "[", (long long)counts[l * r->experts + e]);
            printf("]");
        }
        printf("]");
    }
    printf("}\n");
}

/* After MPI_Init every path ends in MPI_Finalize on every rank, with the same exit code:
 * --help, a usage error and a failure alike (no exit(), no abort). */
int main(int argc, char **argv)
{
    /* before MPI_Init: it may re-execute the program with a better OpenBLAS core */
    sb_blas_start blas;
    sb_blas_start_check(argv, &blas);
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "scalebits-eval: error: MPI_Init failed\n");
        return 1;
    }
    int rank = 0, nranks = 1;
    sb_error err;
    sb_error_clear(&err);
    /* as scalebits-mpi: an MPI failure returns an error to report, it does not abort the job */
    sb_status status = SB_MPI_CALL(&err, MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    if (status == SB_OK)
        status = sb_mpi_rank_size(MPI_COMM_WORLD, &rank, &nranks, &err);
    if (rank == 0 && (blas.changed || blas.slower))
        fprintf(stderr, "scalebits-eval: %s\n", blas.message);
    eval_options options;
    memset(&options, 0, sizeof options);
    if (status == SB_OK)
        status = sb_agree(MPI_COMM_WORLD, parse_options(argc, argv, &options, &err), &err);
    if (status == SB_OK && options.help) {
        if (rank == 0)
            usage(stdout);
    } else if (status == SB_ERR_USAGE) {
        if (rank == 0) {
            fprintf(stderr, "scalebits-eval: %s\n", err.message);
            usage(stderr);
        }
    } else if (status == SB_OK) {
        if (options.threads > 0)
            openblas_set_num_threads(options.threads);
        eval_result result;
        status = nranks > 1 ? run_pipeline(&options, &result, &err) : run(&options, &result, &err);
        status = sb_agree(MPI_COMM_WORLD, status, &err);
        if (status == SB_OK && rank == 0)
            print_result(&options, &result);
        else if (status != SB_OK && rank == 0)
            fprintf(stderr, "scalebits-eval: error: %s\n", err.message);
        sb_routing_stats_free(&result.routing);
    } else if (rank == 0) {
        fprintf(stderr, "scalebits-eval: error: %s\n", err.message);
    }
    fflush(stdout);
    if (MPI_Finalize() != MPI_SUCCESS && status == SB_OK)
        status = SB_ERR_MPI;
    return sb_status_exit_code(status);
}
