/*
 * moe.cu — the MoE layer around the experts on the GPU, for token-choice top-K (K slots a token,
 * assignment a = n*K + k), mirroring moe__dispatch (moe/dispatch.c), the combine and scatter
 * loops of moe__moe_forward/_backward (moe/moe_layer.c) and the top-K parts of
 * moe__router_losses and moe__router_backward (moe/router.c):
 *
 *   dispatch   the assignments sorted by expert (CUB stable radix sort on the expert ids: token
 *              order within an expert); load_e = the length of expert e's segment; with capacity
 *              cap an expert keeps its first cap assignments (position) or its cap highest scores
 *              (probability: a stable segmented radix sort by descending score, so ties go to
 *              the lower token); kept rows are numbered by an exclusive scan of the kept flags in
 *              (expert, token) order. Integer work throughout: the same rows as the CPU.
 *   gather     xe_r = x[row_token_r]
 *   combine    y_n = sum over kept slots k, in slot order, of gate_nk ye[row_nk]
 *   backward   dye[row_nk] = gate_nk dy_n, dgate_nk = dy_n . ye[row_nk]; dx_n += sum_k dxe[row_nk]
 *   losses     Switch aux E sum_e f_e P_e (f_e = load_e / sum load, P_e = mean_n probs_ne) and the
 *              sequence aux mean_b sum_e f_be P_be (f_be = E/(K T) * slots of sequence b on e)
 *   router bw  per token the CPU's clean_token_backward (softmax or sigmoid scores, norm_topk,
 *              route_scale) plus the z-loss term 2 z_s lse_n softmax(logits_n) / N
 *
 * Determinism: no float atomics; every sum runs in a fixed order (slot order, a fixed warp
 * butterfly or a fixed block tree), so the same inputs give bit-identical outputs on every run.
 * Numerics: fp32 as on the CPU, the losses' sums in double. gather, scatter_add, dye and seq_f are
 * the CPU's arithmetic exactly; combine differs by fma contraction; dgate and the router
 * backward's sums over experts are warp trees and the losses' double sums block trees where the
 * CPU sums left to right, so those agree to rounding.
 */
#include "cuda/common.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <limits.h>

// The row markers of moe/moe_layer.h, which includes the C11-only core.h: keep them equal
// (test_cuda_moe compares row_of with the CPU's, markers included).
#define ROW_DROPPED (-1)
#define ROW_UNROUTED (-2)

#define THREADS 256
#define WARP 32
#define ALIGN 256

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
// one warp an item: the loop is uniform over the warp, so shuffles inside it are safe
#define WARP_STRIDE(i, n)                                                                      \
    for (int64_t i = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) / WARP; i < (n);       \
         i += (int64_t)gridDim.x * (blockDim.x / WARP))

#define TRY(expr)                                                                              \
    do {                                                                                       \
        moe_status st_ = (expr);                                                               \
        if (st_ != MOE_STATUS_OK) return st_;                                                  \
    } while (0)

/* Sum over the warp by a butterfly: every lane ends with the same bits, in the same order. */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ---------------------------------------------------------------- dispatch */

static __global__ void expert_keys_kernel(unsigned *key, int *val, const int *sel, const int *row_of, int64_t A,
                                          int E) {
    GRID_STRIDE(a, A) {
        key[a] = row_of[a] == ROW_UNROUTED ? (unsigned)E : (unsigned)sel[a]; // unrouted ones sort last
        val[a] = (int)a;
    }
}

/* seg[e] = the first sorted position whose key is >= e, for e = 0..E (seg[E] = the routed
 * count). Position i writes the e in (key[i-1], key[i]], with key[-1] = -1 and key[A] = E: the
 * keys are sorted, so each e is written exactly once. */
static __global__ void segment_starts_kernel(int *seg, const unsigned *key, int64_t A, int E) {
    GRID_STRIDE(i, A + 1) {
        int lo = i > 0 ? (int)key[i - 1] + 1 : 0, hi = i < A ? (int)key[i] : E;
        for (int e = lo; e <= hi; e++) seg[e] = (int)i;
    }
}

