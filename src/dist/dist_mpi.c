/*
 * dist_mpi.c — the communication interface over MPI (built when CMake finds MPI).
 *
 * Errors: MPI's default handler (MPI_ERRORS_ARE_FATAL) ends the whole job on a failed call,
 * and moe_dist_abort() ends it with MPI_Abort when one rank meets an error of its own, so a
 * rank that fails never leaves the others waiting in a collective.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "dist/dist.h"

static moe__dist grid = {0, 1, 1, 1, 0, 0, 0, 0, 0.0, 0.0};
static MPI_Comm comms[3] = {MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL};
static int started;

const moe__dist *moe__dist_get(void) { return &grid; }
void moe__dist_reset_counters(void) {
    grid.a2a_bytes = grid.ar_bytes = 0;
    grid.a2a_s = grid.ar_s = 0.0;
}

moe_status moe_dist_init(int *argc, char ***argv) {
    // started by a launcher (mpirun, srun)? A plain `moe` stays one process and does not pay
    // for MPI's start-up
    if (!getenv("OMPI_COMM_WORLD_SIZE") && !getenv("PMI_SIZE") && !getenv("PMIX_RANK")) return MOE_STATUS_OK;
    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return moe__err(MOE_STATUS_IO, "MPI_Init failed");
    started = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &grid.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &grid.size);
    grid.dp = grid.size;
    grid.dp_rank = grid.rank;
    comms[MOE_COMM_WORLD] = MPI_COMM_WORLD;
    return MOE_STATUS_OK;
}

moe_status moe_dist_setup(int ep) {
    if (!started) // one process, not started by mpirun
        return ep == 1 ? MOE_STATUS_OK
                       : moe__err(MOE_STATUS_ARG, "--ep %d needs several ranks: start moe with mpirun -np R (R a multiple of %d)", ep, ep);
    if (ep < 1 || grid.size % ep != 0)
        return moe__err(MOE_STATUS_ARG, "--ep %d must divide the number of ranks (%d)", ep, grid.size);
    grid.ep = ep;
    grid.dp = grid.size / ep;
    grid.ep_rank = grid.rank % ep;
    grid.dp_rank = grid.rank / ep;
    if (comms[MOE_COMM_EP] != MPI_COMM_NULL) MPI_Comm_free(&comms[MOE_COMM_EP]);
    if (comms[MOE_COMM_DP] != MPI_COMM_NULL) MPI_Comm_free(&comms[MOE_COMM_DP]);
    MPI_Comm_split(MPI_COMM_WORLD, grid.dp_rank, grid.ep_rank, &comms[MOE_COMM_EP]);
    MPI_Comm_split(MPI_COMM_WORLD, grid.ep_rank, grid.dp_rank, &comms[MOE_COMM_DP]);
    return MOE_STATUS_OK;
}

void moe_dist_finalize(void) {
    if (!started) return;
    if (comms[MOE_COMM_EP] != MPI_COMM_NULL) MPI_Comm_free(&comms[MOE_COMM_EP]);
    if (comms[MOE_COMM_DP] != MPI_COMM_NULL) MPI_Comm_free(&comms[MOE_COMM_DP]);
    MPI_Finalize();
    started = 0;
}
int moe_dist_rank(void) { return grid.rank; }
int moe_dist_size(void) { return grid.size; }
int moe_dist_available(void) { return 1; }

static MPI_Comm comm_of(moe__comm c) { return comms[c] != MPI_COMM_NULL ? comms[c] : MPI_COMM_SELF; }
static int comm_size(moe__comm c) { return c == MOE_COMM_WORLD ? grid.size : c == MOE_COMM_EP ? grid.ep : grid.dp; }

/* Large reductions go in pieces of at most 2^28 elements (MPI counts are int). */
static void allreduce(moe__comm c, void *buf, int64_t n, MPI_Datatype type, size_t elem) {
    if (comm_size(c) == 1 || n == 0) return;
    double t0 = MPI_Wtime();
    for (int64_t o = 0; o < n; o += (int64_t)1 << 28) {
        int64_t k = n - o < ((int64_t)1 << 28) ? n - o : ((int64_t)1 << 28);
        MPI_Allreduce(MPI_IN_PLACE, (char *)buf + (size_t)o * elem, (int)k, type, MPI_SUM, comm_of(c));
    }
    grid.ar_s += MPI_Wtime() - t0;
    // ring all-reduce: each rank sends 2 (p-1)/p of the buffer
    grid.ar_bytes += (int64_t)(2.0 * (comm_size(c) - 1) / comm_size(c) * (double)n * (double)elem);
}

