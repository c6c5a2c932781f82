/*
 * test_cuda_moe.c — the CUDA MoE-layer kernels (cuda/moe.cu) against the CPU functions they
 * mirror. Each case runs the CPU layer once, moe__moe_forward then moe__moe_backward (router,
 * dispatch, experts, combine, losses, all gradients), and gives every launcher the CPU's own
 * inputs, so each kernel is checked alone on the CPU's routing (no near-tie tokens to skip):
 *
 *   dispatch          row_of, row_token, offsets, load        exactly (integer work)
 *   gather_rows       the CPU's xe                            exactly (copies)
 *   combine           y (no shared experts: y is the combine)
 *   combine_backward  s.dye, s.dgate
 *   scatter_add       dx (the router's weights are zeroed after the forward, so the CPU's dx is
 *                     dx0 plus the scatter alone)
 *   router_losses     f, seq_f exactly; aux, seq_aux
 *   router_backward   s.dlogits (moe__router_backward's, with nonzero aux, sequence, z scales)
 *
 * Floats: |gpu - cpu| <= atol + rtol |cpu|, rtol 1e-5, atol 1e-6 of the tensor's largest value
 * for elementwise results and 1e-5 for sums whose order differs (warp and block trees on the
 * GPU, left to right on the CPU). Every float launcher runs twice and must give the same bits.
 * With capacity the dispatch is checked again on scores rounded to quarters (many exact ties).
 *
 * Expert choice (moe__cuda_dispatch_ec) against moe__dispatch with expert-choice routing in
 * training: row_of, row_token, offsets, load exactly, on random, tied (quarters), all-equal and
 * signed scores (negatives, -0.0 beside +0.0: the same key to both), run twice on a used scratch.
 *
 * Exits 77 (skipped) where there is no usable GPU: CI builds and runs it without one.
 */
#include "cuda_check.h"
#include "moe/moe_layer.h"

#include <string.h>

static const char *case_name = "";

/* An uninitialised device buffer of n bytes, filled with 0xff so that stale values cannot pass. */
static void *dev_out(size_t n) {
    void *d;
    CHECK_OK(moe__cuda_malloc(&d, n));
    CHECK_OK(moe__cuda_memset(d, 0xff, n ? n : 1));
    return d;
}

/* got (device, n floats) against want (host): rtol 1e-5 and atol scale * the tensor's largest
 * value; scale < 0 asks for equal bits. */
static void compare_at(const void *got_dev, const float *want, int64_t n, double scale, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", case_name, what);
    float *got = host_bytes(got_dev, (size_t)n * sizeof(float));
    if (scale < 0) CHECK_ARRAYS(got, want, n, 0.0, 0.0, msg);
    else CHECK_ARRAYS(got, want, n, scale * maxabs(want, n) + 1e-30, 1e-5, msg);
    free(got);
}
#define compare_exact(got, want, n, what) compare_at(got, want, n, -1.0, what)
#define compare(got, want, n, what) compare_at(got, want, n, 1e-6, what)
#define compare_sum(got, want, n, what) compare_at(got, want, n, 1e-5, what)

/* Integers (elem 4: int, 8: int64_t) on the device against the host's: exactly. */
static void compare_ints(const void *got_dev, const void *want, int64_t n, size_t elem, const char *what) {
    char *got = host_bytes(got_dev, (size_t)n * elem);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(got + i * elem, (const char *)want + i * elem, elem)) bad++, first = first < 0 ? i : first;
    long long g = 0, w = 0;
    if (first >= 0) {
        g = elem == 8 ? ((int64_t *)got)[first] : ((int *)got)[first];
        w = elem == 8 ? ((const int64_t *)want)[first] : ((const int *)want)[first];
    }
    CHECK(bad == 0, "%s: %s: %lld of %lld differ, first at %lld: got %lld want %lld", case_name, what, (long long)bad,
          (long long)n, (long long)first, g, w);
    free(got);
}

