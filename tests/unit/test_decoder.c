/* The KV-cache decoder (src/sb_decoder.h) against the window runtime (src/sb_model.h) on the
 * embedded model: fed one token at a time, its next-token NLL over a window equals
 * sb_model_forward's (float weights to float rounding; packed 8-bit tiles run by the kernels to
 * the difference between the int8 activations of one token and the 16-bit ones of a batch,
 * src/sb_linear.h); a prompt fed as one batch, or in pieces smaller than the prompt, ends at the
 * logits of token-by-token feeding; any thread count gives the same bits; a prompt beyond the
 * context is refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sb_config.h"
#include "sb_decoder.h"
#include "sb_h5_source.h"
#include "sb_kernel.h"
#include "sb_model.h"
#include "sb_model_load.h"
#include "sb_safetensors.h"
#include "sb_test.h"
#include "sb_tokens.h"

enum { CTX = 64 };

static double token_nll(const float *logits, int64_t vocab, uint32_t target)
{
    double max = logits[0], sum = 0.0;
    for (int64_t j = 0; j < vocab; j++)
        max = logits[j] > max ? logits[j] : max;
    for (int64_t j = 0; j < vocab; j++)
        sum += exp((double)logits[j] - max);
    return max + log(sum) - (double)logits[target];
}

/* The window runtime's summed NLL over one window of CTX tokens. */
static double window_nll(const sb_model *model, const uint32_t *tokens)
{
    sb_error err;
    sb_model_workspace *workspace = NULL;
    sb_nll nll = {0, 0};
    if (sb_model_workspace_create(&model->shape, CTX, 1, 1, false, &workspace, &err) != SB_OK ||
        sb_model_forward(model, tokens, 1, CTX, workspace, NULL, NULL, &nll, &err) != SB_OK) {
        SB_CHECK_MSG(0, "window forward: %s", err.message);
        nll.sum = NAN;
    }
    sb_model_workspace_free(workspace);
    return nll.sum;
}

/* The decoder's summed NLL, one token at a time; the logits after `prefix` tokens go to
 * `at_prefix` (if not NULL). */
static double decoder_nll(const sb_model *model, const uint32_t *tokens, int threads, int64_t prefix, float *at_prefix)
{
    sb_error err;
    sb_decoder *decoder;
    int64_t vocab = model->shape.vocab_size;
    float *logits = malloc((size_t)vocab * sizeof(float));
    double sum = 0.0;
    SB_CHECK(sb_decoder_create(model, CTX, 8, threads, &decoder, &err) == SB_OK);
    for (int64_t t = 0; t + 1 < CTX; t++) {
        if (sb_decoder_feed(decoder, tokens + t, 1, logits, &err) != SB_OK) {
            SB_CHECK_MSG(0, "feed: %s", err.message);
            sum = NAN;
            break;
        }
        sum += token_nll(logits, vocab, tokens[t + 1]);
        if (at_prefix && t + 1 == prefix)
            memcpy(at_prefix, logits, (size_t)vocab * sizeof(float));
    }
    SB_CHECK(sb_decoder_length(decoder) == CTX - 1);
    sb_decoder_free(decoder);
    free(logits);
    return sum;
}

