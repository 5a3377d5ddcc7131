/* sb_run: the scalebits-mpi pipeline, stage by stage. Collective over ctx->comm.
 *
 *   open      read config.json and every safetensors header; build the tensor catalogue
 *   plan      split into work units and assign them to ranks (--plan prints it and stops)
 *   curves    each rank reads its units and computes every tile's loss at every bitwidth
 *   allocate  the global greedy over all tiles, exact and independent of the rank count
 *   gather    every rank receives the whole allocation (one byte per tile)
 *   write     datasets created collectively; each rank quantizes, packs and writes its units;
 *             the file is committed by rename
 *   report    rank 0 prints the summary and writes --report
 *
 * Every stage ends at an agreement point (mpi/comm/sb_agree.h): if any rank failed, all return the
 * same error and no output file is left.
 */
#ifndef SB_RUN_H
#define SB_RUN_H

#include "sb_ctx.h"
#include "sb_error.h"

sb_status sb_run_quantize(sb_ctx *ctx, sb_error *err);

#endif
