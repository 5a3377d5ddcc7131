/* bench-decode: speed of the packed-matrix kernels (src/sb_kernel.h) on every linear weight
 * of a scalebits file, against the machine's memory bandwidth and the float OpenBLAS path,
 * all measured in the same process:
 *
 *   stream   STREAM-style read bandwidth: a sum over a buffer far larger than the last-level
 *            cache, the threads each reading their own part (best of --repeat)
 *   decode   one token = y = W x over every linear weight of every layer in model order (q, k,
 *            v, o, gate, up, down; the activations rounded to int8 once per distinct input, as
 *            the runtime does): tokens/s, and the effective bandwidth = packed bytes read per
 *            token (codes + metadata, sb_qmatrix_bytes) / seconds per token, over `stream`
 *   prefill  Y = W X for a batch of N tokens over the same weights, at the activation precision
 *            the runtime uses for batches of this file on this path (sb_kernel_batch_precision;
 *            --batch forces one; --int8-prefill adds int8): tokens/s, against
 *            cblas_sgemm on float copies of layer 0's weights (timed per layer, times layers);
 *            also per CPU-second of all threads (prefillN_cpu_tps), robust to other load
 *
 *   bench-decode --quantized FILE.h5 [--threads "1 2"] [--tokens 16] [--prefill "64 512"]
 *                [--repeat 3] [--prefill-repeat 1] [--stream-mb 1024] [--no-float] [--int8-prefill]
 *                [--batch int16|f32]
 *
 * --repeat: decode and STREAM are the best of that many runs after a warm-up; prefill (seconds a
 * pass) of --prefill-repeat. --no-float skips the OpenBLAS comparison (it depends only on the
 * shapes: bench/decode.sh runs it once); --int8-prefill adds prefill with int8 activations.
 *
 * One line of key=value pairs per thread count (bench/decode.sh builds its table from them).
 * SCALEBITS_ISA forces a kernel path.
 */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sb_config.h"
#include "sb_error.h"
#include "sb_h5_qmatrix.h"
#include "sb_h5_reader.h"
#include "sb_h5_source.h"
#include "sb_kernel.h"
#include "sb_log.h"
#include "sb_model.h"

enum { MAX_LIST = 8 };

typedef struct bench_options {
    const char *path;
    int threads[MAX_LIST], nthreads;
    int64_t prefill[MAX_LIST];
    int nprefill;
    int64_t tokens;
    int repeat, prefill_repeat;
    int64_t stream_mb;
    bool with_float, with_int8_prefill;
    int batch; /* -1: the path's sb_kernel.batch_precision */
} bench_options;

static int parse_list(const char *text, int64_t *values, int max)
{
    int count = 0;
    char *copy = strdup(text), *save = NULL;
    for (char *item = strtok_r(copy, " ,", &save); item && count < max; item = strtok_r(NULL, " ,", &save)) {
        long long v = strtoll(item, NULL, 10);
        if (v < 1) {
            count = -1;
            break;
        }
        values[count++] = v;
    }
    free(copy);
    return count;
}

static void usage(FILE *out)
{
    fprintf(out, "usage: bench-decode --quantized FILE.h5 [--threads \"1 2\"] [--tokens 16] [--prefill \"64 512\"]\n"
                 "                    [--repeat 3] [--prefill-repeat 1] [--stream-mb 1024] [--no-float] [--int8-prefill]\n"
                 "                    [--batch int16|f32]\n");
}

static bool parse(int argc, char **argv, bench_options *o)
{
    static const struct option long_options[] = {
        {"quantized", required_argument, NULL, 'q'}, {"threads", required_argument, NULL, 't'},
        {"tokens", required_argument, NULL, 'n'},    {"prefill", required_argument, NULL, 'p'},
        {"repeat", required_argument, NULL, 'r'},    {"stream-mb", required_argument, NULL, 's'},
        {"no-float", no_argument, NULL, 'f'},        {"help", no_argument, NULL, 'h'},
        {"prefill-repeat", required_argument, NULL, 'R'}, {"int8-prefill", no_argument, NULL, 'i'},
        {"batch", required_argument, NULL, 'b'},     {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->threads[0] = 1;
    o->threads[1] = 2;
    o->nthreads = 2;
    o->prefill[0] = 64;
    o->prefill[1] = 512;
    o->nprefill = 2;
    o->tokens = 16;
    o->repeat = 3;
    o->prefill_repeat = 1;
    o->stream_mb = 1024;
    o->with_float = true;
    o->batch = -1;
    int option;
    int64_t list[MAX_LIST];
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'q': o->path = optarg; break;
        case 't':
            o->nthreads = parse_list(optarg, list, MAX_LIST);
            for (int i = 0; i < o->nthreads; i++)
                o->threads[i] = (int)list[i];
            break;
        case 'n': o->tokens = strtoll(optarg, NULL, 10); break;
        case 'p': o->nprefill = parse_list(optarg, o->prefill, MAX_LIST); break;
        case 'r': o->repeat = atoi(optarg); break;
        case 's': o->stream_mb = strtoll(optarg, NULL, 10); break;
        case 'f': o->with_float = false; break;
        case 'R': o->prefill_repeat = atoi(optarg); break;
        case 'i': o->with_int8_prefill = true; break;
        case 'b':
            if (strcmp(optarg, "int16") && strcmp(optarg, "f32"))
                return false;
            o->batch = strcmp(optarg, "f32") ? SB_ACT_INT16 : SB_ACT_F32;
            break;
        case 'h': usage(stdout); exit(0);
        default: return false;
        }
    }
    return o->path && o->nthreads > 0 && o->nprefill >= 0 && o->tokens > 0 && o->repeat > 0 && o->prefill_repeat > 0 &&
           o->stream_mb > 0;
}

