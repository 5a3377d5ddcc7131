/* sb_tokenizer: text to token ids and back, for the models scalebits runs.
 *
 * Two kinds:
 *   bytes    byte-level models (vocab_size 256): a token is a byte value, both ways.
 *   llama2c  the tokenizer file of llama2.c (e.g. ../shared/models/stories260K/tok512.bin): a
 *            little-endian int32 max_token_length, then for each of the model's vocab_size
 *            tokens a float32 merge score, an int32 byte length and that many bytes of its
 *            piece. Encoding follows llama2.c's SentencePiece-style BPE: an optional BOS (id 1),
 *            a leading " " piece when the text is not empty, each UTF-8 character as its piece
 *            (or, when it has none, each of its bytes as the byte token 3 + byte), then,
 *            repeatedly, the adjacent pair whose concatenation is a piece with the highest
 *            score is merged (the leftmost among equals) until no pair merges. Decoding gives a
 *            token's piece, without its leading space right after BOS, and a piece written
 *            "<0xHH>" as the byte HH.
 *
 * A file whose sizes do not add up (a length beyond max_token_length or the file, bytes left
 * after vocab_size tokens) is an SB_ERR_FORMAT naming the file and the token. Loaded tokenizers
 * are read-only (thread-safe to use).
 */
#ifndef SB_TOKENIZER_H
#define SB_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"

typedef struct sb_tokenizer {
    int64_t vocab;
    bool bytes;         /* byte-level: id = byte value */
    char **pieces;      /* [vocab] (llama2c), NUL-terminated copies */
    int32_t *lengths;   /* [vocab] */
    float *scores;      /* [vocab] */
    int32_t *sorted;    /* [vocab] ids by piece (bytewise), then id: for lookups */
    void *storage;
} sb_tokenizer;

/* The byte-level tokenizer (vocab 256). */
void sb_tokenizer_bytes(sb_tokenizer *tokenizer);

/* Reads a llama2.c tokenizer file for a model of `vocab` tokens. On failure nothing needs
 * freeing. */
sb_status sb_tokenizer_load_llama2c(const char *path, int64_t vocab, sb_tokenizer *tokenizer, sb_error *err);
void sb_tokenizer_free(sb_tokenizer *tokenizer);

/* Encodes `length` bytes of `text` (BOS first if `bos` and the tokenizer has one) into a fresh
 * array *ids (malloc'd, *count ids). */
sb_status sb_tokenizer_encode(const sb_tokenizer *tokenizer, const char *text, size_t length, bool bos, uint32_t **ids,
                              int64_t *count, sb_error *err);

/* The bytes token `token` stands for when it follows `previous` (-1 at the start): returns
 * their count and points *piece at them (into the tokenizer, or into `byte`). A token outside
 * the vocabulary gives 0 bytes. */
size_t sb_tokenizer_piece(const sb_tokenizer *tokenizer, int64_t previous, uint32_t token, const char **piece,
                          char byte[1]);

/* The id of BOS (1) for llama2c tokenizers; -1 for byte-level ones (they have none). */
int64_t sb_tokenizer_bos(const sb_tokenizer *tokenizer);

#endif
