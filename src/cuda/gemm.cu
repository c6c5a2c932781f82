/*
 * gemm.cu — the dense products on the GPU through cuBLAS, with the shapes and accumulation rules
 * of moe__matmul_forward / moe__matmul_backward (nn/nn.h), row-major:
 *
 *   forward   out (N,O) (+)= x (N,I) w^T, w (O,I)
 *   backward  dx (N,I) += dout (N,O) w;  dw (O,I) += dout^T x
 *
 * cuBLAS is column-major: a row-major (R,C) matrix is its (C,R) transpose, so out^T = w x^T is
 * gemm(T, N, O, N, I), dx^T = w^T dout^T is gemm(N, N, I, N, O) and dw^T = x^T dout is
 * gemm(N, T, I, O, N).
 *
 * Numerics: fp32 mode is CUBLAS_COMPUTE_32F_PEDANTIC (no TF32, no reduced precision anywhere:
 * the checking mode). bf16 mode rounds both inputs of each product to bf16
 * (round to nearest even, in the caller's scratch) and accumulates in fp32 into an fp32 result,
 * as PyTorch autocast does; the master weights stay fp32. cuBLAS gives the same bits every run
 * on one GPU model for the same workspace (its documented reproducibility), which bit-exact resume
 * relies on.
 *
 * cuBLAS is opened with dlopen when the backend is created, not linked: the library (and
 * cuBLASLt beneath it, 0.5 GB) is then loaded only by processes that use a GPU, never by the
 * CPU runs and tests of a CUDA build.
 */
#include "cuda/common.cuh"

#include <cublas_api.h>
#include <cuda_bf16.h>
#include <dlfcn.h>
#include <stdlib.h>

typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*workspace_fn)(cublasHandle_t, void *, size_t);
typedef cublasStatus_t (*math_fn)(cublasHandle_t, cublasMath_t);
typedef const char *(*string_fn)(cublasStatus_t);
typedef cublasStatus_t (*gemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                  const void *, cudaDataType, int, const void *, cudaDataType, int, const void *, void *,
                                  cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
typedef cublasStatus_t (*batched_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void *,
                                     const void *, cudaDataType, int, long long, const void *, cudaDataType, int,
                                     long long, const void *, void *, cudaDataType, int, long long, int,
                                     cublasComputeType_t, cublasGemmAlgo_t);

struct moe__cuda_blas {
    void *lib;
    cublasHandle_t h;
    destroy_fn destroy;
    string_fn string;
    gemm_fn gemm;
    batched_fn batched;
    __nv_bfloat16 *scratch;  /* bf16 copies of the two inputs of a product */
    size_t scratch_elems;
};

static moe_status blas_status(const moe__cuda_blas *b, cublasStatus_t s, const char *what) {
    if (s == CUBLAS_STATUS_SUCCESS) return MOE_STATUS_OK;
    return moe__err(MOE_STATUS_DEVICE, "cuBLAS: %s: %s (status %d)", what, b->string ? b->string(s) : "?", (int)s);
}

static void *open_cublas(void) {
    const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (lib) return lib;
    }
    return NULL;
}

extern "C" size_t moe__cuda_blas_workspace_bytes(void) { return (size_t)32 << 20; } // cuBLAS's advice for Hopper

extern "C" moe_status moe__cuda_blas_create(moe__cuda_blas **out, void *workspace, size_t workspace_bytes,
                                            void *bf16_scratch, size_t scratch_bytes) {
    *out = NULL;
    moe__cuda_blas *b = (moe__cuda_blas *)calloc(1, sizeof *b);
    if (!b) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    b->lib = open_cublas();
    if (!b->lib) {
        free(b);
        return moe__err(MOE_STATUS_DEVICE, "--device cuda: cannot load cuBLAS (libcublas.so.13): %s", dlerror());
    }
    create_fn create = (create_fn)dlsym(b->lib, "cublasCreate_v2");
    workspace_fn set_ws = (workspace_fn)dlsym(b->lib, "cublasSetWorkspace_v2");
    math_fn set_math = (math_fn)dlsym(b->lib, "cublasSetMathMode");
    b->destroy = (destroy_fn)dlsym(b->lib, "cublasDestroy_v2");
    b->string = (string_fn)dlsym(b->lib, "cublasGetStatusString");
    b->gemm = (gemm_fn)dlsym(b->lib, "cublasGemmEx");
    b->batched = (batched_fn)dlsym(b->lib, "cublasGemmStridedBatchedEx");
    b->scratch = (__nv_bfloat16 *)bf16_scratch;
    b->scratch_elems = scratch_bytes / sizeof(__nv_bfloat16);
    moe_status st = MOE_STATUS_OK;
    if (!create || !set_ws || !set_math || !b->destroy || !b->string || !b->gemm || !b->batched)
        st = moe__err(MOE_STATUS_DEVICE, "--device cuda: cuBLAS lacks a function moe needs (cuBLAS 12 or newer)");
    if (st == MOE_STATUS_OK) st = blas_status(b, create(&b->h), "create a handle");
    if (st == MOE_STATUS_OK) st = blas_status(b, set_ws(b->h, workspace, workspace_bytes), "set the workspace");
    if (st == MOE_STATUS_OK) st = blas_status(b, set_math(b->h, CUBLAS_DEFAULT_MATH), "set the math mode");
    if (st != MOE_STATUS_OK) {
        moe__cuda_blas_free(b);
        return st;
    }
    *out = b;
    return MOE_STATUS_OK;
}