/* The two device arrays (n bytes) hold the same bits: a rerun gave the same result. */
static void same_bits(const void *a_dev, const void *b_dev, size_t n, const char *what) {
    void *a = host_bytes(a_dev, n), *b = host_bytes(b_dev, n);
    CHECK(memcmp(a, b, n) == 0, "%s: %s: a second run gave other bits", case_name, what);
    free(a);
    free(b);
}

typedef struct {
    const char *name;
    int64_t N;
    int T, E, K;
    moe_score score;
    int norm_topk;
    float cf;                /* capacity factor; 0 = dropless */
    moe_drop_policy policy;
    int drops;               /* the capacity must drop assignments (checked, so the case tests what it says) */
    int hot;                 /* a selection bias sends every token to expert 0 first */
    int random_routing;      /* GShard: some second slots unrouted (K = 2) */
} moe_case;

/* One CPU MoE layer, run forward and backward, and what the checks need of it. */
typedef struct {
    moe__moe_dims d;
    moe__moe_cache c;
    moe__moe_scratch s;
    moe__moe_weights w, g;
    moe__moe_loss_scales ls;
    char *arena;
    float *x, *y, *dy, *dx0, *dx, *bias, *hidden;
    int64_t N, A, R, B;
    int C;
} layer;

static void layer_run(layer *L, const moe_case *tc) {
    int E = tc->E, K = tc->K, C = 40, F = 4; // C over a warp, not a multiple of it
    int64_t N = tc->N, A = N * K;
    moe__moe_dims *d = &L->d;
    memset(L, 0, sizeof *L);
    d->E = E, d->K = K, d->F = F, d->C = C, d->T = tc->T, d->ep = 1, d->El = E, d->training = 1;
    d->routing = MOE_ROUTING_TOPK, d->score = tc->score, d->norm_topk = tc->norm_topk, d->route_scale = 1.7f;
    d->capacity_factor = tc->cf, d->drop_policy = tc->policy, d->random_routing = tc->random_routing;
    d->noise_seed = 0x5eed;
    moe__planner pl = {NULL, 0};
    moe__moe_plan_cache(&pl, &L->c, d, N, A);
    moe__moe_plan_scratch(&pl, &L->s, d, N, A);
    L->arena = moe__calloc(pl.off);
    pl.base = L->arena, pl.off = 0;
    moe__moe_plan_cache(&pl, &L->c, d, N, A);
    moe__moe_plan_scratch(&pl, &L->s, d, N, A);
    int64_t H = moe__moe_hidden_scratch(d, N, A), wn = (int64_t)E * F * C;
    L->hidden = calloc((size_t)(3 * H + 1), sizeof(float));
    L->s.dact = L->hidden, L->s.dh1 = L->hidden + H, L->s.dh3 = L->hidden + 2 * H;
    L->w.wg = randn((int64_t)E * C, 0.5f), L->w.w1 = randn(wn, 0.3f), L->w.w3 = randn(wn, 0.3f);
    L->w.w2 = randn(wn, 0.3f);
    L->bias = calloc((size_t)E, sizeof(float));
    L->bias[0] = 10.0f;
    L->w.bias = tc->hot ? L->bias : NULL;
    L->g.wg = calloc((size_t)E * C, sizeof(float)), L->g.w1 = calloc((size_t)wn, sizeof(float));
    L->g.w3 = calloc((size_t)wn, sizeof(float)), L->g.w2 = calloc((size_t)wn, sizeof(float));
    L->x = randn(N * C, 1), L->y = calloc((size_t)(N * C), sizeof(float));
    CHECK_OK(moe__moe_forward(L->y, &L->c, L->x, &L->w, d, N));
    L->dy = randn(N * C, 1), L->dx0 = randn(N * C, 1), L->dx = malloc((size_t)(N * C) * sizeof(float));
    memcpy(L->dx, L->dx0, (size_t)(N * C) * sizeof(float));
    // dx += dlogits Wg: with Wg = 0 after the forward, the CPU's dx is dx0 plus the scatter alone
    memset(L->w.wg, 0, (size_t)E * C * sizeof(float));
    // a token after the last whole sequence has no seq_f row: the CPU reads past it, so no
    // sequence loss there (the GPU gives such tokens no sequence term)
    L->ls.aux = 0.1f, L->ls.z = 0.05f, L->ls.seq_aux = N % tc->T == 0 ? 0.2f : 0.0f;
    CHECK_OK(moe__moe_backward(L->dx, &L->g, &L->s, L->dy, L->x, &L->w, &L->c, d, N, &L->ls));
    L->N = N, L->A = A, L->R = L->c.offsets[E], L->B = N / tc->T, L->C = C;
}

