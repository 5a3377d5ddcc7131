#include "sb_log.h"

#include <stdarg.h>
#include <string.h>
#include <time.h>

double sb_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t read_status_kib(const char *field)
{
    FILE *status = fopen("/proc/self/status", "r");
    if (!status)
        return 0;
    char line[256];
    size_t field_len = strlen(field);
    long long kib = 0;
    while (fgets(line, sizeof line, status)) {
        if (strncmp(line, field, field_len) == 0 && line[field_len] == ':') {
            sscanf(line + field_len + 1, "%lld", &kib);
            break;
        }
    }
    fclose(status);
    return (int64_t)kib * 1024;
}

int64_t sb_peak_rss_bytes(void) { return read_status_kib("VmHWM"); }
int64_t sb_rss_bytes(void) { return read_status_kib("VmRSS"); }

void sb_log_init(sb_log *log, int rank, int nranks, sb_verbosity verbosity)
{
    memset(log, 0, sizeof *log);
    log->human = stderr;
    log->rank = rank;
    log->nranks = nranks;
    log->verbosity = verbosity;
    log->start_seconds = sb_now();
    log->progress_interval = 5.0;
}

void sb_json_write_string(FILE *out, const char *text)
{
    fputc('"', out);
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        switch (*c) {
        case '"': fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\t': fputs("\\t", out); break;
        case '\r': fputs("\\r", out); break;
        default:
            if (*c < 0x20)
                fprintf(out, "\\u%04x", *c);
            else
                fputc(*c, out);
        }
    }
    fputc('"', out);
}

static void emit(const sb_log *log, const char *level, bool labelled, const char *fmt, va_list args)
{
    char message[2048];
    vsnprintf(message, sizeof message, fmt, args);
    double elapsed = sb_now() - log->start_seconds;
    if (log->human) {
        if (labelled)
            fprintf(log->human, "[%8.1fs] rank %d: %s%s\n", elapsed, log->rank,
                    strcmp(level, "warning") == 0 ? "warning: " : "", message);
        else
            fprintf(log->human, "[%8.1fs] %s%s\n", elapsed,
                    strcmp(level, "warning") == 0 ? "warning: " : "", message);
        fflush(log->human);
    }
    if (log->json) {
        fprintf(log->json, "{\"t\":%.3f,\"rank\":%d,\"level\":\"%s\",\"message\":", elapsed, log->rank, level);
        sb_json_write_string(log->json, message);
        fputs("}\n", log->json);
        fflush(log->json);
    }
}

void sb_log_info(const sb_log *log, const char *fmt, ...)
{
    if (log->rank != 0 || log->verbosity < SB_NORMAL)
        return;
    va_list args;
    va_start(args, fmt);
    emit(log, "info", false, fmt, args);
    va_end(args);
}

void sb_log_debug(const sb_log *log, const char *fmt, ...)
{
    if (log->rank != 0 || log->verbosity < SB_VERBOSE)
        return;
    va_list args;
    va_start(args, fmt);
    emit(log, "debug", false, fmt, args);
    va_end(args);
}

void sb_log_rank(const sb_log *log, const char *fmt, ...)
{
    if (log->verbosity < SB_NORMAL)
        return;
    va_list args;
    va_start(args, fmt);
    emit(log, "info", log->nranks > 1, fmt, args);
    va_end(args);
}

void sb_log_warn(const sb_log *log, const char *fmt, ...)
{
    if (log->rank != 0)
        return;
    va_list args;
    va_start(args, fmt);
    emit(log, "warning", false, fmt, args);
    va_end(args);
}

void sb_progress_begin(sb_progress *progress, const char *stage, const char *unit,
                       int64_t total_units, int64_t total_bytes)
{
    memset(progress, 0, sizeof *progress);
    progress->stage = stage;
    progress->unit = unit;
    progress->total_units = total_units;
    progress->total_bytes = total_bytes;
    progress->start_seconds = sb_now();
    progress->last_report_seconds = progress->start_seconds;
}

static void format_duration(char *out, size_t size, double seconds)
{
    if (seconds < 0 || seconds > 1e7) {
        snprintf(out, size, "--:--:--");
        return;
    }
    long s = (long)(seconds + 0.5);
    snprintf(out, size, "%02ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}

static void report(const sb_log *log, const sb_progress *p, const char *item, bool final)
{
    double now = sb_now();
    double elapsed = now - p->start_seconds;
    double fraction = p->total_bytes > 0 ? (double)p->done_bytes / (double)p->total_bytes
                      : p->total_units > 0 ? (double)p->done_units / (double)p->total_units : 1.0;
    double rate = elapsed > 0 ? (double)p->done_bytes / elapsed : 0;
    double eta = fraction > 0 ? elapsed * (1.0 - fraction) / fraction : -1;
    int64_t rss = sb_rss_bytes();
    if (log->human && log->verbosity >= SB_NORMAL && (log->rank == 0 || log->verbosity >= SB_VERBOSE)) {
        char eta_text[32], rank_text[32] = "";
        format_duration(eta_text, sizeof eta_text, eta);
        if (log->nranks > 1)
            snprintf(rank_text, sizeof rank_text, "rank %d: ", log->rank);
        if (final)
            fprintf(log->human, "[%8.1fs] %s%s: %lld/%lld %s, %.1f MB/s, done in %.2f s, rss %.0f MiB\n",
                    now - log->start_seconds, rank_text, p->stage, (long long)p->done_units,
                    (long long)p->total_units, p->unit, rate / 1e6, elapsed, (double)rss / 1048576.0);
        else
            fprintf(log->human, "[%8.1fs] %s%s: %lld/%lld %s %5.1f%%, %.1f MB/s, ETA %s, rss %.0f MiB%s%s\n",
                    now - log->start_seconds, rank_text, p->stage, (long long)p->done_units,
                    (long long)p->total_units, p->unit, 100.0 * fraction, rate / 1e6, eta_text,
                    (double)rss / 1048576.0, item ? ", last: " : "", item ? item : "");
        fflush(log->human);
    }
    if (log->json) {
        fprintf(log->json,
                "{\"t\":%.3f,\"rank\":%d,\"stage\":\"%s\",\"done\":%lld,\"total\":%lld,\"unit\":\"%s\","
                "\"bytes_done\":%lld,\"bytes_total\":%lld,\"bytes_per_s\":%.1f,\"eta_s\":%.1f,\"rss\":%lld,"
                "\"final\":%s",
                now - log->start_seconds, log->rank, p->stage, (long long)p->done_units,
                (long long)p->total_units, p->unit, (long long)p->done_bytes, (long long)p->total_bytes,
                rate, final ? 0.0 : eta, (long long)rss, final ? "true" : "false");
        if (item) {
            fputs(",\"item\":", log->json);
            sb_json_write_string(log->json, item);
        }
        fputs("}\n", log->json);
        fflush(log->json);
    }
}

void sb_progress_advance(const sb_log *log, sb_progress *progress, int64_t units, int64_t bytes,
                         const char *item)
{
    progress->done_units += units;
    progress->done_bytes += bytes;
    double now = sb_now();
    if (now - progress->last_report_seconds >= log->progress_interval) {
        progress->last_report_seconds = now;
        report(log, progress, item, false);
    }
}

double sb_progress_end(const sb_log *log, sb_progress *progress)
{
    report(log, progress, NULL, true);
    return sb_now() - progress->start_seconds;
}
