/*
 * test_cuda_router.c — the router of every routing method on the GPU (cuda/router.cu,
 * cuda/router_noisy.cu) against moe/router.c. Each case runs the CPU router once
 * (moe__router_forward, moe__dispatch, moe__router_losses, then moe__router_backward from random
 * gate gradients) and gives each launcher the CPU's own inputs, so each is checked alone:
 *
 *   jitter               xr, jit exactly (the same draws, rounded alike); nothing written at eval
 *   router_forward       from the CPU's logits and noise_raw: lse, z, scores, probs, the noise
 *                        draws and H; sel and row_of exactly and the gates, skipping tokens whose
 *                        top-K is a near-tie; GShard's 2nd slot kept exactly as on the CPU
 *                        wherever the GPU's gates are the CPU's bits (the draw decides alike)
 *   router_losses_all    from the CPU's routing after dispatch: f, seq_f exactly; aux, seq_aux;
 *                        noisy top-K's importance, load and their CV^2 (0 for the others)
 *   router_backward_all  dlogits and dnoise; the CV^2 gradients (gvec) exactly
 *   jitter_backward      dx += dxr * jit exactly
 *
 * Floats: |gpu - cpu| <= atol + rtol |cpu|, rtol 1e-5, atol 1e-6 of the tensor's largest value
 * for elementwise results and 1e-5 for sums whose order differs or that go through expf and
 * erfc. Every launcher runs twice and must give the same bits.
 *
 * Exits 77 (skipped) where there is no usable GPU: CI builds and runs it without one.
 */
#include "cuda_check.h"
#include "moe/moe_layer.h"

#include <string.h>

static const char *case_name = "";

/* ---------------------------------------------------------------- device buffers of a case */

#define MAX_DEV 128
static void *dev_ptrs[MAX_DEV];
static int n_dev;

static void *track(void *p) {
    CHECK(n_dev < MAX_DEV, "%s: more than %d device buffers", case_name, MAX_DEV);
    if (n_dev < MAX_DEV) dev_ptrs[n_dev++] = p;
    return p;
}
/* a device copy of n bytes of x, freed with the case */
static void *up(const void *x, size_t n) { return track(dev(x, n)); }
/* an uninitialised device buffer of n bytes, filled with 0xff so that stale values cannot pass */
static void *out_buf(size_t n) {
    void *d;
    CHECK_OK(moe__cuda_malloc(&d, n ? n : 1));
    CHECK_OK(moe__cuda_memset(d, 0xff, n ? n : 1));
    return track(d);
}
static void free_case_buffers(void) {
    for (int i = 0; i < n_dev; i++) moe__cuda_free(dev_ptrs[i]);
    n_dev = 0;
}

/* ---------------------------------------------------------------- comparisons */

/* got against want (host, n floats): rtol 1e-5, atol scale * want's largest value; scale < 0
 * asks for equal values. */
static void compare_host(const float *got, const float *want, int64_t n, double scale, const char *what) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s: %s", case_name, what);
    if (scale < 0) CHECK_ARRAYS(got, want, n, 0.0, 0.0, msg);
    else CHECK_ARRAYS(got, want, n, scale * maxabs(want, n) + 1e-30, 1e-5, msg);
}
static void compare_at(const void *got_dev, const float *want, int64_t n, double scale, const char *what) {
    float *got = host_bytes(got_dev, (size_t)n * sizeof(float));
    compare_host(got, want, n, scale, what);
    free(got);
}
#define compare_exact(got, want, n, what) compare_at(got, want, n, -1.0, what)
#define compare(got, want, n, what) compare_at(got, want, n, 1e-6, what)
#define compare_sum(got, want, n, what) compare_at(got, want, n, 1e-5, what)

/* The two device arrays (n bytes) hold the same bits: a rerun gave the same result. */
static void same_bits(const void *a_dev, const void *b_dev, size_t n, const char *what) {
    void *a = host_bytes(a_dev, n), *b = host_bytes(b_dev, n);
    CHECK(memcmp(a, b, n) == 0, "%s: %s: a second run gave other bits", case_name, what);
    free(a);
    free(b);
}

