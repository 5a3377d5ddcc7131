/* sb_config: a Hugging Face config.json of the Llama family, read and checked.
 *
 * Fills sb_model_shape (the numbers the core needs) and keeps the file's text verbatim for the
 * output's provenance. Refuses, with the field named, what the runtime cannot run: other
 * architectures, biases, non-SiLU activations, unknown rope_scaling types, inconsistent head
 * counts, a hidden size that heads do not divide (without an explicit head_dim). Defaults are
 * those of transformers' LlamaConfig (tie_word_embeddings false, num_key_value_heads = heads,
 * rope_theta 10000, ...). Shapes of the tensors are checked against it by the catalogue
 * (src/sb_catalogue.h).
 */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include "sb_error.h"
#include "sb_model_shape.h"

typedef struct sb_model_config {
    sb_model_shape shape;
    char *path;       /* the config.json read */
    char *json_text;  /* its full text, NUL-terminated */
    char model_type[64];
} sb_model_config;

/* Reads `<model_dir>/config.json`. On failure nothing needs freeing. */
sb_status sb_config_load(const char *model_dir, sb_model_config *config, sb_error *err);
/* Parses config text already in memory; `path` is only used in messages. */
sb_status sb_config_parse(const char *path, const char *json_text, sb_model_config *config, sb_error *err);
void sb_config_free(sb_model_config *config);

#endif
