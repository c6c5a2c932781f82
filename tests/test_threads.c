/*
 * test_threads.c — a result that does not depend on the thread count, and the automatic count:
 *   - moe__gemm_run (fixed tiles, single-threaded BLAS per tile) against a plain double loop, for
 *     every transpose and shapes that cut into many tiles, few, or one; its bits on 1, 2 and 3
 *     threads are the same;
 *   - the tuner (train/threads.c) on simulated step times: a run alone keeps its cores and probes
 *     ever more rarely; a run whose cores are shared moves to fewer threads, and back when they
 *     are free; on 16 cores it finds the best count among the halvings.
 */
#define _POSIX_C_SOURCE 200809L
#include "check.h"
#include "core/core.h"
#include "nn/nn.h"
#include "train/train.h"

#include <omp.h>
#include <string.h>

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 16777216.0f - 0.5f;
}

static void gemm_case(int M, int N, int K, int ta, int tb, float beta) {
    int lda = ta ? M : K, ldb = tb ? K : N, ldc = N + 3; // a padded C: tiles must keep ldc
    size_t na = (size_t)M * K, nb = (size_t)K * N, nc = (size_t)M * ldc;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C0 = malloc(nc * 4), *C[3];
    uint64_t s = (uint64_t)M * 131 + N * 7 + K;
    for (size_t i = 0; i < na; i++) A[i] = frand(&s);
    for (size_t i = 0; i < nb; i++) B[i] = frand(&s);
    for (size_t i = 0; i < nc; i++) C0[i] = frand(&s);
    for (int t = 0; t < 3; t++) {
        C[t] = malloc(nc * 4);
        memcpy(C[t], C0, nc * 4);
        omp_set_num_threads(t + 1);
        moe__gemm g = {.A = A, .B = B, .C = C[t], .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb, .ldc = ldc,
                       .ta = ta, .tb = tb, .alpha = 0.75f, .beta = beta};
        moe__gemm_run(&g, 1);
    }
    double worst = 0.0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < ldc; n++) {
            double want = C0[(size_t)m * ldc + n];
            if (n < N) {
                double acc = 0.0;
                for (int k = 0; k < K; k++)
                    acc += (double)(ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]) *
                           (tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]);
                want = 0.75 * acc + beta * want;
            }
            double d = fabs(C[0][(size_t)m * ldc + n] - want) / (1e-4 + 1e-4 * sqrt(K) + 1e-5 * fabs(want));
            worst = d > worst ? d : worst;
        }
    CHECK(worst <= 1.0, "gemm %dx%dx%d ta %d tb %d: error %.3g of the tolerance", M, N, K, ta, tb, worst);
    CHECK(!memcmp(C[0], C[1], nc * 4) && !memcmp(C[0], C[2], nc * 4),
          "gemm %dx%dx%d ta %d tb %d: 1, 2 and 3 threads differ", M, N, K, ta, tb);
    free(A), free(B), free(C0);
    for (int t = 0; t < 3; t++) free(C[t]);
}

static void test_gemm(void) {
    int shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {64, 256, 128}, {513, 257, 129}, {2048, 256, 128}, {256, 128, 2048},
                       {8, 128, 2048}, {3000, 40, 64}, {17, 3001, 33}, {1500, 700, 96}, {300, 1100, 400}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) gemm_case(shapes[i][0], shapes[i][1], shapes[i][2], ta, tb, i % 2 ? 1.0f : 0.0f);
    // a list: several products in one region, the empty ones skipped
    enum { M = 300, N = 70, K = 50 };
    float *A = calloc(M * K, 4), *B = calloc(K * N, 4), *C = calloc(4 * M * N, 4);
    uint64_t s = 9;
    for (int i = 0; i < M * K; i++) A[i] = frand(&s);
    for (int i = 0; i < K * N; i++) B[i] = frand(&s);
    moe__gemm g[4];
    for (int i = 0; i < 4; i++)
        g[i] = (moe__gemm){.A = A, .B = B, .C = C + i * M * N, .M = i == 2 ? 0 : M - 50 * i, .N = N, .K = K,
                           .lda = K, .ldb = N, .ldc = N, .alpha = (float)(i + 1), .beta = 0.0f};
    moe__gemm_run(g, 4);
    double worst = 0.0;
    for (int i = 0; i < 4; i++)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double acc = 0.0;
                if (m < g[i].M)
                    for (int k = 0; k < K; k++) acc += (double)A[m * K + k] * B[k * N + n] * (i + 1);
                double d = fabs(C[i * M * N + m * N + n] - acc);
                worst = d > worst ? d : worst;
            }
    CHECK(worst < 1e-4, "a list of 4 products: max error %g", worst);
    free(A), free(B), free(C);
}