static void layer_free(layer *L) {
    FREE_ALL(L->arena, L->hidden, L->w.wg, L->w.w1, L->w.w3, L->w.w2, L->bias, L->g.wg, L->g.w1, L->g.w3, L->g.w2,
             L->x, L->y, L->dy, L->dx0, L->dx);
}

/* The GPU dispatch from sel, scores and the routed marks against moe__dispatch's result in c. */
static void check_dispatch(const moe__moe_cache *c, const moe__moe_dims *d, int64_t N, const char *what) {
    int E = d->E, K = d->K;
    int64_t A = N * K, R = c->offsets[E];
    size_t ab = (size_t)A * sizeof(int), sb;
    int *pre = malloc(ab); // row_of as the router left it: 0 routed, or unrouted
    for (int64_t a = 0; a < A; a++) pre[a] = c->row_of[a] == MOE_ROW_UNROUTED ? MOE_ROW_UNROUTED : 0;
    CHECK_OK(moe__cuda_dispatch_scratch(&sb, A, E));
    void *dRow = dev(pre, ab), *dSel = dev(c->sel, ab), *dSc = dev(c->scores, (size_t)(N * E) * sizeof(float));
    void *dTok = dev_out(ab), *dOff = dev_out((size_t)(E + 1) * 8), *dLoad = dev_out((size_t)E * 8);
    void *dScr = dev_out(sb);
    CHECK_OK(moe__cuda_dispatch(dRow, dTok, dOff, dLoad, dScr, sb, dSel, dSc, N, E, K, c->capacity,
                                d->drop_policy == MOE_DROP_PROBABILITY));
    char msg[128];
    snprintf(msg, sizeof msg, "dispatch%s: row_of", what);
    compare_ints(dRow, c->row_of, A, sizeof(int), msg);
    snprintf(msg, sizeof msg, "dispatch%s: row_token", what);
    compare_ints(dTok, c->row_token, R, sizeof(int), msg);
    snprintf(msg, sizeof msg, "dispatch%s: offsets", what);
    compare_ints(dOff, c->offsets, E + 1, sizeof(int64_t), msg);
    snprintf(msg, sizeof msg, "dispatch%s: load", what);
    compare_ints(dLoad, c->load, E, sizeof(int64_t), msg);
    // too little scratch is an error, not a write past it
    CHECK(moe__cuda_dispatch(dRow, dTok, dOff, dLoad, dScr, sb - 1, dSel, dSc, N, E, K, c->capacity, 0) ==
              MOE_STATUS_ARG,
          "%s: dispatch with too little scratch", case_name);
    free(pre);
    DFREE_ALL(dRow, dSel, dSc, dTok, dOff, dLoad, dScr);
}

/* Again on scores rounded down to quarters: exact ties, which go to the lower token. */
static void check_dispatch_ties(layer *L) {
    moe__moe_cache *c = &L->c;
    for (int64_t i = 0; i < L->N * L->d.E; i++) c->scores[i] = floorf(c->scores[i] * 4.0f) / 4.0f;
    for (int64_t a = 0; a < L->A; a++) c->row_of[a] = c->row_of[a] == MOE_ROW_UNROUTED ? MOE_ROW_UNROUTED : 0;
    moe__dispatch(c, &L->d, L->N);
    check_dispatch(c, &L->d, L->N, " (tied scores)");
}

