/* sb_tensor_name: the one place that knows the Hugging Face tensor names of the supported
 * architectures (Llama; Qwen3 dense and MoE) and the canonical order of a model's tensors.
 *
 * A name is classified into an sb_tensor_id (role, decoder layer, expert), and an id of a known
 * role is formatted back into its name; the two are exact inverses for every known name. The
 * canonical order (sb_tensor_id_compare) defines global tile ids, the allocation hash and the
 * order of tensors in files, so it must never depend on where a tensor is stored or on the rank
 * count, and it must not change for existing models (Llama files stay byte for byte the same):
 *
 *   model.embed_tokens.weight
 *   per layer L, ascending:   input_layernorm, q_proj, q_norm, k_proj, k_norm, v_proj, o_proj,
 *                             (attention biases after their projections), post_attention_layernorm,
 *                             gate_proj, up_proj, down_proj (dense MLP), mlp.gate (the MoE router),
 *                             then per expert E ascending (numerically): gate_proj, up_proj, down_proj,
 *                             then any other tensor of the layer by name
 *   model.norm.weight
 *   lm_head.weight
 *   any other tensor, by name
 *
 * Ties (two names with the same id: only tensors of role OTHER) are broken by strcmp of the
 * names. Layer and expert numbers are parsed as plain decimal digits (no sign, no leading
 * zeros, at most SB_TENSOR_INDEX_MAX): "model.layers.007.x" or a number that would overflow is
 * not a layer tensor but an OTHER outside the layers, so no input can make the parse undefined.
 *
 * Pure functions; no allocation.
 */
#ifndef SB_TENSOR_NAME_H
#define SB_TENSOR_NAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The roles. The first seven are the linear kinds of a decoder layer (numbered as
 * sb_linear_kind in src/sb_model.h); an expert's weights are GATE, UP or DOWN with expert >= 0. */
typedef enum sb_tensor_role {
    SB_ROLE_Q = 0, SB_ROLE_K, SB_ROLE_V, SB_ROLE_O, SB_ROLE_GATE, SB_ROLE_UP, SB_ROLE_DOWN,
    SB_ROLE_EMBED,      /* model.embed_tokens.weight */
    SB_ROLE_LM_HEAD,    /* lm_head.weight */
    SB_ROLE_ATTN_NORM,  /* model.layers.L.input_layernorm.weight */
    SB_ROLE_MLP_NORM,   /* model.layers.L.post_attention_layernorm.weight */
    SB_ROLE_FINAL_NORM, /* model.norm.weight */
    SB_ROLE_Q_NORM,     /* model.layers.L.self_attn.q_norm.weight (Qwen3: RMSNorm over head_dim) */
    SB_ROLE_K_NORM,     /* model.layers.L.self_attn.k_norm.weight */
    SB_ROLE_ROUTER,     /* model.layers.L.mlp.gate.weight (Qwen3-MoE: [experts x hidden]) */
    SB_ROLE_Q_BIAS,     /* model.layers.L.self_attn.q_proj.bias (attention_bias) */
    SB_ROLE_K_BIAS,
    SB_ROLE_V_BIAS,
    SB_ROLE_O_BIAS,
    SB_ROLE_OTHER,      /* anything else (kept, passed through, ordered by name) */
    SB_ROLE_COUNT
} sb_tensor_role;

enum { SB_LINEAR_ROLES = 7 };
#define SB_TENSOR_INDEX_MAX ((int64_t)1 << 40)

typedef struct sb_tensor_id {
    sb_tensor_role role;
    int64_t layer;  /* decoder layer, -1 outside the layers */
    int64_t expert; /* MoE expert of a GATE/UP/DOWN weight, -1 otherwise */
} sb_tensor_id;

/* Is `role` one of the seven linear kinds (a matrix a layer multiplies by)? */
static inline bool sb_role_is_linear(sb_tensor_role role) { return (unsigned)role < SB_LINEAR_ROLES; }

/* The role's short name, as files store it in a tensor's `role` attribute: "q_proj", "k_proj",
 * "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head",
 * "input_layernorm", "post_attention_layernorm", "norm", "q_norm", "k_norm", "router",
 * "q_proj_bias", "k_proj_bias", "v_proj_bias", "o_proj_bias", "other"; "?" out of range. */
const char *sb_role_name(sb_tensor_role role);
/* The inverse of sb_role_name; false for any other text. */
bool sb_role_parse(const char *text, sb_tensor_role *role);

/* Classifies a name. Never fails: an unknown name is SB_ROLE_OTHER (with its layer when it
 * starts "model.layers.L."). */
sb_tensor_id sb_tensor_name_parse(const char *name);

/* Writes the name of `id` (as snprintf: returns the length of the full name, which was cut if
 * >= size). Returns -1 and writes "" when the id has no name: SB_ROLE_OTHER, a per-layer role
 * without a layer, a global role with one, an expert on a role other than GATE/UP/DOWN. */
int sb_tensor_name_format(sb_tensor_id id, char *name, size_t size);

/* The canonical order above: negative, zero or positive like strcmp. The names break ties. */
int sb_tensor_id_compare(sb_tensor_id a, const char *name_a, sb_tensor_id b, const char *name_b);
/* The same from names alone. */
int sb_tensor_name_compare(const char *name_a, const char *name_b);

#endif
