/* scalebits-inspect: what a scalebits file holds, with its accounting recounted from the file.
 *
 *   open and validate (io/sb_h5_reader.h) -> recount stored bits from HDF5 storage sizes
 *   -> recompute the allocation hash from the bit maps -> summarise per tensor and per layer
 *   -> print text or one JSON object -> optionally draw SVG heat maps
 *
 * The printed numbers come from the file alone; the recount and the hash are independent of the
 * attributes the writer stored, so a mismatch means a damaged or dishonest file: it is printed
 * as a problem and the exit status is 1. Serial: no MPI.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sb_atomic.h"
#include "sb_error.h"
#include "sb_h5_reader.h"

typedef struct inspect_options {
    const char *path;
    bool json;
    const char *svg_dir;
} inspect_options;

/* ---- the summary --------------------------------------------------------------------------- */

enum { MAX_BITS = 8 };

typedef struct bit_histogram {
    int64_t tiles[MAX_BITS + 1];   /* tiles at each bitwidth */
    int64_t weights[MAX_BITS + 1]; /* weights in those tiles (ragged tiles hold fewer) */
} bit_histogram;

typedef struct tensor_summary {
    const sb_h5_quantized *tensor;
    bit_histogram histogram;
    int64_t weights, stored_bits;
    double mean_bits;  /* code bits per weight: the allocation's own measure */
    double stored_bpw; /* every stored bit (codes, scales, zeros, tile scales, bit map) per weight */
} tensor_summary;

typedef struct layer_summary {
    int64_t layer; /* -1: tensors outside the decoder layers */
    bit_histogram histogram;
    int64_t weights, stored_bits, tiles;
    double mean_bits, stored_bpw;
    int first, count; /* its tensors: summary->by_layer[first .. first + count) */
} layer_summary;

typedef struct file_summary {
    const sb_h5_reader *reader;
    tensor_summary *tensors; /* canonical order */
    int ntensors;
    int *by_layer; /* indices into tensors, grouped by layer (canonical order within a layer) */
    layer_summary *layers;
    int nlayers;
    bit_histogram histogram;
    int columns[MAX_BITS]; /* bitwidths shown as histogram columns: the allowed ones and any used */
    int ncolumns;
    int64_t code_bytes, scale_bytes, zero_bytes, tile_scale_bytes, bitmap_bytes, tensors_storage_bytes;
    int64_t passthrough_bytes;
    int f16_tensors, q8_tensors; /* quantized tensors in each encoding */
    int64_t recounted_bits, recounted_datasets;
    double recounted_bpw;
    char allocation_hash[65];
    int64_t formula_bits; /* the sum of sb_h5_tensor_bits: what docs/FORMAT.md charges */
    char problems[8][512]; /* accounting problems found, one line each */
    int nproblems;
} file_summary;

static void histogram_add(bit_histogram *into, const bit_histogram *from)
{
    for (int b = 0; b <= MAX_BITS; b++) {
        into->tiles[b] += from->tiles[b];
        into->weights[b] += from->weights[b];
    }
}

static double histogram_mean_bits(const bit_histogram *histogram, int64_t weights)
{
    double bits = 0;
    for (int b = 1; b <= MAX_BITS; b++)
        bits += (double)histogram->weights[b] * b;
    return weights > 0 ? bits / (double)weights : 0;
}

static void add_problem(file_summary *summary, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(file_summary *summary, const char *fmt, ...)
{
    if (summary->nproblems >= (int)(sizeof summary->problems / sizeof *summary->problems))
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(summary->problems[summary->nproblems++], sizeof summary->problems[0], fmt, args);
    va_end(args);
}

static void summary_free(file_summary *summary)
{
    free(summary->tensors);
    free(summary->layers);
    free(summary->by_layer);
}

static sb_status summarise(const sb_h5_reader *reader, file_summary *summary, sb_error *err)
{
    memset(summary, 0, sizeof *summary);
    summary->reader = reader;
    summary->ntensors = reader->nquantized;
    summary->tensors = sb_calloc((size_t)(reader->nquantized + 1), sizeof *summary->tensors, "tensor summary", err);
    summary->layers = sb_calloc((size_t)(reader->nquantized + 1), sizeof *summary->layers, "layer summary", err);
    summary->by_layer = sb_calloc((size_t)(reader->nquantized + 1), sizeof *summary->by_layer, "layer summary", err);
    if (!summary->tensors || !summary->layers || !summary->by_layer)
        return SB_ERR_NOMEM;
    for (int i = 0; i < reader->nquantized; i++) {
        const sb_h5_quantized *tensor = &reader->quantized[i];
        tensor_summary *entry = &summary->tensors[i];
        entry->tensor = tensor;
        for (int64_t t = 0; t < tensor->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            int bits = tensor->bits_per_tile[t];
            entry->histogram.tiles[bits]++;
            entry->histogram.weights[bits] += (int64_t)rect.rows * rect.cols;
        }
        entry->weights = tensor->rows * tensor->cols;
        entry->stored_bits = sb_h5_tensor_bits(tensor);
        entry->mean_bits = histogram_mean_bits(&entry->histogram, entry->weights);
        entry->stored_bpw = (double)entry->stored_bits / (double)entry->weights;
        histogram_add(&summary->histogram, &entry->histogram);
        summary->code_bytes += tensor->code_bytes;
        summary->bitmap_bytes += tensor->bitmap_bytes;
        /* docs/FORMAT.md: scales and zeros are float16 (affine-f16) or uint8 (affine-q8), and
         * affine-q8 adds one float16 bound per tile */
        int64_t element_bytes = tensor->format == SB_SCALES_Q8 ? 1 : 2;
        summary->scale_bytes += tensor->scale_count * element_bytes;
        summary->zero_bytes += tensor->scale_count * element_bytes;
        summary->tile_scale_bytes += tensor->format == SB_SCALES_Q8 ? 2 * tensor->tiles : 0;
        if (tensor->format == SB_SCALES_Q8)
            summary->q8_tensors++;
        else
            summary->f16_tensors++;
        summary->tensors_storage_bytes += tensor->storage_bytes;
        /* the embedding and lm_head are both "outside the layers" (-1) but sit at the two ends of
         * the canonical order: layers are found by number, not by adjacency */
        layer_summary *layer = NULL;
        for (int l = 0; l < summary->nlayers; l++)
            if (summary->layers[l].layer == tensor->layer)
                layer = &summary->layers[l];
        if (!layer) {
            layer = &summary->layers[summary->nlayers++];
            layer->layer = tensor->layer;
        }
        layer->count++;
        layer->weights += entry->weights;
        layer->stored_bits += entry->stored_bits;
        summary->formula_bits += entry->stored_bits;
        layer->tiles += tensor->tiles;
        histogram_add(&layer->histogram, &entry->histogram);
    }
    int grouped = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        layer_summary *layer = &summary->layers[l];
        layer->mean_bits = histogram_mean_bits(&layer->histogram, layer->weights);
        layer->stored_bpw = (double)layer->stored_bits / (double)layer->weights;
        layer->first = grouped;
        for (int i = 0; i < summary->ntensors; i++)
            if (summary->tensors[i].tensor->layer == layer->layer)
                summary->by_layer[grouped++] = i;
    }
    for (int i = 0; i < reader->npassthrough; i++)
        summary->passthrough_bytes += reader->passthrough[i].storage_bytes;
    /* histogram columns: the allowed bitwidths, plus any bitwidth a tile uses outside them */
    bool shown[MAX_BITS + 1] = {false};
    for (int k = 0; k < reader->root.nbits; k++)
        if (reader->root.bits[k] >= 1 && reader->root.bits[k] <= MAX_BITS)
            shown[reader->root.bits[k]] = true;
    for (int b = 1; b <= MAX_BITS; b++)
        if (shown[b] || summary->histogram.tiles[b])
            summary->columns[summary->ncolumns++] = b;

    /* the independent accounting: storage sizes and bit maps, not the writer's attributes */
    SB_TRY(sb_h5_recount_stored_bits(reader, &summary->recounted_bits, &summary->recounted_datasets, err));
    const sb_h5_root *root = &reader->root;
    summary->recounted_bpw = root->quantized_weights > 0
                                 ? (double)summary->recounted_bits / (double)root->quantized_weights
                                 : 0;
    sb_h5_allocation_sha256(reader, summary->allocation_hash);
    if (summary->recounted_bits != root->stored_bits)
        add_problem(summary, "stored_bits attribute is %lld but the datasets under /tensors store %lld bits",
                    (long long)root->stored_bits, (long long)summary->recounted_bits);
    /* a stray dataset, or one of another size than its extents say, shows up here */
    if (summary->recounted_bits != summary->formula_bits)
        add_problem(summary,
                    "the datasets under /tensors store %lld bits, but docs/FORMAT.md charges their tensors %lld",
                    (long long)summary->recounted_bits, (long long)summary->formula_bits);
    if (summary->recounted_bpw > root->budget_bpw)
        add_problem(summary, "recounted %.6f bits per weight exceed the budget of %g", summary->recounted_bpw,
                    root->budget_bpw);
    if (root->quantized_weights > 0 &&
        fabs(root->achieved_bpw - (double)root->stored_bits / (double)root->quantized_weights) > 1e-9)
        add_problem(summary, "achieved_bpw attribute %.9g is not stored_bits / quantized_weights = %.9g",
                    root->achieved_bpw, (double)root->stored_bits / (double)root->quantized_weights);
    if (root->allocation_sha256 && strcmp(root->allocation_sha256, summary->allocation_hash) != 0)
        add_problem(summary, "allocation_sha256 attribute %.16s... differs from the bit maps' %.16s...",
                    root->allocation_sha256, summary->allocation_hash);
    return SB_OK;
}