/* gather, combine, combine_backward and scatter_add on the CPU's rows. */
static void check_combine(const layer *L) {
    const moe__moe_cache *c = &L->c;
    int K = L->d.K, C = L->C;
    int64_t N = L->N, A = L->A, R = L->R;
    size_t xb = (size_t)(N * C) * sizeof(float), rb = (size_t)(R * C) * sizeof(float), ab = (size_t)A * sizeof(float);
    void *dX = dev(L->x, xb), *dTok = dev(c->row_token, (size_t)R * sizeof(int)), *dXe = dev_out(rb);
    CHECK_OK(moe__cuda_gather_rows(dXe, dX, dTok, R, C));
    compare_exact(dXe, c->xe, R * C, "gather_rows: xe");
    void *dYe = dev(c->ye, rb), *dGate = dev(c->gate, ab), *dRow = dev(c->row_of, (size_t)A * sizeof(int));
    void *dY = dev_out(xb), *dY2 = dev_out(xb);
    CHECK_OK(moe__cuda_combine(dY, dYe, dGate, dRow, N, K, C));
    CHECK_OK(moe__cuda_combine(dY2, dYe, dGate, dRow, N, K, C));
    compare_sum(dY, L->y, N * C, "combine: y");
    same_bits(dY, dY2, xb, "combine: y");
    void *dDy = dev(L->dy, xb), *dDye = dev_out(rb), *dDg = dev_out(ab), *dDye2 = dev_out(rb), *dDg2 = dev_out(ab);
    CHECK_OK(moe__cuda_combine_backward(dDye, dDg, dDy, dYe, dGate, dRow, N, K, C));
    CHECK_OK(moe__cuda_combine_backward(dDye2, dDg2, dDy, dYe, dGate, dRow, N, K, C));
    compare(dDye, L->s.dye, R * C, "combine_backward: dye");
    compare_sum(dDg, L->s.dgate, A, "combine_backward: dgate (0 where not kept)");
    same_bits(dDg, dDg2, ab, "combine_backward: dgate");
    same_bits(dDye, dDye2, rb, "combine_backward: dye");
    void *dDx = dev(L->dx0, xb), *dDxe = dev(L->s.dxe, rb);
    CHECK_OK(moe__cuda_scatter_add(dDx, dDxe, dRow, N, K, C));
    compare(dDx, L->dx, N * C, "scatter_add: dx (accumulated)");
    DFREE_ALL(dX, dTok, dXe, dYe, dGate, dRow, dY, dY2, dDy, dDye, dDg, dDye2, dDg2, dDx, dDxe);
}

/* router_losses and router_backward on the CPU's routing, loads and gate gradients. */
static void check_router(const layer *L, const moe_case *tc) {
    const moe__moe_cache *c = &L->c;
    const moe__moe_loss_scales *ls = &L->ls;
    int E = L->d.E, K = L->d.K, T = L->d.T;
    int64_t N = L->N, A = L->A, B = L->B;
    size_t eb = (size_t)(N * E) * sizeof(float), fb = (size_t)(B * E) * sizeof(float);
    void *dLoad = dev(c->load, (size_t)E * 8), *dPr = dev(c->probs, eb), *dSel = dev(c->sel, (size_t)A * sizeof(int));
    void *dAux = dev_out(4), *dSeq = dev_out(4), *dF = dev_out((size_t)E * 4), *dSeqF = dev_out(fb);
    void *dAux2 = dev_out(4), *dSeq2 = dev_out(4);
    CHECK_OK(moe__cuda_router_losses(dAux, dSeq, dF, dSeqF, dLoad, dPr, dSel, N, T, E, K));
    compare_exact(dF, c->f, E, "router_losses: f");
    compare_sum(dAux, &c->aux, 1, "router_losses: aux");
    if (!tc->random_routing) { // the CPU counts routed slots only; CUDA routing routes them all
        compare_exact(dSeqF, c->seq_f, B * E, "router_losses: seq_f");
        compare_sum(dSeq, &c->seq_aux, 1, "router_losses: seq_aux");
    }
    CHECK_OK(moe__cuda_router_losses(dAux2, dSeq2, dF, dSeqF, dLoad, dPr, dSel, N, T, E, K));
    same_bits(dAux, dAux2, 4, "router_losses: aux");
    same_bits(dSeq, dSeq2, 4, "router_losses: seq_aux");
    void *dDg = dev(L->s.dgate, (size_t)A * 4), *dL = dev(c->logits, eb), *dLse = dev(c->lse, (size_t)N * 4);
    void *dSc = dev(c->scores, eb), *dF2 = dev(c->f, (size_t)E * 4), *dSeqF2 = dev(c->seq_f, fb);
    void *dDl = dev_out(eb), *dDl2 = dev_out(eb);
    int sigmoid = L->d.score == MOE_SCORE_SIGMOID;
    CHECK_OK(moe__cuda_router_backward(dDl, dDg, dL, dLse, dSc, dPr, dSel, dF2, dSeqF2, N, T, E, K, sigmoid,
                                       L->d.norm_topk, L->d.route_scale, ls->aux, ls->seq_aux, ls->z));
    CHECK_OK(moe__cuda_router_backward(dDl2, dDg, dL, dLse, dSc, dPr, dSel, dF2, dSeqF2, N, T, E, K, sigmoid,
                                       L->d.norm_topk, L->d.route_scale, ls->aux, ls->seq_aux, ls->z));
    compare_sum(dDl, L->s.dlogits, N * E, "router_backward: dlogits");
    same_bits(dDl, dDl2, eb, "router_backward: dlogits");
    DFREE_ALL(dLoad, dPr, dSel, dAux, dSeq, dF, dSeqF, dAux2, dSeq2, dDg, dL, dLse, dSc, dF2, dSeqF2, dDl, dDl2);
}