/* The rows (w floats each) of a (N,w) of the tokens not skipped, packed into a new array. */
static float *pack_rows(const float *a, const char *skip, int64_t N, int w, int64_t *n_out) {
    float *p = malloc((size_t)(N * w + 1) * sizeof(float));
    int64_t k = 0;
    for (int64_t n = 0; n < N; n++)
        if (!skip[n]) memcpy(p + (k++) * w, a + n * w, (size_t)w * sizeof(float));
    *n_out = k * w;
    return p;
}

/* ---------------------------------------------------------------- the CPU router */

typedef struct {
    const char *name;
    int64_t N;
    int T, E, K;
    moe_routing routing;
    moe_score score;
    int norm_topk, bias, training, random_routing;
    float jitter_eps;
    float cf; /* capacity factor: 0 dropless (token choice); expert choice reads 0 as 1 */
} router_case;

/* One CPU router, run forward and backward, and what the checks need of it. */
typedef struct {
    moe__moe_dims d;
    moe__moe_cache c;
    moe__moe_scratch s;
    moe__moe_weights w, g;
    moe__moe_loss_scales ls;
    char *arena;
    float *x, *dx0, *dx, *bias;
    int *row0;              /* row_of as the router left it (before dispatch) */
    int64_t N, B, A;        /* tokens, whole sequences, N * slots */
    int slots, noisy, jitter, token_choice;
} layer;

static void layer_plan(layer *L) {
    moe__planner pl = {NULL, 0};
    moe__moe_plan_cache(&pl, &L->c, &L->d, L->N, L->A);
    moe__moe_plan_scratch(&pl, &L->s, &L->d, L->N, L->A);
    L->arena = moe__calloc(pl.off);
    pl.base = L->arena, pl.off = 0;
    moe__moe_plan_cache(&pl, &L->c, &L->d, L->N, L->A);
    moe__moe_plan_scratch(&pl, &L->s, &L->d, L->N, L->A);
}

static void layer_run(layer *L, const router_case *tc, uint64_t seed) {
    int E = tc->E, C = 20;
    int64_t N = tc->N, EC = (int64_t)E * C;
    moe__moe_dims *d = &L->d;
    memset(L, 0, sizeof *L);
    d->E = E, d->K = tc->K, d->F = 1, d->C = C, d->T = tc->T, d->ep = 1, d->El = E;
    d->routing = tc->routing, d->score = tc->score, d->norm_topk = tc->norm_topk, d->route_scale = 1.5f;
    d->capacity_factor = tc->cf, d->drop_policy = MOE_DROP_PROBABILITY, d->training = tc->training;
    d->jitter_eps = tc->jitter_eps, d->random_routing = tc->random_routing, d->noise_seed = seed;
    moe_routing r = moe__moe_effective_routing(d);
    L->slots = moe__moe_slots(d), L->N = N, L->B = N / tc->T, L->A = N * L->slots;
    L->noisy = r == MOE_ROUTING_NOISY_TOPK, L->jitter = tc->training && tc->jitter_eps > 0.0f;
    L->token_choice = r == MOE_ROUTING_TOPK || r == MOE_ROUTING_NOISY_TOPK;
    layer_plan(L);
    L->w.wg = randn(EC, 0.5f), L->w.wnoise = L->noisy ? randn(EC, 0.5f) : NULL;
    L->bias = randn(E, 0.05f);
    L->w.bias = tc->bias ? L->bias : NULL;
    L->g.wg = calloc((size_t)EC, sizeof(float)), L->g.wnoise = L->noisy ? calloc((size_t)EC, sizeof(float)) : NULL;
    L->x = randn(N * C, 1);
    moe__router_forward(&L->c, L->x, &L->w, d, N);
    L->row0 = malloc((size_t)L->A * sizeof(int));
    memcpy(L->row0, L->c.row_of, (size_t)L->A * sizeof(int));
    moe__dispatch(&L->c, d, N);
    moe__router_losses(&L->c, d, N);
    float *dg = randn(L->A, 1);
    memcpy(L->s.dgate, dg, (size_t)L->A * sizeof(float));
    free(dg);
    L->dx0 = randn(N * C, 1), L->dx = malloc((size_t)(N * C) * sizeof(float));
    memcpy(L->dx, L->dx0, (size_t)(N * C) * sizeof(float));
    // a token after the last whole sequence has no seq_f row: the CPU reads past it, so no
    // sequence loss there (the GPU gives such tokens no sequence term)
    L->ls.aux = 0.1f, L->ls.z = 0.05f, L->ls.seq_aux = N % tc->T == 0 ? 0.2f : 0.0f;
    L->ls.importance = 0.3f, L->ls.load = 0.4f;
    moe__router_backward(L->dx, &L->g, &L->s, L->x, &L->w, &L->c, d, N, &L->ls);
}