static __global__ void score_keys_kernel(float *skey, const unsigned *key, const int *val, const float *scores,
                                         int64_t A, int E, int K) {
    GRID_STRIDE(i, A) {
        unsigned e = key[i];
        skey[i] = e < (unsigned)E ? scores[(int64_t)(val[i] / K) * E + e] : 0.0f;
    }
}

/* by_score holds each expert's segment in descending score order: its first cap are kept. */
static __global__ void top_cap_kernel(int *keep, const unsigned *key, const int *by_score, const int *seg, int64_t A,
                                      int E, int cap) {
    GRID_STRIDE(i, A) {
        unsigned e = key[i];
        if (e < (unsigned)E) keep[by_score[i]] = i - seg[e] < cap;
    }
}

/* flag[i] for sorted position i (flag[A] = 0, so the scan's last entry is the kept total):
 * keep[assignment] from the score order, or the first cap of the segment (cap 0: all). */
static __global__ void kept_flags_kernel(int *flag, const unsigned *key, const int *val, const int *seg,
                                         const int *keep, int64_t A, int E, int cap) {
    GRID_STRIDE(i, A + 1) {
        int on = 0;
        if (i < A && key[i] < (unsigned)E) on = keep ? keep[val[i]] : cap == 0 || i - seg[key[i]] < cap;
        flag[i] = on;
    }
}

static __global__ void rows_kernel(int *row_of, int *row_token, const unsigned *key, const int *val, const int *flag,
                                   const int *rowpos, int64_t A, int E, int K) {
    GRID_STRIDE(i, A) {
        int a = val[i];
        if (flag[i]) {
            row_of[a] = rowpos[i];
            row_token[rowpos[i]] = a / K;
        } else {
            row_of[a] = key[i] < (unsigned)E ? ROW_DROPPED : ROW_UNROUTED;
        }
    }
}

static __global__ void offsets_kernel(int64_t *offsets, int64_t *load, const int *seg, const int *rowpos, int E) {
    GRID_STRIDE(e, E + 1) {
        offsets[e] = rowpos[seg[e]]; // the kept rows before expert e's segment
        if (e < E) load[e] = seg[e + 1] - seg[e];
    }
}

/* Byte offsets of the dispatch scratch, each aligned to ALIGN; CUB's temporary storage is one
 * region, used by the three CUB calls in turn (one stream). */
typedef struct {
    size_t key, key_sorted, val, val_sorted, skey, skey_sorted, by_score, keep, flag, rowpos, seg, temp;
    size_t temp_bytes, total;
} dispatch_layout;

/* The radix sort's end bit: expert ids 0..E-1 and E for unrouted assignments. */
static int expert_bits(int E) {
    int b = 1;
    while (b < 31 && (1u << b) <= (unsigned)E) b++;
    return b;
}

static size_t take(size_t *cur, size_t bytes) {
    size_t at = (*cur + ALIGN - 1) / ALIGN * ALIGN;
    *cur = at + bytes;
    return at;
}