static void run_case(const moe_case *tc) {
    layer L;
    case_name = tc->name;
    int before = check_failures;
    layer_run(&L, tc);
    if (tc->drops) CHECK(L.c.dropped > 0, "%s: the capacity (%d) dropped nothing", tc->name, L.c.capacity);
    check_dispatch(&L.c, &L.d, L.N, "");
    check_combine(&L);
    check_router(&L, tc);
    int64_t dropped = L.c.dropped;
    if (L.c.capacity > 0) check_dispatch_ties(&L);
    printf("  %-44s N %5lld E %4d K %2d capacity %4d dropped %5lld: %s\n", tc->name, (long long)L.N, L.d.E, L.d.K,
           L.c.capacity, (long long)dropped, check_failures == before ? "ok" : "FAIL");
    layer_free(&L);
}

#define SM MOE_SCORE_SOFTMAX
#define SG MOE_SCORE_SIGMOID
#define PROB MOE_DROP_PROBABILITY
#define POS MOE_DROP_POSITION

static const moe_case cases[] = {
    /* name                                    N     T    E    K  score norm cf   policy drops hot rr */
    {"dropless, softmax, norm_topk", 256, 64, 8, 2, SM, 1, 0.0f, PROB, 0, 0, 0},
    {"capacity by position, sigmoid", 300, 100, 8, 2, SG, 0, 0.5f, POS, 1, 0, 0},
    {"capacity by probability, softmax", 300, 100, 8, 2, SM, 1, 0.5f, PROB, 1, 0, 0},
    {"capacity by probability, sigmoid", 300, 60, 8, 2, SG, 0, 0.5f, PROB, 1, 0, 0},
    {"E=1, dropless", 33, 11, 1, 1, SM, 1, 0.0f, PROB, 0, 0, 0},
    {"E=1, by probability (all scores tie)", 33, 11, 1, 1, SM, 0, 0.5f, PROB, 1, 0, 0},
    {"E=1, by position, sigmoid", 33, 11, 1, 1, SG, 0, 0.5f, POS, 1, 0, 0},
    {"K=E=4, by probability, sigmoid", 50, 10, 4, 4, SG, 1, 0.6f, PROB, 1, 0, 0},
    {"K=E=40, by position", 40, 8, 40, 40, SM, 1, 0.5f, POS, 1, 0, 0},
    {"N=1, dropless", 1, 1, 8, 2, SM, 1, 0.0f, PROB, 0, 0, 0},
    {"N=1, capacity", 1, 1, 8, 2, SG, 0, 1.0f, PROB, 0, 0, 0},
    {"experts with zero load", 8, 4, 16, 1, SM, 0, 0.0f, PROB, 0, 0, 0},
    {"all to expert 0, by probability", 64, 16, 8, 2, SM, 1, 1.0f, PROB, 1, 1, 0},
    {"all to expert 0, by position, sigmoid", 64, 16, 8, 2, SG, 1, 1.0f, POS, 1, 1, 0},
    {"E=6, N not a multiple of T", 70, 16, 6, 2, SM, 1, 0.75f, PROB, 1, 0, 0},
    {"large, by probability", 5000, 1000, 64, 6, SM, 1, 1.0f, PROB, 1, 0, 0},
    {"large, by position, sigmoid", 5000, 500, 64, 6, SG, 0, 1.0f, POS, 1, 0, 0},
    {"large, dropless, sigmoid, norm_topk", 5000, 250, 64, 6, SG, 1, 0.0f, PROB, 0, 0, 0},
    {"E=256, K=8", 128, 64, 256, 8, SG, 1, 1.0f, PROB, 0, 0, 0},
    {"E=1100 (over a loss block)", 20, 10, 1100, 3, SM, 1, 0.0f, PROB, 0, 0, 0},
    {"GShard random routing (unrouted slots)", 200, 50, 8, 2, SM, 1, 0.5f, POS, 1, 0, 1},
};

