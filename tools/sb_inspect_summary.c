#include "sb_inspect_summary.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_quant.h"

static void sb_histogram_add(sb_bit_histogram *into, const sb_bit_histogram *from)
{
    for (int b = 0; b <= SB_INSPECT_MAX_BITS; b++) {
        into->tiles[b] += from->tiles[b];
        into->weights[b] += from->weights[b];
    }
}

double sb_histogram_mean_bits(const sb_bit_histogram *histogram, int64_t weights)
{
    double bits = 0;
    for (int b = 1; b <= SB_INSPECT_MAX_BITS; b++)
        bits += (double)histogram->weights[b] * b;
    return weights > 0 ? bits / (double)weights : 0;
}

static void add_problem(sb_file_summary *summary, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_problem(sb_file_summary *summary, const char *fmt, ...)
{
    if (summary->nproblems >= (int)(sizeof summary->problems / sizeof *summary->problems))
        return;
    va_list args;
    va_start(args, fmt);
    vsnprintf(summary->problems[summary->nproblems++], sizeof summary->problems[0], fmt, args);
    va_end(args);
}

void sb_inspect_summary_free(sb_file_summary *summary)
{
    free(summary->tensors);
    free(summary->layers);
    free(summary->by_layer);
}

sb_status sb_inspect_summarise(const sb_h5_reader *reader, sb_file_summary *summary, sb_error *err)
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
        sb_tensor_summary *entry = &summary->tensors[i];
        entry->tensor = tensor;
        for (int64_t t = 0; t < tensor->tiles; t++) {
            sb_tile_rect rect = sb_tiling_rect(&tensor->tiling, t);
            int bits = tensor->bits_per_tile[t];
            entry->histogram.tiles[bits]++;
            entry->histogram.weights[bits] += (int64_t)rect.rows * rect.cols;
        }
        entry->weights = tensor->rows * tensor->cols;
        entry->stored_bits = sb_h5_tensor_bits(tensor);
        entry->mean_bits = sb_histogram_mean_bits(&entry->histogram, entry->weights);
        entry->stored_bpw = (double)entry->stored_bits / (double)entry->weights;
        sb_histogram_add(&summary->histogram, &entry->histogram);
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
        sb_layer_summary *layer = NULL;
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
        sb_histogram_add(&layer->histogram, &entry->histogram);
    }
    int grouped = 0;
    for (int l = 0; l < summary->nlayers; l++) {
        sb_layer_summary *layer = &summary->layers[l];
        layer->mean_bits = sb_histogram_mean_bits(&layer->histogram, layer->weights);
        layer->stored_bpw = (double)layer->stored_bits / (double)layer->weights;
        layer->first = grouped;
        for (int i = 0; i < summary->ntensors; i++)
            if (summary->tensors[i].tensor->layer == layer->layer)
                summary->by_layer[grouped++] = i;
    }
    for (int i = 0; i < reader->npassthrough; i++)
        summary->passthrough_bytes += reader->passthrough[i].storage_bytes;
    /* histogram columns: the allowed bitwidths, plus any bitwidth a tile uses outside them */
    bool shown[SB_INSPECT_MAX_BITS + 1] = {false};
    for (int k = 0; k < reader->root.nbits; k++)
        if (reader->root.bits[k] >= 1 && reader->root.bits[k] <= SB_INSPECT_MAX_BITS)
            shown[reader->root.bits[k]] = true;
    for (int b = 1; b <= SB_INSPECT_MAX_BITS; b++)
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
const char *sb_inspect_file_encoding(const sb_file_summary *summary)
{
    if (summary->q8_tensors > 0 && summary->f16_tensors > 0)
        return "mixed";
    if (summary->q8_tensors > 0)
        return sb_scale_format_name(SB_SCALES_Q8);
    if (summary->f16_tensors > 0)
        return sb_scale_format_name(SB_SCALES_F16);
    return "none";
}