/* The scale encoding of the file's quantized tensors (docs/FORMAT.md: one for all of them). */
static const char *file_encoding(const file_summary *summary)
{
    if (summary->q8_tensors > 0 && summary->f16_tensors > 0)
        return "mixed";
    if (summary->q8_tensors > 0)
        return sb_scale_format_name(SB_SCALES_Q8);
    if (summary->f16_tensors > 0)
        return sb_scale_format_name(SB_SCALES_F16);
    return "none";
}

/* ---- text ---------------------------------------------------------------------------------- */

static void format_bytes(char *out, size_t size, double bytes)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024 && unit < 4) {
        bytes /= 1024;
        unit++;
    }
    snprintf(out, size, unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
}

static void layer_label(char *out, size_t size, int64_t layer)
{
    if (layer < 0)
        snprintf(out, size, "outside");
    else
        snprintf(out, size, "%lld", (long long)layer);
}

static void print_histogram_header(const file_summary *summary)
{
    for (int k = 0; k < summary->ncolumns; k++)
        printf(" %5d-b", summary->columns[k]);
    printf("\n");
}

static void print_histogram_row(const file_summary *summary, const bit_histogram *histogram)
{
    for (int k = 0; k < summary->ncolumns; k++)
        printf(" %7lld", (long long)histogram->tiles[summary->columns[k]]);
    printf("\n");
}

