#include "sb_tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_atomic.h"

enum { LLAMA2C_BOS = 1, LLAMA2C_BYTE_BASE = 3 };

void sb_tokenizer_bytes(sb_tokenizer *t)
{
    memset(t, 0, sizeof *t);
    t->vocab = 256;
    t->bytes = true;
}

void sb_tokenizer_free(sb_tokenizer *t)
{
    free(t->pieces);
    free(t->lengths);
    free(t->scores);
    free(t->sorted);
    free(t->storage);
    memset(t, 0, sizeof *t);
}

int64_t sb_tokenizer_bos(const sb_tokenizer *t) { return t->bytes ? -1 : LLAMA2C_BOS; }

static int compare_pieces(const void *a, const void *b, void *tokenizer)
{
    const sb_tokenizer *t = tokenizer;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    int32_t common = t->lengths[i] < t->lengths[j] ? t->lengths[i] : t->lengths[j];
    int order = memcmp(t->pieces[i], t->pieces[j], (size_t)common);
    if (order)
        return order;
    if (t->lengths[i] != t->lengths[j])
        return t->lengths[i] < t->lengths[j] ? -1 : 1;
    return (i > j) - (i < j);
}

sb_status sb_tokenizer_load_llama2c(const char *path, int64_t vocab, sb_tokenizer *t, sb_error *err)
{
    memset(t, 0, sizeof *t);
    if (vocab < LLAMA2C_BYTE_BASE + 256 || vocab > (1 << 24))
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: a llama2.c tokenizer needs a vocabulary of 259 to 2^24 tokens (the model has %lld)",
                            path, (long long)vocab);
    uint8_t *data;
    size_t size;
    SB_TRY(sb_read_file(path, &data, &size, err));
    t->vocab = vocab;
    t->pieces = calloc((size_t)vocab, sizeof *t->pieces);
    t->lengths = calloc((size_t)vocab, sizeof *t->lengths);
    t->scores = calloc((size_t)vocab, sizeof *t->scores);
    t->sorted = calloc((size_t)vocab, sizeof *t->sorted);
    /* the pieces, NUL-terminated, fit in the file's own size */
    t->storage = malloc(size + (size_t)vocab + 1);
    sb_status status = SB_OK;
    if (!t->pieces || !t->lengths || !t->scores || !t->sorted || !t->storage) {
        status = sb_error_set(err, SB_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    int32_t max_length;
    size_t at = 0;
    if (size < 4) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: not a llama2.c tokenizer (%zu bytes)", path, size);
        goto done;
    }
    memcpy(&max_length, data, 4);
    at = 4;
    if (max_length < 1 || max_length > (1 << 16)) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: max_token_length %d is implausible", path, max_length);
        goto done;
    }
    char *out = t->storage;
    for (int64_t i = 0; i < vocab; i++) {
        int32_t length;
        if (size - at < 8) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: ends at token %lld of the model's %lld (vocab_size mismatch?)",
                                  path, (long long)i, (long long)vocab);
            goto done;
        }
        memcpy(&t->scores[i], data + at, 4);
        memcpy(&length, data + at + 4, 4);
        at += 8;
        if (length < 0 || length > max_length || (size_t)length > size - at) {
            status = sb_error_set(err, SB_ERR_FORMAT, "%s: token %lld has a length of %d (max_token_length %d, %zu bytes left)",
                                  path, (long long)i, length, max_length, size - at);
            goto done;
        }
        memcpy(out, data + at, (size_t)length);
        out[length] = '\0';
        t->pieces[i] = out;
        t->lengths[i] = length;
        out += length + 1;
        at += (size_t)length;
        t->sorted[i] = (int32_t)i;
    }
    if (at != size) {
        status = sb_error_set(err, SB_ERR_FORMAT, "%s: %zu bytes left after the model's %lld tokens (vocab_size mismatch?)",
                              path, size - at, (long long)vocab);
        goto done;
    }
    qsort_r(t->sorted, (size_t)vocab, sizeof *t->sorted, compare_pieces, t);
done:
    free(data);
    if (status != SB_OK)
        sb_tokenizer_free(t);
    return status;
}

