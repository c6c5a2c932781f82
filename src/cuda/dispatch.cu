/*
 * dispatch.cu — capacity and permutation of the top-K assignments on the GPU, mirroring
 * moe__dispatch (moe/dispatch.c): the assignments sorted by expert (CUB stable radix sort on the
 * expert ids: token order within an expert); load_e = the length of expert e's segment; with
 * capacity cap an expert keeps its first cap assignments (position) or its cap highest scores
 * (probability: a stable segmented radix sort by descending score, so ties go to the lower
 * token); kept rows are numbered by an exclusive scan of the kept flags in (expert, token)
 * order. Integer work throughout: the same rows as the CPU.
 *
 * Expert choice (moe__dispatch's expert-choice path): the scores (N,E) transposed to E segments
 * of N (expert-major) with the token ids as values, each segment sorted by descending score (the
 * stable segmented radix sort: ties to the lower token; CUB maps -0.0 and +0.0 to one key, as the
 * CPU's == does; scores are assumed finite, NaN orders differently); the first cap of a segment
 * are chosen, and an exclusive scan of the chosen flags in (expert, token) order numbers the rows:
 * expert by expert, token order within one, offsets[e] = e*cap. No atomics: the same integers as
 * the CPU on every run.
 */
#include "cuda/common.cuh"

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include <limits.h>

#define ALIGN 256

