/*
 * cuda.h — the C side of the CUDA code (cuda/), callable from the C library. Built only with
 * MOE_HAVE_CUDA (CMake option MOE_CUDA); functions here never exit and turn every CUDA error
 * into a status with its message. Not installed.
 */
#ifndef MOE_CUDA_H
#define MOE_CUDA_H

#include "moe.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Checks that CUDA device `index` can be used: the driver answers, the device exists. On
 * success, name (n bytes) gets its name and compute capability and *free_bytes, *total_bytes
 * its memory. */
moe_status moe__cuda_device_check(int index, char *name, size_t n, size_t *free_bytes, size_t *total_bytes);

#ifdef __cplusplus
}
#endif

#endif