static void print_text(const file_summary *summary)
{
    const sb_h5_reader *reader = summary->reader;
    const sb_h5_root *root = &reader->root;
    char text[64], text2[64], text3[64], text4[64];
    format_bytes(text, sizeof text, (double)reader->file_bytes);
    printf("file        %s (%s)\n", reader->path, text);
    printf("format      scalebits %lld%s%s\n", (long long)root->format_version, root->tool_version ? ", written by " : "",
           root->tool_version ? root->tool_version : "");
    printf("budget      %g bits per quantized weight\n", root->budget_bpw);
    printf("achieved    %.6f bpw (stored_bits %lld / %lld quantized weights)\n", root->achieved_bpw,
           (long long)root->stored_bits, (long long)root->quantized_weights);
    printf("recounted   %.6f bpw (%lld bits in %lld datasets under /tensors, from HDF5 storage sizes): %s\n",
           summary->recounted_bpw, (long long)summary->recounted_bits, (long long)summary->recounted_datasets,
           summary->recounted_bits == root->stored_bits ? "matches stored_bits" : "MISMATCH");
    printf("allocation  sha256 %s: %s\n", summary->allocation_hash,
           !root->allocation_sha256                                       ? "no attribute to compare with"
           : strcmp(root->allocation_sha256, summary->allocation_hash) == 0 ? "recomputed from the bit maps, matches"
                                                                            : "MISMATCH with the attribute");
    printf("tiles       %lld", (long long)root->tiles);
    if (root->tile[0] > 0)
        printf(" of %lldx%lld", (long long)root->tile[0], (long long)root->tile[1]);
    if (root->group > 0)
        printf(", groups of %lld", (long long)root->group);
    if (root->nbits > 0) {
        printf(", bitwidths {");
        for (int k = 0; k < root->nbits; k++)
            printf("%s%lld", k ? "," : "", (long long)root->bits[k]);
        printf("}");
    }
    printf("\n");
    const char *separator = "            ";
    for (int b = 1; b <= MAX_BITS; b++)
        if (summary->histogram.tiles[b]) {
            printf("%s%d-bit: %lld tiles (%.1f%% of weights)", separator, b, (long long)summary->histogram.tiles[b],
                   100.0 * (double)summary->histogram.weights[b] / (double)root->quantized_weights);
            separator = ", ";
        }
    printf("\n");
    if (summary->q8_tensors > 0 && summary->f16_tensors > 0)
        printf("encoding    mixed: %d tensors affine-f16, %d affine-q8\n", summary->f16_tensors, summary->q8_tensors);
    else if (summary->q8_tensors > 0)
        printf("encoding    affine-q8: 8-bit log scale and zero point per (row, group), float16 bound per tile\n");
    else if (summary->f16_tensors > 0)
        printf("encoding    affine-f16: float16 scale and zero per (row, group)\n");
    format_bytes(text, sizeof text, (double)summary->code_bytes);
    format_bytes(text2, sizeof text2, (double)summary->scale_bytes);
    format_bytes(text3, sizeof text3, (double)summary->zero_bytes);
    format_bytes(text4, sizeof text4, (double)summary->bitmap_bytes);
    printf("sizes       codes %s, scales %s, zeros %s", text, text2, text3);
    if (summary->q8_tensors > 0) {
        format_bytes(text2, sizeof text2, (double)summary->tile_scale_bytes);
        printf(", tile scales %s", text2);
    }
    printf(", bit maps %s", text4);
    format_bytes(text, sizeof text, (double)summary->tensors_storage_bytes);
    printf(" = %s under /tensors (%d tensors)\n", text, reader->nquantized);
    format_bytes(text, sizeof text, (double)summary->passthrough_bytes);
    format_bytes(text2, sizeof text2, (double)reader->file_bytes);
    printf("            pass-through %s (%d tensors); file %s\n", text, reader->npassthrough, text2);

    printf("\nper layer (tiles at each bitwidth)\n");
    printf("%-8s %10s %6s %9s %10s", "layer", "weights", "tiles", "mean bits", "stored bpw");
    print_histogram_header(summary);
    for (int l = 0; l < summary->nlayers; l++) {
        const layer_summary *layer = &summary->layers[l];
        layer_label(text, sizeof text, layer->layer);
        printf("%-8s %10lld %6lld %9.3f %10.4f", text, (long long)layer->weights, (long long)layer->tiles,
               layer->mean_bits, layer->stored_bpw);
        print_histogram_row(summary, &layer->histogram);
    }

    printf("\nper tensor (tiles at each bitwidth)\n");
    int name_width = 6;
    for (int i = 0; i < summary->ntensors; i++) {
        int length = (int)strlen(summary->tensors[i].tensor->name);
        name_width = length > name_width ? length : name_width;
    }
    for (int i = 0; i < reader->npassthrough; i++) {
        int length = (int)strlen(reader->passthrough[i].name);
        name_width = length > name_width ? length : name_width;
    }
    printf("%-*s %-12s %6s %9s %10s", name_width, "tensor", "shape", "tiles", "mean bits", "stored bpw");
    print_histogram_header(summary);
    for (int i = 0; i < summary->ntensors; i++) {
        const tensor_summary *entry = &summary->tensors[i];
        snprintf(text, sizeof text, "%lldx%lld", (long long)entry->tensor->rows, (long long)entry->tensor->cols);
        printf("%-*s %-12s %6lld %9.3f %10.4f", name_width, entry->tensor->name, text, (long long)entry->tensor->tiles,
               entry->mean_bits, entry->stored_bpw);
        print_histogram_row(summary, &entry->histogram);
    }
    if (reader->npassthrough > 0) {
        printf("\npass-through\n");
        for (int i = 0; i < reader->npassthrough; i++) {
            const sb_h5_passthrough *tensor = &reader->passthrough[i];
            char shape[96];
            size_t used = 0;
            for (int d = 0; d < tensor->ndim; d++)
                used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%lld", d ? "x" : "",
                                         (long long)tensor->shape[d]);
            format_bytes(text, sizeof text, (double)tensor->storage_bytes);
            printf("%-*s %-12s %-5s %s\n", name_width, tensor->name, shape, sb_dtype_name(tensor->dtype), text);
        }
    }

    printf("\nprovenance\n");
    const char *labels[] = {"tool_version", "command_line", "source_model", "sensitivity", "scale_search"};
    const char *values[] = {root->tool_version, root->command_line, root->source_model, root->sensitivity,
                            root->scale_search};
    for (size_t i = 0; i < sizeof labels / sizeof *labels; i++)
        printf("  %-14s %s\n", labels[i], values[i] ? values[i] : "(absent)");
    for (int i = 0; i < root->nsource_headers; i++)
        printf("  %-14s %s\n", i == 0 ? "source headers" : "", root->source_header_sha256[i]);
    if (root->config_json) {
        json_error_t error;
        json_t *config = json_loads(root->config_json, 0, &error);
        printf("  %-14s %zu bytes", "config_json", strlen(root->config_json));
        if (config) {
            const char *keys[] = {"model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size",
                                  "torch_dtype"};
            const char *sep = ": ";
            for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
                json_t *value = json_object_get(config, keys[i]);
                if (json_is_string(value))
                    printf("%s%s %s", sep, keys[i], json_string_value(value));
                else if (json_is_integer(value))
                    printf("%s%s %lld", sep, keys[i], (long long)json_integer_value(value));
                else
                    continue;
                sep = ", ";
            }
            json_decref(config);
        } else {
            printf(" (not valid JSON: %s)", error.text);
        }
        printf("\n");
    } else {
        printf("  %-14s (absent)\n", "config_json");
    }
    for (int i = 0; i < summary->nproblems; i++)
        printf("PROBLEM: %s\n", summary->problems[i]);
}

/* ---- JSON ---------------------------------------------------------------------------------- */

static json_t *json_histogram(const bit_histogram *histogram, bool weights)
{
    json_t *object = json_object();
    for (int b = 1; b <= MAX_BITS; b++) {
        int64_t value = weights ? histogram->weights[b] : histogram->tiles[b];
        if (histogram->tiles[b]) {
            char key[4];
            snprintf(key, sizeof key, "%d", b);
            json_object_set_new(object, key, json_integer(value));
        }
    }
    return object;
}

static json_t *json_string_or_null(const char *value) { return value ? json_string(value) : json_null(); }

static json_t *json_int_pair(int64_t a, int64_t b)
{
    json_t *array = json_array();
    json_array_append_new(array, json_integer(a));
    json_array_append_new(array, json_integer(b));
    return array;
}

