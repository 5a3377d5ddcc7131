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
#include "sb_inspect_summary.h"
#include "sb_inspect_svg.h"

typedef struct inspect_options {
    const char *path;
    bool json;
    const char *svg_dir;
} inspect_options;

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

static void print_histogram_header(const sb_file_summary *summary)
{
    for (int k = 0; k < summary->ncolumns; k++)
        printf(" %5d-b", summary->columns[k]);
    printf("\n");
}

static void print_histogram_row(const sb_file_summary *summary, const sb_bit_histogram *histogram)
{
    for (int k = 0; k < summary->ncolumns; k++)
        printf(" %7lld", (long long)histogram->tiles[summary->columns[k]]);
    printf("\n");
}

static void print_text(const sb_file_summary *summary)
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
    for (int b = 1; b <= SB_INSPECT_MAX_BITS; b++)
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
        const sb_layer_summary *layer = &summary->layers[l];
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
        const sb_tensor_summary *entry = &summary->tensors[i];
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

static json_t *json_histogram(const sb_bit_histogram *histogram, bool weights)
{
    json_t *object = json_object();
    for (int b = 1; b <= SB_INSPECT_MAX_BITS; b++) {
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

static sb_status print_json(const sb_file_summary *summary, sb_error *err)
{
    const sb_h5_reader *reader = summary->reader;
    const sb_h5_root *root = &reader->root;
    json_t *top = json_object();
    json_object_set_new(top, "file", json_string(reader->path));
    json_object_set_new(top, "file_bytes", json_integer(reader->file_bytes));
    json_object_set_new(top, "format", json_string("scalebits"));
    json_object_set_new(top, "format_version", json_integer(root->format_version));
    json_object_set_new(top, "encoding", json_string(sb_inspect_file_encoding(summary)));
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
    json_object_set_new(top, "mean_bits", json_real(sb_histogram_mean_bits(&summary->histogram, root->quantized_weights)));

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
        const sb_layer_summary *layer = &summary->layers[l];
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
        const sb_tensor_summary *entry = &summary->tensors[i];
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
    sb_file_summary summary;
    memset(&summary, 0, sizeof summary);
    status = sb_h5_reader_open(options.path, &reader, &err);
    if (status == SB_OK) {
        status = sb_inspect_summarise(&reader, &summary, &err);
        if (status == SB_OK && options.json)
            status = print_json(&summary, &err);
        else if (status == SB_OK)
            print_text(&summary);
        if (status == SB_OK && options.svg_dir)
            status = sb_inspect_write_svgs(&summary, options.svg_dir, &err);
        if (status == SB_OK && summary.nproblems > 0)
            status = sb_error_set(&err, SB_ERR_FORMAT, "%s: %s", options.path, summary.problems[0]);
        sb_inspect_summary_free(&summary);
        sb_h5_reader_close(&reader);
    }
    fflush(stdout);
    if (status != SB_OK) {
        fprintf(stderr, "scalebits-inspect: error: %s\n", err.message);
        return sb_status_exit_code(status) == 0 ? 1 : sb_status_exit_code(status);
    }
    return 0;
}
