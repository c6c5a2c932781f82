/*
 * moe.cu — the MoE layer's data movement around the experts on the GPU, mirroring the loops of
 * moe__moe_forward/_backward (moe/moe_layer.c); assignment a = n*K + k:
 *
 *   gather     xe_r = x[row_token_r]
 *   combine    y_n = sum over kept slots k, in slot order, of gate_nk ye[row_nk]
 *   backward   dye[row_nk] = gate_nk dy_n, dgate_nk = dy_n . ye[row_nk]; dx_n += sum_k dxe[row_nk]
 *
 * Determinism: no float atomics; every sum runs in a fixed order (slot order or a fixed warp
 * butterfly). gather, scatter_add and dye are the CPU's arithmetic exactly; combine differs by
 * fma contraction; dgate is a warp tree where the CPU sums left to right.
 */
#include "cuda/common.cuh"

static __global__ void gather_rows_kernel(float *xe, const float *x, const int *row_token, int64_t R, int C) {
    GRID_STRIDE(j, R * C) {
        int64_t r = j / C;
        xe[j] = x[(int64_t)row_token[r] * C + (j - r * C)];
    }
}

extern "C" moe_status moe__cuda_gather_rows(float *xe, const float *x, const int *row_token, int64_t R, int C) {
    gather_rows_kernel<<<moe__cuda_blocks(R * C, MOE_THREADS), MOE_THREADS>>>(xe, x, row_token, R, C);
    return MOE_CUDA_LAUNCHED("gather_rows");
}

static __global__ void combine_kernel(float *y, const float *ye, const float *gate, const int *row_of, int64_t N, int K,
                                      int C) {
    GRID_STRIDE(j, N * C) {
        int64_t n = j / C, i = j - n * C;
        float acc = 0.0f;
        for (int k = 0; k < K; k++) {
            int r = row_of[n * K + k];
            if (r < 0) continue;
            acc += gate[n * K + k] * ye[(int64_t)r * C + i];
        }
        y[j] = acc;
    }
}

extern "C" moe_status moe__cuda_combine(float *y, const float *ye, const float *gate, const int *row_of, int64_t N,
                                        int K, int C) {
    combine_kernel<<<moe__cuda_blocks(N * C, MOE_THREADS), MOE_THREADS>>>(y, ye, gate, row_of, N, K, C);
    return MOE_CUDA_LAUNCHED("combine");
}

/* One warp an assignment: y_n = sum_k gate_nk ye_row gives dye_row = gate_nk dy_n and
 * dgate_nk = dy_n . ye_row, the dot product summed per lane in a fixed stride, then a butterfly. */
static __global__ void combine_backward_kernel(float *dye, float *dgate, const float *dy, const float *ye,
                                               const float *gate, const int *row_of, int64_t A, int K, int C) {
    int lane = threadIdx.x % MOE_WARP;
    WARP_STRIDE(a, A) {
        int r = row_of[a];
        if (r < 0) { // dropped or unrouted: no row, no gradient
            if (lane == 0) dgate[a] = 0.0f;
            continue;
        }
        const float *dyn = dy + (a / K) * C, *yr = ye + (int64_t)r * C;
        float *dr = dye + (int64_t)r * C, g = gate[a], dot = 0.0f;
        for (int i = lane; i < C; i += MOE_WARP) {
            dr[i] = g * dyn[i];
            dot += dyn[i] * yr[i];
        }
        dot = warp_sum(dot);
        if (lane == 0) dgate[a] = dot;
    }
}

extern "C" moe_status moe__cuda_combine_backward(float *dye, float *dgate, const float *dy, const float *ye,
                                                 const float *gate, const int *row_of, int64_t N, int K, int C) {
    int64_t A = N * K;
    combine_backward_kernel<<<moe__cuda_blocks(A * MOE_WARP, MOE_THREADS), MOE_THREADS>>>(dye, dgate, dy, ye, gate, row_of, A, K,
                                                                               C);
    return MOE_CUDA_LAUNCHED("combine_backward");
}

/* xe_row = x_n: dx_n += dxe_row for each kept slot of token n, in slot order (the CPU's sums). */
static __global__ void scatter_add_kernel(float *dx, const float *dxe, const int *row_of, int64_t N, int K, int C) {
    GRID_STRIDE(j, N * C) {
        int64_t n = j / C, i = j - n * C;
        float acc = dx[j];
        for (int k = 0; k < K; k++) {
            int r = row_of[n * K + k];
            if (r >= 0) acc += dxe[(int64_t)r * C + i];
        }
        dx[j] = acc;
    }
}

extern "C" moe_status moe__cuda_scatter_add(float *dx, const float *dxe, const int *row_of, int64_t N, int K, int C) {
    scatter_add_kernel<<<moe__cuda_blocks(N * C, MOE_THREADS), MOE_THREADS>>>(dx, dxe, row_of, N, K, C);
    return MOE_CUDA_LAUNCHED("scatter_add");
}
