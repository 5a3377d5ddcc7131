/* sb_inspect_summary: what scalebits-inspect reports of a scalebits file, computed once and
 * shown three ways (text, JSON in inspect_main.c; SVG in sb_inspect_svg.h).
 *
 * Everything is derived from the file through io/sb_h5_reader.h; the stored-bit recount and
 * the allocation hash are computed independently of the writer's attributes, and every
 * disagreement is recorded as a problem line (the tool then exits 1).
 */
#ifndef SB_INSPECT_SUMMARY_H
#define SB_INSPECT_SUMMARY_H

#include <stdint.h>

#include "sb_error.h"
#include "sb_h5_reader.h"

enum { SB_INSPECT_MAX_BITS = 8 };

typedef struct sb_bit_histogram {
    int64_t tiles[SB_INSPECT_MAX_BITS + 1];   /* tiles at each bitwidth */
    int64_t weights[SB_INSPECT_MAX_BITS + 1]; /* weights in those tiles (ragged tiles hold fewer) */
} sb_bit_histogram;

typedef struct sb_tensor_summary {
    const sb_h5_quantized *tensor;
    sb_bit_histogram histogram;
    int64_t weights, stored_bits;
    double mean_bits;  /* code bits per weight: the allocation's own measure */
    double stored_bpw; /* every stored bit (codes, scales, zeros, tile scales, bit map) per weight */
} sb_tensor_summary;

typedef struct sb_layer_summary {
    int64_t layer; /* -1: tensors outside the decoder layers */
    sb_bit_histogram histogram;
    int64_t weights, stored_bits, tiles;
    double mean_bits, stored_bpw;
    int first, count; /* its tensors: summary->by_layer[first .. first + count) */
} sb_layer_summary;

typedef struct sb_file_summary {
    const sb_h5_reader *reader;
    sb_tensor_summary *tensors; /* canonical order */
    int ntensors;
    int *by_layer; /* indices into tensors, grouped by layer (canonical order within a layer) */
    sb_layer_summary *layers;
    int nlayers;
    sb_bit_histogram histogram;
    int columns[SB_INSPECT_MAX_BITS]; /* bitwidths shown as histogram columns: the allowed ones and any used */
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
} sb_file_summary;

/* Summarises an open reader's file. The summary points into `reader`, which must outlive it.
 * On failure the summary may be partly filled: free it anyway. */
sb_status sb_inspect_summarise(const sb_h5_reader *reader, sb_file_summary *summary, sb_error *err);
void sb_inspect_summary_free(sb_file_summary *summary);

/* Mean code bits per weight of a histogram over `weights` weights (0 for none). */
double sb_histogram_mean_bits(const sb_bit_histogram *histogram, int64_t weights);
/* "affine-q8", "affine-f16", "mixed" or "none": the scale encoding of the quantized tensors. */
const char *sb_inspect_file_encoding(const sb_file_summary *summary);

#endif