static void layer_free(layer *L) {
    FREE_ALL(L->arena, L->x, L->dx0, L->dx, L->bias, L->row0, L->w.wg, L->w.wnoise, L->g.wg, L->g.wnoise);
}

static moe__cuda_route_dims route_dims(const layer *L) {
    const moe__moe_dims *d = &L->d;
    moe__cuda_route_dims rd;
    memset(&rd, 0, sizeof rd);
    rd.N = L->N, rd.T = d->T, rd.C = d->C, rd.E = d->E, rd.K = d->K, rd.slots = L->slots;
    rd.routing = moe__moe_effective_routing(d);
    rd.sigmoid = d->score == MOE_SCORE_SIGMOID, rd.norm_topk = d->norm_topk;
    rd.random_routing = d->random_routing, rd.training = d->training;
    rd.route_scale = d->route_scale, rd.jitter_eps = d->jitter_eps, rd.noise_seed = d->noise_seed;
    return rd;
}

/* Device copies of the CPU's cache after the forward, dispatch and losses. */
static moe__cuda_route upload(const layer *L) {
    const moe__moe_cache *c = &L->c;
    size_t NE = (size_t)(L->N * L->d.E) * sizeof(float), NC = (size_t)(L->N * L->d.C) * sizeof(float);
    size_t A = (size_t)L->A * sizeof(int), E = (size_t)L->d.E;
    moe__cuda_route r;
    memset(&r, 0, sizeof r);
    if (L->jitter) r.xr = up(c->xr, NC), r.jit = up(c->jit, NC);
    r.logits = up(c->logits, NE), r.scores = up(c->scores, NE), r.probs = up(c->probs, NE);
    if (L->noisy) r.noise_raw = up(c->noise_raw, NE), r.noise_eps = up(c->noise_eps, NE), r.noisy = up(c->noisy, NE);
    r.lse = up(c->lse, (size_t)L->N * sizeof(float));
    r.sel = up(c->sel, A), r.gate = up(c->gate, A), r.row_of = up(c->row_of, A);
    r.load = up(c->load, E * sizeof(int64_t)), r.f = up(c->f, E * sizeof(float));
    r.seq_f = up(c->seq_f, (size_t)L->B * E * sizeof(float));
    if (L->noisy) r.imp = up(c->imp, E * sizeof(float)), r.loadest = up(c->loadest, E * sizeof(float));
    return r;
}

/* ---------------------------------------------------------------- the checks */

static void check_jitter(const layer *L, const moe__cuda_route_dims *rd) {
    size_t nb = (size_t)(L->N * L->d.C) * sizeof(float);
    void *x = up(L->x, nb);
    moe__cuda_route o[2];
    memset(o, 0, sizeof o);
    for (int i = 0; i < 2; i++) {
        o[i].xr = out_buf(nb), o[i].jit = out_buf(nb);
        CHECK_OK(moe__cuda_jitter(rd, &o[i], x));
    }
    if (L->jitter) {
        compare_exact(o[0].xr, L->c.xr, L->N * L->d.C, "jitter: xr");
        compare_exact(o[0].jit, L->c.jit, L->N * L->d.C, "jitter: jit");
        same_bits(o[0].xr, o[1].xr, nb, "jitter: xr");
        same_bits(o[0].jit, o[1].jit, nb, "jitter: jit");
    } else { // evaluation: no jitter, nothing written
        unsigned char *h = host_bytes(o[0].xr, nb);
        size_t i = 0;
        while (i < nb && h[i] == 0xff) i++;
        CHECK(i == nb, "%s: jitter at evaluation wrote xr (byte %zu)", case_name, i);
        free(h);
    }
}