static sb_status print_json(const file_summary *summary, sb_error *err)
{
    const sb_h5_reader *reader = summary->reader;
    const sb_h5_root *root = &reader->root;
    json_t *top = json_object();
    json_object_set_new(top, "file", json_string(reader->path));
    json_object_set_new(top, "file_bytes", json_integer(reader->file_bytes));
    json_object_set_new(top, "format", json_string("scalebits"));
    json_object_set_new(top, "format_version", json_integer(root->format_version));
    json_object_set_new(top, "encoding", json_string(file_encoding(summary)));
    json_object_set_new(top, "budget_bpw", json_real(root->budget_bpw));
    json_object_set_new(top, "achieved_bpw", json_real(root->achieved_bpw));
    json_object_set_new(top, "recounted_bpw", json_real(summary->recounted_bpw));
    json_object_set_new(top, "stored_bits", json_integer(root->stored_bits));
    json_object_set_new(top, "recounted_stored_bits", json_integer(summary->recounted_bits));
    json_object_set_new(top, "recounted_datasets", json_integer(summary->recounted_datasets));
    json_object_set_new(top, "quantized_weights", json_integer(root->quantized_weights));
    json_object_set_new(top, "tiles", json_integer(root->tiles));
    json_object_set_new(top, "tile", json_int_pair(root->tile[0], root->tile[1]));
    json_object_set_new(top, "group", json_integer(root->group));
    json_t *bits = json_array();
    for (int k = 0; k < root->nbits; k++)
        json_array_append_new(bits, json_integer(root->bits[k]));
    json_object_set_new(top, "bits", bits);
    json_object_set_new(top, "allocation_sha256", json_string_or_null(root->allocation_sha256));
    json_object_set_new(top, "allocation_sha256_recomputed", json_string(summary->allocation_hash));
    json_object_set_new(top, "tiles_per_bitwidth", json_histogram(&summary->histogram, false));
    json_object_set_new(top, "weights_per_bitwidth", json_histogram(&summary->histogram, true));
    json_object_set_new(top, "mean_bits", json_real(histogram_mean_bits(&summary->histogram, root->quantized_weights)));

    json_t *sizes = json_object();
    json_object_set_new(sizes, "codes_bytes", json_integer(summary->code_bytes));
    json_object_set_new(sizes, "scales_bytes", json_integer(summary->scale_bytes));
    json_object_set_new(sizes, "zeros_bytes", json_integer(summary->zero_bytes));
    json_object_set_new(sizes, "tile_scales_bytes", json_integer(summary->tile_scale_bytes));
    json_object_set_new(sizes, "bitmap_bytes", json_integer(summary->bitmap_bytes));
    json_object_set_new(sizes, "tensors_storage_bytes", json_integer(summary->tensors_storage_bytes));
    json_object_set_new(sizes, "passthrough_bytes", json_integer(summary->passthrough_bytes));
    json_object_set_new(sizes, "passthrough_tensors", json_integer(reader->npassthrough));
    json_object_set_new(sizes, "file_bytes", json_integer(reader->file_bytes));
    json_object_set_new(top, "sizes", sizes);

    json_t *layers = json_array();
    for (int l = 0; l < summary->nlayers; l++) {
        const layer_summary *layer = &summary->layers[l];
        json_t *item = json_object();
        json_object_set_new(item, "layer", json_integer(layer->layer));
        json_object_set_new(item, "weights", json_integer(layer->weights));
        json_object_set_new(item, "tiles", json_integer(layer->tiles));
        json_object_set_new(item, "mean_bits", json_real(layer->mean_bits));
        json_object_set_new(item, "stored_bpw", json_real(layer->stored_bpw));
        json_object_set_new(item, "tiles_per_bitwidth", json_histogram(&layer->histogram, false));
        json_array_append_new(layers, item);
    }
    json_object_set_new(top, "layers", layers);

    json_t *tensors = json_array();
    for (int i = 0; i < summary->ntensors; i++) {
        const tensor_summary *entry = &summary->tensors[i];
        const sb_h5_quantized *tensor = entry->tensor;
        json_t *item = json_object();
        json_object_set_new(item, "name", json_string(tensor->name));
        json_object_set_new(item, "role", json_string(tensor->role));
        json_object_set_new(item, "layer", json_integer(tensor->layer));
        json_object_set_new(item, "shape", json_int_pair(tensor->rows, tensor->cols));
        json_object_set_new(item, "tile", json_int_pair(tensor->tile_rows, tensor->tile_cols));
        json_object_set_new(item, "group", json_integer(tensor->group));
        json_object_set_new(item, "source_dtype", json_string(sb_dtype_name(tensor->source_dtype)));
        json_object_set_new(item, "encoding", json_string(sb_scale_format_name(tensor->format)));
        json_object_set_new(item, "tiles", json_integer(tensor->tiles));
        json_object_set_new(item, "mean_bits", json_real(entry->mean_bits));
        json_object_set_new(item, "stored_bits", json_integer(entry->stored_bits));
        json_object_set_new(item, "stored_bpw", json_real(entry->stored_bpw));
        json_object_set_new(item, "code_bytes", json_integer(tensor->code_bytes));
        json_object_set_new(item, "tiles_per_bitwidth", json_histogram(&entry->histogram, false));
        json_array_append_new(tensors, item);
    }
    json_object_set_new(top, "tensors", tensors);

    json_t *passthrough = json_array();
    for (int i = 0; i < reader->npassthrough; i++) {
        const sb_h5_passthrough *tensor = &reader->passthrough[i];
        json_t *item = json_object(), *shape = json_array();
        for (int d = 0; d < tensor->ndim; d++)
            json_array_append_new(shape, json_integer(tensor->shape[d]));
        json_object_set_new(item, "name", json_string(tensor->name));
        json_object_set_new(item, "dtype", json_string(sb_dtype_name(tensor->dtype)));
        json_object_set_new(item, "shape", shape);
        json_object_set_new(item, "bytes", json_integer(tensor->storage_bytes));
        json_array_append_new(passthrough, item);
    }
    json_object_set_new(top, "passthrough", passthrough);

    json_t *provenance = json_object();
    json_object_set_new(provenance, "tool_version", json_string_or_null(root->tool_version));
    json_object_set_new(provenance, "command_line", json_string_or_null(root->command_line));
    json_object_set_new(provenance, "source_model", json_string_or_null(root->source_model));
    json_object_set_new(provenance, "sensitivity", json_string_or_null(root->sensitivity));
    json_object_set_new(provenance, "scale_search", json_string_or_null(root->scale_search));
    json_t *headers = json_array();
    for (int i = 0; i < root->nsource_headers; i++)
        json_array_append_new(headers, json_string(root->source_header_sha256[i]));
    json_object_set_new(provenance, "source_header_sha256", headers);
    json_t *config = root->config_json ? json_loads(root->config_json, 0, NULL) : NULL;
    /* the config verbatim when it is not JSON (it then cannot be nested as an object) */
    json_object_set_new(provenance, "config", config ? config : json_string_or_null(root->config_json));
    json_object_set_new(top, "provenance", provenance);

    json_t *problems = json_array();
    for (int i = 0; i < summary->nproblems; i++)
        json_array_append_new(problems, json_string(summary->problems[i]));
    json_object_set_new(top, "problems", problems);

    char *text = json_dumps(top, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(top);
    if (!text)
        return sb_error_set(err, SB_ERR_NOMEM, "%s: cannot build the JSON output", reader->path);
    printf("%s\n", text);
    free(text);
    return SB_OK;
}

/* ---- SVG ----------------------------------------------------------------------------------- */

/* Viridis at eight evenly spaced points: perceptually ordered (more bits = lighter), readable in
 * grey scale and by the common colour-vision deficiencies. */
static const unsigned char VIRIDIS[8][3] = {
    {0x44, 0x01, 0x54}, {0x46, 0x32, 0x7e}, {0x36, 0x5c, 0x8d}, {0x27, 0x7f, 0x8e},
    {0x1f, 0xa1, 0x87}, {0x4a, 0xc1, 0x6d}, {0xa0, 0xda, 0x39}, {0xfd, 0xe7, 0x25},
};

/* Where a (possibly fractional) bitwidth sits on the colour scale, 0..1. The scale is spread
 * over the bitwidths the file uses, evenly by rank, not by value: with {2,3,4,8} the three
 * bitwidths that most tiles get would otherwise share the dark third of the palette and look
 * alike. A mean between two bitwidths sits proportionally between their positions. */
static double colour_position(const file_summary *summary, double bits)
{
    const int *levels = summary->columns;
    int count = summary->ncolumns;
    if (count < 2)
        return 0.5;
    if (bits <= levels[0])
        return 0;
    for (int k = 1; k < count; k++)
        if (bits <= levels[k])
            return (k - 1 + (bits - levels[k - 1]) / (double)(levels[k] - levels[k - 1])) / (count - 1);
    return 1;
}

static void palette_colour(double position, int rgb[3])
{
    double scaled = fmin(fmax(position, 0), 1) * 7;
    int low = (int)floor(scaled), high = low < 7 ? low + 1 : 7;
    double t = scaled - low;
    for (int k = 0; k < 3; k++)
        rgb[k] = (int)lround(VIRIDIS[low][k] * (1 - t) + VIRIDIS[high][k] * t);
}

static void bits_colour(const file_summary *summary, double bits, char out[8])
{
    int rgb[3];
    palette_colour(colour_position(summary, bits), rgb);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
}

/* Black or white text, whichever reads better on the colour of `bits`. */
static const char *text_colour(const file_summary *summary, double bits)
{
    int rgb[3];
    palette_colour(colour_position(summary, bits), rgb);
    double luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2];
    return luminance > 128 ? "#000" : "#fff";
}

