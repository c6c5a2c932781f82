/*
 * gemm_rate.c — the machine's single-precision GEMM rate with the BLAS moe links (the
 * denominator of the benchmark's model-FLOP utilisation): C = A B^T at the shapes of the
 * standard benchmark's expert and projection products, and a large square one; best of 5.
 * Also the memory bandwidth of an OpenMP triad a[i] = b[i] + s c[i] over 3 x 64 MiB (the
 * bound of the elementwise passes), so that 1- and 2-thread runs show how each scales.
 * usage: bench_gemm [threads]   prints "shape GFLOP/s" lines, "peak GFLOP/s" and "triad GB/s".
 */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
#ifdef _OPENMP
    if (argc > 1) omp_set_num_threads(atoi(argv[1]));
#else
    (void)argc, (void)argv;
#endif
    int shapes[][3] = {{2048, 384, 384}, {512, 768, 384}, {512, 384, 768}, {2048, 256, 384}, {1024, 1024, 1024}};
    double peak = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)N * K);
        float *c = malloc(sizeof(float) * (size_t)M * N);
        for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)(i % 5) * 0.1f;
        double best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            int iters = 0;
            double t0 = now(), t;
            do {
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
                iters++;
                t = now() - t0;
            } while (t < 0.2);
            if (t / iters < best) best = t / iters;
        }
        double gf = 2.0 * M * N * K / best / 1e9;
        if (gf > peak) peak = gf;
        printf("sgemm %dx%dx%d %.1f GFLOP/s\n", M, N, K, gf);
        free(a), free(b), free(c);
    }
    printf("peak %.1f GFLOP/s\n", peak);
    size_t n = (size_t)16 << 20;
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)), *c = malloc(n * sizeof(float));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = 0.0f, b[i] = (float)(i % 3), c[i] = (float)(i % 5);
    double best = 1e30;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now();
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 0.5f * c[i];
        double t = now() - t0;
        if (t < best) best = t;
    }
    printf("triad %.1f GB/s (check %g)\n", 3.0 * n * sizeof(float) / best / 1e9, (double)a[n / 2]);
    free(a), free(b), free(c);
    return 0;
}