/* A machine in simulation: the seconds of a step on n threads while `others` threads of other
 * programs want `cores` cores. Spinning OpenMP threads that lose their core to another program
 * make a step several times slower than one thread alone. */
static double step_time(int n, int cores, int others, int best) {
    double alone = 1.0 / (n <= best ? n : best - 0.2 * (n - best)); // scales up to `best` threads
    if (n + others <= cores || n == 1) return alone * (n + others > cores ? 1.0 + 0.1 * others : 1.0);
    return alone * 6.0;
}

/* Runs the tuner `steps` more steps; returns the probes made. */
static int simulate(moe__tuner *u, int64_t *step, int steps, int cores, int others, int best) {
    int n = u->probe ? u->probe : u->cur, probes = 0; // the count the tuner gave for the next step
    for (int i = 0; i < steps; i++) {
        probes += n != u->cur;
        double t = step_time(n, cores, others, best) * (1.0 + 0.05 * ((*step * 7919) % 5 - 2) / 2.0); // +-5% noise
        n = moe__tuner_after(u, ++*step, t);
    }
    return probes;
}

static void test_tuner(void) {
    unsetenv("MOE_TEST_THREADS");
    moe__tuner u;
    int64_t step = 0;
    // alone on 2 cores: stays on 2; probes ever rarer (about log2(1000/8) + 1000/128)
    moe__tuner_init(&u, 1, 2, step);
    int probes = simulate(&u, &step, 1000, 2, 0, 2);
    CHECK(u.cur == 2, "alone: %d threads, want 2", u.cur);
    CHECK(probes <= 16, "alone: %d probes in 1000 steps", probes);
    // another run takes the cores: on 1 within a few steps
    int64_t at = step;
    for (int i = 0; i < 20 && u.cur == 2; i++) simulate(&u, &step, 1, 2, 2, 2);
    CHECK(u.cur == 1, "shared: %d threads after %lld steps, want 1", u.cur, (long long)(step - at));
    simulate(&u, &step, 300, 2, 1, 2);
    CHECK(u.cur == 1, "shared: back to %d threads while the other run goes on", u.cur);
    // the other run ends: back on 2 within the longest wait between probes
    simulate(&u, &step, 140, 2, 0, 2);
    CHECK(u.cur == 2, "free again: %d threads, want 2", u.cur);
    // two runs started together: both begin slow, the first probe finds 1 thread
    step = 0;
    moe__tuner_init(&u, 1, 2, step);
    simulate(&u, &step, 6, 2, 2, 2);
    CHECK(u.cur == 1, "started together: %d threads after 6 steps, want 1", u.cur);
    // 16 cores whose step is fastest on 8 threads (memory-bound, say): settles on 8
    step = 0;
    moe__tuner_init(&u, 1, 16, step);
    simulate(&u, &step, 400, 16, 0, 8);
    CHECK(u.cur == 8, "16 cores, best 8: %d threads", u.cur);
    // off (threads=N, another backend, several ranks): never moves
    moe__tuner_init(&u, 0, 2, 0);
    step = 0;
    simulate(&u, &step, 50, 2, 2, 2);
    CHECK(u.cur == 2, "off: moved to %d threads", u.cur);
    // the test hook: counts from given steps, reported as changes
    setenv("MOE_TEST_THREADS", "2:1,4:3", 1);
    moe__tuner_init(&u, 1, 2, 0);
    int seen[6];
    for (int s = 1; s <= 5; s++) seen[s] = moe__tuner_after(&u, s, 1.0);
    CHECK(seen[1] == 2 && seen[2] == 1 && seen[3] == 1 && seen[4] == 3 && seen[5] == 3, "hook: %d %d %d %d %d", seen[1],
          seen[2], seen[3], seen[4], seen[5]);
    unsetenv("MOE_TEST_THREADS");
}

int main(void) {
    test_gemm();
    test_tuner();
    CHECK_SUMMARY("threads");
}
