/* Tokenizers (io/sb_tokenizer.h). The llama2.c one, on stories260K's tok512.bin, encodes the
 * first 2000 lines of TinyStories' validation text exactly as the reference tokenization
 * ../shared/data/tinystories_val.tok512.u32 (SentencePiece's, with BOS only where a story
 * starts; each line stripped of surrounding spaces, as the reference was); decoding gives the
 * text back. A hand-made tokenizer file checks the merge rule (best score first, leftmost
 * among equals), byte fallback for characters without a piece, the leading space and BOS
 * handling; damaged files are refused with the file named. Byte-level: bytes both ways. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_atomic.h"
#include "sb_test.h"
#include "sb_tokenizer.h"
#include "sb_tokens.h"

/* Writes a llama2.c tokenizer file: `count` pieces with scores. */
static void write_tokenizer(const char *path, const char *const *pieces, const float *scores, int count,
                            int max_length)
{
    FILE *f = fopen(path, "wb");
    fwrite(&max_length, 4, 1, f);
    for (int i = 0; i < count; i++) {
        int length = (int)strlen(pieces[i]);
        fwrite(&scores[i], 4, 1, f);
        fwrite(&length, 4, 1, f);
        fwrite(pieces[i], 1, (size_t)length, f);
    }
    fclose(f);
}

/* A toy vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then pieces. */
enum { TOY_BYTES = 3, TOY_FIRST_PIECE = 259 };
static const char *const toy_pieces[] = {" ", "a", "b", "c", "ab", "bc", " a", "abc", "é"};
static const float toy_scores[] = {-1.0f, -2.0f, -2.0f, -2.0f, -5.0f, -5.0f, -3.0f, -4.0f, -2.0f};

static void check_toy(const char *dir)
{
    enum { PIECES = sizeof toy_pieces / sizeof *toy_pieces, VOCAB = TOY_FIRST_PIECE + PIECES };
    const char *pieces[VOCAB];
    float scores[VOCAB];
    static char bytes[256][8];
    pieces[0] = "<unk>";
    pieces[1] = "\n<s>\n";
    pieces[2] = "\n</s>\n";
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        pieces[TOY_BYTES + b] = bytes[b];
    }
    for (int i = 0; i < PIECES; i++)
        pieces[TOY_FIRST_PIECE + i] = toy_pieces[i];
    for (int i = 0; i < VOCAB; i++)
        scores[i] = i >= TOY_FIRST_PIECE ? toy_scores[i - TOY_FIRST_PIECE] : 0.0f;
    char path[4200];
    snprintf(path, sizeof path, "%s/toy.bin", dir);
    write_tokenizer(path, pieces, scores, VOCAB, 8);
    sb_error err;
    sb_tokenizer t;
    SB_CHECK(sb_tokenizer_load_llama2c(path, VOCAB, &t, &err) == SB_OK);
    uint32_t *ids;
    int64_t count;
    /* "abc": leading " " then a, b, c; merges: " a" (-3) first... then "ab"? " a"+"b" is no
     * piece; "bc" (-5) is the only pair left: [" a", "bc"] */
    SB_CHECK(sb_tokenizer_encode(&t, "abc", 3, true, &ids, &count, &err) == SB_OK);
    uint32_t expected[] = {1, TOY_FIRST_PIECE + 6, TOY_FIRST_PIECE + 5};
    SB_CHECK(count == 3 && memcmp(ids, expected, sizeof expected) == 0);
    free(ids);
    /* "bcbc": " ", b, c, b, c: the leftmost "bc" merges first (equal scores), then the second */
    SB_CHECK(sb_tokenizer_encode(&t, "bcbc", 4, false, &ids, &count, &err) == SB_OK);
    uint32_t expected2[] = {TOY_FIRST_PIECE + 0, TOY_FIRST_PIECE + 5, TOY_FIRST_PIECE + 5};
    SB_CHECK(count == 3 && memcmp(ids, expected2, sizeof expected2) == 0);
    free(ids);
    /* a character with a piece (é, 2 bytes) and one without (ü): byte fallback 3 + byte */
    SB_CHECK(sb_tokenizer_encode(&t, "\xc3\xa9\xc3\xbc", 4, false, &ids, &count, &err) == SB_OK);
    uint32_t expected3[] = {TOY_FIRST_PIECE + 0, TOY_FIRST_PIECE + 8, TOY_BYTES + 0xc3, TOY_BYTES + 0xbc};
    SB_CHECK(count == 4 && memcmp(ids, expected3, sizeof expected3) == 0);
    free(ids);
    /* decoding: a byte token is its byte, the space after BOS is dropped */
    const char *piece;
    char byte[1];
    SB_CHECK(sb_tokenizer_piece(&t, -1, TOY_BYTES + 0x41, &piece, byte) == 1 && piece[0] == 'A');
    SB_CHECK(sb_tokenizer_piece(&t, 1, TOY_FIRST_PIECE + 6, &piece, byte) == 1 && piece[0] == 'a');
    SB_CHECK(sb_tokenizer_piece(&t, 5, TOY_FIRST_PIECE + 6, &piece, byte) == 2 && memcmp(piece, " a", 2) == 0);
    SB_CHECK(sb_tokenizer_piece(&t, 5, VOCAB, &piece, byte) == 0);
    SB_CHECK(sb_tokenizer_bos(&t) == 1);
    sb_tokenizer_free(&t);
    /* damaged files: the model's vocabulary larger than the file's, a file with bytes left
     * over, a length beyond max_token_length, a truncated file */
    SB_CHECK(sb_tokenizer_load_llama2c(path, VOCAB + 1, &t, &err) == SB_ERR_FORMAT && strstr(err.message, path) &&
             strstr(err.message, "vocab_size"));
    SB_CHECK(sb_tokenizer_load_llama2c(path, VOCAB - 1, &t, &err) == SB_ERR_FORMAT && strstr(err.message, "left"));
    write_tokenizer(path, pieces, scores, VOCAB, 4); /* "<unk>" is 5 bytes */
    SB_CHECK(sb_tokenizer_load_llama2c(path, VOCAB, &t, &err) == SB_ERR_FORMAT && strstr(err.message, "token 0"));
    FILE *f = fopen(path, "wb");
    fwrite("\x08\x00", 1, 2, f);
    fclose(f);
    SB_CHECK(sb_tokenizer_load_llama2c(path, VOCAB, &t, &err) == SB_ERR_FORMAT);
    SB_CHECK(sb_tokenizer_load_llama2c(path, 100, &t, &err) == SB_ERR_INPUT);
}

