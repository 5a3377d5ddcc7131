/* sb_run_internal: what the stages of scalebits-mpi's pipeline (mpi/sb_run.h) share. Not a
 * public API: the state of one run, and the stages and helpers the sb_run_*.c files define.
 *
 *   sb_run.c            the pipeline, open, plan, fingerprint, reading (permuted) rows, the
 *                       resumable loop over work units
 *   sb_run_calibrate.c  calibration, --save-imatrix, reordering, GPTQ statistics, importance
 *   sb_run_search.c     loss curves, the global allocation, the taylor search, gathering
 *   sb_run_write.c      quantizing and packing units, the HDF5 file, the report
 */
#ifndef SB_RUN_INTERNAL_H
#define SB_RUN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_calib_stats.h"
#include "sb_catalogue.h"
#include "sb_config.h"
#include "sb_ctx.h"
#include "sb_curves.h"
#include "sb_global_alloc.h"
#include "sb_gptq.h"
#include "sb_h5_writer.h"
#include "sb_imatrix.h"
#include "sb_pipeline.h"
#include "sb_plan.h"
#include "sb_refine.h"
#include "sb_reorder.h"
#include "sb_safetensors.h"
#include "sb_state.h"
#include "sb_blob.h"
#include "sb_tokens.h"

/* Everything the stages share. */
typedef struct sb_run_state {
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_tensor_desc *descs;
    sb_catalogue catalogue;
    sb_plan plan;
    sb_curve_options curve_options;
    /* this rank's tiles: ids [first_tile, first_tile + local_tiles) */
    int64_t first_tile, local_tiles;
    double *loss;        /* [local_tiles * noptions] */
    int64_t *cost;       /* [local_tiles * noptions] */
    uint8_t *choice;     /* [local_tiles] option index */
    uint8_t *all_bits;   /* [total_tiles] bitwidth of every tile, on every rank */
    int64_t budget_bits, stored_bits, code_bits;
    sb_global_alloc_stats alloc_stats;
    char allocation_hash[65];
    double quantization_error;
    /* calibration (sensitivities other than mse) */
    bool calibrated;              /* a pipeline measured act (and fisher/grad) statistics */
    sb_pipeline pipeline;
    sb_layer_stats *stats;        /* [stats_count], layers from pipeline.layer_begin */
    int64_t stats_count;
    sb_tokens calib_tokens;
    sb_window_range calib_range;
    sb_nll calib_fp;              /* calibration loss of the FP model */
    sb_imatrix imatrix;
    bool have_imatrix;
    float **act;                  /* [ntensors] E[x^2] per input column, for tensors with one */
    sb_refine_result refine;
    sb_tile_store **stores;       /* taylor: [ntensors] the search's chosen tiles of each owned tensor
                                   * (in refine.stores), which the quantize stage packs; else NULL */
    sb_state disk;                /* OUT.h5.state/: stop and resume */
    bool allocation_loaded;       /* resumed with a finished allocation */
    char *fingerprint;            /* what the results depend on (sb_state.h) */
    sb_reorder reorder;           /* --reorder: every layer's orders, on every rank */
    bool reordered;
    sb_gptq_factor **gptq;        /* --gptq: [ntensors] one factor per tile column, owned tensors only */
    int64_t *expert_tokens;       /* MoE calibration: [layers x num_experts] token-slots routed to each
                                   * expert over the calibration windows (-1 on dense layers), on
                                   * every rank; NULL otherwise */
    void *unit_buffer;            /* sb_run_unit_buffer's, reused from unit to unit within a stage */
    size_t unit_buffer_bytes;
} sb_run_state;

/* Work on one unit: compute it or, resuming, load it from the state directory (set *reused). */
typedef sb_status (*sb_run_unit_work)(sb_ctx *ctx, sb_run_state *state, const sb_unit *unit, bool *reused, sb_error *err);

/* ---- sb_run.c: machinery --------------------------------------------------------------- */

/* Is calibration run as a pipeline (and the plan made by layers)? */
bool sb_run_needs_pipeline(const sb_options *o);
void sb_run_state_free(sb_run_state *state);
/* The units this rank owns, in order; returns their count. */
int sb_run_owned_units(const sb_ctx *ctx, const sb_run_state *state, bool quantized_only, int *list);
/* Collective: the largest count over the ranks (loops that meet at every unit boundary). */
sb_status sb_run_max_over_ranks(const sb_ctx *ctx, int count, int *most, sb_error *err);
/* Source bytes of this rank's units (for progress rates). */
int64_t sb_run_owned_bytes(const sb_ctx *ctx, const sb_run_state *state, bool quantized_only);
/* Saves the manifest and returns SB_ERR_STOPPED with a message saying how to continue. */
sb_status sb_run_stopped(sb_ctx *ctx, sb_run_state *state, const char *stage, int64_t units, sb_error *err);
/* Collective: rank 0 logs the spread of the ranks' times and names one that fell behind. */
sb_status sb_run_report_balance(const sb_ctx *ctx, const char *stage, double seconds, sb_error *err);
/* Collective: the resumable loop of a stage over this rank's quantized units. */
sb_status sb_run_units(sb_ctx *ctx, sb_run_state *state, const char *stage, sb_run_unit_work work, sb_error *err);
/* Rows of a tensor as the (possibly reordered) model has them: float32 (finite) or raw bytes. */
sb_status sb_run_read_tensor_rows(const sb_run_state *state, const sb_tensor_plan *tensor, int64_t row_begin, int64_t count,
                                  bool raw, void *dst, sb_error *err);
