/*
 * dist_single.c — the communication interface for one process (built when MPI is absent):
 * every group has one rank, reductions are identities and all-to-all is a copy.
 */

#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "dist/dist.h"

static moe__dist grid = {0, 1, 1, 1, 0, 0, 0, 0, 0.0, 0.0};

const moe__dist *moe__dist_get(void) { return &grid; }
void moe__dist_reset_counters(void) {}

moe_status moe_dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return MOE_STATUS_OK;
}

moe_status moe_dist_setup(int ep) {
    if (ep != 1) return moe__err(MOE_STATUS_ARG, "--ep %d needs MPI: this build of moe has none (install libopenmpi-dev and rebuild)", ep);
    return MOE_STATUS_OK;
}

void moe_dist_finalize(void) {}
int moe_dist_rank(void) { return 0; }
int moe_dist_size(void) { return 1; }
int moe_dist_available(void) { return 0; }

void moe__dist_allreduce_f32(moe__comm comm, float *buf, int64_t n) { (void)comm, (void)buf, (void)n; }
void moe__dist_allreduce_f64(moe__comm comm, double *buf, int64_t n) { (void)comm, (void)buf, (void)n; }
void moe__dist_allreduce_i64(moe__comm comm, int64_t *buf, int64_t n) { (void)comm, (void)buf, (void)n; }
int moe__dist_min_int(int v) { return v; }
void moe__dist_alltoall_i64(const int64_t *send, int64_t *recv, int n) {
    memcpy(recv, send, (size_t)n * sizeof(int64_t));
}
moe_status moe__dist_alltoallv_rows(const float *send, const int64_t *send_rows, float *recv, const int64_t *recv_rows,
                                    int width) {
    (void)recv_rows;
    memcpy(recv, send, (size_t)send_rows[0] * (size_t)width * sizeof(float));
    return MOE_STATUS_OK;
}
void moe_dist_abort(int code) { (void)code; } // one process: the caller exits

int moe_dist_max_int(int v) { return -moe__dist_min_int(-v); }