/* ---- STREAM-style read ------------------------------------------------------------------------- */

static uint64_t sum_words(const uint64_t *words, size_t count)
{
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= count; i += 4) {
        a += words[i];
        b += words[i + 1];
        c += words[i + 2];
        d += words[i + 3];
    }
    return a + b + c + d;
}

static double cpu_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* GB/s of reading `bytes` with `threads` threads, each its own contiguous part (best of repeat). */
static double stream_read(const uint64_t *buffer, size_t bytes, int threads, int repeat, double *cpu_gbs)
{
    double best = INFINITY;
    volatile uint64_t sink = 0;
    size_t words = bytes / sizeof(uint64_t);
    for (int run = 0; run <= repeat; run++) { /* run 0 warms up */
        double start = sb_now(), cpu_start = cpu_seconds();
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), n = omp_get_num_threads();
            size_t begin = words * (size_t)t / (size_t)n, end = words * (size_t)(t + 1) / (size_t)n;
            uint64_t s = sum_words(buffer + begin, end - begin);
#pragma omp atomic
            sink += s;
        }
        double seconds = sb_now() - start, cpu = (cpu_seconds() - cpu_start) / threads;
        if (run > 0 && seconds < best) {
            best = seconds;
            *cpu_gbs = (double)bytes / cpu / 1e9;
        }
    }
    return (double)bytes / best / 1e9;
}

/* ---- The model's matrices ---------------------------------------------------------------------- */

typedef struct layer_set {
    sb_qmatrix matrix[SB_LINEAR_KIND_COUNT];
} layer_set;

typedef struct model_set {
    int64_t layers;
    layer_set *layer;
    int64_t packed_bytes, stored_bytes, weights;
    sb_qact input[3][3];                         /* [precision][q/k/v/gate/up, o, down inputs] */
    float *x;                                    /* [max_tokens x max cols] activations */
    float *y;                                    /* [max_tokens x max rows] outputs */
} model_set;

/* The inputs of the 7 kinds: which sb_qact, and whether the kind before it shares the input. */
static sb_qact *input_of(model_set *set, sb_act_precision precision, sb_linear_kind kind)
{
    return &set->input[precision][kind == SB_LINEAR_O ? 1 : kind == SB_LINEAR_DOWN ? 2 : 0];
}
static bool shares_input(sb_linear_kind kind) { return kind == SB_LINEAR_K || kind == SB_LINEAR_V || kind == SB_LINEAR_UP; }

/* One pass of `ntokens` tokens over every matrix (what one forward's linear layers read). */
static void model_pass(const sb_kernel *kernel, model_set *set, int64_t ntokens, sb_act_precision precision,
                       int threads)
{
    for (int64_t l = 0; l < set->layers; l++)
        for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++) {
            const sb_qmatrix *m = &set->layer[l].matrix[kind];
            sb_qact *act = input_of(set, precision, (sb_linear_kind)kind);
            if (!shares_input((sb_linear_kind)kind))
                sb_qact_quantize(act, set->x, ntokens, m->cols, threads);
            sb_qmatrix_mul(kernel, m, act, set->y, m->rows, false, threads);
        }
}

/* Best-of-repeat wall seconds of one pass; *cpu gets the CPU seconds per thread of that run
 * (on a loaded machine, wall time counts the time slices other processes took; CPU time does
 * not, so it tells kernel variants apart where wall time cannot). */
