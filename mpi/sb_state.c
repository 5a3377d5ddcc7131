#include "sb_state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_atomic.h"
#include "sb_blob.h"
#include "sb_mpi.h"
#include "sb_path.h"

static volatile sig_atomic_t stop_signal = 0;

/* The first line of every fingerprint.txt a scalebits run writes (sb_run_build_fingerprint):
 * what proves that a directory is a state directory of ours. */
static const char FINGERPRINT_MAGIC[] = "tool: scalebits ";
/* A fingerprint is a few hundred bytes per source file; anything far larger is not ours. */
enum { FINGERPRINT_MAX_BYTES = 16 << 20 };

static void on_stop_signal(int signal_number)
{
    (void)signal_number;
    stop_signal = 1;
}

void sb_state_install_signal_handlers(void)
{
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGUSR1, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
}

sb_status sb_state_path(const sb_state *state, const char *kind, const char *name, char *path, size_t size,
                        sb_error *err)
{
    if (kind)
        return sb_path_format(path, size, err, "%s/%s/%s.bin", state->dir, kind, name);
    return sb_path_format(path, size, err, "%s/%s", state->dir, name);
}

/* ---- what a state directory holds, and removing exactly that ------------------------------ */

/* Files a run writes at the top of its state directory. */
static bool is_state_file(const char *name)
{
    static const char *const names[] = {"fingerprint.txt", "manifest.json", "STOP", "allocation.bin",
                                        "refine.bin", "output.h5.tmp", NULL};
    for (int i = 0; names[i]; i++)
        if (strcmp(name, names[i]) == 0)
            return true;
    /* a temporary file of an atomic write (io/sb_atomic.h): ".<name>.tmp-<pid>" */
    return name[0] == '.' && strstr(name, ".tmp-") != NULL;
}

/* Files a run writes in curves/ and units/: blobs and their temporaries. */
static bool is_blob_file(const char *name)
{
    size_t length = strlen(name);
    return (length > 4 && strcmp(name + length - 4, ".bin") == 0) || (name[0] == '.' && strstr(name, ".tmp-"));
}

/* Removes, inside the directory open as `dir_fd`, the entries `ours` accepts: regular files
 * and symbolic links are unlinked (a link is removed, never followed); directories are left.
 * Returns how many entries were left in place. */
static int remove_files(int dir_fd, bool (*ours)(const char *name))
{
    int fd = dup(dir_fd);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        if (fd >= 0)
            close(fd);
        return 1;
    }
    int left = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dir_fd, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || S_ISDIR(st.st_mode) ||
            !ours(entry->d_name) || unlinkat(dir_fd, entry->d_name, 0) != 0)
            left++;
    }
    closedir(dir);
    return left;
}

/* Empties the sub-directory `name` (curves/, units/) of the blobs a run wrote and removes it
 * if nothing else is in it. A symbolic link in its place is left alone. */
static void remove_blob_dir(int state_fd, const char *name)
{
    int fd = openat(state_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    int left = remove_files(fd, is_blob_file);
    close(fd);
    if (left == 0)
        unlinkat(state_fd, name, AT_REMOVEDIR);
}

/* Removes what scalebits wrote in `dir` (already proven ours) and `dir` itself if it is then
 * empty. Nothing is followed through a symbolic link, and a file scalebits does not write stays:
 * a user's files are never deleted. False if the directory is still there. */
static bool remove_state_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    remove_blob_dir(fd, "curves");
    remove_blob_dir(fd, "units");
    remove_files(fd, is_state_file);
    close(fd);
    return rmdir(dir) == 0 || errno == ENOENT;
}

/* ---- is it ours? ---------------------------------------------------------------------------- */

typedef enum state_kind {
    STATE_ABSENT,   /* nothing under that name */
    STATE_OURS,     /* a directory holding a fingerprint.txt that a scalebits run wrote */
    STATE_EMPTY,    /* an empty directory (a run that died between mkdir and its fingerprint) */
    STATE_FOREIGN,  /* anything else: a user's directory, a file, a link: never touched */
} state_kind;