/* sel, gate, row_of token by token, skipping near-ties; scores and probs (noisy top-K: of the
 * tokens not skipped, since they hold its gates). o: the GPU's forward. */
static void check_forward_tokens(const layer *L, const moe__cuda_route *o) {
    const moe__moe_cache *c = &L->c;
    int E = L->d.E, K = L->d.K, S = L->slots, rr = L->d.random_routing && L->d.training;
    int64_t N = L->N, NE = N * E, A = L->A, skipped = 0, bad_sel = 0, bad_gate = 0, bad_row = 0, unrouted = 0;
    int *sel = host_bytes(o->sel, (size_t)A * sizeof(int)), *row = host_bytes(o->row_of, (size_t)A * sizeof(int));
    float *gate = host_bytes(o->gate, (size_t)A * sizeof(float)), *key = malloc((size_t)E * sizeof(float));
    char *skip = calloc((size_t)N, 1);
    for (int64_t n = 0; n < N; n++) {
        if (L->token_choice) {
            for (int e = 0; e < E; e++)
                key[e] = L->noisy ? c->noisy[n * E + e] : c->scores[n * E + e] + (L->w.bias ? L->w.bias[e] : 0.0f);
            if ((skip[n] = (char)near_tie(key, c->sel + n * K, E, K))) {
                skipped++;
                continue;
            }
        }
        // GShard: where the GPU's gates are the CPU's bits, the draw must decide alike
        int same_gates = !rr || (gate[n * S] == c->gate[n * S] && gate[n * S + 1] == c->gate[n * S + 1]);
        for (int s = 0; s < S; s++) {
            int64_t a = n * S + s;
            bad_sel += sel[a] != c->sel[a];
            bad_gate += !(fabsf(gate[a] - c->gate[a]) <= 1e-6f + 1e-5f * fabsf(c->gate[a]));
            bad_row += (s != 1 || same_gates) && row[a] != L->row0[a];
            unrouted += L->row0[a] == MOE_ROW_UNROUTED;
        }
    }
    CHECK(bad_sel == 0 && bad_gate == 0 && bad_row == 0 && skipped < N / 2 + 1,
          "%s: router_forward: %lld selections, %lld gates, %lld rows differ (%lld near-tie tokens skipped)",
          case_name, (long long)bad_sel, (long long)bad_gate, (long long)bad_row, (long long)skipped);
    if (rr) CHECK(unrouted > 0, "%s: random routing left every 2nd slot routed", case_name);
    float *sc = host_bytes(o->scores, (size_t)NE * sizeof(float));
    float *pr = host_bytes(o->probs, (size_t)NE * sizeof(float));
    if (!L->noisy) memset(skip, 0, (size_t)N); // the clean scores do not depend on the selection
    int64_t n1, n2;
    float *gs = pack_rows(sc, skip, N, E, &n1), *ws = pack_rows(c->scores, skip, N, E, &n2);
    compare_host(gs, ws, n1, 1e-5, "router_forward: scores");
    free(gs), free(ws);
    gs = pack_rows(pr, skip, N, E, &n1), ws = pack_rows(c->probs, skip, N, E, &n2);
    compare_host(gs, ws, n1, 1e-5, "router_forward: probs");
    FREE_ALL(gs, ws, sel, row, gate, key, skip, sc, pr);
}

