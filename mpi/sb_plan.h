/* sb_plan: who does what. Splits the catalogue into work units and assigns them to ranks.
 *
 * A unit is a whole pass-through tensor or a range of whole tile rows of a quantized tensor
 * (tensors larger than --unit-weights are split, so an embedding of a 400B model does not
 * land on one rank whole). Units keep the catalogue's canonical order and are assigned to
 * ranks in contiguous runs balanced by estimated work (weights x candidate bitwidths), so each
 * rank owns one contiguous range of global tile ids. Every rank computes the same plan from
 * the same headers, without communication. Units and owners may depend on the rank count; the
 * allocation and the output bytes do not. A model of more than 2^31 - 5 tiles (MPI counts are
 * int) or 2^30 units is refused with SB_ERR_INPUT at planning, before any work.
 */
#ifndef SB_PLAN_H
#define SB_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_catalogue.h"
#include "sb_model_shape.h"
#include "sb_error.h"
#include "sb_options.h"
#include "sb_safetensors.h"
#include "sb_tiling.h"

typedef struct sb_tensor_plan {
    const sb_catalogue_entry *entry;
    const sb_tensor_info *info;  /* the source tensor */
    bool quantize;
    sb_tiling tiling;            /* quantized tensors only */
    int64_t first_tile_id;       /* global id of tile 0 */
    int64_t fixed_bits;          /* scales + zeros + bit map: stored whatever the bitwidths */
} sb_tensor_plan;

typedef struct sb_unit {
    int tensor;                  /* index in sb_plan.tensors */
    int64_t tile_row_begin, tile_row_end; /* quantized: tile rows covered */
    int64_t row_begin, row_end;  /* matrix rows covered (whole tensor for pass-through) */
    int64_t first_tile_id, tiles;
    int64_t work;
    int owner;
} sb_unit;

typedef struct sb_plan {
    int ntensors;
    sb_tensor_plan *tensors;     /* catalogue order */
    int nunits;
    sb_unit *units;              /* canonical order; owners non-decreasing */
    int nranks;
    int64_t total_tiles;
    int64_t quantized_weights;
    int64_t fixed_bits;
    int64_t *rank_first_tile;    /* [nranks + 1]: rank r owns tile ids [first[r], first[r+1]) */
    int64_t *rank_work;          /* [nranks] */
    int64_t *rank_peak_bytes;    /* [nranks] estimated peak memory of the curves/write stages */
} sb_plan;

sb_status sb_plan_build(const sb_catalogue *catalogue, const sb_checkpoint *checkpoint, const sb_options *options,
                        int nranks, sb_plan *plan, sb_error *err);

/* Pipeline stages for calibration: min(ranks, layers) stages of contiguous layers; stage s
 * runs layers [sb_stage_first_layer(s), sb_stage_first_layer(s + 1)). Shared by the plan and
 * mpi/sb_pipeline.h so that a layer's tensors live on the rank that runs the layer. */
static inline int sb_stage_count(int nranks, int64_t layers)
{
    int64_t stages = nranks < layers ? nranks : layers;
    return stages < 1 ? 1 : (int)stages;
}
static inline int64_t sb_stage_first_layer(int64_t layers, int nstages, int stage)
{
    return layers * stage / nstages;
}

/* The plan when calibration runs as a pipeline: every tensor is one unit, owned by the stage
 * that runs its layer (the embedding by stage 0, the final norm and lm_head by the last), so
 * that calibration statistics never travel. Ranks beyond the stages own nothing. */
sb_status sb_plan_build_layered(const sb_catalogue *catalogue, const sb_checkpoint *checkpoint,
                                const sb_options *options, int nranks, int64_t layers, sb_plan *plan, sb_error *err);
void sb_plan_free(sb_plan *plan);

/* Are the layers' linear weights all BF16 in the checkpoint (then the calibration pipeline holds
 * them as BF16: sb_linear's BF16 storage, half the memory, the same products)? */
