#include "sb_path.h"

#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

sb_status sb_path_format(char *out, size_t size, sb_error *err, const char *fmt, ...)
{
    va_list args;
    va_start(args, fmt);
    int length = vsnprintf(out, size, fmt, args);
    va_end(args);
    if (length >= 0 && (size_t)length < size)
        return SB_OK;
    sb_status status = sb_error_set(err, SB_ERR_USAGE, "path too long (%d bytes, at most %zu): %.200s...", length,
                                    size > 0 ? size - 1 : 0, out);
    if (size > 0)
        out[0] = '\0';
    return status;
}

sb_status sb_path_alloc(char **out, sb_error *err, const char *fmt, ...)
{
    *out = NULL;
    char *path = malloc(SB_PATH_MAX);
    if (!path)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory building a path");
    va_list args;
    va_start(args, fmt);
    int length = vsnprintf(path, SB_PATH_MAX, fmt, args);
    va_end(args);
    if (length < 0 || length >= SB_PATH_MAX) {
        sb_status status = sb_error_set(err, SB_ERR_USAGE, "path too long (%d bytes, at most %d): %.200s...", length,
                                        SB_PATH_MAX - 1, path);
        free(path);
        return status;
    }
    *out = path;
    return SB_OK;
}

sb_status sb_path_check_length(const char *option, const char *path, sb_error *err)
{
    size_t length = strlen(path);
    if (length == 0)
        return sb_error_set(err, SB_ERR_USAGE, "%s: empty path", option);
    if (length > SB_PATH_MAX - SB_PATH_ROOM)
        return sb_error_set(err, SB_ERR_USAGE, "%s: path of %zu bytes is too long (at most %d): %.200s...", option,
                            length, SB_PATH_MAX - SB_PATH_ROOM, path);
    return SB_OK;
}

bool sb_path_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static sb_status remember(sb_outputs *guard, const struct stat *st, const char *path, sb_error *err)
{
    for (int i = 0; i < guard->count; i++)
        if (guard->inputs[i].device == (unsigned long long)st->st_dev &&
            guard->inputs[i].inode == (unsigned long long)st->st_ino)
            return SB_OK;
    if (guard->count == guard->capacity) {
        int capacity = guard->capacity ? 2 * guard->capacity : 16;
        void *grown = realloc(guard->inputs, (size_t)capacity * sizeof *guard->inputs);
        if (!grown)
            return sb_error_set(err, SB_ERR_NOMEM, "out of memory listing the inputs");
        guard->inputs = grown;
        guard->capacity = capacity;
    }
    char *copy = strdup(path);
    if (!copy)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory listing the inputs");
    guard->inputs[guard->count++] =
        (struct sb_input_file){(unsigned long long)st->st_dev, (unsigned long long)st->st_ino, copy};
    return SB_OK;
}

sb_status sb_outputs_add_input(sb_outputs *guard, const char *path, sb_error *err)
{
    struct stat st;
    if (!path || stat(path, &st) != 0)
        return SB_OK;
    return remember(guard, &st, path, err);
}

static const char *input_named(const sb_outputs *guard, const struct stat *st)
{
    for (int i = 0; i < guard->count; i++)
        if (guard->inputs[i].device == (unsigned long long)st->st_dev &&
            guard->inputs[i].inode == (unsigned long long)st->st_ino)
            return guard->inputs[i].path;
    return NULL;
}

sb_status sb_outputs_check(sb_outputs *guard, const char *option, const char *path, sb_error *err)
{
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return sb_error_set(err, SB_ERR_USAGE, "%s %s is a directory (give a file name)", option, path);
        const char *input = input_named(guard, &st);
        if (input)
            return sb_error_set(err, SB_ERR_USAGE, "%s %s is the input %s: refusing to overwrite a source", option,
                                path, input);
    }
    for (int i = 0; i < guard->noutputs; i++)
        if (strcmp(guard->outputs[i], path) == 0 || sb_path_same_file(guard->outputs[i], path))
            return sb_error_set(err, SB_ERR_USAGE, "%s %s is also another output of this run", option, path);
    char **grown = realloc(guard->outputs, (size_t)(guard->noutputs + 1) * sizeof *grown);
    if (!grown)
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory listing the outputs");
    guard->outputs = grown;
    if (!(guard->outputs[guard->noutputs] = strdup(path)))
        return sb_error_set(err, SB_ERR_NOMEM, "out of memory listing the outputs");
    guard->noutputs++;
    return SB_OK;
}

sb_status sb_outputs_check_dir(sb_outputs *guard, const char *option, const char *dir, sb_error *err)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return SB_OK; /* a new directory holds nothing yet */
    const char *input = input_named(guard, &st);
    if (input)
        return sb_error_set(err, SB_ERR_USAGE, "%s %s is the input %s: refusing to write into a source", option, dir,
                            input);
    for (int i = 0; i < guard->count; i++) {
        char copy[SB_PATH_MAX];
        struct stat parent;
        if (sb_path_format(copy, sizeof copy, NULL, "%s", guard->inputs[i].path) == SB_OK &&
            stat(dirname(copy), &parent) == 0 && parent.st_dev == st.st_dev && parent.st_ino == st.st_ino)
            return sb_error_set(err, SB_ERR_USAGE, "%s %s holds the input %s: refusing to write into it", option, dir,
                                guard->inputs[i].path);
    }
    return SB_OK;
}

void sb_outputs_free(sb_outputs *guard)
{
    for (int i = 0; i < guard->count; i++)
        free(guard->inputs[i].path);
    free(guard->inputs);
    for (int i = 0; i < guard->noutputs; i++)
        free(guard->outputs[i]);
    free(guard->outputs);
    memset(guard, 0, sizeof *guard);
}