static void check_forward(const layer *L, const moe__cuda_route *in, const moe__cuda_route_dims *rd) {
    int E = L->d.E;
    size_t NE = (size_t)(L->N * E) * sizeof(float), A = (size_t)L->A * sizeof(int), Nb = (size_t)L->N * sizeof(float);
    void *bias = L->w.bias ? up(L->bias, (size_t)E * sizeof(float)) : NULL;
    moe__cuda_route o[2];
    float *z[2];
    for (int i = 0; i < 2; i++) {
        o[i] = *in;
        o[i].scores = out_buf(NE), o[i].probs = out_buf(NE), o[i].lse = out_buf(Nb);
        o[i].sel = out_buf(A), o[i].gate = out_buf(A), o[i].row_of = out_buf(A);
        if (L->noisy) o[i].noise_eps = out_buf(NE), o[i].noisy = out_buf(NE);
        z[i] = out_buf(sizeof(float));
        CHECK_OK(moe__cuda_router_forward(rd, &o[i], z[i], bias));
    }
    same_bits(o[0].lse, o[1].lse, Nb, "router_forward: lse");
    same_bits(z[0], z[1], sizeof(float), "router_forward: z");
    same_bits(o[0].scores, o[1].scores, NE, "router_forward: scores");
    same_bits(o[0].probs, o[1].probs, NE, "router_forward: probs");
    same_bits(o[0].sel, o[1].sel, A, "router_forward: sel");
    same_bits(o[0].gate, o[1].gate, A, "router_forward: gate");
    same_bits(o[0].row_of, o[1].row_of, A, "router_forward: row_of");
    compare_sum(o[0].lse, L->c.lse, L->N, "router_forward: lse");
    compare_sum(z[0], &L->c.z, 1, "router_forward: z-loss");
    if (L->noisy) {
        same_bits(o[0].noise_eps, o[1].noise_eps, NE, "router_forward: noise_eps");
        same_bits(o[0].noisy, o[1].noisy, NE, "router_forward: H");
        compare(o[0].noise_eps, L->c.noise_eps, L->N * E, "router_forward: noise_eps");
        compare_sum(o[0].noisy, L->c.noisy, L->N * E, "router_forward: H");
    }
    check_forward_tokens(L, &o[0]);
}

static void check_losses(const layer *L, const moe__cuda_route *in, const moe__cuda_route_dims *rd) {
    const moe__moe_cache *c = &L->c;
    int E = L->d.E;
    size_t eb = (size_t)E * sizeof(float), fb = (size_t)L->B * eb;
    moe__cuda_route o[2];
    float *out[2];
    for (int i = 0; i < 2; i++) {
        o[i] = *in;
        o[i].f = out_buf(eb), o[i].seq_f = out_buf(fb);
        if (L->noisy) o[i].imp = out_buf(eb), o[i].loadest = out_buf(eb);
        out[i] = out_buf(4 * sizeof(float));
        CHECK_OK(moe__cuda_router_losses_all(rd, &o[i], out[i]));
    }
    same_bits(out[0], out[1], 4 * sizeof(float), "router_losses_all: losses");
    same_bits(o[0].f, o[1].f, eb, "router_losses_all: f");
    same_bits(o[0].seq_f, o[1].seq_f, fb, "router_losses_all: seq_f");
    compare_exact(o[0].f, c->f, E, "router_losses_all: f");
    compare_exact(o[0].seq_f, c->seq_f, L->B * E, "router_losses_all: seq_f");
    float *got = host_bytes(out[0], 4 * sizeof(float));
    const float want[4] = {c->aux, c->seq_aux, c->imp_loss, c->load_loss};
    const char *names[4] = {"router_losses_all: aux", "router_losses_all: seq_aux",
                            "router_losses_all: importance (0 unless noisy)",
                            "router_losses_all: load (0 unless noisy)"};
    for (int i = 0; i < 4; i++) compare_host(got + i, want + i, 1, 1e-5, names[i]);
    free(got);
    if (L->noisy) {
        same_bits(o[0].imp, o[1].imp, eb, "router_losses_all: imp");
        same_bits(o[0].loadest, o[1].loadest, eb, "router_losses_all: loadest");
        compare_sum(o[0].imp, c->imp, E, "router_losses_all: imp");
        compare_sum(o[0].loadest, c->loadest, E, "router_losses_all: loadest");
    }
}