static moe_status dispatch_layout_of(dispatch_layout *L, int A, int E) {
    size_t sort = 0, segsort = 0, scan = 0;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, sort, (const unsigned *)NULL, (unsigned *)NULL,
                                                    (const int *)NULL, (int *)NULL, A, 0, expert_bits(E));
    if (e == cudaSuccess)
        e = cub::DeviceSegmentedRadixSort::SortPairsDescending(NULL, segsort, (const float *)NULL, (float *)NULL,
                                                               (const int *)NULL, (int *)NULL, A, E, (const int *)NULL,
                                                               (const int *)NULL);
    if (e == cudaSuccess) e = cub::DeviceScan::ExclusiveSum(NULL, scan, (const int *)NULL, (int *)NULL, A + 1);
    TRY(moe__cuda_status(e, "dispatch: CUB scratch sizes"));
    size_t ints = (size_t)A * sizeof(int), cur = 0;
    L->key = take(&cur, ints);
    L->key_sorted = take(&cur, ints);
    L->val = take(&cur, ints);
    L->val_sorted = take(&cur, ints);
    L->skey = take(&cur, ints);
    L->skey_sorted = take(&cur, ints);
    L->by_score = take(&cur, ints);
    L->keep = take(&cur, ints);
    L->flag = take(&cur, ints + sizeof(int));
    L->rowpos = take(&cur, ints + sizeof(int));
    L->seg = take(&cur, (size_t)(E + 1) * sizeof(int));
    L->temp_bytes = sort > segsort ? sort : segsort;
    L->temp_bytes = scan > L->temp_bytes ? scan : L->temp_bytes;
    L->temp = take(&cur, L->temp_bytes);
    L->total = cur + ALIGN - 1; // room to align the caller's pointer
    return MOE_STATUS_OK;
}

static moe_status dispatch_check(int64_t N, int E, int K, int cap) {
    if (N < 0 || E < 1 || K < 1 || K > E || cap < 0 || N * K >= INT_MAX)
        return moe__err(MOE_STATUS_ARG, "CUDA dispatch: N %lld, E %d, K %d, capacity %d out of range", (long long)N, E,
                        K, cap);
    return MOE_STATUS_OK;
}

extern "C" moe_status moe__cuda_dispatch_scratch(size_t *bytes, int64_t A, int E) {
    *bytes = 0;
    if (A < 0 || A >= INT_MAX || E < 1)
        return moe__err(MOE_STATUS_ARG, "CUDA dispatch scratch: %lld assignments, E %d out of range", (long long)A, E);
    dispatch_layout L;
    TRY(dispatch_layout_of(&L, (int)A, E));
    *bytes = L.total;
    return MOE_STATUS_OK;
}

/* Probability drop policy: keep (A, by assignment) = 1 for each expert's cap highest scores. */
static moe_status keep_top_scores(int *keep, const dispatch_layout *L, char *base, const float *scores, int A, int E,
                                  int K, int cap) {
    const unsigned *key_sorted = (const unsigned *)(base + L->key_sorted);
    const int *val_sorted = (const int *)(base + L->val_sorted), *seg = (const int *)(base + L->seg);
    float *skey = (float *)(base + L->skey), *skey_sorted = (float *)(base + L->skey_sorted);
    int *by_score = (int *)(base + L->by_score);
    unsigned blocks = moe__cuda_blocks(A, THREADS);
    score_keys_kernel<<<blocks, THREADS>>>(skey, key_sorted, val_sorted, scores, A, E, K);
    TRY(MOE_CUDA_LAUNCHED("dispatch (scores)"));
    // stable: within a segment equal scores keep their token order, so ties go to the lower token
    size_t tb = L->temp_bytes;
    TRY(moe__cuda_status(cub::DeviceSegmentedRadixSort::SortPairsDescending(base + L->temp, tb, skey, skey_sorted,
                                                                            val_sorted, by_score, A, E, seg, seg + 1),
                         "dispatch: sort by score"));
    top_cap_kernel<<<blocks, THREADS>>>(keep, key_sorted, by_score, seg, A, E, cap);
    return MOE_CUDA_LAUNCHED("dispatch (top scores)");
}

