#include "sb_tokens.h"

#include "sb_atomic.h"

#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static sb_status finish(const char *path, uint32_t *ids, int64_t count, sb_tokens *tokens, sb_error *err)
{
    tokens->path = strdup(path);
    if (!tokens->path) {
        free(ids);
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory reading %s", path);
    }
    tokens->ids = ids;
    tokens->count = count;
    return SB_OK;
}

sb_status sb_tokens_read_u32(const char *path, int64_t vocab_size, sb_tokens *tokens, sb_error *err)
{
    memset(tokens, 0, sizeof *tokens);
    uint8_t *data;
    size_t size;
    SB_TRY(sb_read_file(path, &data, &size, err));
    if (size % 4 != 0) {
        free(data);
        return sb_error_set(err, SB_ERR_FORMAT,
                            "%s: %zu bytes is not a whole number of uint32 token ids (expected a multiple of 4)",
                            path, size);
    }
    /* The ids are read in place: the byte buffer becomes the id array. */
    uint32_t *ids = (uint32_t *)(void *)data;
    int64_t count = (int64_t)(size / 4);
    for (int64_t i = 0; i < count; i++) {
        uint32_t raw;
        memcpy(&raw, data + 4 * i, 4);
        ids[i] = le32toh(raw);
        if ((int64_t)ids[i] >= vocab_size) {
            sb_status status = sb_error_set(err, SB_ERR_INPUT,
                                            "%s: token id %u at position %lld (byte offset %lld) is outside the "
                                            "model's vocabulary (vocab_size %lld): wrong tokenizer for this model?",
                                            path, ids[i], (long long)i, (long long)(4 * i), (long long)vocab_size);
            free(data);
            return status;
        }
    }
    return finish(path, ids, count, tokens, err);
}

sb_status sb_tokens_read_bytes(const char *path, int64_t vocab_size, sb_tokens *tokens, sb_error *err)
{
    memset(tokens, 0, sizeof *tokens);
    if (vocab_size < 256)
        return sb_error_set(err, SB_ERR_INPUT,
                            "%s: reading text as byte tokens needs a vocabulary of at least 256 (this model has %lld)",
                            path, (long long)vocab_size);
    uint8_t *data;
    size_t size;
    SB_TRY(sb_read_file(path, &data, &size, err));
    uint32_t *ids = sb_malloc((size ? size : 1) * sizeof *ids, "byte tokens", err);
    if (!ids) {
        free(data);
        return SB_ERR_NOMEM;
    }
    for (size_t i = 0; i < size; i++)
        ids[i] = data[i];
    free(data);
    return finish(path, ids, (int64_t)size, tokens, err);
}

void sb_tokens_free(sb_tokens *tokens)
{
    if (tokens) {
        free(tokens->ids);
        free(tokens->path);
        memset(tokens, 0, sizeof *tokens);
    }
}

sb_status sb_tokens_windows(const sb_tokens *tokens, int64_t ctx, int64_t n_windows, bool from_end,
                            sb_window_range *range, sb_error *err)
{
    memset(range, 0, sizeof *range);
    if (ctx < 2)
        return sb_error_set(err, SB_ERR_USAGE, "a window needs at least 2 tokens (ctx %lld)", (long long)ctx);
    int64_t total = tokens->count / ctx;
    if (total == 0)
        return sb_error_set(err, SB_ERR_INPUT, "%s: %lld tokens do not make one window of %lld", tokens->path,
                            (long long)tokens->count, (long long)ctx);
    if (n_windows <= 0)
        n_windows = total;
    if (n_windows > total)
        return sb_error_set(err, SB_ERR_INPUT, "%s: %lld windows of %lld tokens asked for, but its %lld tokens make "
                            "only %lld whole windows",
                            tokens->path, (long long)n_windows, (long long)ctx, (long long)tokens->count,
                            (long long)total);
    range->first_window = from_end ? total - n_windows : 0;
    range->n_windows = n_windows;
    range->total_windows = total;
    range->tokens = tokens->ids + range->first_window * ctx;
    return SB_OK;
}