/* The id of the piece `text` (`length` bytes), lowest id among equal pieces; -1 if none. */
static int64_t lookup(const sb_tokenizer *t, const char *text, size_t length)
{
    int64_t low = 0, high = t->vocab; /* first sorted entry >= text */
    while (low < high) {
        int64_t mid = (low + high) / 2;
        int32_t id = t->sorted[mid];
        size_t common = (size_t)t->lengths[id] < length ? (size_t)t->lengths[id] : length;
        int order = memcmp(t->pieces[id], text, common);
        if (order == 0)
            order = (size_t)t->lengths[id] < length ? -1 : 0;
        if (order < 0)
            low = mid + 1;
        else
            high = mid;
    }
    if (low < t->vocab) {
        int32_t id = t->sorted[low];
        if ((size_t)t->lengths[id] == length && memcmp(t->pieces[id], text, length) == 0)
            return id;
    }
    return -1;
}

/* Bytes of the UTF-8 character starting with `lead` (1 for a stray continuation byte). */
static size_t utf8_length(unsigned char lead)
{
    return lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
}

sb_status sb_tokenizer_encode(const sb_tokenizer *t, const char *text, size_t length, bool bos, uint32_t **ids,
                              int64_t *count, sb_error *err)
{
    /* at most BOS + the leading space + one token per byte */
    uint32_t *out = sb_malloc((length + 2) * sizeof *out, "token ids", err);
    if (!out)
        return SB_ERR_NOMEM;
    int64_t n = 0;
    if (t->bytes) {
        for (size_t i = 0; i < length; i++)
            out[n++] = (unsigned char)text[i];
        *ids = out;
        *count = n;
        return SB_OK;
    }
    if (bos)
        out[n++] = LLAMA2C_BOS;
    int64_t space = length > 0 ? lookup(t, " ", 1) : -1;
    if (space >= 0)
        out[n++] = (uint32_t)space;
    for (size_t i = 0; i < length;) {
        size_t bytes = utf8_length((unsigned char)text[i]);
        if (bytes > length - i)
            bytes = length - i;
        int64_t id = lookup(t, text + i, bytes);
        if (id >= 0) {
            out[n++] = (uint32_t)id;
        } else {
            for (size_t b = 0; b < bytes; b++)
                out[n++] = LLAMA2C_BYTE_BASE + (unsigned char)text[i + b];
        }
        i += bytes;
    }
    /* merges: the best-scoring adjacent pair, leftmost among equals, until none applies */
    char *pair = malloc(2 * 65536 + 1);
    if (!pair) {
        free(out);
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory encoding the prompt");
    }
    int64_t first = bos ? 1 : 0;
    for (;;) {
        float best_score = 0.0f;
        int64_t best_id = -1, best_at = -1;
        for (int64_t i = first; i + 1 < n; i++) {
            size_t a = (size_t)t->lengths[out[i]], b = (size_t)t->lengths[out[i + 1]];
            memcpy(pair, t->pieces[out[i]], a);
            memcpy(pair + a, t->pieces[out[i + 1]], b);
            int64_t id = lookup(t, pair, a + b);
            if (id >= 0 && (best_id < 0 || t->scores[id] > best_score)) {
                best_score = t->scores[id];
                best_id = id;
                best_at = i;
            }
        }
        if (best_id < 0)
            break;
        out[best_at] = (uint32_t)best_id;
        memmove(out + best_at + 1, out + best_at + 2, (size_t)(n - best_at - 2) * sizeof *out);
        n--;
    }
    free(pair);
    *ids = out;
    *count = n;
    return SB_OK;
}

size_t sb_tokenizer_piece(const sb_tokenizer *t, int64_t previous, uint32_t token, const char **piece, char byte[1])
{
    if ((int64_t)token >= t->vocab) {
        *piece = "";
        return 0;
    }
    if (t->bytes) {
        byte[0] = (char)token;
        *piece = byte;
        return 1;
    }
    const char *text = t->pieces[token];
    size_t length = (size_t)t->lengths[token];
    unsigned value;
    char end;
    if (length == 6 && sscanf(text, "<0x%2X%c", &value, &end) == 2 && end == '>') {
        byte[0] = (char)value;
        *piece = byte;
        return 1;
    }
    if (previous == LLAMA2C_BOS && length > 0 && text[0] == ' ') {
        text++;
        length--;
    }
    *piece = text;
    return length;
}