extern "C" moe_status moe__cuda_dispatch(int *row_of, int *row_token, int64_t *offsets, int64_t *load, void *scratch,
                                         size_t scratch_bytes, const int *sel, const float *scores, int64_t N, int E,
                                         int K, int cap, int probability) {
    // sel, row_of (N,K); scores (N,E); row_token (N*K); offsets (E+1); load (E)
    TRY(dispatch_check(N, E, K, cap));
    int A = (int)(N * K);
    dispatch_layout L;
    TRY(dispatch_layout_of(&L, A, E));
    if (scratch_bytes < L.total)
        return moe__err(MOE_STATUS_ARG, "CUDA dispatch: scratch of %zu bytes, %zu needed (moe__cuda_dispatch_scratch)",
                        scratch_bytes, L.total);
    char *base = (char *)(((uintptr_t)scratch + ALIGN - 1) / ALIGN * ALIGN);
    unsigned *key = (unsigned *)(base + L.key), *key_sorted = (unsigned *)(base + L.key_sorted);
    int *val = (int *)(base + L.val), *val_sorted = (int *)(base + L.val_sorted), *seg = (int *)(base + L.seg);
    int *keep = (int *)(base + L.keep), *flag = (int *)(base + L.flag), *rowpos = (int *)(base + L.rowpos);
    unsigned blocks = moe__cuda_blocks((int64_t)A + 1, THREADS);
    size_t tb = L.temp_bytes;
    expert_keys_kernel<<<blocks, THREADS>>>(key, val, sel, row_of, A, E);
    TRY(MOE_CUDA_LAUNCHED("dispatch (keys)"));
    TRY(moe__cuda_status(cub::DeviceRadixSort::SortPairs(base + L.temp, tb, key, key_sorted, val, val_sorted, A, 0,
                                                         expert_bits(E)),
                         "dispatch: sort by expert"));
    segment_starts_kernel<<<blocks, THREADS>>>(seg, key_sorted, A, E);
    TRY(MOE_CUDA_LAUNCHED("dispatch (segments)"));
    int by_score = cap > 0 && probability;
    if (by_score) TRY(keep_top_scores(keep, &L, base, scores, A, E, K, cap));
    kept_flags_kernel<<<blocks, THREADS>>>(flag, key_sorted, val_sorted, seg, by_score ? keep : NULL, A, E, cap);
    TRY(MOE_CUDA_LAUNCHED("dispatch (kept)"));
    TRY(moe__cuda_status(cub::DeviceScan::ExclusiveSum(base + L.temp, tb, (const int *)flag, rowpos, A + 1),
                         "dispatch: rows"));
    rows_kernel<<<blocks, THREADS>>>(row_of, row_token, key_sorted, val_sorted, flag, rowpos, A, E, K);
    TRY(MOE_CUDA_LAUNCHED("dispatch (rows)"));
    offsets_kernel<<<moe__cuda_blocks(E + 1, THREADS), THREADS>>>(offsets, load, seg, rowpos, E);
    return MOE_CUDA_LAUNCHED("dispatch (offsets)");
}

/* ---------------------------------------------------------------- gather, combine, scatter */

static __global__ void gather_rows_kernel(float *xe, const float *x, const int *row_token, int64_t R, int C) {
    GRID_STRIDE(j, R * C) {
        int64_t r = j / C;
        xe[j] = x[(int64_t)row_token[r] * C + (j - r * C)];
    }
}

extern "C" moe_status moe__cuda_gather_rows(float *xe, const float *x, const int *row_token, int64_t R, int C) {
    gather_rows_kernel<<<moe__cuda_blocks(R * C, THREADS), THREADS>>>(xe, x, row_token, R, C);
    return MOE_CUDA_LAUNCHED("gather_rows");
}

static __global__ void combine_kernel(float *y, const float *ye, const float *gate, const int *row_of, int64_t N, int K,
                                      int C) {
    GRID_STRIDE(j, N * C) {
        int64_t n = j / C, i = j - n * C;
        float acc = 0.0f;
        for (int k = 0; k < K; k++) {
            int r = row_of[n * K + k];
            if (r < 0) continue;
            acc += gate[n * K + k] * ye[(int64_t)r * C + i];
        }
        y[j] = acc;
    }
}

