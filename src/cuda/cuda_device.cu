/*
 * cuda_device.cu — the CUDA device query (does the driver answer, does device N exist, what it
 * is and how much memory it has free) and the device memory and copy helpers. Every CUDA call
 * is checked and its error becomes a status with the runtime's message.
 */
#include "cuda/common.cuh"

#include <stdio.h>
#include <stdlib.h>

extern "C" moe_status moe__cuda_device_check(int index, char *name, size_t n, size_t *free_bytes,
                                             size_t *total_bytes) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess)
        return moe__err(MOE_STATUS_ARG, "--device cuda:%d: no usable CUDA device (%s: %s)", index, cudaGetErrorName(e),
                        cudaGetErrorString(e));
    if (index < 0 || index >= count)
        return moe__err(MOE_STATUS_ARG, "--device cuda:%d: this machine has %d CUDA device%s (cuda:0 to cuda:%d)", index,
                        count, count == 1 ? "" : "s", count - 1);
    cudaDeviceProp p;
    if ((e = cudaGetDeviceProperties(&p, index)) != cudaSuccess || (e = cudaSetDevice(index)) != cudaSuccess ||
        (e = cudaMemGetInfo(free_bytes, total_bytes)) != cudaSuccess)
        return moe__err(MOE_STATUS_ARG, "--device cuda:%d: %s: %s", index, cudaGetErrorName(e), cudaGetErrorString(e));
    snprintf(name, n, "%s (sm_%d%d)", p.name, p.major, p.minor);
    return MOE_STATUS_OK;
}

extern "C" moe_status moe__cuda_malloc(void **p, size_t bytes) {
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess)
        return moe__err(MOE_STATUS_NOMEM, "CUDA: cannot allocate %zu bytes on the device: %s", bytes, cudaGetErrorString(e));
    return MOE_STATUS_OK;
}

extern "C" void moe__cuda_free(void *p) {
    if (p) cudaFree(p);
}

extern "C" moe_status moe__cuda_to_device(void *dst, const void *src, size_t bytes) {
    return moe__cuda_status(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "copy to the device");
}

extern "C" moe_status moe__cuda_to_host(void *dst, const void *src, size_t bytes) {
    return moe__cuda_status(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "copy to the host");
}

extern "C" moe_status moe__cuda_memset(void *p, int v, size_t bytes) {
    return moe__cuda_status(cudaMemsetAsync(p, v, bytes, 0), "memset");
}

extern "C" moe_status moe__cuda_sync(void) { return moe__cuda_status(cudaDeviceSynchronize(), "a kernel"); }

extern "C" moe_status moe__cuda_copy(void *dst, const void *src, size_t bytes) {
    return moe__cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0), "device copy");
}

/* ---------------------------------------------------------------- phase timing
 * Events recorded on the stream between phases; the interval up to a mark belongs to the mark's
 * phase (a negative phase starts a new chain: the interval before it is not counted). Resolved
 * after a sync, so timing adds no wait of its own. Capacity: marks beyond it are dropped (the
 * time then goes uncounted, never miscounted) until the next collect. */
struct moe__cuda_prof {
    cudaEvent_t *ev;
    int *phase;
    int n, cap;
};

extern "C" moe_status moe__cuda_prof_create(moe__cuda_prof **out, int cap) {
    *out = NULL;
    moe__cuda_prof *p = (moe__cuda_prof *)calloc(1, sizeof *p);
    if (!p) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    p->ev = (cudaEvent_t *)calloc((size_t)cap, sizeof(cudaEvent_t));
    p->phase = (int *)calloc((size_t)cap, sizeof(int));
    if (!p->ev || !p->phase) {
        moe__cuda_prof_free(p);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    for (; p->cap < cap; p->cap++) {
        cudaError_t e = cudaEventCreate(&p->ev[p->cap]);
        if (e != cudaSuccess) {
            moe__cuda_prof_free(p);
            return moe__cuda_status(e, "create a timing event");
        }
    }
    *out = p;
    return MOE_STATUS_OK;
}

extern "C" void moe__cuda_prof_free(moe__cuda_prof *p) {
    if (!p) return;
    for (int i = 0; i < p->cap; i++) cudaEventDestroy(p->ev[i]);
    free(p->ev);
    free(p->phase);
    free(p);
}

extern "C" void moe__cuda_prof_mark(moe__cuda_prof *p, int phase) {
    if (!p) return;
    if (phase < 0) p->n = 0; // a new chain: marks of a pass that stopped early are dropped
    if (p->n >= p->cap) return;
    if (cudaEventRecord(p->ev[p->n], 0) != cudaSuccess) return;
    p->phase[p->n++] = phase;
}

extern "C" void moe__cuda_prof_collect(moe__cuda_prof *p, double *prof) {
    if (!p) return;
    if (p->n > 0 && cudaEventSynchronize(p->ev[p->n - 1]) == cudaSuccess)
        for (int i = 1; i < p->n; i++) {
            float ms = 0.0f;
            if (p->phase[i] >= 0 && cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess)
                prof[p->phase[i]] += ms * 1e-3;
        }
    p->n = 0;
}