static void check_backward(const layer *L, const moe__cuda_route *in, const moe__cuda_route_dims *rd) {
    int E = L->d.E;
    int64_t NE = L->N * E, NC = L->N * L->d.C;
    size_t neb = (size_t)NE * sizeof(float), gb = (size_t)(2 * E) * sizeof(float), ncb = (size_t)NC * sizeof(float);
    moe__cuda_loss_scales ls;
    ls.aux = L->ls.aux, ls.z = L->ls.z, ls.seq_aux = L->ls.seq_aux, ls.importance = L->ls.importance;
    ls.load = L->ls.load;
    void *dg = up(L->s.dgate, (size_t)L->A * sizeof(float));
    float *dl[2], *dn[2] = {NULL, NULL}, *gv[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        dl[i] = out_buf(neb);
        if (L->noisy) dn[i] = out_buf(neb), gv[i] = out_buf(gb);
        CHECK_OK(moe__cuda_router_backward_all(rd, in, &ls, dl[i], dn[i], gv[i], dg));
    }
    same_bits(dl[0], dl[1], neb, "router_backward_all: dlogits");
    compare_sum(dl[0], L->s.dlogits, NE, "router_backward_all: dlogits");
    if (L->noisy) {
        same_bits(dn[0], dn[1], neb, "router_backward_all: dnoise");
        same_bits(gv[0], gv[1], gb, "router_backward_all: gvec");
        compare_sum(dn[0], L->s.dnoise, NE, "router_backward_all: dnoise");
        compare_exact(gv[0], L->s.gvec, 2 * E, "router_backward_all: gvec (CV^2 gradients)");
    }
    if (L->jitter) { // dx = dx0 + dxr * jit, from the CPU's dxr and jit
        void *dxr = up(L->s.dxr, ncb), *dx = up(L->dx0, ncb), *dx2 = up(L->dx0, ncb);
        CHECK_OK(moe__cuda_jitter_backward(dx, dxr, in->jit, NC));
        CHECK_OK(moe__cuda_jitter_backward(dx2, dxr, in->jit, NC));
        compare_exact(dx, L->dx, NC, "jitter_backward: dx (accumulated)");
        same_bits(dx, dx2, ncb, "jitter_backward: dx");
    }
}

/* Bad dimensions are refused before any launch. */
static void check_refused(const moe__cuda_route_dims *rd, const moe__cuda_route *in) {
    moe__cuda_route_dims bad = *rd;
    bad.slots++;
    float *z = out_buf(sizeof(float));
    CHECK(moe__cuda_router_forward(&bad, in, z, NULL) == MOE_STATUS_ARG, "%s: router_forward took slots %d", case_name,
          bad.slots);
    bad = *rd;
    bad.T = 0;
    CHECK(moe__cuda_router_losses_all(&bad, in, z) == MOE_STATUS_ARG, "%s: router_losses_all took T 0", case_name);
}

static void run_case(const router_case *tc, uint64_t seed) {
    layer L;
    case_name = tc->name;
    int before = check_failures;
    layer_run(&L, tc, seed);
    moe__cuda_route_dims rd = route_dims(&L);
    moe__cuda_route in = upload(&L);
    if (tc->jitter_eps > 0.0f) check_jitter(&L, &rd);
    check_forward(&L, &in, &rd);
    check_losses(&L, &in, &rd);
    check_backward(&L, &in, &rd);
    check_refused(&rd, &in);
    printf("  %-46s N %4lld T %4d E %3d K %d slots %3d: %s\n", tc->name, (long long)L.N, L.d.T, L.d.E, L.d.K, L.slots,
           check_failures == before ? "ok" : "FAIL");
    free_case_buffers();
    layer_free(&L);
}

#define TOPK MOE_ROUTING_TOPK
#define NOISY MOE_ROUTING_NOISY_TOPK
#define EXPC MOE_ROUTING_EXPERT_CHOICE
#define SOFT MOE_ROUTING_SOFT
#define SM MOE_SCORE_SOFTMAX
#define SG MOE_SCORE_SIGMOID

