/*
 * cuda_device.cu — the CUDA device query: does the driver answer, does device N exist, what
 * it is and how much memory it has free. Every CUDA call is checked and its error becomes a
 * status with the runtime's message.
 */
#include "cuda/cuda.h"

#include <cuda_runtime.h>
#include <stdio.h>

// core.h is C11 (_Noreturn); its error reporter is all this file needs
extern "C" moe_status moe__err(moe_status s, const char *fmt, ...);

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