static double time_pass(const sb_kernel *kernel, model_set *set, int64_t ntokens, sb_act_precision precision,
                        int64_t passes, int threads, int repeat, double *cpu)
{
    double best = INFINITY;
    for (int run = 0; run <= repeat; run++) {
        double start = sb_now(), cpu_start = cpu_seconds();
        for (int64_t p = 0; p < passes; p++)
            model_pass(kernel, set, ntokens, precision, threads);
        double seconds = (sb_now() - start) / (double)passes;
        double cpu_used = (cpu_seconds() - cpu_start) / (double)passes / threads;
        if (run > 0 && seconds < best) {
            best = seconds;
            *cpu = cpu_used;
        }
    }
    return best;
}

/* Seconds of one layer's 7 products in float (cblas_sgemm, OpenBLAS's own threads). */
static double time_float_layer(float *const *weights, const int64_t *rows, const int64_t *cols, const float *x, float *y,
                               int64_t ntokens, int threads, int repeat)
{
    openblas_set_num_threads(threads);
    double best = INFINITY;
    for (int run = 0; run <= repeat; run++) {
        double start = sb_now();
        for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)ntokens, (int)rows[kind], (int)cols[kind], 1.0f,
                        x, (int)cols[kind], weights[kind], (int)cols[kind], 0.0f, y, (int)rows[kind]);
        double seconds = sb_now() - start;
        if (run > 0 && seconds < best)
            best = seconds;
    }
    return best;
}