void moe__dist_allreduce_f32(moe__comm c, float *buf, int64_t n) { allreduce(c, buf, n, MPI_FLOAT, 4); }
void moe__dist_allreduce_f64(moe__comm c, double *buf, int64_t n) { allreduce(c, buf, n, MPI_DOUBLE, 8); }
void moe__dist_allreduce_i64(moe__comm c, int64_t *buf, int64_t n) { allreduce(c, buf, n, MPI_INT64_T, 8); }

int moe__dist_min_int(int v) {
    if (grid.size == 1) return v;
    int out;
    MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return out;
}

void moe__dist_alltoall_i64(const int64_t *send, int64_t *recv, int n) {
    if (grid.ep == 1) {
        memcpy(recv, send, (size_t)n * sizeof(int64_t));
        return;
    }
    double t0 = MPI_Wtime();
    MPI_Alltoall(send, n, MPI_INT64_T, recv, n, MPI_INT64_T, comms[MOE_COMM_EP]);
    grid.a2a_s += MPI_Wtime() - t0;
    grid.a2a_bytes += (int64_t)(grid.ep - 1) * n * 8;
}

/* MPI counts and displacements are int. moe_model_create refuses a model whose all-to-all could
 * exceed them (check_rows in model.c), so this check cannot fail for a model it made; were it to,
 * the rank stops with a status rather than overflow. */
moe_status moe__dist_alltoallv_rows(const float *send, const int64_t *send_rows, float *recv, const int64_t *recv_rows,
                                    int width) {
    int p = grid.ep;
    if (p == 1) {
        memcpy(recv, send, (size_t)send_rows[0] * (size_t)width * sizeof(float));
        return MOE_STATUS_OK;
    }
    int sc[p], sd[p], rc[p], rd[p]; // VLAs of the ep size
    int64_t so = 0, ro = 0;
    for (int i = 0; i < p; i++) {
        so += send_rows[i] * width;
        ro += recv_rows[i] * width;
    }
    if (so > INT32_MAX || ro > INT32_MAX)
        return moe__err(MOE_STATUS_ARG,
                        "expert-parallel all-to-all: rank %d would send %lld and receive %lld floats (rows of %d), "
                        "beyond MPI's int counts (2^31 - 1); lower batch_size or seq_len",
                        grid.rank, (long long)so, (long long)ro, width);
    double t0 = MPI_Wtime();
    so = ro = 0;
    for (int i = 0; i < p; i++) {
        int64_t s = send_rows[i] * width, r = recv_rows[i] * width;
        sc[i] = (int)s, sd[i] = (int)so, rc[i] = (int)r, rd[i] = (int)ro;
        so += s, ro += r;
        if (i != grid.ep_rank) grid.a2a_bytes += s * (int64_t)sizeof(float);
    }
    MPI_Alltoallv(send, sc, sd, MPI_FLOAT, recv, rc, rd, MPI_FLOAT, comms[MOE_COMM_EP]);
    grid.a2a_s += MPI_Wtime() - t0;
    return MOE_STATUS_OK;
}

void moe_dist_abort(int code) {
    if (!started || grid.size == 1) return; // one process: the caller exits
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
}

int moe_dist_max_int(int v) { return -moe__dist_min_int(-v); }
