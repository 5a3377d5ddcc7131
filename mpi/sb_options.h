/* sb_options: what a scalebits-mpi run is asked to do (sb_run_quantize's input).
 *
 * Filled by the command-line parser (tools/sb_options_parse.h) identically on every rank;
 * read-only afterwards. Field comments name the flag that sets each one.
 */
#ifndef SB_OPTIONS_H
#define SB_OPTIONS_H

#include <stdbool.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_quant.h"

typedef enum sb_sensitivity_kind {
    SB_SENSITIVITY_MSE = 0, /* data-free: plain squared weight error */
    SB_SENSITIVITY_ACT,     /* E[x_j^2] per input column from calibration data (or --imatrix) */
    SB_SENSITIVITY_FISHER,  /* diagonal Fisher E[g^2] */
    SB_SENSITIVITY_TAYLOR,  /* first-order Taylor at successive quantized reference points */
} sb_sensitivity_kind;

static inline const char *sb_sensitivity_name(sb_sensitivity_kind kind)
{
    switch (kind) {
    case SB_SENSITIVITY_MSE: return "mse";
    case SB_SENSITIVITY_ACT: return "act";
    case SB_SENSITIVITY_FISHER: return "fisher";
    case SB_SENSITIVITY_TAYLOR: return "taylor";
    }
    return "?";
}

typedef struct sb_options {
    const char *model_dir;     /* --model (default: the embedded model) */
    double budget;             /* --budget, bits per quantized weight, all stored bits counted */
    int64_t budget_numerator;  /* the same, exactly: budget = numerator / denominator (decimal) */
    int64_t budget_denominator;
    bool budget_given;
    char out_path[4096];       /* --out (default: <model>-<budget>bpw.h5 in the current directory); at most
                                * SB_PATH_MAX - SB_PATH_ROOM bytes (io/sb_path.h), never cut */
    int tile_rows, tile_cols;  /* --tile RxC */
    int group;                 /* --group */
    int nbits;                 /* --bits, ascending, distinct, each 1..8 */
    int bits[8];
    sb_sensitivity_kind sensitivity; /* --sensitivity */
    sb_scale_search search;    /* --search minmax|weighted */
    sb_scale_format scales;    /* --scales f16|q8 */
    const char *report_path;   /* --report */
    const char *log_json_path; /* --log-json */
    bool quantize_embeddings, quantize_lm_head;
    bool quantize_router;      /* --quantize-router: also the MoE routers mlp.gate (off: passed through) */
    int64_t expert_min_tokens; /* --expert-min-tokens: below this many calibration token-slots an expert
                                * is estimated as its layer's average (SB_EXPERT_MIN_ROWS; 0: never) */
    bool reorder;              /* --reorder: bi-directional channel reordering, folded into the model */
    bool gptq;                 /* --gptq: error feedback across a tile's columns (needs --calib) */
    int threads;               /* --threads, 0 = from hwloc */
    int64_t unit_weights;      /* --unit-weights: largest work unit, in weights */
    const char *calib_tokens;  /* --calib FILE.u32 */
    const char *calib_text;    /* --calib-text FILE (byte-level models) */
    int64_t calib_ctx;         /* --calib-ctx (default 256) */
    int64_t calib_windows;     /* --calib-windows (default 64) */
    int64_t calib_batch;       /* --calib-batch: windows per micro-batch (default 4) */
    const char *imatrix_path;  /* --imatrix: llama.cpp importance matrix as the `act` source */
    const char *save_imatrix;  /* --save-imatrix: write the calibration's E[x^2] as a llama.cpp .dat */
    int refine_rounds;         /* --refine-rounds: most loss-checked rounds for taylor (default 24) */
    int64_t refine_windows;    /* --refine-windows: calibration windows behind each round's taylor
                                * estimates (0: all; loss checks always use all) */
    bool resume;               /* --resume: continue from OUT.h5.state/ */
    int64_t debug_stop_after;  /* --debug-stop-after N: stop as if asked to after N units (tests) */
    char debug_kill_stage[32]; /* --debug-kill-at STAGE:N: the last rank SIGKILLs itself (tests) */
    int64_t debug_kill_unit;
    int debug_unit_delay_ms;   /* --debug-unit-delay MS: sleep after every unit (tests) */
    int debug_search_cache_mib; /* --debug-search-cache MIB: the taylor search's cache limit (tests); -1 default */
    bool plan_only;            /* --plan */
    int plan_ranks;            /* --plan-ranks: plan for this many ranks instead of the current count */
    int verbosity;             /* 0 quiet, 1 normal, 2 verbose */
    bool show_help, show_version;
    char command_line[8192];   /* for provenance */
} sb_options;

#endif
