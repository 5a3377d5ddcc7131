#include "sb_state.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sb_agree.h"
#include "sb_atomic.h"
#include "sb_blob.h"

static volatile sig_atomic_t stop_signal = 0;

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

void sb_state_path(const sb_state *state, const char *kind, const char *name, char *path, size_t size)
{
    if (kind)
        snprintf(path, size, "%s/%s/%s.bin", state->dir, kind, name);
    else
        snprintf(path, size, "%s/%s", state->dir, name);
}

static int remove_tree(const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
    struct dirent *entry;
    int rc = 0;
    while ((entry = readdir(dir))) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        char child[8192];
        snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
        rc |= remove_tree(child);
    }
    closedir(dir);
    return rmdir(path) == 0 ? rc : -1;
}

static char *read_text(const char *path)
{
    FILE *file = fopen(path, "rb");
    if (!file)
        return NULL;
    fseek(file, 0, SEEK_END);
    long size = ftell(file);
    fseek(file, 0, SEEK_SET);
    char *text = size >= 0 ? calloc(1, (size_t)size + 1) : NULL;
    if (text && fread(text, 1, (size_t)size, file) != (size_t)size) {
        free(text);
        text = NULL;
    }
    fclose(file);
    return text;
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
                if (used < size)
                    used += (size_t)snprintf(out + used, size - used, "%s%.*s (was: %.*s)", used ? "; " : "",
                                             (int)(b_len > 200 ? 200 : b_len), b, (int)(a_len > 200 ? 200 : a_len), a);
            }
        }
        a += a_len + (a_end ? 1 : 0);
        b += b_len + (b_end ? 1 : 0);
    }
}

sb_status sb_state_open(sb_ctx *ctx, sb_state *state, const char *fingerprint, sb_error *err)
{
    memset(state, 0, sizeof *state);
    snprintf(state->dir, sizeof state->dir, "%s.state", ctx->options.out_path);
    sb_status status = SB_OK;
    if (ctx->rank == 0) {
        char path[4400];
        snprintf(path, sizeof path, "%s/fingerprint.txt", state->dir);
        char *saved = ctx->options.resume ? read_text(path) : NULL;
        if (saved) {
            char difference[2048];
            bool budget_only;
            describe_difference(saved, fingerprint, difference, sizeof difference, &budget_only);
            if (difference[0] && !budget_only)
                status = sb_error_set(err, SB_ERR_USAGE,
                                      "%s: --resume refused: this run differs from the saved one: %s (run without "
                                      "--resume to start over)",
                                      state->dir, difference);
            else {
                state->resuming = true;
                state->budget_changed = strcmp(saved, fingerprint) != 0;
            }
            free(saved);
        } else if (ctx->options.resume) {
            sb_log_info(&ctx->log, "--resume: no saved state in %s, starting from the beginning", state->dir);
        }
        if (status == SB_OK && !state->resuming)
            remove_tree(state->dir);
        char sub[4400];
        if (status == SB_OK) {
            mkdir(state->dir, 0755);
            for (int i = 0; i < 2; i++) {
                snprintf(sub, sizeof sub, "%s/%s", state->dir, i ? "units" : "curves");
                mkdir(sub, 0755);
            }
            struct stat st;
            if (stat(state->dir, &st) != 0 || !S_ISDIR(st.st_mode))
                status = sb_error_set(err, SB_ERR_IO, "%s: cannot create the state directory: %s", state->dir,
                                      strerror(errno));
        }
        if (status == SB_OK && state->budget_changed) {
            /* the allocation and everything after it depend on the budget */
            snprintf(sub, sizeof sub, "%s/units", state->dir);
            remove_tree(sub);
            mkdir(sub, 0755);
            snprintf(sub, sizeof sub, "%s/allocation.bin", state->dir);
            unlink(sub);
            snprintf(sub, sizeof sub, "%s/refine.bin", state->dir);
            unlink(sub);
        }
        if (status == SB_OK) {
            snprintf(sub, sizeof sub, "%s/STOP", state->dir);
            unlink(sub); /* a stop request is for the run that was stopped */
            status = sb_atomic_write_file(path, fingerprint, strlen(fingerprint), err);
        }
    }
    int flags[2] = {state->resuming, state->budget_changed};
    MPI_Bcast(flags, 2, MPI_INT, 0, ctx->comm);
    state->resuming = flags[0];
    state->budget_changed = flags[1];
    return sb_agree(ctx->comm, status, err);
}

sb_status sb_state_write_manifest(const sb_ctx *ctx, const sb_state *state, sb_error *err)
{
    if (ctx->rank != 0)
        return SB_OK;
    static const char *const kinds[] = {"curves", "units", NULL};
    return sb_blob_write_manifest(state->dir, kinds, err);
}

bool sb_state_should_stop(const sb_ctx *ctx, const sb_state *state, int64_t units_done)
{
    int local = stop_signal ? 1 : 0;
    if (ctx->rank == 0) {
        char path[4400];
        snprintf(path, sizeof path, "%s/STOP", state->dir);
        if (access(path, F_OK) == 0)
            local = 1;
    }
    if (ctx->options.debug_stop_after > 0 && units_done >= ctx->options.debug_stop_after)
        local = 1;
    int any = 0;
    MPI_Allreduce(&local, &any, 1, MPI_INT, MPI_MAX, ctx->comm);
    return any != 0;
}

void sb_state_remove(const sb_ctx *ctx, const sb_state *state)
{
    MPI_Barrier(ctx->comm);
    if (ctx->rank == 0)
        remove_tree(state->dir);
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
