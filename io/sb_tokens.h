/* sb_tokens: token streams for evaluation and calibration, and the windows cut from them.
 *
 * Two sources: a token file of little-endian uint32 ids (what a tokenizer wrote, e.g.
 * data/tinystories_val.tok512.u32), and a text file read as bytes for byte-level models
 * (token id = byte value). The whole file is read; every id is checked against the model's
 * vocabulary at read time, so the runtime never sees an out-of-range id.
 *
 * Windows are non-overlapping runs of `ctx` tokens counted from the start of the stream; a
 * partial window at the end is never used. "The first N windows" are windows 0..N-1; "the
 * last N windows" are the last N whole windows (384,909 tokens at ctx 256 make 1503 whole
 * windows; the last 200 are windows 1303..1502, starting at token 1303 * 256).
 *
 * Ownership: sb_tokens owns its ids; a window range points into them. Not thread-safe to
 * read into the same sb_tokens from two threads; reading the ids afterwards is.
 */
#ifndef SB_TOKENS_H
#define SB_TOKENS_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"

typedef struct sb_tokens {
    uint32_t *ids;
    int64_t count;
    char *path; /* the file read, for messages */
} sb_tokens;

/* Reads a file of little-endian uint32 ids. Errors: the file cannot be read (SB_ERR_IO), its
 * size is not a multiple of 4 (SB_ERR_FORMAT), an id is >= vocab_size (SB_ERR_INPUT, naming
 * the file, the id and its position). On failure nothing needs freeing. */
sb_status sb_tokens_read_u32(const char *path, int64_t vocab_size, sb_tokens *tokens, sb_error *err);

/* Reads a file's bytes as token ids (byte-level models). vocab_size must be >= 256 so that
 * every byte is a valid id (SB_ERR_INPUT otherwise). On failure nothing needs freeing. */
sb_status sb_tokens_read_bytes(const char *path, int64_t vocab_size, sb_tokens *tokens, sb_error *err);

void sb_tokens_free(sb_tokens *tokens);

typedef struct sb_window_range {
    const uint32_t *tokens; /* first token of the first chosen window; n_windows * ctx ids follow */
    int64_t first_window;   /* index of that window in the stream */
    int64_t n_windows;      /* chosen windows */
    int64_t total_windows;  /* whole windows in the stream */
} sb_window_range;

/* Chooses windows of `ctx` tokens: the first `n_windows` (or the last, with `from_end`);
 * n_windows <= 0 means every whole window. SB_ERR_INPUT if the stream has fewer whole windows
 * than asked for (or none), naming the file and the counts. */
sb_status sb_tokens_windows(const sb_tokens *tokens, int64_t ctx, int64_t n_windows, bool from_end,
                            sb_window_range *range, sb_error *err);

#endif