static void check_stories(const char *shared)
{
    char tokenizer_path[4200], text_path[4200], ids_path[4200];
    snprintf(tokenizer_path, sizeof tokenizer_path, "%s/models/stories260K/tok512.bin", shared);
    snprintf(text_path, sizeof text_path, "%s/data/tinystories_val.txt", shared);
    snprintf(ids_path, sizeof ids_path, "%s/data/tinystories_val.tok512.u32", shared);
    sb_error err;
    sb_tokenizer t;
    sb_tokens reference;
    uint8_t *text;
    size_t size;
    SB_CHECK(sb_tokenizer_load_llama2c(tokenizer_path, 512, &t, &err) == SB_OK);
    SB_CHECK(sb_tokens_read_u32(ids_path, 512, &reference, &err) == SB_OK);
    SB_CHECK(sb_read_file(text_path, &text, &size, &err) == SB_OK);
    if (sb_test_failures)
        return;
    char *line = (char *)text;
    int64_t at = 0;
    int lines = 0, matched = 0, checked = 0;
    bool round_trip = true;
    while (lines < 2000) {
        char *end = strchr(line, '\n');
        if (!end)
            break;
        *end = '\0';
        lines++;
        size_t length = strlen(line);
        while (length && line[length - 1] == ' ')
            line[--length] = '\0';
        while (*line == ' ')
            line++, length--;
        if (length) {
            while (at < reference.count && reference.ids[at] == 1)
                at++; /* BOS starts a story in the reference, not a line */
            uint32_t *ids;
            int64_t count;
            SB_CHECK(sb_tokenizer_encode(&t, line, length, false, &ids, &count, &err) == SB_OK);
            checked++;
            if (at + count <= reference.count && memcmp(ids, reference.ids + at, (size_t)count * 4) == 0)
                matched++;
            /* decoding: the leading space comes back (no BOS before it), then the line */
            char decoded[8192];
            size_t used = 0;
            for (int64_t i = 0; i < count; i++) {
                const char *piece;
                char byte[1];
                size_t n = sb_tokenizer_piece(&t, i ? (int64_t)ids[i - 1] : -1, ids[i], &piece, byte);
                if (used + n < sizeof decoded) {
                    memcpy(decoded + used, piece, n);
                    used += n;
                }
            }
            round_trip &= used == length + 1 && decoded[0] == ' ' && memcmp(decoded + 1, line, length) == 0;
            at += count;
            free(ids);
        }
        line = end + 1;
    }
    SB_CHECK_MSG(checked > 500 && matched == checked, "%d of %d lines encode as the reference", matched, checked);
    SB_CHECK_MSG(round_trip, "decoding gives the lines back");
    free(text);
    sb_tokens_free(&reference);
    sb_tokenizer_free(&t);
}

int main(void)
{
    /* byte-level */
    sb_tokenizer bytes;
    sb_tokenizer_bytes(&bytes);
    uint32_t *ids;
    int64_t count;
    sb_error err;
    SB_CHECK(sb_tokenizer_encode(&bytes, "Hi\xff", 3, true, &ids, &count, &err) == SB_OK);
    SB_CHECK(count == 3 && ids[0] == 'H' && ids[1] == 'i' && ids[2] == 255);
    free(ids);
    const char *piece;
    char byte[1];
    SB_CHECK(sb_tokenizer_piece(&bytes, -1, 200, &piece, byte) == 1 && (unsigned char)piece[0] == 200);
    SB_CHECK(sb_tokenizer_bos(&bytes) == -1);

    char *dir = sb_test_temp_dir("tokenizer");
    check_toy(dir);
    sb_test_remove_tree(dir);
    free(dir);
    const char *shared = sb_test_shared_dir();
    if (shared)
        check_stories(shared);
    else
        printf("skipping the stories260K comparison: no shared material\n");
    return sb_test_finish("test_tokenizer");
}
