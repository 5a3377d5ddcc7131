#include "sb_ctx.h"

void sb_ctx_stage(sb_ctx *ctx, const char *name, double seconds)
{
    for (int i = 0; i < ctx->nstages; i++) {
        if (ctx->stages[i].name == name) {
            ctx->stages[i].seconds += seconds;
            return;
        }
    }
    if (ctx->nstages < SB_MAX_STAGES) {
        ctx->stages[ctx->nstages].name = name;
        ctx->stages[ctx->nstages].seconds = seconds;
        ctx->nstages++;
    }
}
