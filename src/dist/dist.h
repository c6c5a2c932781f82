/*
 * dist.h — the communication interface: one process (dist_single.c) or MPI (dist_mpi.c), chosen
 * at build time. The process-wide grid is dp x ep ranks: rank = dp_rank * ep + ep_rank, so an
 * expert-parallel group is ep consecutive ranks (on one node when ranks fill nodes in order).
 *
 *   world     all ranks: dense-parameter gradients, losses and statistics
 *   ep group  the ep ranks of one data-parallel replica: token dispatch and combine (all-to-all)
 *   dp group  the dp ranks that own the same experts: expert-gradient all-reduce
 *
 * Functions marked COLLECTIVE must be called by every rank of the named group, in the same
 * order; the others are local. Every function is a no-op or a copy with one rank.
 */
#ifndef MOE_DIST_H
#define MOE_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

typedef enum { MOE_COMM_WORLD, MOE_COMM_EP, MOE_COMM_DP } moe__comm;

typedef struct {
    int rank, size;              /* world */
    int dp, ep;                  /* grid */
    int dp_rank, ep_rank;
    /* traffic of this rank since the last reset: bytes sent to other ranks, seconds inside calls */
    int64_t a2a_bytes, ar_bytes;
    double a2a_s, ar_s;
} moe__dist;

/* The grid of this process (1 x 1 before moe_dist_init, and always without MPI). Local. */
const moe__dist *moe__dist_get(void);
void moe__dist_reset_counters(void);

/* COLLECTIVE (comm): sums n values into every rank's buf. */
void moe__dist_allreduce_f32(moe__comm comm, float *buf, int64_t n);
void moe__dist_allreduce_f64(moe__comm comm, double *buf, int64_t n);
void moe__dist_allreduce_i64(moe__comm comm, int64_t *buf, int64_t n);
/* COLLECTIVE (world): the minimum of v over all ranks (agreeing on success). */
int moe__dist_min_int(int v);
/* COLLECTIVE (ep group): every rank sends n int64 to each peer: send[p*n..] goes to peer p,
 * recv[p*n..] comes from peer p. */
void moe__dist_alltoall_i64(const int64_t *send, int64_t *recv, int n);
/* COLLECTIVE (ep group): rows of `width` floats; send_rows[p] rows for peer p, contiguous in
 * peer order in send; recv gets recv_rows[p] rows from each peer p, in peer order.
 * MOE_STATUS_ARG when this rank's rows to send or to receive add up to more floats than MPI's
 * int counts hold (2^31 - 1), checked on this rank only: the other ranks would wait in the
 * exchange, so callers keep every exchange within the bound (moe__model_create's check_rows
 * refuses a model whose all-to-alls could pass it). */
moe_status moe__dist_alltoallv_rows(const float *send, const int64_t *send_rows, float *recv, const int64_t *recv_rows,
                                    int width);

#endif
