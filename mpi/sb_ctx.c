#include "sb_ctx.h"

void sb_ctx_stage(sb_ctx *ctx, const char *name, double seconds)
{
    for (int i = 0; i < ctx->nstages; i++) {
        if (ctx->stages[i].name == name) {
            ctx->stages[i].seconds += seconds;
            ctx->stages[i].peak_rss = sb_peak_rss_bytes();
            return;
        }
    }
    if (ctx->nstages < SB_MAX_STAGES) {
        ctx->stages[ctx->nstages].name = name;
        ctx->stages[ctx->nstages].seconds = seconds;
        ctx->stages[ctx->nstages].peak_rss = sb_peak_rss_bytes();
        ctx->nstages++;
    }
}