static state_kind classify(const char *dir, char **fingerprint)
{
    *fingerprint = NULL;
    struct stat st;
    if (lstat(dir, &st) != 0)
        return errno == ENOENT ? STATE_ABSENT : STATE_FOREIGN;
    if (!S_ISDIR(st.st_mode))
        return STATE_FOREIGN;
    char path[SB_PATH_MAX];
    struct stat fp;
    if (sb_path_format(path, sizeof path, NULL, "%s/fingerprint.txt", dir) != SB_OK)
        return STATE_FOREIGN;
    if (lstat(path, &fp) == 0 && S_ISREG(fp.st_mode) && fp.st_size <= FINGERPRINT_MAX_BYTES) {
        uint8_t *text = NULL;
        size_t size = 0;
        if (sb_read_file(path, &text, &size, NULL) == SB_OK &&
            strncmp((const char *)text, FINGERPRINT_MAGIC, sizeof FINGERPRINT_MAGIC - 1) == 0) {
            *fingerprint = (char *)text;
            return STATE_OURS;
        }
        free(text);
        return STATE_FOREIGN;
    }
    DIR *handle = opendir(dir);
    if (!handle)
        return STATE_FOREIGN;
    bool empty = true;
    struct dirent *entry;
    while (empty && (entry = readdir(handle)))
        empty = strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0;
    closedir(handle);
    return empty ? STATE_EMPTY : STATE_FOREIGN;
}

/* The lines of `saved` and `current` that differ, "budget:" excluded, as "key: old -> new". */
static void describe_difference(const char *saved, const char *current, char *out, size_t size, bool *budget_only)
{
    out[0] = '\0';
    *budget_only = true;
    size_t used = 0;
    const char *a = saved, *b = current;
    while (*a || *b) {
        const char *a_end = strchr(a, '\n'), *b_end = strchr(b, '\n');
        size_t a_len = a_end ? (size_t)(a_end - a) : strlen(a), b_len = b_end ? (size_t)(b_end - b) : strlen(b);
        if (a_len != b_len || memcmp(a, b, a_len) != 0) {
            bool is_budget = strncmp(a, "budget:", 7) == 0 && strncmp(b, "budget:", 7) == 0;
            if (!is_budget) {
                *budget_only = false;
                /* for people: the list is cut when it fills `out` */
                if (used + 1 < size) {
                    int wrote = snprintf(out + used, size - used, "%s%.*s (was: %.*s)", used ? "; " : "",
                                         (int)(b_len > 200 ? 200 : b_len), b, (int)(a_len > 200 ? 200 : a_len), a);
                    used = wrote < 0 ? size : used + (size_t)wrote;
                }
            }
        }
        a += a_len + (a_end ? 1 : 0);
        b += b_len + (b_end ? 1 : 0);
    }
}

