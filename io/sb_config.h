/* sb_config: a Hugging Face config.json of the Llama or Qwen3 family, read and checked.
 *
 * Fills sb_model_shape (the numbers the core needs) and keeps the file's text verbatim for the
 * output's provenance. model_type "llama" / "mistral" (LlamaConfig), "qwen3" (Qwen3Config:
 * q_norm/k_norm, head_dim 128 by default, optional attention_bias) and "qwen3_moe"
 * (Qwen3MoeConfig: num_experts, num_experts_per_tok, moe_intermediate_size, norm_topk_prob,
 * decoder_sparse_step, mlp_only_layers). Defaults are those of the transformers class of the
 * model_type; num_experts, num_experts_per_tok and moe_intermediate_size are required (a
 * silent default of 128 experts would only fail later, on missing tensors).
 *
 * Every number is checked when read, with one message naming the file and the field: integers
 * positive (num_experts >= 0) and below 2^31 (BLAS takes 32-bit dimensions), products that the
 * runtime forms (heads x head_dim, the model's weight count, its tensor count) free of
 * overflow, num_experts_per_tok <= num_experts, mlp_only_layers entries distinct layer indices.
 * Refused, with the field named: other architectures, biases on Llama, non-SiLU activations,
 * sliding-window attention, unknown rope_scaling types, inconsistent head counts, a hidden size
 * that heads do not divide (without an explicit head_dim where the class derives it).
 *
 * FP8 sources: "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
 * "weight_block_size": [R, C]} (the FP8 releases of Qwen3 and DeepSeek) sets fp8_block_rows /
 * fp8_block_cols, which the checkpoint reader needs to apply each F8_E4M3 weight's
 * weight_scale_inv (io/sb_safetensors.h). Any other quantization_config is refused.
 *
 * Shapes of the tensors are checked against the config by the catalogue (src/sb_catalogue.h)
 * and by the loader (io/sb_model_load.h).
 */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include "sb_error.h"
#include "sb_model_shape.h"
#include "sb_safetensors.h"

typedef struct sb_model_config {
    sb_model_shape shape;
    char *path;       /* the config.json read */
    char *json_text;  /* its full text, NUL-terminated */
    char model_type[64];
    /* quantization_config.weight_block_size of an FP8 source: one weight_scale_inv per block of
     * fp8_block_rows x fp8_block_cols weights; both 0 without a quantization_config. */
    int64_t fp8_block_rows, fp8_block_cols;
} sb_model_config;

/* Reads `<model_dir>/config.json`. On failure nothing needs freeing. */
sb_status sb_config_load(const char *model_dir, sb_model_config *config, sb_error *err);
/* Parses config text already in memory; `path` is only used in messages. */
sb_status sb_config_parse(const char *path, const char *json_text, sb_model_config *config, sb_error *err);
void sb_config_free(sb_model_config *config);

/* What the config says about the checkpoint's files (the FP8 block size), for
 * sb_checkpoint_open_with(). */
sb_checkpoint_options sb_config_checkpoint_options(const sb_model_config *config);

#endif
