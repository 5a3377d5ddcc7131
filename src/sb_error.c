#include "sb_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A message is one line on a terminal: tensor names and paths inside it come from files and
 * may hold newlines or escape sequences, shown as '?'. */
static void one_line(char *message)
{
    for (unsigned char *p = (unsigned char *)message; *p; p++)
        if (*p < 0x20 || *p == 0x7F)
            *p = '?';
}

sb_status sb_error_set(sb_error *err, sb_status status, const char *fmt, ...)
{
    if (err) {
        err->status = status;
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, args);
        va_end(args);
        one_line(err->message);
    }
    return status;
}

sb_status sb_error_prefix(sb_error *err, const char *fmt, ...)
{
    if (!err)
        return SB_ERR_INTERNAL;
    char context[SB_ERROR_MESSAGE_MAX];
    va_list args;
    va_start(args, fmt);
    vsnprintf(context, sizeof context, fmt, args);
    va_end(args);
    char joined[SB_ERROR_MESSAGE_MAX];
    /* the message is cut at SB_ERROR_MESSAGE_MAX on purpose: it is for people, not a path */
    size_t used = strlen(context);
    if (used > sizeof joined - 3)
        used = sizeof joined - 3;
    memcpy(joined, context, used);
    memcpy(joined + used, ": ", 2);
    size_t rest = sizeof joined - used - 3, length = strlen(err->message);
    memcpy(joined + used + 2, err->message, length < rest ? length : rest);
    joined[used + 2 + (length < rest ? length : rest)] = '\0';
    one_line(joined);
    memcpy(err->message, joined, sizeof joined);
    return err->status;
}

void sb_error_clear(sb_error *err)
{
    if (err) {
        err->status = SB_OK;
        err->message[0] = '\0';
    }
}

const char *sb_status_name(sb_status status)
{
    switch (status) {
    case SB_OK: return "ok";
    case SB_ERR_USAGE: return "usage error";
    case SB_ERR_IO: return "i/o error";
    case SB_ERR_FORMAT: return "malformed input";
    case SB_ERR_INPUT: return "bad input";
    case SB_ERR_BUDGET: return "budget error";
    case SB_ERR_NOMEM: return "out of memory";
    case SB_ERR_MPI: return "mpi error";
    case SB_ERR_STOPPED: return "stopped";
    case SB_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}

int sb_status_exit_code(sb_status status)
{
    switch (status) {
    case SB_OK: return 0;
    case SB_ERR_USAGE: return 2;
    case SB_ERR_BUDGET: return 3;
    case SB_ERR_STOPPED: return 4;
    default: return 1;
    }
}

void *sb_malloc(size_t bytes, const char *what, sb_error *err)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        sb_error_set(err, SB_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
    return p;
}

void *sb_calloc(size_t count, size_t size, const char *what, sb_error *err)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        sb_error_set(err, SB_ERR_NOMEM, "cannot allocate %zu x %zu bytes for %s", count, size, what);
    return p;
}