bool sb_plan_bf16_matrices(const sb_plan *plan);

/* What one rank holds at its peak, by kind (bytes), and the total. A calibrated run (act,
 * fisher, taylor, --gptq with calibration data: a pipeline) holds its pipeline stage's layers:
 *   layers       the stage's matrices as the pipeline holds them (BF16 for a BF16 checkpoint,
 *                else float32; every expert and the router of an MoE layer), its vectors, and
 *                the float32 embedding / lm_head of the end stages
 *   statistics   E[x^2] per input column of every weight (each expert's own); fisher: its
 *                Fisher sums, 4 bytes per weight, and an MoE layer's pooled expert
 *                (sb_calib_stats.h)
 *   gptq         the Hessian accumulators (input columns x tile width floats per distinct input,
 *                every expert has two, while gathered) and the factors (per tile column of every
 *                quantized tensor: H in float and U in double)
 *   search       taylor: every tile at every bitwidth, packed (sb_tile_store.h: 2.25 bytes per
 *                weight at bits {2,3,4,8} and groups of 128), the float32 reference weights and
 *                decoded tiles kept for speed (up to 1 GiB), the taylor sums (two doubles per
 *                tile and bitwidth), a product's 512-wide block and the MoE layers' pooled
 *                Fisher; the search gives the FP matrices back a layer at a time as their tiles
 *                are quantized
 *   activations  one micro-batch in flight: the model workspace and every layer's backward cache
 *   units        the largest work unit's buffers (curves, quantize, write) and the curves
 *   runtime      MPI, HDF5, OpenBLAS and the program (measured: about 32 MiB, 64 calibrated)
 * Data-free runs hold only units and runtime. `total` is not the sum: the calibration pass,
 * the GPTQ accumulators and the search or curves come one after another (sb_plan.c). */
typedef struct sb_rank_memory {
    int64_t layers, statistics, gptq, search, activations, units, runtime;
    int64_t total;
    int64_t stage_weights; /* linear weights of the stage's layers */
    int64_t stage_layers;
} sb_rank_memory;

/* The estimate for `rank` of `plan` (nranks = plan->nranks) with these options and threads. */
sb_rank_memory sb_plan_rank_memory(const sb_plan *plan, const sb_options *options, const sb_model_shape *shape,
                                   int rank, int threads);

/* Predicted wall seconds of a run, by stage, from per-weight and per-token costs measured on
 * one core (bench/costmodel.sh measures them and checks the model on a 1x and a 4x model):
 *   read/write   source bytes and output bytes at the file system's rate per rank
 *   calibrate    calibration passes: 2 (forward) or 6 (forward + backward) flops per weight
 *                per token at the runtime's achieved GEMM rate. A pass with a backward runs the
 *                pipeline's stages one after another (one micro-batch in flight), so its time
 *                is the whole model's on one rank; a forward-only pass overlaps the stages.
 *   search       taylor: rounds x (one gradient pass + estimates of every tile's moves) +
 *                loss checks, with the round and check counts of the runs measured here
 *   curves       every tile at every bitwidth (GPTQ: with error feedback), spread over ranks
 *   quantize     every tile at its bitwidth
 * `cores` is the OpenMP threads of each rank. */
typedef struct sb_plan_time {
    double read, calibrate, search, curves, quantize, write, total;
} sb_plan_time;

sb_plan_time sb_plan_predict_time(const sb_plan *plan, const sb_options *options, const sb_model_shape *shape,
                                  int64_t source_bytes, int cores);

/* Bytes of quantized tiles the taylor search may keep between rounds on one rank
 * (sb_refine.h): what fits, up to 1 GiB; the plan's memory estimate counts it. */
int64_t sb_plan_refine_cache_bytes(const sb_plan *plan, int nranks);

/* Stored bits of a quantized tensor that do not depend on the bitwidths. */
int64_t sb_plan_fixed_bits(const sb_tiling *tiling, sb_scale_format format);

#endif