static void svg_escaped(FILE *out, const char *text)
{
    for (; *text; text++) {
        switch (*text) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        default: fputc(*text, out); break;
        }
    }
}

static const char SVG_FONT[] = "DejaVu Sans, Helvetica, Arial, sans-serif";

static void svg_begin(FILE *out, double width, double height, const char *title)
{
    fprintf(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"%s\">\n",
            width, height, width, height, SVG_FONT);
    fprintf(out, "<title>");
    svg_escaped(out, title);
    fprintf(out, "</title>\n<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
}

/* Rough text width at `size` px for layout (DejaVu Sans averages about 0.6 em per character). */
static double text_width(const char *text, double size) { return (double)strlen(text) * size * 0.6; }

/* The layout scale shared by every layer picture, so that all are drawn to the same scale:
 * the largest matrix side spans about 420 px, but a tile side is never under 3 px (then the
 * picture grows instead: it is vector graphics, zoom in) nor a weight above 4 px. */
static double svg_scale(const file_summary *summary)
{
    int64_t largest = 1, smallest_tile = 1 << 30;
    for (int i = 0; i < summary->ntensors; i++) {
        const sb_h5_quantized *tensor = summary->tensors[i].tensor;
        largest = tensor->rows > largest ? tensor->rows : largest;
        largest = tensor->cols > largest ? tensor->cols : largest;
        int tile_side = tensor->tile_rows < tensor->tile_cols ? tensor->tile_rows : tensor->tile_cols;
        smallest_tile = tile_side < smallest_tile ? tile_side : smallest_tile;
    }
    double scale = 420.0 / (double)largest;
    if (scale * (double)smallest_tile < 3)
        scale = 3.0 / (double)smallest_tile;
    return scale < 4 ? scale : 4;
}

typedef struct panel {
    const tensor_summary *entry;
    double x, y;          /* top-left of the panel (its title) */
    double width, height; /* whole panel */
    double matrix_x, matrix_y, matrix_width, matrix_height;
} panel;

enum { PANEL_TITLE_HEIGHT = 54, PANEL_GAP = 28, MARGIN = 24, HEADER_HEIGHT = 96 };

/* A panel's three text lines: the kind in bold, its bits, its shape and tiles. Short lines, so
 * that panels sit close to their matrices instead of being spread apart by long captions. */
static void panel_lines(const tensor_summary *entry, char lines[3][128])
{
    const sb_h5_quantized *tensor = entry->tensor;
    snprintf(lines[0], 128, "%s", tensor->role);
    snprintf(lines[1], 128, "mean %.2f bits · %.3f stored bpw", entry->mean_bits, entry->stored_bpw);
    snprintf(lines[2], 128, "%lld out × %lld in · %lld tile%s", (long long)tensor->rows, (long long)tensor->cols,
             (long long)tensor->tiles, tensor->tiles == 1 ? "" : "s");
}

static void panel_size(panel *p, double scale)
{
    char lines[3][128];
    panel_lines(p->entry, lines);
    p->matrix_width = (double)p->entry->tensor->cols * scale;
    p->matrix_height = (double)p->entry->tensor->rows * scale;
    double text = fmax(text_width(lines[0], 14), fmax(text_width(lines[1], 11), text_width(lines[2], 11)));
    p->width = fmax(p->matrix_width, text);
    p->height = PANEL_TITLE_HEIGHT + p->matrix_height;
}

/* One matrix: tiles coloured by bitwidth, runs of equal tiles along a tile row merged into one
 * rectangle (the reordering clusters bitwidths, so this keeps huge models' pictures small),
 * each with a tooltip; tile grid lines and bit labels when the tiles are large enough to see. */
static void svg_panel(FILE *out, const file_summary *summary, const panel *p, double scale)
{
    const sb_h5_quantized *tensor = p->entry->tensor;
    const sb_tiling *tiling = &tensor->tiling;
    char lines[3][128], colour[8];
    panel_lines(p->entry, lines);
    fprintf(out, "<g>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\" fill=\"#222\">", p->x,
            p->y + 14);
    svg_escaped(out, lines[0]);
    fprintf(out, "</text>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#333\">", p->x, p->y + 29);
    svg_escaped(out, lines[1]);
    fprintf(out, "</text>\n<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#666\">", p->x, p->y + 43);
    svg_escaped(out, lines[2]);
    fprintf(out, "</text>\n<g transform=\"translate(%.2f,%.2f)\">\n", p->matrix_x, p->matrix_y);
    fprintf(out, "<title>");
    svg_escaped(out, tensor->name);
    fprintf(out, "</title>\n");
    for (int64_t tile_row = 0; tile_row < tiling->tiles_down; tile_row++) {
        int64_t run_start = 0;
        for (int64_t tile_col = 1; tile_col <= tiling->tiles_across; tile_col++) {
            int64_t first = tile_row * tiling->tiles_across + run_start;
            bool run_ends = tile_col == tiling->tiles_across ||
                            tensor->bits_per_tile[tile_row * tiling->tiles_across + tile_col] !=
                                tensor->bits_per_tile[first];
            if (!run_ends)
                continue;
            int64_t last = tile_row * tiling->tiles_across + tile_col - 1;
            sb_tile_rect a = sb_tiling_rect(tiling, first), b = sb_tiling_rect(tiling, last);
            int bits = tensor->bits_per_tile[first];
            bits_colour(summary, bits, colour);
            fprintf(out,
                    "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\"><title>%d bits: rows "
                    "%lld-%lld, columns %lld-%lld (tile%s %lld",
                    (double)a.col0 * scale, (double)a.row0 * scale, (double)(b.col0 + b.cols - a.col0) * scale,
                    (double)a.rows * scale, colour, bits, (long long)a.row0, (long long)(a.row0 + a.rows - 1),
                    (long long)a.col0, (long long)(b.col0 + b.cols - 1), first == last ? "" : "s", (long long)first);
            if (last != first)
                fprintf(out, "-%lld", (long long)last);
            fprintf(out, ")</title></rect>\n");
            run_start = tile_col;
        }
    }
    double tile_width = tiling->tile_cols * scale, tile_height = tiling->tile_rows * scale;
    if (tile_width >= 4 && tile_height >= 4 && tensor->tiles > 1) {
        /* white grid lines between tiles: the hardware tile boundaries */
        fprintf(out, "<path fill=\"none\" stroke=\"#ffffff\" stroke-opacity=\"0.8\" stroke-width=\"%.1f\" d=\"",
                tile_width >= 12 && tile_height >= 12 ? 1.0 : 0.5);
        for (int64_t c = 1; c < tiling->tiles_across; c++)
            fprintf(out, "M%.2f 0V%.2f", (double)c * tile_width, p->matrix_height);
        for (int64_t r = 1; r < tiling->tiles_down; r++)
            fprintf(out, "M0 %.2fH%.2f", (double)r * tile_height, p->matrix_width);
        fprintf(out, "\"/>\n");
    }
    if (tile_width >= 18 && tile_height >= 16) {
        double font = fmin(14, fmin(tile_height * 0.45, tile_width * 0.5));
        for (int64_t t = 0; t < tensor->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(tiling, t);
            if (rect.cols * scale < 12 || rect.rows * scale < 12)
                continue; /* a ragged sliver: no room for a label */
            int bits = tensor->bits_per_tile[t];
            fprintf(out,
                    "<text x=\"%.2f\" y=\"%.2f\" font-size=\"%.1f\" text-anchor=\"middle\" dominant-baseline=\"central\" "
                    "fill=\"%s\" pointer-events=\"none\">%d</text>\n",
                    ((double)rect.col0 + rect.cols / 2.0) * scale, ((double)rect.row0 + rect.rows / 2.0) * scale,
                    fmin(font, fmin(rect.cols * scale, rect.rows * scale) * 0.6), text_colour(summary, bits), bits);
        }
    }
    fprintf(out, "<rect width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#333\" stroke-width=\"1\"/>\n",
            p->matrix_width, p->matrix_height);
    fprintf(out, "</g>\n</g>\n");
}

/* Legend: one swatch per bitwidth shown, with this picture's tile count. Returns the x where
 * it ends; with out == NULL it only measures. */
static double svg_legend(FILE *out, const file_summary *summary, const bit_histogram *histogram, double x, double y)
{
    if (out)
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#333\">bits per weight in the tile:</text>\n",
                x, y + 12);
    x += 170;
    for (int k = 0; k < summary->ncolumns; k++) {
        int bits = summary->columns[k];
        char colour[8], label[64];
        bits_colour(summary, bits, colour);
        snprintf(label, sizeof label, "%d bits (%lld tile%s)", bits, (long long)histogram->tiles[bits],
                 histogram->tiles[bits] == 1 ? "" : "s");
        if (out) {
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"16\" fill=\"%s\" stroke=\"#333\" "
                         "stroke-width=\"0.5\"/>\n",
                    x, y, colour);
            fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#333\">%s</text>\n", x + 21, y + 12,
                    label);
        }
        x += 21 + text_width(label, 12) + 16;
    }
    return x;
}

