/*
 * faults.c — numerical faults and the test hooks that inject them. A step whose loss or
 * gradient norm is not finite is reported with where its first non-finite value is, the same on
 * every rank; the hooks (environment variables read only by tests) poison a parameter or a
 * gradient, fake a loss spike, or make one rank fail, so that the fault paths are exercised.
 */
#include "train/train.h"
#include "dist/dist.h"

#include <limits.h>
#include <math.h>
#include <string.h>

void moe__hooks_read(moe__test_hooks *h) {
    memset(h, 0, sizeof *h);
    // MOE_TEST_FAIL_RANK=r makes rank r fail its second step
    h->fail_rank = getenv("MOE_TEST_FAIL_RANK") ? atoi(getenv("MOE_TEST_FAIL_RANK")) : -1;
    h->fault_rank = -1;
    // MOE_TEST_FAULT=STEP:grad_nan|param_nan:TENSOR[@RANK] or STEP:loss_spike (numerical fault tests)
    if (getenv("MOE_TEST_FAULT")) {
        long long fs = 0;
        if (sscanf(getenv("MOE_TEST_FAULT"), "%lld:%15[a-z_]:%199s", &fs, h->fault_kind, h->fault_tensor) >= 2)
            h->fault_step = fs;
        char *at = strchr(h->fault_tensor, '@'); // TENSOR@RANK: on that rank only
        h->fault_rank = at ? atoi(at + 1) : -1;
        if (at) *at = 0;
    }
}

moe_status moe__hooks_fail(const moe__test_hooks *h, int64_t step) {
    const moe__dist *g = moe__dist_get();
    if (h->fail_rank == g->rank && step == 1)
        return moe__err(MOE_STATUS_IO, "rank %d: injected failure at step 2 (MOE_TEST_FAIL_RANK)", g->rank);
    return MOE_STATUS_OK;
}

void moe__hooks_inject(const moe__test_hooks *h, const char *kind, int64_t step, moe_model *m, moe_step_info *info) {
    int rank = moe__dist_get()->rank;
    if (h->fault_step != step + 1 || (h->fault_rank >= 0 && h->fault_rank != rank) || strcmp(h->fault_kind, kind)) return;
    const moe_tensor_info *ti = moe_model_find(m, h->fault_tensor);
    if (!strcmp(kind, "loss_spike")) {
        info->loss.ce += 50.0f, info->loss.total += 50.0f;
    } else if (ti) {
        moe__buf b = !strcmp(kind, "param_nan") ? MOE_BUF_PARAMS : MOE_BUF_GRADS;
        m->be->to_host(m, b);
        (b == MOE_BUF_PARAMS ? m->params : m->grads)[ti->offset] = NAN;
        m->be->from_host(m, b);
    }
}

/* Where the first non-finite value is, the same on every rank; returns its kind (0: none). Under
 * expert parallelism each rank holds other experts, and a NaN in one rank's weights reaches the
 * others' activations through the all-to-all: the rank with the earliest kind (parameter, then
 * activation, then gradient; the lowest rank among equals) sends its description to all, so
 * that every rank reports alike and agrees whether the weights are poisoned. COLLECTIVE. */
int moe__locate_nonfinite(moe_model *m, char *where, size_t n) {
    const moe__dist *g = moe__dist_get();
    char mine[192];
    int kind = m->be->locate_nonfinite(m, mine, sizeof mine);
    int best = moe__dist_min_int(kind ? kind * g->size + g->rank : INT_MAX);
    if (best == INT_MAX) {
        snprintf(where, n, "nowhere (all parameters, activations and gradients are finite)");
        return 0;
    }
    int src = best % g->size;
    if (g->size == 1) {
        snprintf(where, n, "%s", mine);
        return kind;
    }
    int64_t buf[28]; // 224 bytes summed over ranks, only src's non-zero: a broadcast
    memset(buf, 0, sizeof buf);
    if (g->rank == src) snprintf((char *)buf, sizeof buf, "%s on rank %d", mine, src);
    moe__dist_allreduce_i64(MOE_COMM_WORLD, buf, 28);
    ((char *)buf)[sizeof buf - 1] = 0;
    snprintf(where, n, "%s", (const char *)buf);
    return best / g->size;
}
