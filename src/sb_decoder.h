/* sb_decoder: a model (src/sb_model.h) run forward one position after another for text
 * generation, keeping every layer's rotated keys and values (the KV cache) so that each new
 * token costs one pass over the weights and attention over the positions before it.
 *
 * Every architecture of src/sb_model_shape.h: Llama, Qwen3 (per-head q/k RMSNorms before the
 * rotary embedding, explicit head_dim, attention biases) and Qwen3-MoE (router, top-k experts,
 * dense layers mixed in). Semantics are those of sb_model_forward, computed position by position
 * with the window runtime's own pieces (src/sb_model_internal.h: RMSNorm, q/k projection with
 * bias, norm and rotary embedding, SwiGLU, the MoE forward); only the attention is the decoder's
 * (one query row over the cache). The logits at position p equal those of a window forward over
 * positions 0..p up to float rounding (the attention sums run in another order;
 * tests/unit/test_decoder.c compares them). The linear weights may be in any sb_linear storage
 * (float32 or packed tiles, experts included): products go through sb_linear_forward.
 *
 * Feeding n tokens at once (a prompt) runs them as one batch of n rows through every product
 * (prefill); feeding one at a time is decoding. Either way the cache grows by n positions.
 *
 * Memory: the cache holds 2 x layers x max_positions x kv_dim floats, plus activations for
 * max_batch rows (with the routing tables and gathered rows of an MoE layer); sb_decoder_bytes gives the total. Nothing is allocated after creation except
 * the packed products' int8 copies of their inputs (src/sb_linear.h).
 *
 * Threads: `threads` OpenMP threads run the products and the attention (heads in parallel);
 * results do not depend on it. OpenBLAS is held at one thread during a feed. One decoder is
 * used by one thread at a time; the model is only read.
 */
#ifndef SB_DECODER_H
#define SB_DECODER_H

#include <stddef.h>
#include <stdint.h>

#include "sb_error.h"
#include "sb_model.h"

typedef struct sb_decoder sb_decoder;

/* A decoder for `model` with room for `max_positions` positions (at most the model's
 * max_position_embeddings is sensible, not enforced) and prompt batches of up to `max_batch`
 * tokens (longer prompts are fed in pieces). The model must outlive the decoder. */
sb_status sb_decoder_create(const sb_model *model, int64_t max_positions, int64_t max_batch, int threads,
                            sb_decoder **decoder, sb_error *err);
void sb_decoder_free(sb_decoder *decoder);

/* Empties the cache (the next token is at position 0). */
void sb_decoder_reset(sb_decoder *decoder);
/* Positions held in the cache. */
int64_t sb_decoder_length(const sb_decoder *decoder);
int64_t sb_decoder_max_positions(const sb_decoder *decoder);
size_t sb_decoder_bytes(const sb_decoder *decoder);

/* Runs `ntokens` tokens at the next positions, extends the cache, and writes the logits of the
 * last one to logits[vocab_size]. Errors: SB_ERR_INPUT when the tokens do not fit the remaining
 * positions (nothing is run) or a token id is >= vocab_size; errors of the products. */
sb_status sb_decoder_feed(sb_decoder *decoder, const uint32_t *tokens, int64_t ntokens, float *logits, sb_error *err);

#endif
