#include "sb_blas_start.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sb_cpu.h"

extern char *openblas_get_corename(void);

/* Set by us before re-executing: "CHOSEN:WAS", read (and removed) by the new image. */
#define MARKER "SB_BLAS_CORETYPE_CHOSEN"

void sb_blas_start_check(char **argv, sb_blas_start *start)
{
    memset(start, 0, sizeof *start);
    const char *running = openblas_get_corename();
    snprintf(start->core, sizeof start->core, "%s", running ? running : "unknown");
    const char *marker = getenv(MARKER);
    if (marker) {
        char copy[128];
        snprintf(copy, sizeof copy, "%s", marker);
        unsetenv(MARKER);
        char *was = strchr(copy, ':');
        if (was)
            *was++ = '\0';
        start->changed = true;
        snprintf(start->message, sizeof start->message,
                 "OpenBLAS core %s: OpenBLAS picked %s, slower than this CPU allows; re-started with "
                 "OPENBLAS_CORETYPE=%s%s",
                 start->core, was ? was : "?", copy,
                 sb_blas_core_level(start->core) == sb_blas_core_level(copy) ? "" : " (not taken: check the OpenBLAS build)");
        return;
    }
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user && *user) {
        snprintf(start->message, sizeof start->message, "OpenBLAS core %s (OPENBLAS_CORETYPE=%s from the environment)",
                 start->core, user);
        return;
    }
    const char *believed = getenv("SB_TEST_BLAS_CORENAME");
    if (!believed || !*believed)
        believed = start->core;
    sb_cpu_features cpu = sb_cpu_detect();
    const char *want = sb_blas_core_for(&cpu, believed);
    if (!want) {
        snprintf(start->message, sizeof start->message, "OpenBLAS core %s (suits this CPU)", believed);
        return;
    }
    char value[128];
    snprintf(value, sizeof value, "%s:%s", want, believed);
    if (setenv("OPENBLAS_CORETYPE", want, 1) == 0 && setenv(MARKER, value, 1) == 0) {
        fflush(NULL);
        execv("/proc/self/exe", argv);
    }
    int error = errno;
    start->slower = true;
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv(MARKER);
    snprintf(start->message, sizeof start->message,
             "OpenBLAS core %s is slower than this CPU allows, and re-starting with OPENBLAS_CORETYPE=%s failed (%s): "
             "set OPENBLAS_CORETYPE=%s yourself",
             believed, want, strerror(error), want);
}