int main(int argc, char **argv)
{
    bench_options o;
    if (!parse(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    sb_error err;
    sb_kernel kernel;
    sb_h5_reader reader;
    sb_model_config config;
    if (sb_kernel_choose(&kernel, &err) != SB_OK || sb_h5_reader_open(o.path, &reader, &err) != SB_OK ||
        sb_h5_reader_config(&reader, &config, &err) != SB_OK) {
        fprintf(stderr, "bench-decode: %s\n", err.message);
        return 1;
    }
    const sb_model_shape *shape = &config.shape;
    model_set set;
    memset(&set, 0, sizeof set);
    set.layers = shape->num_hidden_layers;
    set.layer = calloc((size_t)set.layers, sizeof *set.layer);
    int64_t max_tokens = 1;
    for (int i = 0; i < o.nprefill; i++)
        max_tokens = o.prefill[i] > max_tokens ? o.prefill[i] : max_tokens;
    int64_t widest = shape->hidden_size > shape->intermediate_size ? shape->hidden_size : shape->intermediate_size;
    int64_t q_dim = shape->num_attention_heads * shape->head_dim;
    widest = q_dim > widest ? q_dim : widest;
    double load_start = sb_now();
    for (int64_t l = 0; l < set.layers; l++)
        for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++) {
            char name[256];
            sb_linear_weight_name(l, (sb_linear_kind)kind, name, sizeof name);
            const sb_h5_quantized *tensor = sb_h5_find_quantized(&reader, name);
            if (!tensor) {
                fprintf(stderr, "bench-decode: %s: tensor '%s' is not quantized in this file\n", o.path, name);
                return 1;
            }
            if (sb_h5_load_qmatrix(&reader, tensor, &set.layer[l].matrix[kind], &err) != SB_OK) {
                fprintf(stderr, "bench-decode: %s\n", err.message);
                return 1;
            }
            set.packed_bytes += sb_qmatrix_bytes(&set.layer[l].matrix[kind]);
            set.stored_bytes += sb_h5_tensor_bits(tensor) / 8;
            set.weights += tensor->rows * tensor->cols;
        }
    double load_seconds = sb_now() - load_start;
    const layer_set *first = &set.layer[0];
    static const sb_linear_kind input_kinds[3] = {SB_LINEAR_Q, SB_LINEAR_O, SB_LINEAR_DOWN};
    for (int precision = 0; precision < 3; precision++)
        for (int i = 0; i < 3; i++)
            if (sb_qact_create(&first->matrix[input_kinds[i]], max_tokens, (sb_act_precision)precision,
                               &set.input[precision][i], &err) != SB_OK) {
                fprintf(stderr, "bench-decode: %s\n", err.message);
                return 1;
            }
    set.x = malloc((size_t)(max_tokens * widest) * sizeof(float));
    set.y = malloc((size_t)(max_tokens * widest) * sizeof(float));
    for (int64_t i = 0; i < max_tokens * widest; i++)
        set.x[i] = (float)sin((double)i * 0.7) * (i % 97 == 0 ? 8.0f : 1.0f);
    /* float copies of layer 0 (the reference decoder), for the OpenBLAS comparison */
    float *float_weights[SB_LINEAR_KIND_COUNT] = {0};
    int64_t rows[SB_LINEAR_KIND_COUNT], cols[SB_LINEAR_KIND_COUNT];
    for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++) {
        rows[kind] = first->matrix[kind].rows;
        cols[kind] = first->matrix[kind].cols;
        if (!o.with_float)
            continue;
        char name[256];
        sb_linear_weight_name(0, (sb_linear_kind)kind, name, sizeof name);
        float_weights[kind] = malloc((size_t)(rows[kind] * cols[kind]) * sizeof(float));
        if (!float_weights[kind] || sb_h5_dequantize_rows(&reader, sb_h5_find_quantized(&reader, name), 0, rows[kind],
                                                          float_weights[kind], &err) != SB_OK) {
            fprintf(stderr, "bench-decode: %s\n", err.message);
            return 1;
        }
    }
    size_t stream_bytes = (size_t)o.stream_mb << 20;
    uint64_t *stream = malloc(stream_bytes);
    if (!stream || !set.x || !set.y) {
        fprintf(stderr, "bench-decode: out of memory\n");
        return 1;
    }
    memset(stream, 1, stream_bytes);
    /* the precision of a long batch (the prefill loop below asks per batch size) */
    sb_act_precision batch = o.batch >= 0 ? (sb_act_precision)o.batch : sb_kernel_batch_precision(&kernel, &first->matrix[0], 512);
    printf("file=%s isa=%s batch=%s layers=%lld weights=%lld stored_bytes=%lld packed_bytes=%lld stored_bpw=%.4f "
           "packed_bpw=%.4f load_seconds=%.3f load_gbs=%.3f\n",
           o.path, sb_isa_name(kernel.isa), batch == SB_ACT_F32 ? "f32" : "int16", (long long)set.layers, (long long)set.weights,
           (long long)set.stored_bytes, (long long)set.packed_bytes, 8.0 * (double)set.stored_bytes / (double)set.weights,
           8.0 * (double)set.packed_bytes / (double)set.weights, load_seconds,
           (double)set.stored_bytes / load_seconds / 1e9);
    for (int i = 0; i < o.nthreads; i++) {
        int threads = o.threads[i];
        double stream_cpu_gbs = 0.0;
        double stream_gbs = stream_read(stream, stream_bytes, threads, o.repeat, &stream_cpu_gbs);
        double decode_cpu = 0.0;
        double decode_seconds = time_pass(&kernel, &set, 1, SB_ACT_INT8, o.tokens, threads, o.repeat, &decode_cpu);
        double decode_gbs = (double)set.packed_bytes / decode_seconds / 1e9;
        printf("threads=%d stream_gbs=%.2f decode_tps=%.2f decode_gbs=%.2f decode_vs_stream=%.3f decode_cpu_gbs=%.2f stream_cpu_gbs=%.2f",
               threads, stream_gbs, 1.0 / decode_seconds, decode_gbs, decode_gbs / stream_gbs,
               (double)set.packed_bytes / decode_cpu / 1e9, stream_cpu_gbs);
        for (int p = 0; p < o.nprefill; p++) {
            int64_t n = o.prefill[p];
            double cpu;
            sb_act_precision precision =
                o.batch >= 0 ? (sb_act_precision)o.batch : sb_kernel_batch_precision(&kernel, &first->matrix[0], n);
            double seconds = time_pass(&kernel, &set, n, precision, 1, threads, o.prefill_repeat, &cpu);
            /* tokens per CPU-second of all threads: what a kernel change is judged by on a
             * shared machine (wall time counts other processes' time slices) */
            printf(" prefill%lld_tps=%.1f prefill%lld_cpu_tps=%.1f", (long long)n, (double)n / seconds, (long long)n,
                   (double)n / (cpu * threads));
            if (o.with_int8_prefill) {
                double seconds8 = time_pass(&kernel, &set, n, SB_ACT_INT8, 1, threads, o.prefill_repeat, &cpu);
                printf(" prefill%lld_int8_tps=%.1f", (long long)n, (double)n / seconds8);
            }
            if (o.with_float) {
                double layer = time_float_layer(float_weights, rows, cols, set.x, set.y, n, threads, o.prefill_repeat);
                printf(" float%lld_tps=%.1f", (long long)n, (double)n / (layer * (double)set.layers));
            }
        }
        printf("\n");
        fflush(stdout);
    }
    for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++)
        free(float_weights[kind]);
    free(stream);
    free(set.x);
    free(set.y);
    for (int precision = 0; precision < 3; precision++)
        for (int i = 0; i < 3; i++)
            sb_qact_free(&set.input[precision][i]);
    for (int64_t l = 0; l < set.layers; l++)
        for (int kind = 0; kind < SB_LINEAR_KIND_COUNT; kind++)
            sb_qmatrix_free(&set.layer[l].matrix[kind]);
    free(set.layer);
    sb_config_free(&config);
    sb_h5_reader_close(&reader);
    return 0;
}
