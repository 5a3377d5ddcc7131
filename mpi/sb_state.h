/* sb_state: what a run leaves on disk so that it can be stopped and resumed.
 *
 * Next to the output OUT.h5, the directory OUT.h5.state/ holds:
 *   fingerprint.txt      what the results depend on (model headers, config, options, tool
 *                        version), one "key: value" line each; a resume is refused, naming the
 *                        lines that differ, if they do not match (the budget alone may change:
 *                        the curves are reused and the allocation redone)
 *   curves/<id>.bin      one file per finished work unit of the curves stage
 *   refine.bin           the taylor search's allocation after its last finished round
 *   allocation.bin       every tile's bitwidth once the allocation is made
 *   units/<id>.bin       one file per quantized and packed work unit, ready to be written
 *   manifest.json        every finished file with its size and SHA-256, rewritten by rank 0 at
 *                        the end of each stage (for people and tools; resume trusts each file's
 *                        own checksum)
 *   STOP                 created by anyone (a Slurm trap): stop at the next unit boundary
 * Every .bin file is a self-checking blob (io/sb_blob.h): a crash leaves either the whole file
 * or none, and a damaged one is redone.
 * Work units do not depend on the rank count, so a run resumes with any number of ranks.
 */
#ifndef SB_STATE_H
#define SB_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sb_ctx.h"
#include "sb_error.h"

typedef struct sb_state {
    char dir[4200];
    bool resuming;       /* --resume and a matching state was found */
    bool budget_changed; /* resuming with another --budget: allocation and units are redone */
} sb_state;

/* Collective. Creates (or, with --resume, checks and reuses) the state directory of
 * ctx->options.out_path. `fingerprint` is the text of the run's fingerprint (identical on every
 * rank); its "budget:" line may differ on resume. Without --resume an old state is removed. */
sb_status sb_state_open(sb_ctx *ctx, sb_state *state, const char *fingerprint, sb_error *err);

/* Path of a file in the state directory: "<dir>/<kind>/<name>.bin" (kind may be NULL). */
void sb_state_path(const sb_state *state, const char *kind, const char *name, char *path, size_t size);

/* Rank 0 lists every blob of the directory with its size and SHA-256 in manifest.json. */
sb_status sb_state_write_manifest(const sb_ctx *ctx, const sb_state *state, sb_error *err);

/* Collective: has a stop been asked for (signal on any rank, STOP file, --debug-stop-after
 * reached after `units_done` units)? All ranks get the same answer. */
bool sb_state_should_stop(const sb_ctx *ctx, const sb_state *state, int64_t units_done);

/* Test hooks at a unit boundary of `stage` (--debug-kill-at, --debug-unit-delay). */
void sb_state_debug_point(const sb_ctx *ctx, const char *stage, int64_t unit);

/* Installs the SIGUSR1/SIGTERM handlers that request a stop. */
void sb_state_install_signal_handlers(void);

/* Rank 0 removes the state directory (after the output is committed). Collective. */
void sb_state_remove(const sb_ctx *ctx, const sb_state *state);

#endif