extern "C" moe_status moe__cuda_combine(float *y, const float *ye, const float *gate, const int *row_of, int64_t N,
                                        int K, int C) {
    combine_kernel<<<moe__cuda_blocks(N * C, THREADS), THREADS>>>(y, ye, gate, row_of, N, K, C);
    return MOE_CUDA_LAUNCHED("combine");
}

/* One warp an assignment: y_n = sum_k gate_nk ye_row gives dye_row = gate_nk dy_n and
 * dgate_nk = dy_n . ye_row, the dot product summed per lane in a fixed stride, then a butterfly. */
static __global__ void combine_backward_kernel(float *dye, float *dgate, const float *dy, const float *ye,
                                               const float *gate, const int *row_of, int64_t A, int K, int C) {
    int lane = threadIdx.x % WARP;
    WARP_STRIDE(a, A) {
        int r = row_of[a];
        if (r < 0) { // dropped or unrouted: no row, no gradient
            if (lane == 0) dgate[a] = 0.0f;
            continue;
        }
        const float *dyn = dy + (a / K) * C, *yr = ye + (int64_t)r * C;
        float *dr = dye + (int64_t)r * C, g = gate[a], dot = 0.0f;
        for (int i = lane; i < C; i += WARP) {
            dr[i] = g * dyn[i];
            dot += dyn[i] * yr[i];
        }
        dot = warp_sum(dot);
        if (lane == 0) dgate[a] = dot;
    }
}

extern "C" moe_status moe__cuda_combine_backward(float *dye, float *dgate, const float *dy, const float *ye,
                                                 const float *gate, const int *row_of, int64_t N, int K, int C) {
    int64_t A = N * K;
    combine_backward_kernel<<<moe__cuda_blocks(A * WARP, THREADS), THREADS>>>(dye, dgate, dy, ye, gate, row_of, A, K,
                                                                               C);
    return MOE_CUDA_LAUNCHED("combine_backward");
}

/* xe_row = x_n: dx_n += dxe_row for each kept slot of token n, in slot order (the CPU's sums). */
static __global__ void scatter_add_kernel(float *dx, const float *dxe, const int *row_of, int64_t N, int K, int C) {
    GRID_STRIDE(j, N * C) {
        int64_t n = j / C, i = j - n * C;
        float acc = dx[j];
        for (int k = 0; k < K; k++) {
            int r = row_of[n * K + k];
            if (r >= 0) acc += dxe[(int64_t)r * C + i];
        }
        dx[j] = acc;
    }
}

extern "C" moe_status moe__cuda_scatter_add(float *dx, const float *dxe, const int *row_of, int64_t N, int K, int C) {
    scatter_add_kernel<<<moe__cuda_blocks(N * C, THREADS), THREADS>>>(dx, dxe, row_of, N, K, C);
    return MOE_CUDA_LAUNCHED("scatter_add");
}

/* ---------------------------------------------------------------- router losses */

#define LOSS_THREADS 512

/* For each of `lanes` columns e, sums sh[i*lanes + e] over rows i < n into sh[e] by a fixed
 * tree (any n). The block calls it together; values written before it must be synced. */
static __device__ void tree_sum(double *sh, int n, int lanes) {
    int p = 1;
    while (p < n) p <<= 1;
    for (int s = p / 2; s > 0; s /= 2) {
        for (int t = threadIdx.x; t < s * lanes; t += blockDim.x)
            if (t / lanes + s < n) sh[t] += sh[t + s * lanes];
        __syncthreads();
    }
}

/* One block, so every sum has one fixed order without scratch. Experts go in tiles of ET lanes;
 * the block's threads are RP = LOSS_THREADS / ET rows of the tile, thread (rr, e) summing the
 * tokens rr, rr + RP, ... (consecutive threads read consecutive probs). Per sequence b the rows
 * are reduced into P_be and the slot counts into seq_f; tokens after the last whole sequence
 * count only towards P_e, as on the CPU. Thread 0 accumulates the totals, tile by tile. */