static __global__ void expert_keys_kernel(unsigned *key, int *val, const int *sel, const int *row_of, int64_t A,
                                          int E) {
    GRID_STRIDE(a, A) {
        key[a] = row_of[a] == MOE_ROW_UNROUTED ? (unsigned)E : (unsigned)sel[a]; // unrouted ones sort last
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
            row_of[a] = key[i] < (unsigned)E ? MOE_ROW_DROPPED : MOE_ROW_UNROUTED;
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
    MOE_TRY(moe__cuda_status(e, "dispatch: CUB scratch sizes"));
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
    MOE_TRY(dispatch_layout_of(&L, (int)A, E));
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
    unsigned blocks = moe__cuda_blocks(A, MOE_THREADS);
    score_keys_kernel<<<blocks, MOE_THREADS>>>(skey, key_sorted, val_sorted, scores, A, E, K);
    MOE_TRY(MOE_CUDA_LAUNCHED("dispatch (scores)"));
    // stable: within a segment equal scores keep their token order, so ties go to the lower token
    size_t tb = L->temp_bytes;
    MOE_TRY(moe__cuda_status(cub::DeviceSegmentedRadixSort::SortPairsDescending(base + L->temp, tb, skey, skey_sorted,
                                                                            val_sorted, by_score, A, E, seg, seg + 1),
                         "dispatch: sort by score"));
    top_cap_kernel<<<blocks, MOE_THREADS>>>(keep, key_sorted, by_score, seg, A, E, cap);
    return MOE_CUDA_LAUNCHED("dispatch (top scores)");
}

extern "C" moe_status moe__cuda_dispatch(int *row_of, int *row_token, int64_t *offsets, int64_t *load, void *scratch,
                                         size_t scratch_bytes, const int *sel, const float *scores, int64_t N, int E,
                                         int K, int cap, int probability) {
    // sel, row_of (N,K); scores (N,E); row_token (N*K); offsets (E+1); load (E)
    MOE_TRY(dispatch_check(N, E, K, cap));
    int A = (int)(N * K);
    dispatch_layout L;
    MOE_TRY(dispatch_layout_of(&L, A, E));
    if (scratch_bytes < L.total)
        return moe__err(MOE_STATUS_ARG, "CUDA dispatch: scratch of %zu bytes, %zu needed (moe__cuda_dispatch_scratch)",
                        scratch_bytes, L.total);
    char *base = (char *)(((uintptr_t)scratch + ALIGN - 1) / ALIGN * ALIGN);
    unsigned *key = (unsigned *)(base + L.key), *key_sorted = (unsigned *)(base + L.key_sorted);
    int *val = (int *)(base + L.val), *val_sorted = (int *)(base + L.val_sorted), *seg = (int *)(base + L.seg);
    int *keep = (int *)(base + L.keep), *flag = (int *)(base + L.flag), *rowpos = (int *)(base + L.rowpos);
    unsigned blocks = moe__cuda_blocks((int64_t)A + 1, MOE_THREADS);
    size_t tb = L.temp_bytes;
    expert_keys_kernel<<<blocks, MOE_THREADS>>>(key, val, sel, row_of, A, E);
    MOE_TRY(MOE_CUDA_LAUNCHED("dispatch (keys)"));
    MOE_TRY(moe__cuda_status(cub::DeviceRadixSort::SortPairs(base + L.temp, tb, key, key_sorted, val, val_sorted, A, 0,
                                                         expert_bits(E)),
                         "dispatch: sort by expert"));
    segment_starts_kernel<<<blocks, MOE_THREADS>>>(seg, key_sorted, A, E);
    MOE_TRY(MOE_CUDA_LAUNCHED("dispatch (segments)"));
    int by_score = cap > 0 && probability;
    if (by_score) MOE_TRY(keep_top_scores(keep, &L, base, scores, A, E, K, cap));
    kept_flags_kernel<<<blocks, MOE_THREADS>>>(flag, key_sorted, val_sorted, seg, by_score ? keep : NULL, A, E, cap);
    MOE_TRY(MOE_CUDA_LAUNCHED("dispatch (kept)"));
    MOE_TRY(moe__cuda_status(cub::DeviceScan::ExclusiveSum(base + L.temp, tb, (const int *)flag, rowpos, A + 1),
                         "dispatch: rows"));
    rows_kernel<<<blocks, MOE_THREADS>>>(row_of, row_token, key_sorted, val_sorted, flag, rowpos, A, E, K);
    MOE_TRY(MOE_CUDA_LAUNCHED("dispatch (rows)"));
    offsets_kernel<<<moe__cuda_blocks(E + 1, MOE_THREADS), MOE_THREADS>>>(offsets, load, seg, rowpos, E);
    return MOE_CUDA_LAUNCHED("dispatch (offsets)");
}

/* ---------------------------------------------------------------- expert choice */

/* key (E,N) = scores (N,E) transposed; val = the token. Segment e (keys e*N ..) is expert e. */
static __global__ void ec_keys_kernel(float *key, int *val, int *seg, const float *scores, int64_t N, int E) {
    GRID_STRIDE(i, N * E) {
        int64_t e = i / N, n = i - e * N;
        key[i] = scores[n * E + e];
        val[i] = (int)n;
    }
    GRID_STRIDE(e, (int64_t)E + 1) seg[e] = (int)(e * N);
}

/* by_score holds segment e's tokens by descending score: chosen[e*N + token] = rank < cap. Each
 * segment is a permutation of 0..N-1, so every flag is written once; chosen[N*E] = 0 makes the
 * scan's last entry the total. */
static __global__ void ec_chosen_kernel(int *chosen, const int *by_score, int64_t N, int E, int cap) {
    GRID_STRIDE(i, N * E + 1) {
        if (i == N * E) {
            chosen[i] = 0;
        } else {
            int64_t e = i / N, rank = i - e * N;
            chosen[e * N + by_score[i]] = rank < cap;
        }
    }
}

/* rowpos (E,N): the exclusive scan of chosen in (expert, token) order, so expert e's rows start
 * at e*cap and follow token order. row_of is (N,E): slot e of token n. */
static __global__ void ec_rows_kernel(int *row_of, int *row_token, int64_t *offsets, int64_t *load, const int *chosen,
                                      const int *rowpos, int64_t N, int E, int cap) {
    GRID_STRIDE(i, N * E) {
        int64_t e = i / N, n = i - e * N;
        if (chosen[i]) {
            row_of[n * E + e] = rowpos[i];
            row_token[rowpos[i]] = (int)n;
        } else {
            row_of[n * E + e] = MOE_ROW_UNROUTED;
        }
    }
    GRID_STRIDE(e, (int64_t)E + 1) {
        offsets[e] = e * cap;
        if (e < E) load[e] = cap;
    }
}

typedef struct {
    size_t key, key_sorted, val, by_score, chosen, rowpos, seg, temp;
    size_t temp_bytes, total;
} ec_layout;

static moe_status ec_layout_of(ec_layout *L, int A, int E) {
    size_t segsort = 0, scan = 0;
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortPairsDescending(
        NULL, segsort, (const float *)NULL, (float *)NULL, (const int *)NULL, (int *)NULL, A, E, (const int *)NULL,
        (const int *)NULL);
    if (e == cudaSuccess) e = cub::DeviceScan::ExclusiveSum(NULL, scan, (const int *)NULL, (int *)NULL, A + 1);
    MOE_TRY(moe__cuda_status(e, "expert-choice dispatch: CUB scratch sizes"));
    size_t ints = (size_t)A * sizeof(int), cur = 0;
    L->key = take(&cur, ints); // floats, as wide as ints
    L->key_sorted = take(&cur, ints);
    L->val = take(&cur, ints);
    L->by_score = take(&cur, ints);
    L->chosen = take(&cur, ints + sizeof(int));
    L->rowpos = take(&cur, ints + sizeof(int));
    L->seg = take(&cur, (size_t)(E + 1) * sizeof(int));
    L->temp_bytes = segsort > scan ? segsort : scan;
    L->temp = take(&cur, L->temp_bytes);
    L->total = cur + ALIGN - 1; // room to align the caller's pointer
    return MOE_STATUS_OK;
}

/* N*E < INT_MAX: CUB's item counts and the rows are ints (and N*E + 1 for the scan). */
static int ec_sizes_ok(int64_t N, int E) { return N >= 1 && E >= 1 && N <= (int64_t)(INT_MAX - 1) / E; }

extern "C" moe_status moe__cuda_dispatch_ec_scratch(size_t *bytes, int64_t N, int E) {
    *bytes = 0;
    if (!ec_sizes_ok(N, E))
        return moe__err(MOE_STATUS_ARG, "CUDA expert-choice dispatch scratch: N %lld, E %d out of range", (long long)N,
                        E);
    ec_layout L;
    MOE_TRY(ec_layout_of(&L, (int)(N * E), E));
    *bytes = L.total;
    return MOE_STATUS_OK;
}

extern "C" moe_status moe__cuda_dispatch_ec(int *row_of, int *row_token, int64_t *offsets, int64_t *load,
                                            void *scratch, size_t scratch_bytes, const float *scores, int64_t N, int E,
                                            int cap) {
    // scores, row_of (N,E); row_token (E*cap); offsets (E+1); load (E)
    if (!ec_sizes_ok(N, E) || cap < 1 || cap > N)
        return moe__err(MOE_STATUS_ARG, "CUDA expert-choice dispatch: N %lld, E %d, capacity %d out of range",
                        (long long)N, E, cap);
    int A = (int)(N * E);
    ec_layout L;
    MOE_TRY(ec_layout_of(&L, A, E));
    if (scratch_bytes < L.total)
        return moe__err(MOE_STATUS_ARG,
                        "CUDA expert-choice dispatch: scratch of %zu bytes, %zu needed (moe__cuda_dispatch_ec_scratch)",
                        scratch_bytes, L.total);
    char *base = (char *)(((uintptr_t)scratch + ALIGN - 1) / ALIGN * ALIGN);
    float *key = (float *)(base + L.key), *key_sorted = (float *)(base + L.key_sorted);
    int *val = (int *)(base + L.val), *by_score = (int *)(base + L.by_score), *seg = (int *)(base + L.seg);
    int *chosen = (int *)(base + L.chosen), *rowpos = (int *)(base + L.rowpos);
    unsigned blocks = moe__cuda_blocks((int64_t)A + 1, MOE_THREADS);
    size_t tb = L.temp_bytes;
    ec_keys_kernel<<<blocks, MOE_THREADS>>>(key, val, seg, scores, N, E);
    MOE_TRY(MOE_CUDA_LAUNCHED("expert-choice dispatch (keys)"));
    // stable: equal scores keep their token order within a segment, so ties go to the lower token
    MOE_TRY(moe__cuda_status(cub::DeviceSegmentedRadixSort::SortPairsDescending(base + L.temp, tb, key, key_sorted,
                                                                                val, by_score, A, E, seg, seg + 1),
                             "expert-choice dispatch: sort by score"));
    ec_chosen_kernel<<<blocks, MOE_THREADS>>>(chosen, by_score, N, E, cap);
    MOE_TRY(MOE_CUDA_LAUNCHED("expert-choice dispatch (chosen)"));
    MOE_TRY(moe__cuda_status(cub::DeviceScan::ExclusiveSum(base + L.temp, tb, (const int *)chosen, rowpos, A + 1),
                             "expert-choice dispatch: rows"));
    ec_rows_kernel<<<blocks, MOE_THREADS>>>(row_of, row_token, offsets, load, chosen, rowpos, N, E, cap);
    return MOE_CUDA_LAUNCHED("expert-choice dispatch (rows)");
}