static const char *file_base(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Writes `text` of `size` bytes to dir/name atomically. */
static sb_status svg_commit(const char *dir, const char *name, char *text, size_t size, sb_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return sb_atomic_write_file(path, text, size, err);
}

/* Which row of a layer picture a matrix goes to: attention, MLP, anything else. */
static int panel_row(const char *role)
{
    static const char *attention[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    static const char *mlp[] = {"gate_proj", "up_proj", "down_proj"};
    for (int i = 0; i < 4; i++)
        if (strcmp(role, attention[i]) == 0)
            return 0;
    for (int i = 0; i < 3; i++)
        if (strcmp(role, mlp[i]) == 0)
            return 1;
    return 2;
}

/* The picture of one layer (or of the tensors outside the layers). */
static sb_status svg_layer(const file_summary *summary, const layer_summary *layer, double scale, const char *dir,
                           const char *name, sb_error *err)
{
    const sb_h5_root *root = &summary->reader->root;
    panel *panels = sb_calloc((size_t)layer->count, sizeof *panels, "SVG layout", err);
    if (!panels)
        return SB_ERR_NOMEM;
    /* rows of panels: attention (q, k, v, o), MLP (gate, up, down), anything else */
    double y = HEADER_HEIGHT, width = 0;
    for (int row = 0; row < 3; row++) {
        double x = MARGIN, row_height = 0;
        for (int i = 0; i < layer->count; i++) {
            const tensor_summary *entry = &summary->tensors[summary->by_layer[layer->first + i]];
            if (panel_row(entry->tensor->role) != row)
                continue;
            panel *p = &panels[i];
            p->entry = entry;
            panel_size(p, scale);
            p->x = x;
            p->y = y;
            p->matrix_x = x;
            p->matrix_y = y + PANEL_TITLE_HEIGHT;
            x += p->width + PANEL_GAP;
            row_height = fmax(row_height, p->height);
        }
        if (row_height > 0) {
            width = fmax(width, x - PANEL_GAP + MARGIN);
            y += row_height + PANEL_GAP;
        }
    }
    char title[512], subtitle[1024], layer_name[64];
    if (layer->layer >= 0)
        snprintf(layer_name, sizeof layer_name, "layer %lld", (long long)layer->layer);
    else
        snprintf(layer_name, sizeof layer_name, "tensors outside the decoder layers");
    snprintf(title, sizeof title, "%s: mean %.3f bits per weight (codes), %.3f stored bpw", layer_name,
             layer->mean_bits, layer->stored_bpw);
    snprintf(subtitle, sizeof subtitle,
             "%s · file %.4f bpw (budget %g) · to scale: rows = output channels, columns = input channels",
             file_base(summary->reader->path), root->achieved_bpw, root->budget_bpw);
    width = fmax(width, MARGIN + fmax(text_width(title, 18), text_width(subtitle, 12)) + MARGIN);
    width = fmax(width, 700);
    width = fmax(width, svg_legend(NULL, summary, &layer->histogram, MARGIN, 0) + MARGIN);
    double height = y - PANEL_GAP + MARGIN;
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out) {
        free(panels);
        return sb_error_set(err, SB_ERR_NOMEM, "cannot build %s", name);
    }
    svg_begin(out, width, height, title);
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"18\" font-weight=\"bold\" fill=\"#111\">", MARGIN, MARGIN + 10);
    svg_escaped(out, title);
    fprintf(out, "</text>\n<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">", MARGIN, MARGIN + 30);
    svg_escaped(out, subtitle);
    fprintf(out, "</text>\n");
    svg_legend(out, summary, &layer->histogram, MARGIN, MARGIN + 42);
    for (int i = 0; i < layer->count; i++)
        if (panels[i].entry)
            svg_panel(out, summary, &panels[i], scale);
    fprintf(out, "</svg>\n");
    fclose(out);
    free(panels);
    sb_status status = svg_commit(dir, name, text, size, err);
    free(text);
    return status;
}

/* Mean bits per tensor kind (columns) and layer (rows), as a coloured table with the numbers. */
static sb_status svg_overview(const file_summary *summary, const char *dir, sb_error *err)
{
    static const char *kinds[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    enum { KINDS = 7, CELL_WIDTH = 76, CELL_HEIGHT = 26, LABEL_WIDTH = 84 };
    const sb_h5_root *root = &summary->reader->root;
    int decoder_layers = 0, outside = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        decoder_layers += summary->layers[l].layer >= 0;
        outside += summary->layers[l].layer < 0 ? summary->layers[l].count : 0;
    }
    double table_x = MARGIN + LABEL_WIDTH, table_y = HEADER_HEIGHT + 28;
    double width = table_x + (KINDS + 1) * CELL_WIDTH + MARGIN;
    double height = table_y + decoder_layers * CELL_HEIGHT + 80 + 16 * outside;
    char title[256], subtitle[1024];
    snprintf(title, sizeof title, "Mean bits per weight by tensor kind and layer");
    snprintf(subtitle, sizeof subtitle, "%s · %.4f bpw stored (budget %g) · %.3f code bits per weight overall",
             file_base(summary->reader->path), root->achieved_bpw, root->budget_bpw,
             histogram_mean_bits(&summary->histogram, root->quantized_weights));
    width = fmax(width, MARGIN + fmax(text_width(title, 18), text_width(subtitle, 12)) + MARGIN);
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "cannot build overview.svg");
    svg_begin(out, width, height, title);
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"18\" font-weight=\"bold\" fill=\"#111\">", MARGIN, MARGIN + 10);
    svg_escaped(out, title);
    fprintf(out, "</text>\n<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">", MARGIN, MARGIN + 30);
    svg_escaped(out, subtitle);
    fprintf(out, "</text>\n");
    fprintf(out, "<text x=\"%d\" y=\"%d\" font-size=\"12\" fill=\"#555\">cells: code bits per weight of a matrix; "
                 "last column: the whole layer</text>\n",
            MARGIN, MARGIN + 48);
    for (int k = 0; k <= KINDS; k++)
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" font-weight=\"bold\" text-anchor=\"middle\" "
                     "fill=\"#222\">%s</text>\n",
                table_x + k * CELL_WIDTH + CELL_WIDTH / 2.0, table_y - 8, k < KINDS ? kinds[k] : "layer");
    int row = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        const layer_summary *layer = &summary->layers[l];
        if (layer->layer < 0)
            continue;
        double y = table_y + row * CELL_HEIGHT;
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\" dominant-baseline=\"central\" "
                     "fill=\"#222\">layer %lld</text>\n",
                table_x - 8, y + CELL_HEIGHT / 2.0, (long long)layer->layer);
        for (int k = 0; k <= KINDS; k++) {
            double x = table_x + k * CELL_WIDTH;
            const tensor_summary *entry = NULL;
            for (int i = 0; i < layer->count && k < KINDS; i++)
                if (strcmp(summary->tensors[summary->by_layer[layer->first + i]].tensor->role, kinds[k]) == 0)
                    entry = &summary->tensors[summary->by_layer[layer->first + i]];
            if (k < KINDS && !entry) {
                fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"#eeeeee\" stroke=\"#fff\"/>"
                             "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\" "
                             "dominant-baseline=\"central\" fill=\"#888\">not quantized</text>\n",
                        x, y, CELL_WIDTH, CELL_HEIGHT, x + CELL_WIDTH / 2.0, y + CELL_HEIGHT / 2.0);
                continue;
            }
            double bits = entry ? entry->mean_bits : layer->mean_bits;
            char colour[8];
            bits_colour(summary, bits, colour);
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"#fff\" "
                         "stroke-width=\"%d\"><title>",
                    x, y, CELL_WIDTH, CELL_HEIGHT, colour, k < KINDS ? 1 : 3);
            svg_escaped(out, entry ? entry->tensor->name : "whole layer");
            fprintf(out, ": %.3f bits per weight</title></rect>\n", bits);
            fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" "
                         "dominant-baseline=\"central\" fill=\"%s\" pointer-events=\"none\"%s>%.2f</text>\n",
                    x + CELL_WIDTH / 2.0, y + CELL_HEIGHT / 2.0, text_colour(summary, bits),
                    k < KINDS ? "" : " font-weight=\"bold\"", bits);
        }
        row++;
    }
    /* colour scale: the bitwidths in use at their (rank-spaced) positions, blended between */
    double y = table_y + decoder_layers * CELL_HEIGHT + 24;
    double bar_width = (KINDS + 1) * CELL_WIDTH;
    fprintf(out, "<defs><linearGradient id=\"bits\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">\n");
    for (int step = 0; step <= 28; step++) {
        int rgb[3];
        palette_colour(step / 28.0, rgb);
        fprintf(out, "<stop offset=\"%.3f\" stop-color=\"#%02x%02x%02x\"/>\n", step / 28.0, rgb[0], rgb[1], rgb[2]);
    }
    fprintf(out, "</linearGradient></defs>\n");
    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"end\" fill=\"#222\">bits</text>\n",
            table_x - 8, y + 12);
    fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"16\" fill=\"url(#bits)\" stroke=\"#333\" "
                 "stroke-width=\"0.5\"/>\n",
            table_x, y, bar_width);
    for (int k = 0; k < summary->ncolumns; k++) {
        int bits = summary->columns[k];
        double x = table_x + bar_width * colour_position(summary, bits);
        fprintf(out, "<path d=\"M%.1f %.1fV%.1f\" stroke=\"#333\"/><text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
                     "text-anchor=\"middle\" fill=\"#222\">%d</text>\n",
                x, y + 16, y + 21, x, y + 33, bits);
    }
    /* tensors outside the layers (a quantized embedding or lm_head): listed under the table */
    y += 56;
    for (int l = 0; l < summary->nlayers; l++) {
        const layer_summary *layer = &summary->layers[l];
        if (layer->layer >= 0)
            continue;
        for (int i = 0; i < layer->count; i++) {
            const tensor_summary *entry = &summary->tensors[summary->by_layer[layer->first + i]];
            fprintf(out, "<text x=\"%d\" y=\"%.1f\" font-size=\"12\" fill=\"#222\">", MARGIN, y);
            svg_escaped(out, entry->tensor->name);
            fprintf(out, ": %.3f bits per weight</text>\n", entry->mean_bits);
            y += 16;
        }
    }
    fprintf(out, "</svg>\n");
    fclose(out);
    sb_status status = svg_commit(dir, "overview.svg", text, size, err);
    free(text);
    return status;
}