static __global__ void __launch_bounds__(LOSS_THREADS)
    router_losses_kernel(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load, const float *probs,
                         const int *sel, int64_t N, int T, int E, int K) {
    __shared__ double sp[LOSS_THREADS], sc[LOSS_THREADS];
    __shared__ long long total;
    int t = threadIdx.x;
    int64_t B = N / T;
    double aux_sum = 0.0, seq_sum = 0.0; // thread 0's
    if (t == 0) {
        long long s = 0;
        for (int e = 0; e < E; e++) s += load[e];
        total = s;
    }
    for (int e0 = 0; e0 < E; e0 += LOSS_THREADS) {
        int ET = E - e0 < LOSS_THREADS ? E - e0 : LOSS_THREADS, RP = LOSS_THREADS / ET;
        int rr = t / ET, e = e0 + t % ET, on = rr < RP;
        double all = 0.0; // this thread's part of sum_n probs_ne
        for (int64_t b = 0; b < B; b++) {
            double p = 0.0;
            int cnt = 0;
            for (int64_t n = b * T + rr; on && n < (b + 1) * T; n += RP) {
                p += probs[n * E + e];
                for (int k = 0; k < K; k++) cnt += sel[n * K + k] == e;
            }
            all += p;
            sp[t] = p, sc[t] = cnt;
            __syncthreads();
            tree_sum(sp, RP, ET);
            tree_sum(sc, RP, ET);
            if (t < ET) { // seq_f and this expert's term of sequence b, as router.c computes them
                float fb = (float)sc[t] * ((float)E / ((float)K * (float)T));
                seq_f[b * E + e] = fb;
                sp[t] = (double)fb * (sp[t] / T);
            }
            __syncthreads();
            tree_sum(sp, ET, 1);
            if (t == 0) seq_sum += sp[0];
            __syncthreads();
        }
        for (int64_t n = B * T + rr; on && n < N; n += RP) all += probs[n * E + e];
        sp[t] = all;
        __syncthreads();
        tree_sum(sp, RP, ET);
        if (t < ET) {
            float fe = total ? (float)((double)load[e] / (double)total) : 0.0f;
            f[e] = fe;
            sp[t] = (double)fe * (sp[t] / (double)N);
        }
        __syncthreads();
        tree_sum(sp, ET, 1);
        if (t == 0) aux_sum += sp[0];
        __syncthreads();
    }
    if (t == 0) {
        *aux = (float)(E * aux_sum);
        *seq_aux = B > 0 ? (float)(seq_sum / (double)B) : 0.0f;
    }
}

extern "C" moe_status moe__cuda_router_losses(float *aux, float *seq_aux, float *f, float *seq_f, const int64_t *load,
                                              const float *probs, const int *sel, int64_t N, int T, int E, int K) {
    // load, f (E); probs (N,E); sel (N,K); seq_f (N/T, E)
    if (N < 1 || T < 1 || E < 1 || K < 1)
        return moe__err(MOE_STATUS_ARG, "CUDA router losses: N %lld, T %d, E %d, K %d out of range", (long long)N, T, E,
                        K);
    router_losses_kernel<<<1, LOSS_THREADS>>>(aux, seq_aux, f, seq_f, load, probs, sel, N, T, E, K);
    return MOE_CUDA_LAUNCHED("router_losses");
}

/* ---------------------------------------------------------------- router backward */

typedef struct {
    int64_t N;
    int T, E, K, sigmoid, norm_topk;
    float route_scale, aux_s, seq_s, z_s;
} router_bw_args;

/* One warp a token, lane l owning the experts e = l, l + 32, ...; the token's row of dlogits
 * holds d/dscores on the way (as dl on the CPU) and each lane touches only its own entries. The
 * sums over experts are warp butterflies; the sums over the K slots run in slot order on every
 * lane, as the CPU's. A token after the last whole sequence belongs to no sequence: no
 * sequence-loss term (the CPU has no seq_f row for it). */
