/* sb_run: the scalebits-mpi pipeline, stage by stage. Collective over ctx->comm.
 *
 *   open       read config.json (every number checked, src/sb_model.h) and every safetensors
 *              header; build the tensor catalogue; check that every name has an HDF5 link
 *              name (io/sb_h5_name.h)
 *   plan       split into work units and assign them to ranks (--plan prints it and stops)
 *   state      OUT.h5.state/: created, or reused with --resume (mpi/sb_state.h)
 *   calibrate  (sensitivities other than mse, --gptq, --save-imatrix) the pipeline pass over
 *              the calibration data; then reorder (--reorder), GPTQ statistics (--gptq) and
 *              the importance of each input column
 *   curves     each rank reads its units and computes every tile's loss at every bitwidth
 *   allocate   the global greedy over all tiles, exact and independent of the rank count
 *              (--sensitivity taylor: the loss-checked search replaces curves and allocate)
 *   gather     every rank receives the whole allocation (one byte per tile)
 *   quantize   each rank quantizes and packs its units into the state directory
 *   write      datasets created collectively; each rank writes its units; the file is
 *              committed by rename
 *   report     rank 0 prints the summary and writes --report
 *
 * Every stage ends at an agreement point (mpi/comm/sb_agree.h): if any rank failed, all return the
 * same error and no output file is left.
 */
#ifndef SB_RUN_H
#define SB_RUN_H

#include "sb_ctx.h"
#include "sb_error.h"

#include <stddef.h>

sb_status sb_run_quantize(sb_ctx *ctx, sb_error *err);

/* Collective; before anything is written. Refuses (SB_ERR_USAGE naming both) an output the
 * options name (--out, --report, --save-imatrix, --log-json and its per-rank files) that is an
 * existing directory, an input (any file directly in --model, the directory itself, --calib,
 * --calib-text, --imatrix) or another output: no option can make the run overwrite a source. */
sb_status sb_run_check_paths(const sb_ctx *ctx, sb_error *err);

/* The --log-json file of `rank`: the path itself for rank 0, "<path>.rank<N>" for the others. */
sb_status sb_run_log_json_path(const char *option, int rank, char *path, size_t size, sb_error *err);

#endif
