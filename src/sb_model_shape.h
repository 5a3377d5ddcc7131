/* sb_model_shape: the architecture numbers of a Llama-family model, as config.json gives them.
 *
 * The core (tensor catalogue, runtime, reordering) needs these numbers and nothing of where
 * they came from; io/sb_config.h fills them from a Hugging Face config.json.
 */
#ifndef SB_MODEL_SHAPE_H
#define SB_MODEL_SHAPE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum sb_rope_scaling {
    SB_ROPE_SCALING_NONE = 0,
    SB_ROPE_SCALING_LLAMA3, /* "rope_type": "llama3" (Llama 3.1 / 3.2 / 3.3) */
} sb_rope_scaling;

typedef struct sb_model_shape {
    int64_t hidden_size;
    int64_t intermediate_size;
    int64_t num_attention_heads;
    int64_t num_key_value_heads;
    int64_t head_dim; /* hidden_size / num_attention_heads unless config.json says otherwise */
    int64_t num_hidden_layers;
    int64_t vocab_size;
    int64_t max_position_embeddings;
    bool tie_word_embeddings;
    double rope_theta;
    double rms_norm_eps;
    sb_rope_scaling rope_scaling;
    double rope_factor;            /* llama3 scaling: "factor" */
    double rope_low_freq_factor;   /* llama3: "low_freq_factor" */
    double rope_high_freq_factor;  /* llama3: "high_freq_factor" */
    int64_t rope_original_max_position; /* llama3: "original_max_position_embeddings" */
} sb_model_shape;

#endif