static const router_case cases[] = {
    /* name                                        N    T    E   K  routing score norm bias train rr jitter cf */
    {"top-K softmax, norm_topk, bias", 200, 50, 8, 2, TOPK, SM, 1, 1, 1, 0, 0.0f, 0.0f},
    {"top-K softmax, no norm, eval", 257, 257, 8, 2, TOPK, SM, 0, 0, 0, 0, 0.0f, 0.0f},
    {"top-K sigmoid, norm_topk, bias, E=64 K=6", 300, 100, 64, 6, TOPK, SG, 1, 1, 1, 0, 0.0f, 0.0f},
    {"top-K sigmoid, no norm, N not a multiple of T", 100, 30, 16, 4, TOPK, SG, 0, 0, 1, 0, 0.0f, 0.0f},
    {"top-K, E=1", 33, 11, 1, 1, TOPK, SM, 1, 0, 1, 0, 0.0f, 0.0f},
    {"top-K, E=300 (lanes over 32)", 70, 35, 300, 3, TOPK, SG, 1, 1, 1, 0, 0.0f, 0.0f},
    {"top-K with jitter", 130, 65, 8, 2, TOPK, SM, 1, 0, 1, 0, 0.05f, 0.0f},
    {"top-K with jitter at eval (off)", 64, 32, 8, 2, TOPK, SM, 1, 0, 0, 0, 0.05f, 0.0f},
    {"noisy top-K, training", 200, 50, 8, 2, NOISY, SM, 1, 0, 1, 0, 0.0f, 0.0f},
    {"noisy top-K, eval (eps = 0)", 200, 50, 8, 2, NOISY, SM, 1, 0, 0, 0, 0.0f, 0.0f},
    {"noisy top-K, E=64 K=6, jitter", 150, 50, 64, 6, NOISY, SM, 1, 0, 1, 0, 0.02f, 0.0f},
    {"noisy top-K, E=2 K=1, N not a multiple of T", 45, 20, 2, 1, NOISY, SM, 1, 0, 1, 0, 0.0f, 0.0f},
    {"noisy top-K, E=300 K=2", 40, 20, 300, 2, NOISY, SM, 1, 0, 1, 0, 0.0f, 0.0f},
    {"GShard random routing, softmax, norm_topk", 400, 100, 8, 2, TOPK, SM, 1, 0, 1, 1, 0.0f, 0.0f},
    {"GShard random routing, sigmoid, jitter", 333, 111, 16, 2, TOPK, SG, 0, 1, 1, 1, 0.05f, 0.0f},
    {"expert choice, softmax", 200, 50, 8, 2, EXPC, SM, 1, 0, 1, 0, 0.0f, 1.0f},
    {"expert choice, sigmoid, E=64 K=6", 130, 65, 64, 6, EXPC, SG, 1, 0, 1, 0, 0.0f, 0.5f},
    {"expert choice, E=1", 33, 11, 1, 1, EXPC, SM, 1, 0, 1, 0, 0.0f, 1.0f},
    {"expert choice at eval (top-K)", 100, 50, 8, 2, EXPC, SM, 1, 0, 0, 0, 0.0f, 1.0f},
    {"expert choice, E=300, jitter", 60, 30, 300, 4, EXPC, SM, 1, 0, 1, 0, 0.1f, 1.0f},
    {"soft, softmax", 90, 30, 8, 2, SOFT, SM, 1, 0, 1, 0, 0.0f, 0.0f},
    {"soft, sigmoid, E=300", 40, 20, 300, 1, SOFT, SG, 1, 0, 1, 0, 0.0f, 0.0f},
    {"soft, E=1, N not a multiple of T", 50, 16, 1, 1, SOFT, SM, 1, 0, 1, 0, 0.0f, 0.0f},
};

int main(void) {
    if (gpu_or_skip("test_cuda_router")) return 77;
    moe__rng_seed(&rng, 20261216);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(&cases[i], 0x5eed0000ULL + 977 * i);
    CHECK_SUMMARY("test_cuda_router");
}
