/*
 * cuda_check.h — what the CUDA tests share (after check.h): random host arrays, device copies
 * of host arrays and host copies of device arrays (every call checked), a tensor's largest value.
 */
#ifndef MOE_TEST_CUDA_CHECK_H
#define MOE_TEST_CUDA_CHECK_H

#include "check.h"
#include "core/core.h"
#include "cuda/cuda.h"

static moe__rng rng;

static inline float *randn(int64_t n, float std) {
    float *p = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) p[i] = std * moe__rng_normal(&rng);
    return p;
}

/* A device copy of n bytes of x. */
static inline void *dev(const void *x, size_t n) {
    void *d;
    CHECK_OK(moe__cuda_malloc(&d, n));
    CHECK_OK(moe__cuda_to_device(d, x, n));
    return d;
}

/* The device array d (n bytes) in a new host array, after the queued work. */
static inline void *host_bytes(const void *d, size_t n) {
    void *p = malloc(n ? n : 1);
    CHECK_OK(moe__cuda_sync());
    CHECK_OK(moe__cuda_to_host(p, d, n));
    return p;
}

/* 0 when device 0 is usable (its name and free memory printed under the test's name); else
 * prints why the test is skipped and returns 77, ctest's "skipped": a test's main returns it. */
static inline int gpu_or_skip(const char *test) {
    char name[256];
    size_t free_b, total_b;
    if (moe__cuda_device_check(0, name, sizeof name, &free_b, &total_b) != MOE_STATUS_OK) {
        printf("%s: skipped: %s\n", test, moe_last_error());
        return 77;
    }
    printf("%s: %s, %.1f of %.1f GiB free\n", test, name, free_b / 1073741824.0, total_b / 1073741824.0);
    return 0;
}

/* The token's top-K choice is a near-tie: its K-th and (K+1)-th keys lie within 1e-5, or two of
 * its top-K do (their order in sel). Such tokens may route differently on the GPU (reordered
 * sums): the tests skip them, as the CPU tests do. */
static inline int near_tie(const float *key, const int *sel, int E, int K) {
    float kth = key[sel[K - 1]], next = -INFINITY;
    for (int e = 0; e < E; e++) {
        int taken = 0;
        for (int j = 0; j < K; j++) taken |= sel[j] == e;
        if (!taken && key[e] > next) next = key[e];
    }
    for (int j = 1; j < K; j++) // ties inside the top-K change the order of sel
        if (fabsf(key[sel[j - 1]] - key[sel[j]]) < 1e-5f) return 1;
    return K < E && kth - next < 1e-5f;
}

static inline double maxabs(const float *x, int64_t n) {
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* free (host) or moe__cuda_free (device) each pointer */
#define FREE_ALL(...)                                                                     \
    do {                                                                                  \
        void *ptrs_[] = {__VA_ARGS__};                                                    \
        for (size_t i_ = 0; i_ < sizeof ptrs_ / sizeof ptrs_[0]; i_++) free(ptrs_[i_]);   \
    } while (0)
#define DFREE_ALL(...)                                                                               \
    do {                                                                                             \
        void *ptrs_[] = {__VA_ARGS__};                                                               \
        for (size_t i_ = 0; i_ < sizeof ptrs_ / sizeof ptrs_[0]; i_++) moe__cuda_free(ptrs_[i_]);    \
    } while (0)

#endif