/* `tolerance`: relative, for the NLL over the window and for the last logits */
static void check_model(const sb_model *model, const uint32_t *tokens, double tolerance, const char *label)
{
    int64_t vocab = model->shape.vocab_size, prefix = 40;
    double reference = window_nll(model, tokens);
    float *one_by_one = malloc((size_t)vocab * sizeof(float)), *other = malloc((size_t)vocab * sizeof(float));
    double nll = decoder_nll(model, tokens, 1, prefix, one_by_one);
    SB_CHECK_MSG(fabs(nll - reference) <= tolerance * fabs(reference), "%s: decoder NLL %.7f, window forward %.7f",
                 label, nll, reference);
    /* threads: the same bits */
    float *threaded = malloc((size_t)vocab * sizeof(float));
    double nll2 = decoder_nll(model, tokens, 2, prefix, threaded);
    SB_CHECK_MSG(nll2 == nll && memcmp(threaded, one_by_one, (size_t)vocab * sizeof(float)) == 0,
                 "%s: 2 threads differ from 1", label);
    /* the prefix as one prompt (in pieces of 8, and whole) ends at the same logits */
    for (int64_t batch = 8; batch <= prefix; batch += prefix - 8) {
        sb_error err;
        sb_decoder *decoder;
        SB_CHECK(sb_decoder_create(model, CTX, batch, 1, &decoder, &err) == SB_OK);
        SB_CHECK_MSG(sb_decoder_feed(decoder, tokens, prefix, other, &err) == SB_OK, "%s", err.message);
        double worst = 0.0, size = 0.0;
        for (int64_t j = 0; j < vocab; j++) {
            worst = fmax(worst, fabs((double)other[j] - one_by_one[j]));
            size = fmax(size, fabs((double)one_by_one[j]));
        }
        SB_CHECK_MSG(worst <= 5 * tolerance * size, "%s: prompt in batches of %lld: logits differ by %g (of %g)",
                     label, (long long)batch, worst, size);
        /* the context: 64 positions, 40 used; 25 more do not fit, and change nothing */
        SB_CHECK(sb_decoder_feed(decoder, tokens, CTX - prefix + 1, other, &err) == SB_ERR_INPUT &&
                 strstr(err.message, "do not fit the context"));
        SB_CHECK(sb_decoder_length(decoder) == prefix);
        sb_decoder_reset(decoder);
        SB_CHECK(sb_decoder_length(decoder) == 0);
        sb_decoder_free(decoder);
    }
    free(one_by_one);
    free(other);
    free(threaded);
}

int main(void)
{
    char model_dir[4096], text[4200];
    snprintf(model_dir, sizeof model_dir, "%s/tiny-austen-kjv", sb_test_data_dir());
    snprintf(text, sizeof text, "%s/heldout.txt", model_dir);
    sb_error err;
    sb_model_config config;
    sb_checkpoint checkpoint;
    sb_model model;
    sb_tokens tokens;
    SB_CHECK(sb_config_load(model_dir, &config, &err) == SB_OK);
    SB_CHECK(sb_checkpoint_open(model_dir, &checkpoint, &err) == SB_OK);
    SB_CHECK(sb_model_load_checkpoint(&config.shape, &checkpoint, &model, &err) == SB_OK);
    SB_CHECK(sb_tokens_read_bytes(text, 256, &tokens, &err) == SB_OK);
    if (sb_test_failures)
        return sb_test_finish("test_decoder");
    check_model(&model, tokens.ids, 2e-5, "float");

    /* the same model quantized at 8 bits, its linear weights packed */
    char *dir = sb_test_temp_dir("decoder");
    char path[4200], command[9000];
    snprintf(path, sizeof path, "%s/tiny-8bit.h5", dir);
    const char *build = getenv("SB_BUILD_DIR") ? getenv("SB_BUILD_DIR") : "build";
    snprintf(command, sizeof command, "'%s/scalebits-mpi' --bits 8 --budget 16 --group 32 --tile 32x32 --out '%s' --quiet",
             build, path);
    SB_CHECK_MSG(system(command) == 0, "failed: %s", command);
    sb_h5_reader reader;
    sb_kernel kernel;
    sb_model packed;
    SB_CHECK(sb_kernel_choose(&kernel, &err) == SB_OK);
    if (sb_h5_reader_open(path, &reader, &err) == SB_OK) {
        sb_status status = sb_model_load_h5_packed(&config.shape, &reader, &kernel, &packed, &err);
        SB_CHECK_MSG(status == SB_OK, "%s", err.message);
        if (status == SB_OK) {
            SB_CHECK(packed.layers[0].linear[SB_LINEAR_Q].storage == SB_LINEAR_STORAGE_PACKED);
            check_model(&packed, tokens.ids, 2e-3, "packed 8-bit");
            /* 8 bits with int8 activations stay close to the float model */
            double float_nll = window_nll(&model, tokens.ids), packed_nll = window_nll(&packed, tokens.ids);
            SB_CHECK_MSG(fabs(packed_nll - float_nll) <= 0.01 * float_nll, "packed 8-bit NLL %.5f, float %.5f",
                         packed_nll, float_nll);
            sb_model_free(&packed);
        }
        sb_h5_reader_close(&reader);
    } else {
        SB_CHECK_MSG(0, "%s", err.message);
    }
    sb_test_remove_tree(dir);
    free(dir);
    sb_tokens_free(&tokens);
    sb_model_free(&model);
    sb_checkpoint_close(&checkpoint);
    sb_config_free(&config);
    return sb_test_finish("test_decoder");
}