/* A buffer of at least `bytes` for one unit's rows, reused by the next unit: a fresh mapping per
 * unit cost a page fault every 4 KiB, 10% of a data-free run's CPU time in this VM. Valid until
 * the next call or sb_run_unit_buffer_release; never freed by the caller. */
void *sb_run_unit_buffer(sb_run_state *state, size_t bytes, sb_error *err);
/* Frees it at the end of a stage: the next phases count their memory without it. */
void sb_run_unit_buffer_release(sb_run_state *state);
/* A unit's rows as float32, in the unit buffer. */
sb_status sb_run_read_unit_rows(sb_run_state *state, const sb_unit *unit, float **rows_out, sb_error *err);

/* ---- sb_run.c: open, plan, fingerprint --------------------------------------------------- */

sb_status sb_run_stage_open(sb_ctx *ctx, sb_run_state *state, sb_error *err);
sb_status sb_run_stage_plan(sb_ctx *ctx, sb_run_state *state, sb_error *err);
void sb_run_print_plan(const sb_ctx *ctx, const sb_run_state *state);
sb_status sb_run_build_fingerprint(const sb_ctx *ctx, sb_run_state *state, sb_error *err);

/* ---- sb_run_calibrate.c ------------------------------------------------------------------ */

sb_status sb_run_stage_calibrate(sb_ctx *ctx, sb_run_state *state, sb_error *err);
/* How the calibration pipeline holds the layers' matrices: BF16 when every linear weight of the
 * checkpoint is BF16, else float32 (the plan's memory estimate uses the same rule). */
sb_linear_storage sb_run_matrix_storage(const sb_run_state *state);
sb_status sb_run_stage_reorder(sb_ctx *ctx, sb_run_state *state, sb_error *err);
sb_status sb_run_stage_hessian(sb_ctx *ctx, sb_run_state *state, sb_error *err);
sb_status sb_run_stage_importance(sb_ctx *ctx, sb_run_state *state, sb_error *err);
/* How the tiles of a unit are scored (sensitivity, importance, GPTQ factors). */
sb_loss_model sb_run_unit_loss_model(const sb_ctx *ctx, const sb_run_state *state, const sb_unit *unit);

/* ---- sb_run_search.c --------------------------------------------------------------------- */

sb_status sb_run_stage_curves(sb_ctx *ctx, sb_run_state *state, sb_error *err);
/* The curves' stored parameters of a unit (every tile and bitwidth: sb_curve_params_slot), saved
 * in the state directory for the quantize stage: their size and path. */
size_t sb_run_unit_params_bytes(const sb_run_state *state, const sb_unit *unit);
sb_status sb_run_unit_params_path(const sb_run_state *state, const sb_unit *unit, char *path, size_t size,
                                  sb_error *err);
sb_status sb_run_stage_allocate(sb_ctx *ctx, sb_run_state *state, sb_error *err);
/* The budget cannot be met: an error saying what is feasible, in bits per weight. */
sb_status sb_run_budget_error(const sb_ctx *ctx, const sb_run_state *state, sb_error *err);
sb_status sb_run_stage_refine(sb_ctx *ctx, sb_run_state *state, sb_error *err);
sb_status sb_run_stage_gather(sb_ctx *ctx, sb_run_state *state, sb_error *err);

/* ---- sb_run_write.c ---------------------------------------------------------------------- */

sb_status sb_run_stage_quantize(sb_ctx *ctx, sb_run_state *state, sb_error *err);
/* Collective: every group and dataset of the output (docs/FORMAT.md) for the allocation in
 * state->all_bits; handles[i] receives plan tensor i's. Experts are stacked per (layer, role)
 * (stack_experts false: one group per expert, the layout before stacks; for bench-h5-define's
 * comparison only, readers do not need it). */
sb_status sb_run_define_output(const sb_ctx *ctx, const sb_run_state *state, sb_h5_writer *writer,
                               bool stack_experts, int *handles, sb_error *err);
sb_status sb_run_stage_write(sb_ctx *ctx, sb_run_state *state, sb_error *err);
sb_status sb_run_stage_report(sb_ctx *ctx, sb_run_state *state, sb_error *err);

#endif
