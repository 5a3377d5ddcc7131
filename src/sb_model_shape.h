/* sb_model_shape: the architecture numbers of a model, as config.json gives them.
 *
 * The core (tensor catalogue, runtime, reordering) needs these numbers and nothing of where
 * they came from; io/sb_config.h fills them from a Hugging Face config.json and checks them.
 *
 * Three architectures share the decoder layout (RMSNorm, GQA attention with rotary embeddings,
 * SwiGLU MLP): Llama (and Mistral), Qwen3 (adds per-head RMSNorms q_norm / k_norm over head_dim
 * before the rotary embedding, and optional attention biases) and Qwen3-MoE (Qwen3 attention;
 * the MLP of some layers is a sparse mixture of experts with a softmax top-k router). The shape
 * is a plain value (no pointers): it is copied freely into workspaces and pipelines.
 */
#ifndef SB_MODEL_SHAPE_H
#define SB_MODEL_SHAPE_H

#include <stdbool.h>
#include <stdint.h>

typedef enum sb_rope_scaling {
    SB_ROPE_SCALING_NONE = 0,
    SB_ROPE_SCALING_LLAMA3, /* "rope_type": "llama3" (Llama 3.1 / 3.2 / 3.3) */
} sb_rope_scaling;

typedef enum sb_architecture {
    SB_ARCH_LLAMA = 0, /* model_type "llama", "mistral" */
    SB_ARCH_QWEN3,     /* model_type "qwen3" */
    SB_ARCH_QWEN3_MOE, /* model_type "qwen3_moe" */
} sb_architecture;

/* mlp_only_layers is kept as a bitmap so that the shape stays a copyable value: layer indices
 * in that list must be below SB_MAX_MLP_ONLY_LAYER (config.json is refused otherwise). */
enum { SB_MAX_MLP_ONLY_LAYER = 4096 };

typedef struct sb_model_shape {
    sb_architecture architecture;
    int64_t hidden_size;
    int64_t intermediate_size; /* the dense SwiGLU MLP (every layer of Llama/Qwen3; the non-MoE
                                * layers of Qwen3-MoE) */
    int64_t num_attention_heads;
    int64_t num_key_value_heads;
    int64_t head_dim; /* Llama, Qwen3-MoE: hidden_size / num_attention_heads unless config.json
                       * says otherwise; Qwen3: 128 unless it says otherwise */
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

    /* Qwen3 attention. */
    bool qk_norm;        /* self_attn.q_norm / k_norm: RMSNorm [head_dim] of every head of q and k,
                          * after the projection, before the rotary embedding */
    bool attention_bias; /* q_proj, k_proj, v_proj and o_proj carry a .bias vector */

    /* Qwen3-MoE: layer l is sparse iff sb_layer_is_moe(shape, l). */
    int64_t num_experts;           /* 0: no MoE layer */
    int64_t num_experts_per_tok;   /* top-k, 1..num_experts */
    int64_t moe_intermediate_size; /* each expert's SwiGLU width */
    bool norm_topk_prob;           /* renormalise the top-k probabilities to sum to 1 */
    int64_t decoder_sparse_step;   /* >= 1 */
    uint64_t mlp_only_layers[SB_MAX_MLP_ONLY_LAYER / 64]; /* bitmap: layers forced dense */
} sb_model_shape;

static inline bool sb_shape_mlp_only(const sb_model_shape *shape, int64_t layer)
{
    return layer >= 0 && layer < SB_MAX_MLP_ONLY_LAYER && (shape->mlp_only_layers[layer / 64] >> (layer % 64) & 1u);
}

/* transformers' Qwen3MoeDecoderLayer rule: a layer's MLP is the sparse MoE block iff the layer
 * is not in mlp_only_layers, num_experts > 0 and (layer + 1) % decoder_sparse_step == 0.
 * Always false for Llama and Qwen3. */
static inline bool sb_layer_is_moe(const sb_model_shape *shape, int64_t layer)
{
    return shape->architecture == SB_ARCH_QWEN3_MOE && shape->num_experts > 0 && shape->decoder_sparse_step > 0 &&
           !sb_shape_mlp_only(shape, layer) && (layer + 1) % shape->decoder_sparse_step == 0;
}

/* Number of MoE layers / dense-MLP layers of the model. */
static inline int64_t sb_shape_moe_layers(const sb_model_shape *shape)
{
    if (shape->architecture != SB_ARCH_QWEN3_MOE || shape->num_experts <= 0 || shape->decoder_sparse_step <= 0 ||
        shape->num_hidden_layers <= 0)
        return 0;
    /* In closed form: the layers l < num_hidden_layers with (l + 1) % step == 0 are
     * num_hidden_layers / step, less those of them in mlp_only_layers (all below
     * SB_MAX_MLP_ONLY_LAYER). A config.json may declare 2^31 layers before anything refuses it;
     * counting them one by one took seconds at each call. */
    int64_t count = shape->num_hidden_layers / shape->decoder_sparse_step;
    int64_t listed = shape->num_hidden_layers < SB_MAX_MLP_ONLY_LAYER ? shape->num_hidden_layers : SB_MAX_MLP_ONLY_LAYER;
    for (int64_t layer = 0; layer < listed; layer++)
        if (sb_shape_mlp_only(shape, layer) && (layer + 1) % shape->decoder_sparse_step == 0)
            count--;
    return count;
}

static inline int64_t sb_shape_dense_layers(const sb_model_shape *shape)
{
    return shape->num_hidden_layers - sb_shape_moe_layers(shape);
}

#endif