extern "C" void moe__cuda_blas_free(moe__cuda_blas *b) {
    if (!b) return;
    if (b->h) b->destroy(b->h);
    if (b->lib) dlclose(b->lib);
    free(b);
}

static __global__ void to_bf16_kernel(__nv_bfloat16 *out, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(x[i]);
}

/* The product's inputs in the type the mode computes in: a and b themselves (fp32), or their bf16
 * roundings in the scratch. */
extern "C" moe_status moe__cuda_stage(moe__cuda_blas *b, int bf16, const float *a, int64_t na, const float *bb,
                                      int64_t nb, const void **ao, const void **bo) {
    *ao = a, *bo = bb;
    if (!bf16) return MOE_STATUS_OK;
    int64_t at = (na + MOE_CUDA_BF16_ALIGN - 1) / MOE_CUDA_BF16_ALIGN * MOE_CUDA_BF16_ALIGN; // aligned for tensor cores
    if ((size_t)(at + nb) > b->scratch_elems)
        return moe__err(MOE_STATUS_ARG, "cuBLAS: a product of %lld + %lld inputs exceeds the planned bf16 scratch (%zu)",
                        (long long)na, (long long)nb, b->scratch_elems);
    to_bf16_kernel<<<moe__cuda_blocks(na, 256), 256>>>(b->scratch, a, na);
    to_bf16_kernel<<<moe__cuda_blocks(nb, 256), 256>>>(b->scratch + at, bb, nb);
    *ao = b->scratch, *bo = b->scratch + at;
    return MOE_CUDA_LAUNCHED("bf16 rounding of a product's inputs");
}

/* C (m,n) col-major = alpha op(A) op(B) + beta C, with A's and B's element counts for bf16. */
static moe_status gemm(moe__cuda_blas *b, int bf16, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                       const float *A, int64_t na, int lda, const float *B, int64_t nb, int ldb, float beta, float *C,
                       int ldc, const char *what) {
    const void *a, *bo;
    cudaDataType type;
    moe_status st = moe__cuda_stage(b, bf16, A, na, B, nb, &a, &bo);
    type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    if (st != MOE_STATUS_OK) return st;
    float alpha = 1.0f;
    return blas_status(b,
                       b->gemm(b->h, ta, tb, m, n, k, &alpha, a, type, lda, bo, type, ldb, &beta, C, CUDA_R_32F, ldc,
                               bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
                       what);
}

extern "C" moe_status moe__cuda_matmul_forward(moe__cuda_blas *b, int bf16, float *out, const float *x, const float *w,
                                               int64_t N, int I, int O, int accumulate) {
    if (N == 0) return MOE_STATUS_OK;
    if (N > INT32_MAX) return moe__err(MOE_STATUS_ARG, "cuBLAS: %lld rows exceed a product's limit", (long long)N);
    return gemm(b, bf16, CUBLAS_OP_T, CUBLAS_OP_N, O, (int)N, I, w, (int64_t)O * I, I, x, N * I, I,
                accumulate ? 1.0f : 0.0f, out, O, "matmul forward");
}

extern "C" moe_status moe__cuda_matmul_backward(moe__cuda_blas *b, int bf16, float *dx, float *dw, const float *dout,
                                                const float *x, const float *w, int64_t N, int I, int O) {
    if (N == 0) return MOE_STATUS_OK;
    if (N > INT32_MAX) return moe__err(MOE_STATUS_ARG, "cuBLAS: %lld rows exceed a product's limit", (long long)N);
    moe_status st = MOE_STATUS_OK;
    if (dx)
        st = gemm(b, bf16, CUBLAS_OP_N, CUBLAS_OP_N, I, (int)N, O, w, (int64_t)O * I, I, dout, N * O, O, 1.0f, dx, I,
                  "matmul backward (dx)");
    if (st == MOE_STATUS_OK && dw)
        st = gemm(b, bf16, CUBLAS_OP_N, CUBLAS_OP_T, I, O, (int)N, x, N * I, I, dout, N * O, O, 1.0f, dw, I,
                  "matmul backward (dw)");
    return st;
}

extern "C" moe_status moe__cuda_gemm_batched(moe__cuda_blas *b, int bf16, int ta, int tb, int m, int n, int k, float alpha,
                                             const void *A, int lda, long long sA, const void *B, int ldb, long long sB,
                                             float beta, float *C, int ldc, long long sC, int batch) {
    cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    return blas_status(b,
                       b->batched(b->h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &alpha, A,
                                  type, lda, sA, B, type, ldb, sB, &beta, C, CUDA_R_32F, ldc, sC, batch,
                                  bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_GEMM_DEFAULT),
                       "strided batched product");
}