/* ---------------------------------------------------------------- expert choice */

typedef enum { EC_UNIFORM, EC_QUARTERS, EC_EQUAL, EC_SIGNED } ec_scores;

typedef struct {
    const char *name;
    int64_t N;
    int E, K;
    float cf;      /* 0 read as 1 */
    ec_scores scores;
    int cap;       /* the capacity moe__capacity must give (checked, so the case tests what it says) */
} ec_case;

static float ec_score(ec_scores kind, int64_t i) {
    switch (kind) {
    case EC_UNIFORM: return moe__rng_uniform(&rng);
    case EC_QUARTERS: return floorf(moe__rng_uniform(&rng) * 4.0f) / 4.0f;
    case EC_EQUAL: return 0.5f;
    default: { // signed quarters, with exact zeros of both signs
        float v = floorf(moe__rng_normal(&rng) * 2.0f) / 4.0f;
        return v == 0.0f ? (i % 2 ? -0.0f : 0.0f) : v;
    }
    }
}

/* One GPU expert-choice dispatch into outputs filled with 0xff, compared with the CPU's c. */
static void ec_run_compare(const moe__moe_cache *c, void *dSc, void *dScr, size_t sb, int64_t N, int E, int cap,
                           const char *what) {
    int64_t A = N * E, R = (int64_t)E * cap;
    void *dRow = dev_out((size_t)A * sizeof(int)), *dTok = dev_out((size_t)R * sizeof(int));
    void *dOff = dev_out((size_t)(E + 1) * 8), *dLoad = dev_out((size_t)E * 8);
    CHECK_OK(moe__cuda_dispatch_ec(dRow, dTok, dOff, dLoad, dScr, sb, dSc, N, E, cap));
    char msg[128];
    snprintf(msg, sizeof msg, "dispatch_ec%s: row_of", what);
    compare_ints(dRow, c->row_of, A, sizeof(int), msg);
    snprintf(msg, sizeof msg, "dispatch_ec%s: row_token", what);
    compare_ints(dTok, c->row_token, R, sizeof(int), msg);
    snprintf(msg, sizeof msg, "dispatch_ec%s: offsets", what);
    compare_ints(dOff, c->offsets, E + 1, sizeof(int64_t), msg);
    snprintf(msg, sizeof msg, "dispatch_ec%s: load", what);
    compare_ints(dLoad, c->load, E, sizeof(int64_t), msg);
    // too little scratch, and capacities outside 1..N, are errors, not writes past a buffer
    CHECK(moe__cuda_dispatch_ec(dRow, dTok, dOff, dLoad, dScr, sb - 1, dSc, N, E, cap) == MOE_STATUS_ARG,
          "%s: dispatch_ec with too little scratch", case_name);
    CHECK(moe__cuda_dispatch_ec(dRow, dTok, dOff, dLoad, dScr, sb, dSc, N, E, 0) == MOE_STATUS_ARG,
          "%s: dispatch_ec with capacity 0", case_name);
    CHECK(moe__cuda_dispatch_ec(dRow, dTok, dOff, dLoad, dScr, sb, dSc, N, E, (int)N + 1) == MOE_STATUS_ARG,
          "%s: dispatch_ec with capacity N + 1", case_name);
    DFREE_ALL(dRow, dTok, dOff, dLoad);
}