/* Rank 0's part of sb_state_open. */
static sb_status open_on_rank0(sb_ctx *ctx, sb_state *state, const char *fingerprint, sb_error *err)
{
    char *saved = NULL;
    state_kind kind = classify(state->dir, &saved);
    if (kind == STATE_FOREIGN)
        return sb_error_set(err, SB_ERR_USAGE,
                            "%s exists and is not a scalebits state directory (it holds no fingerprint.txt written by "
                            "scalebits): refusing to delete or reuse it; move it away or choose another --out",
                            state->dir);
    sb_status status = SB_OK;
    if (kind == STATE_OURS && ctx->options.resume) {
        char difference[2048];
        bool budget_only;
        describe_difference(saved, fingerprint, difference, sizeof difference, &budget_only);
        if (difference[0] && !budget_only)
            status = sb_error_set(err, SB_ERR_USAGE,
                                  "%s: --resume refused: this run differs from the saved one: %s (run without --resume "
                                  "to start over)",
                                  state->dir, difference);
        state->resuming = status == SB_OK;
        state->budget_changed = status == SB_OK && strcmp(saved, fingerprint) != 0;
    } else if (ctx->options.resume) {
        sb_log_info(&ctx->log, "--resume: no saved state in %s, starting from the beginning", state->dir);
    }
    free(saved);
    SB_TRY(status);
    if (!state->resuming && kind != STATE_ABSENT && !remove_state_dir(state->dir))
        return sb_error_set(err, SB_ERR_IO, "%s: cannot clear the previous run's state (it holds files scalebits did "
                            "not write?)", state->dir);
    char sub[SB_PATH_MAX], path[SB_PATH_MAX];
    if (mkdir(state->dir, 0755) != 0 && errno != EEXIST)
        return sb_error_set(err, SB_ERR_IO, "%s: cannot create the state directory: %s", state->dir, strerror(errno));
    struct stat st;
    if (lstat(state->dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return sb_error_set(err, SB_ERR_IO, "%s: cannot create the state directory", state->dir);
    /* the fingerprint first: from now on the directory is provably ours */
    SB_TRY(sb_state_path(state, NULL, "fingerprint.txt", path, sizeof path, err));
    SB_TRY(sb_atomic_write_file(path, fingerprint, strlen(fingerprint), err));
    for (int i = 0; i < 2; i++) {
        SB_TRY(sb_state_path(state, NULL, i ? "units" : "curves", sub, sizeof sub, err));
        if (mkdir(sub, 0755) != 0 && errno != EEXIST)
            return sb_error_set(err, SB_ERR_IO, "%s: cannot create: %s", sub, strerror(errno));
    }
    if (state->budget_changed) {
        /* the allocation and everything after it depend on the budget */
        int fd = open(state->dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            remove_blob_dir(fd, "units");
            unlinkat(fd, "allocation.bin", 0);
            unlinkat(fd, "refine.bin", 0);
            close(fd);
        }
        SB_TRY(sb_state_path(state, NULL, "units", sub, sizeof sub, err));
        if (mkdir(sub, 0755) != 0 && errno != EEXIST)
            return sb_error_set(err, SB_ERR_IO, "%s: cannot create: %s", sub, strerror(errno));
    }
    /* a stop request is for the run that was stopped */
    SB_TRY(sb_state_path(state, NULL, "STOP", path, sizeof path, err));
    unlink(path);
    return SB_OK;
}

sb_status sb_state_open(sb_ctx *ctx, sb_state *state, const char *fingerprint, sb_error *err)
{
    memset(state, 0, sizeof *state);
    sb_status status = sb_path_format(state->dir, sizeof state->dir, err, "%s.state", ctx->options.out_path);
    if (status == SB_OK && ctx->rank == 0)
        status = open_on_rank0(ctx, state, fingerprint, err);
    SB_TRY(sb_agree(ctx->comm, status, err));
    int flags[2] = {state->resuming, state->budget_changed};
    SB_TRY(sb_agree(ctx->comm, SB_MPI_CALL(err, MPI_Bcast(flags, 2, MPI_INT, 0, ctx->comm)), err));
    state->resuming = flags[0];
    state->budget_changed = flags[1];
    state->ours = true;
    return SB_OK;
}

sb_status sb_state_write_manifest(const sb_ctx *ctx, const sb_state *state, sb_error *err)
{
    if (ctx->rank != 0)
        return SB_OK;
    static const char *const kinds[] = {"curves", "units", NULL};
    return sb_blob_write_manifest(state->dir, kinds, err);
}

sb_status sb_state_should_stop(const sb_ctx *ctx, const sb_state *state, int64_t units_done, bool *stop,
                               sb_error *err)
{
    int local = stop_signal ? 1 : 0;
    if (ctx->rank == 0) {
        char path[SB_PATH_MAX];
        if (sb_state_path(state, NULL, "STOP", path, sizeof path, NULL) == SB_OK && access(path, F_OK) == 0)
            local = 1;
    }
    if (ctx->options.debug_stop_after > 0 && units_done >= ctx->options.debug_stop_after)
        local = 1;
    int any = 0;
    SB_MPI_TRY(err, MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, ctx->comm));
    *stop = any != 0;
    return SB_OK;
}

sb_status sb_state_remove(const sb_ctx *ctx, const sb_state *state, sb_error *err)
{
    /* every rank is done with the directory before rank 0 removes it */
    SB_MPI_TRY(err, MPI_Barrier(ctx->comm));
    if (ctx->rank == 0 && state->ours && !remove_state_dir(state->dir))
        sb_log_warn(&ctx->log, "%s was not removed: it holds files scalebits did not write", state->dir);
    return SB_OK;
}

void sb_state_debug_point(const sb_ctx *ctx, const char *stage, int64_t unit)
{
    const sb_options *o = &ctx->options;
    if (o->debug_unit_delay_ms > 0)
        usleep((useconds_t)o->debug_unit_delay_ms * 1000);
    if (o->debug_kill_stage[0] && strcmp(o->debug_kill_stage, stage) == 0 && unit == o->debug_kill_unit &&
        ctx->rank == ctx->size - 1) {
        fprintf(stderr, "rank %d: --debug-kill-at %s:%lld: killing myself\n", ctx->rank, stage, (long long)unit);
        fflush(stderr);
        raise(SIGKILL);
    }
}
