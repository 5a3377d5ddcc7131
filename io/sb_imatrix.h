/* sb_imatrix: llama.cpp importance matrices (llama-imatrix output), read as per-column E[x^2].
 *
 * For every linear weight W (out x in) llama-imatrix accumulates, over calibration tokens, the
 * squared activations entering each input column j: h_j = E[x_j^2], a diagonal Hessian estimate
 * ("activation second moments"). Two file formats exist; both are little-endian
 * and both are read here, told apart by the "GGUF" magic:
 *
 * GGUF (llama-imatrix's default output in recent llama.cpp): a GGUF v2/v3 file (header "GGUF", u32 version,
 *   u64 tensor count, u64 key-value count; typed key-values; tensor infos (u64-length name,
 *   u32 n_dims, i64 ne[n_dims] fastest-varying first, i32 ggml type, u64 offset); data aligned
 *   to general.alignment, default 32). Per weight "<name>": "<name>.in_sum2", F32,
 *   ne = [in_columns, n_matrices], the sums of x_j^2; "<name>.counts", F32, ne = [1, n_matrices],
 *   the number of tokens summed; optionally "<name>.in_sum" (sums of x_j, ignored here). Keys
 *   "imatrix.datasets" (string array), "imatrix.chunk_count", "imatrix.chunk_size" (u32).
 *   Here: mean_sq[j] = in_sum2[j] / counts[0].
 *
 * Legacy ".dat" (llama-imatrix --output-format dat, and every file of older llama.cpp):
 *   i32 n_entries; per entry: i32 name length, name bytes (no terminator), i32 ncall,
 *   i32 nval, f32 values[nval]; then optionally i32 last chunk, i32 dataset-name length, bytes.
 *   llama.cpp stores values[j] = (sum_j / count_j) * ncall, i.e. the mean already divided by the
 *   token count and multiplied back by ncall (the number of chunks); llama-quantize divides by
 *   ncall when loading. We do the same: mean_sq[j] = values[j] / ncall. (The first versions,
 *   early 2024, before per-column counts, stored raw sums with ncall = number of batches:
 *   values / ncall is then the mean times the tokens per batch, one constant factor over the
 *   whole file, which leaves relative importance unchanged.)
 *
 * Every entry is validated: sizes, counts (ncall) > 0 and finite, every mean finite and >= 0;
 * failures name the file, the entry and the column. MoE expert tensors (GGUF n_matrices > 1,
 * legacy "*_exps" names) are refused for now. Names are mapped to Hugging Face Llama names
 * ("blk.N.attn_q.weight" -> "model.layers.N.self_attn.q_proj.weight", ...): llama.cpp permutes
 * the rows of attn_q/attn_k when converting, never the input columns, so column j here is
 * column j of the Hugging Face tensor.
 */
#ifndef SB_IMATRIX_H
#define SB_IMATRIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_safetensors.h"

typedef enum sb_imatrix_format { SB_IMATRIX_GGUF = 0, SB_IMATRIX_LEGACY } sb_imatrix_format;

typedef struct sb_imatrix_entry {
    char *llama_name; /* as in the file: "blk.3.attn_q.weight" */
    char *hf_name;    /* "model.layers.3.self_attn.q_proj.weight"; NULL if no Llama counterpart */
    int64_t ncols;    /* input columns of the weight */
    float *mean_sq;   /* ncols values: E[x_j^2] over the calibration tokens, finite, >= 0 */
    double count;     /* GGUF: tokens summed; legacy: ncall (chunks of chunk_size tokens) */
} sb_imatrix_entry;

typedef struct sb_imatrix {
    char *path;
    sb_imatrix_format format;
    int nentries;
    sb_imatrix_entry *entries; /* sorted by llama_name */
    int64_t chunk_count;       /* chunks of calibration text (GGUF key / legacy trailer), -1 unknown */
    int64_t chunk_size;        /* tokens per chunk (GGUF only), -1 unknown */
    int ndatasets;
    char **datasets;           /* calibration file names recorded by llama-imatrix */
} sb_imatrix;

/* Reads `path` in either format. On failure (SB_ERR_IO, SB_ERR_FORMAT for a malformed or
 * truncated file, SB_ERR_INPUT for well-formed data we refuse: zero counts, NaN, MoE) nothing
 * needs freeing. */
sb_status sb_imatrix_load(const char *path, sb_imatrix *imatrix, sb_error *err);
void sb_imatrix_free(sb_imatrix *imatrix);

/* The entry for a Hugging Face tensor name (or, failing that, a llama.cpp name), or NULL. */
const sb_imatrix_entry *sb_imatrix_find(const sb_imatrix *imatrix, const char *name);

/* Maps a llama.cpp Llama tensor name to its Hugging Face name; false (and "" in `hf_name`) for
 * names without a counterpart. */
bool sb_imatrix_hf_name(const char *llama_name, char *hf_name, size_t size);

/* Checks that every entry names a tensor of `checkpoint` (SB_ERR_INPUT otherwise: an imatrix of
 * another model or architecture) with as many columns as the entry. Tensors without an entry
 * are fine (llama-imatrix skips token_embd and, by default, output). */
sb_status sb_imatrix_check_checkpoint(const sb_imatrix *imatrix, const sb_checkpoint *checkpoint, sb_error *err);

/* The llama.cpp name of decoder layer `layer`'s linear weight of `kind` (0..6: q, k, v, o, gate,
 * up, down, as sb_linear_kind), e.g. "blk.3.ffn_down.weight". */
void sb_imatrix_llama_linear_name(int64_t layer, int kind, char *name, size_t size);

/* Writes a legacy .dat importance matrix, the format every llama.cpp version reads
 * (llama-quantize --imatrix): entry i is `names[i]` with `ncols[i]` values E[x_j^2] (ncall 1,
 * so the stored values are the means themselves), then the trailer (chunks, dataset name).
 * Written atomically. */
sb_status sb_imatrix_write_dat(const char *path, int nentries, const char *const *names, const int64_t *ncols,
                               const float *const *means, int chunks, const char *dataset, sb_error *err);

#endif