static void test_dispatch_ec(const ec_case *tc) {
    int64_t N = tc->N, A = N * tc->E;
    int E = tc->E, before = check_failures;
    case_name = tc->name;
    moe__moe_dims d;
    memset(&d, 0, sizeof d);
    d.E = d.El = E, d.K = tc->K, d.ep = 1, d.training = 1, d.routing = MOE_ROUTING_EXPERT_CHOICE;
    d.capacity_factor = tc->cf;
    CHECK(moe__moe_effective_routing(&d) == MOE_ROUTING_EXPERT_CHOICE && moe__moe_slots(&d) == E,
          "%s: not an expert-choice layer", tc->name);
    moe__moe_cache c;
    memset(&c, 0, sizeof c);
    c.scores = malloc((size_t)A * sizeof(float)), c.row_of = malloc((size_t)A * sizeof(int));
    c.row_token = malloc((size_t)A * sizeof(int)), c.scratch_idx = malloc((size_t)(2 * A) * sizeof(int));
    c.offsets = malloc((size_t)(E + 1) * 8), c.load = malloc((size_t)E * 8);
    for (int64_t i = 0; i < A; i++) c.scores[i] = ec_score(tc->scores, i);
    moe__dispatch(&c, &d, N);
    int cap = c.capacity;
    CHECK(cap == tc->cap && c.offsets[E] == (int64_t)E * cap, "%s: capacity %d (want %d), %lld rows", tc->name, cap,
          tc->cap, (long long)c.offsets[E]);
    size_t sb;
    CHECK_OK(moe__cuda_dispatch_ec_scratch(&sb, N, E));
    void *dSc = dev(c.scores, (size_t)A * sizeof(float)), *dScr = dev_out(sb);
    ec_run_compare(&c, dSc, dScr, sb, N, E, cap, "");
    ec_run_compare(&c, dSc, dScr, sb, N, E, cap, " (rerun, used scratch)");
    printf("  %-44s N %5lld E %4d capacity %4d: %s\n", tc->name, (long long)N, E, cap,
           check_failures == before ? "ok" : "FAIL");
    FREE_ALL(c.scores, c.row_of, c.row_token, c.scratch_idx, c.offsets, c.load);
    DFREE_ALL(dSc, dScr);
}

static const ec_case ec_cases[] = {
    /* name                                     N    E   K  cf     scores       cap */
    {"expert choice: N=1", 1, 8, 2, 0.0f, EC_UNIFORM, 1},
    {"expert choice: N=37, E=8", 37, 8, 2, 0.0f, EC_UNIFORM, 10},
    {"expert choice: every token (cap = N)", 500, 64, 8, 8.0f, EC_UNIFORM, 500},
    {"expert choice: tied scores (quarters)", 300, 16, 2, 0.0f, EC_QUARTERS, 38},
    {"expert choice: signed scores, -0.0 and +0.0", 200, 8, 2, 0.0f, EC_SIGNED, 50},
    {"expert choice: cap = 1", 50, 16, 1, 0.25f, EC_UNIFORM, 1},
    {"expert choice: cap = 1, all scores equal", 50, 16, 1, 0.25f, EC_EQUAL, 1},
    {"expert choice: E=1", 33, 1, 1, 0.5f, EC_UNIFORM, 17},
    {"expert choice: E=1, all scores equal", 33, 1, 1, 0.5f, EC_EQUAL, 17},
    {"expert choice: large", 4096, 64, 2, 1.25f, EC_QUARTERS, 160},
};

int main(void) {
    if (gpu_or_skip("test_cuda_moe")) return 77;
    moe__rng_seed(&rng, 20261201);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i]);
    for (size_t i = 0; i < sizeof ec_cases / sizeof ec_cases[0]; i++) test_dispatch_ec(&ec_cases[i]);
    CHECK_SUMMARY("test_cuda_moe");
}
