/*
 * cuda_device.cu — the CUDA device query (does the driver answer, does device N exist, what it
 * is and how much memory it has free) and the device memory and copy helpers. Every CUDA call
 * is checked and its error becomes a status with the runtime's message.
 */
#include "cuda/common.cuh"

#include <stdio.h>

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
