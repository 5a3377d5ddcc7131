#include "sb_h5_name.h"

#include <stdlib.h>
#include <string.h>

static const char HEX[] = "0123456789ABCDEF";

static bool must_escape(const char *name, size_t i)
{
    unsigned char byte = (unsigned char)name[i];
    return byte == '%' || byte == '/' || byte < 0x20 || byte == 0x7F || (i == 0 && byte == '.');
}

sb_status sb_h5_name_escape(const char *name, char **link, sb_error *err)
{
    *link = NULL;
    size_t length = strlen(name), escaped = 0;
    if (length == 0)
        return sb_error_set(err, SB_ERR_INPUT, "a tensor has an empty name");
    for (size_t i = 0; i < length; i++)
        escaped += must_escape(name, i) ? 3 : 1;
    char *out = malloc(escaped + 1);
    if (!out)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory escaping tensor name '%.200s'", name);
    size_t o = 0;
    for (size_t i = 0; i < length; i++) {
        unsigned char byte = (unsigned char)name[i];
        if (must_escape(name, i)) {
            out[o++] = '%';
            out[o++] = HEX[byte >> 4];
            out[o++] = HEX[byte & 15];
        } else {
            out[o++] = (char)byte;
        }
    }
    out[o] = '\0';
    *link = out;
    return SB_OK;
}

static int hex_value(char c)
{
    const char *p = c ? strchr(HEX, c) : NULL;
    return p ? (int)(p - HEX) : -1;
}

bool sb_h5_name_unescape(const char *link, char **name)
{
    *name = NULL;
    size_t length = strlen(link);
    if (length == 0)
        return false;
    char *out = malloc(length + 1);
    if (!out)
        return false;
    size_t o = 0;
    for (size_t i = 0; i < length; i++) {
        if (link[i] != '%') {
            out[o++] = link[i];
            continue;
        }
        int high = hex_value(link[i + 1]), low = high >= 0 ? hex_value(link[i + 2]) : -1;
        if (low < 0 || (high == 0 && low == 0)) {
            free(out);
            return false;
        }
        out[o++] = (char)(high << 4 | low);
        i += 2;
    }
    out[o] = '\0';
    /* canonical: escaping the result must give the link back, byte for byte */
    char *again = NULL;
    bool canonical = sb_h5_name_escape(out, &again, NULL) == SB_OK && strcmp(again, link) == 0;
    free(again);
    if (!canonical) {
        free(out);
        return false;
    }
    *name = out;
    return true;
}