static sb_status write_svgs(const file_summary *summary, const char *dir, sb_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return sb_error_set(err, SB_ERR_IO, "--svg %s: cannot create the directory: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return sb_error_set(err, SB_ERR_IO, "--svg %s: not a directory", dir);
    double scale = svg_scale(summary);
    int64_t max_layer = 0;
    for (int l = 0; l < summary->nlayers; l++)
        max_layer = summary->layers[l].layer > max_layer ? summary->layers[l].layer : max_layer;
    /* zero-padded to the widest layer number, at least two digits, so names sort in order */
    int digits = 2;
    for (int64_t limit = 100; max_layer >= limit; limit *= 10)
        digits++;
    for (int l = 0; l < summary->nlayers; l++) {
        const layer_summary *layer = &summary->layers[l];
        char name[64];
        if (layer->layer >= 0)
            snprintf(name, sizeof name, "layer-%0*lld.svg", digits, (long long)layer->layer);
        else
            snprintf(name, sizeof name, "outside-layers.svg");
        SB_TRY(svg_layer(summary, layer, scale, dir, name, err));
    }
    return svg_overview(summary, dir, err);
}

/* ---- main ---------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: scalebits-inspect FILE.h5 [--json] [--svg DIR]\n"
            "\n"
            "Shows what a scalebits file holds: bits per weight as stored and as recounted from the\n"
            "HDF5 storage sizes of every dataset under /tensors, the budget, tiles per bitwidth, a\n"
            "bitwidth histogram per layer and per tensor, sizes, pass-through tensors, provenance.\n"
            "Exit status 1 if the file is unreadable or its accounting does not add up.\n"
            "\n"
            "  --json       print the same as one JSON object\n"
            "  --svg DIR    also draw DIR/layer-NN.svg (heat map of bits per tile of each matrix of\n"
            "               the layer, to scale) and DIR/overview.svg (mean bits per tensor kind and\n"
            "               layer); DIR is created if needed\n");
}

static sb_status parse_options(int argc, char **argv, inspect_options *options, bool *help, sb_error *err)
{
    static const struct option long_options[] = {
        {"json", no_argument, NULL, 'j'},
        {"svg", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(options, 0, sizeof *options);
    *help = false;
    opterr = 0;
    int option;
    while ((option = getopt_long(argc, argv, "", long_options, NULL)) != -1) {
        switch (option) {
        case 'j': options->json = true; break;
        case 's': options->svg_dir = optarg; break;
        case 'h': *help = true; return SB_OK;
        default: return sb_error_set(err, SB_ERR_USAGE, "unknown option or missing value: '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return sb_error_set(err, SB_ERR_USAGE, "which file? give FILE.h5");
    options->path = argv[optind++];
    if (optind < argc)
        return sb_error_set(err, SB_ERR_USAGE, "unexpected argument '%s' (one file at a time)", argv[optind]);
    return SB_OK;
}

int main(int argc, char **argv)
{
    sb_error err;
    sb_error_clear(&err);
    inspect_options options;
    bool help;
    sb_status status = parse_options(argc, argv, &options, &help, &err);
    if (help) {
        usage(stdout);
        return 0;
    }
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-inspect: %s\n", err.message);
        usage(stderr);
        return sb_status_exit_code(status);
    }
    sb_h5_reader reader;
    file_summary summary;
    memset(&summary, 0, sizeof summary);
    status = sb_h5_reader_open(options.path, &reader, &err);
    if (status == SB_OK) {
        status = summarise(&reader, &summary, &err);
        if (status == SB_OK && options.json)
            status = print_json(&summary, &err);
        else if (status == SB_OK)
            print_text(&summary);
        if (status == SB_OK && options.svg_dir)
            status = write_svgs(&summary, options.svg_dir, &err);
        if (status == SB_OK && summary.nproblems > 0)
            status = sb_error_set(&err, SB_ERR_FORMAT, "%s: %s", options.path, summary.problems[0]);
        summary_free(&summary);
        sb_h5_reader_close(&reader);
    }
    fflush(stdout);
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-inspect: error: %s\n", err.message);
        return sb_status_exit_code(status) == 0 ? 1 : sb_status_exit_code(status);
    }
    return 0;
}
