/* sb_log: what a run tells the person watching it, and the JSON lines a log collector reads.
 *
 * One sb_log lives in the run's context and is passed down; there is no global logger.
 * Human lines go to `human` (stderr by default) with the elapsed time; with a `json` stream
 * set, every message and progress report is also written as one JSON object per line.
 * `rank`/`nranks` only label lines: the logger does no communication. By convention only
 * rank 0 prints run-level messages (sb_log_info); sb_log_rank prints from any rank.
 */
#ifndef SB_LOG_H
#define SB_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef enum sb_verbosity { SB_QUIET = 0, SB_NORMAL = 1, SB_VERBOSE = 2 } sb_verbosity;

typedef struct sb_log {
    FILE *human;            /* stderr unless redirected; NULL silences human output */
    FILE *json;             /* NULL: no JSON lines */
    int rank, nranks;
    sb_verbosity verbosity;
    double start_seconds;   /* monotonic clock at sb_log_init */
    double progress_interval; /* seconds between human progress lines (per stage) */
} sb_log;

void sb_log_init(sb_log *log, int rank, int nranks, sb_verbosity verbosity);

/* Seconds on the monotonic clock. */
double sb_now(void);

/* Peak resident set size of this process in bytes (from /proc/self/status VmHWM), 0 if unknown. */
int64_t sb_peak_rss_bytes(void);
/* Current resident set size in bytes, 0 if unknown. */
int64_t sb_rss_bytes(void);

/* Run-level message, printed by rank 0 only. */
void sb_log_info(const sb_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Detail printed by rank 0 only when verbose. */
void sb_log_debug(const sb_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Message from this rank, labelled with it (any rank may call). */
void sb_log_rank(const sb_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Warning, printed by rank 0 (or by any rank with `any_rank`). */
void sb_log_warn(const sb_log *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Progress of one stage on this rank: units of work (tensors, tiles) and bytes. */
typedef struct sb_progress {
    const char *stage;
    const char *unit;       /* "tensors", "tiles", "windows" */
    int64_t total_units;
    int64_t total_bytes;
    int64_t done_units;
    int64_t done_bytes;
    double start_seconds;
    double last_report_seconds;
} sb_progress;

void sb_progress_begin(sb_progress *progress, const char *stage, const char *unit,
                       int64_t total_units, int64_t total_bytes);
/* Adds finished work; prints a line with rate, ETA and memory when the interval has passed
 * (human, rank 0 only) and a JSON line (every rank, if JSON is on). `item` names what just
 * finished (a tensor name), may be NULL. */
void sb_progress_advance(const sb_log *log, sb_progress *progress, int64_t units, int64_t bytes,
                         const char *item);
/* Final line for the stage on this rank; returns the stage's seconds. */
double sb_progress_end(const sb_log *log, sb_progress *progress);

/* Writes a JSON-string-escaped copy of `text` to `out` (with the quotes). */
void sb_json_write_string(FILE *out, const char *text);

#endif