static __global__ void router_backward_kernel(float *dlogits, const float *dgate, const float *logits, const float *lse,
                                              const float *scores, const float *probs, const int *sel, const float *f,
                                              const float *seq_f, router_bw_args g) {
    int lane = threadIdx.x % WARP, E = g.E, K = g.K, T = g.T;
    int64_t B = g.N / T;
    WARP_STRIDE(n, g.N) {
        const float *sc = scores + n * E, *pr = probs + n * E, *l = logits + n * E, *dg = dgate + n * K;
        const float *fb = n / T < B ? seq_f + (n / T) * E : NULL;
        const int *s = sel + n * K;
        float *dl = dlogits + n * E;
        // aux = E sum_e f_e mean_n probs_ne; seq = mean_b sum_e f_be mean_t probs_bte
        for (int e = lane; e < E; e += WARP)
            dl[e] = g.aux_s * (float)E * f[e] / (float)g.N + (fb ? g.seq_s * fb[e] / ((float)T * (float)B) : 0.0f);
        if (g.sigmoid) {
            // probs = s / sum s: ds_j = (dprobs_j - sum_e dprobs_e probs_e) / sum s
            float ssum = 0.0f, dot = 0.0f;
            for (int e = lane; e < E; e += WARP) ssum += sc[e], dot += dl[e] * pr[e];
            ssum = warp_sum(ssum), dot = warp_sum(dot);
            for (int e = lane; e < E; e += WARP) dl[e] = (dl[e] - dot) / ssum;
        }
        // gate_k = route_scale * s_k / S (norm_topk) or route_scale * s_k
        float gs = 0.0f, dot = 0.0f;
        for (int k = 0; k < K; k++) gs += sc[s[k]];
        for (int k = 0; k < K; k++) dot += dg[k] * g.route_scale * sc[s[k]] / gs;
        for (int k = 0; k < K; k++)
            if (s[k] % WARP == lane)
                dl[s[k]] += g.norm_topk ? (dg[k] * g.route_scale - dot) / gs : dg[k] * g.route_scale;
        if (g.sigmoid) {
            for (int e = lane; e < E; e += WARP) dl[e] *= sc[e] * (1.0f - sc[e]);
        } else {
            // p = softmax(logits): dlogit_e = p_e (dp_e - sum_j p_j dp_j)
            float pdp = 0.0f;
            for (int e = lane; e < E; e += WARP) pdp += sc[e] * dl[e];
            pdp = warp_sum(pdp);
            for (int e = lane; e < E; e += WARP) dl[e] = sc[e] * (dl[e] - pdp);
        }
        // z = mean_n lse_n^2: dz / dlogit_ne = 2 lse_n softmax(logits_n)_e / N
        float ln = lse[n], zc = g.z_s * 2.0f * ln / (float)g.N;
        for (int e = lane; e < E; e += WARP) dl[e] += zc * expf(l[e] - ln);
    }
}

extern "C" moe_status moe__cuda_router_backward(float *dlogits, const float *dgate, const float *logits,
                                                const float *lse, const float *scores, const float *probs,
                                                const int *sel, const float *f, const float *seq_f, int64_t N, int T,
                                                int E, int K, int sigmoid, int norm_topk, float route_scale,
                                                float aux_s, float seq_s, float z_s) {
    // dlogits, logits, scores, probs (N,E); dgate, sel (N,K); lse (N); f (E); seq_f (N/T, E)
    if (T < 1) return moe__err(MOE_STATUS_ARG, "CUDA router backward: T %d out of range", T);
    router_bw_args g = {N, T, E, K, sigmoid, norm_topk, route_scale, aux_s, seq_s, z_s};
    router_backward_kernel<<<moe__cuda_blocks(N * WARP, THREADS), THREADS>>>(dlogits, dgate, logits, lse, scores,
                                                                             probs, sel, f, seq_f, g);
    return MOE_CUDA_LAUNCHED("router_backward");
}
