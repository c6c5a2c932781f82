/*
 * device.c — where models run: the device and dtype a process selects (moe_device_select)
 * before creating models, what each device supports, and the checks that a selected device
 * exists. The device is not a config key: a checkpoint never records where it was trained.
 *
 * CUDA: a build without it, a machine without a GPU, a bad index and several MPI ranks each get
 * their own error; moe_model_create then runs a model on the selected device
 * (cuda/cuda_backend.c), which takes every option the CPU takes.
 */
#include "model/model.h"
#include "dist/dist.h"
#ifdef MOE_HAVE_CUDA
#include "cuda/cuda.h"
#endif

#include <stdlib.h>
#include <string.h>

static moe_device selected = {MOE_DEVICE_CPU, 0, MOE_DTYPE_FP32};

moe_device moe_device_default(void) {
    moe_device d = {MOE_DEVICE_CPU, 0, MOE_DTYPE_FP32};
    return d;
}

moe_status moe_device_parse(const char *device, const char *dtype, moe_device *out) {
    moe_device d = moe_device_default();
    if (device && strcmp(device, "cpu")) {
        char *end = NULL;
        if (strncmp(device, "cuda", 4) || (device[4] && device[4] != ':'))
            return moe__err(MOE_STATUS_ARG, "--device '%s': expected cpu, cuda or cuda:N", device);
        d.kind = MOE_DEVICE_CUDA;
        d.dtype = MOE_DTYPE_BF16; // the GPU default
        if (device[4] == ':') {
            long i = strtol(device + 5, &end, 10);
            if (end == device + 5 || *end || i < 0 || i > 1023)
                return moe__err(MOE_STATUS_ARG, "--device '%s': the device number must be an integer in [0, 1023]", device);
            d.index = (int)i;
        }
    }
    if (dtype) {
        if (!strcmp(dtype, "fp32")) d.dtype = MOE_DTYPE_FP32;
        else if (!strcmp(dtype, "bf16")) d.dtype = MOE_DTYPE_BF16;
        else return moe__err(MOE_STATUS_ARG, "--dtype '%s': expected fp32 or bf16", dtype);
    }
    *out = d;
    return MOE_STATUS_OK;
}

moe_status moe_device_supports(const moe_device *d, const moe_config *c) {
    // an option the CUDA backend lacks is named here, before any model or run directory is made
    if (d->kind == MOE_DEVICE_CUDA && c->n_kv_head && c->n_kv_head != c->n_head)
        return moe__err(MOE_STATUS_ARG, "--device cuda: grouped-query attention (n_kv_head = %d of n_head = %d) is not on "
                                        "the GPU yet; run it on the CPU", c->n_kv_head, c->n_head);
    const char *missing = !c->n_shared ? NULL
                          : c->shared_gate ? "the shared-expert gate (shared_gate)"
                          : c->shared_hidden && c->shared_hidden != c->n_shared * c->expert_hidden
                              ? "a shared-expert width of its own (shared_hidden)"
                              : NULL;
    if (c->qkv_bias) missing = "q/k/v biases (qkv_bias)";
    if (c->qk_norm) missing = "QK-norm (qk_norm)";
    if (c->n_group > 1) missing = "group-limited routing (n_group)";
    if (d->kind == MOE_DEVICE_CUDA && missing)
        return moe__err(MOE_STATUS_ARG, "--device cuda: %s is not on the GPU yet; run it on the CPU", missing);
    return MOE_STATUS_OK;
}

moe_status moe_device_select(const moe_device *d) {
    if (d->kind == MOE_DEVICE_CPU) { // bf16: bf16 weights for inference (moe_model_load), fp32 arithmetic
        selected = *d;
        return MOE_STATUS_OK;
    }
    if (moe__dist_get()->size > 1)
        return moe__err(MOE_STATUS_ARG, "--device cuda: %d MPI ranks; CUDA runs on one process until multi-GPU exists",
                        moe__dist_get()->size);
#ifdef MOE_HAVE_CUDA
    char name[256];
    size_t free_b, total_b;
    moe_status st = moe__cuda_device_check(d->index, name, sizeof name, &free_b, &total_b);
    if (st != MOE_STATUS_OK) return st;
    selected = *d;
    return MOE_STATUS_OK;
#else
    return moe__err(MOE_STATUS_ARG, "--device cuda: this build has no CUDA (configure with -DMOE_CUDA=ON where nvcc is installed)");
#endif
}

const moe_device *moe_device_selected(void) { return &selected; }
