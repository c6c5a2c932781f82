/*
 * moe_ep.c — the routed half of an MoE layer under expert parallelism: rank j of an ep group
 * holds experts [j El, (j+1) El) of each layer (El = E/ep), and tokens travel to the experts.
 *
 * A token goes to a peer once, however many of its K slots land on that peer's experts: one
 * "unit" per (token, peer). Per unit the sender sends x once (C floats); per slot it sends the
 * unit's index and the gate weight (2 floats). The peer runs the slots through its experts (one
 * GEMM per local expert over contiguous rows, as on one process), combines each unit's slots
 * with their gates, and sends one row per unit back, which the sender adds into y. With
 * group-limited routing and n_group = ep (DeepSeek's device-limited routing) a token reaches at
 * most topk_group peers, so it is sent at most topk_group times instead of K.
 *
 *   sender    units (token order per peer) -> x of each unit, and (unit, gate) of each slot row,
 *             one block per peer: [units x C | slot rows x 2] (one all-to-all)
 *   receiver  slot rows gathered into local-expert-contiguous rows (perm) -> experts -> per unit
 *             sum of gate * expert output -> back
 *   sender    y_n = sum over its units (peer order) of what came back
 *
 * Backward goes the same way: dy per unit out; the peer computes each slot's dgate (dy . expert
 * output) and d expert input, runs its experts' backward and sums each unit's dx; dx per unit and
 * dgate per slot come back in one block per peer. So a layer makes as many exchanges as with one
 * row per slot: slot and unit counts (one all-to-all), x out, y back, dy out, dx back. Sums over rows are taken in row order per column block: the result
 * does not depend on the thread count. An all-to-all fails (moe__dist_alltoallv_rows: counts
 * beyond MPI's ints) only where moe__model_create's check_rows did not bound it; every exchange
 * here is at most P rows of C floats out and ep P in (units <= slot rows, metadata 2 <= C wide).
 */
#include "moe/moe_layer.h"
#include "dist/dist.h"
#include "nn/nn.h"

#include <string.h>

#define COLS 16 /* columns per thread in the row-order sums */

/* The unit of a received slot row (its index among all units received) and its gate. */
static inline int row_unit(const float *meta, int64_t r) {
    int u;
    memcpy(&u, meta + 2 * r, sizeof u);
    return u;
}

/* Units of the sender: for each peer j, the tokens with a kept slot on j's experts, in token
 * order (unit_token, unit_send[j] of them); each slot row's unit (within its peer's list, as
 * bits in meta_out[2r]) and gate (meta_out[2r + 1]). */
static void plan_units(moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int p = d->ep, El = d->El, slots = moe__moe_slots(d);
    int *stamp = c->scratch_idx, *uno = c->scratch_idx + N; // 2 max(P, N) ints: free after dispatch
    for (int64_t n = 0; n < N; n++) stamp[n] = -1;
    int64_t u = 0;
    for (int j = 0; j < p; j++) {
        int64_t r0 = c->offsets[j * El], r1 = c->offsets[(j + 1) * El], u0 = u;
        for (int64_t r = r0; r < r1; r++) stamp[c->row_token[r]] = j;
        for (int64_t n = 0; n < N; n++)
            if (stamp[n] == j) uno[n] = (int)(u - u0), c->unit_token[u++] = (int)n;
        for (int64_t r = r0; r < r1; r++) memcpy(c->ep_meta_out + 2 * r, &uno[c->row_token[r]], sizeof(int));
        c->unit_send[j] = u - u0;
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * slots; i++)
        if (c->row_of[i] >= 0) c->ep_meta_out[2 * (int64_t)c->row_of[i] + 1] = c->gate[i];
}

/* Rows per (peer, local expert): counts out and in (all-to-all), the receiver's local expert
 * offsets (loff), the rows to and from each peer, and perm: received row r (peer order) is local
 * row perm[r] ((expert, peer) order, so that each local expert's rows are contiguous). */
static void plan_rows(moe__moe_cache *c, const moe__moe_dims *d) {
    int p = d->ep, El = d->El;
    int64_t W = El + 1, *sent = d->a2a_cnt, *recv = d->a2a_cnt + (int64_t)p * W; // per peer: El slot counts, units
    for (int j = 0; j < p; j++) {
        c->send_rows[j] = c->offsets[(j + 1) * El] - c->offsets[j * El];
        for (int i = 0; i < El; i++) sent[j * W + i] = c->offsets[j * El + i + 1] - c->offsets[j * El + i];
        sent[j * W + El] = c->unit_send[j];
    }
    moe__dist_alltoall_i64(sent, recv, (int)W);
    c->loff[0] = 0;
    for (int i = 0; i < El; i++) {
        int64_t n = 0;
        for (int j = 0; j < p; j++) n += recv[j * W + i];
        c->loff[i + 1] = c->loff[i] + n;
    }
    int64_t r = 0;
    for (int j = 0; j < p; j++) {
        c->recv_rows[j] = 0;
        c->unit_recv[j] = recv[j * W + El];
        for (int i = 0; i < El; i++) {
            int64_t at = c->loff[i];
            for (int q = 0; q < j; q++) at += recv[q * W + i]; // after the rows of earlier peers
            for (int64_t k = 0; k < recv[j * W + i]; k++) c->perm[r++] = (int)(at + k);
            c->recv_rows[j] += recv[j * W + i];
        }
    }
}

/* Prefix sums: first[j] = v[0] + ... + v[j-1], first[p] the total. */
static void prefix(int64_t *first, const int64_t *v, int p) {
    first[0] = 0;
    for (int j = 0; j < p; j++) first[j + 1] = first[j] + v[j];
}

/* Blocks of an exchange, one per peer: [its units x C | its slot rows x m floats] (m = 2 out:
 * unit, gate; m = 1 back: dgate); base[j] where peer j's block starts, cnt[j] its floats. */
static void blocks(int64_t *base, int64_t *cnt, const int64_t *units, const int64_t *rows, int p, int C, int m) {
    for (int j = 0; j < p; j++) cnt[j] = units[j] * C + rows[j] * m;
    prefix(base, cnt, p);
}

/* Units' sums: dst's unit u (peer j's, at base[j] + (u - ufirst[j]) C) = sum over the received
 * rows r of peer j (rfirst[j] .. rfirst[j+1]) whose unit is u, in row order, of (gate(r) or 1)
 * src[perm[r]]. */
static void sum_units(float *dst, const int64_t *base, const int64_t *ufirst, const int64_t *rfirst, const float *src,
                      const moe__moe_cache *c, int p, int C, int gated) {
    for (int j = 0; j < p; j++)
        memset(dst + base[j], 0, (size_t)((ufirst[j + 1] - ufirst[j]) * C) * sizeof(float));
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += COLS) {
        int c1 = c0 + COLS < C ? c0 + COLS : C;
        for (int j = 0; j < p; j++)
            for (int64_t r = rfirst[j]; r < rfirst[j + 1]; r++) {
                float gw = gated ? c->ep_meta[2 * r + 1] : 1.0f;
                float *o = dst + base[j] + (row_unit(c->ep_meta, r) - ufirst[j]) * C;
                const float *v = src + (int64_t)c->perm[r] * C;
                for (int i = c0; i < c1; i++) o[i] += gw * v[i];
            }
    }
}

/* out[unit_token[u]] += src's unit u (peer j's, at base[j] + (u - ufirst[j]) C), units in order. */
static void scatter_units(float *out, const float *src, const int64_t *base, const int64_t *ufirst,
                          const moe__moe_cache *c, int p, int C) {
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < C; c0 += COLS) {
        int c1 = c0 + COLS < C ? c0 + COLS : C;
        for (int j = 0; j < p; j++)
            for (int64_t u = ufirst[j]; u < ufirst[j + 1]; u++) {
                float *o = out + (int64_t)c->unit_token[u] * C;
                const float *v = src + base[j] + (u - ufirst[j]) * C;
                for (int i = c0; i < c1; i++) o[i] += v[i];
            }
    }
}

moe_status moe__ep_forward(float *y, moe__moe_cache *c, const float *x, const moe__moe_weights *w,
                           const moe__moe_dims *d, int64_t N) {
    int C = d->C, El = d->El, p = d->ep;
    plan_units(c, d, N);
    plan_rows(c, d);
    int64_t uf[p + 1], ruf[p + 1], rrf[p + 1], ub[p + 1], rub[p + 1], sb[p + 1], rb[p + 1], cs[p], cr[p]; // ep-sized
    prefix(uf, c->unit_send, p);
    prefix(ruf, c->unit_recv, p);
    prefix(rrf, c->recv_rows, p);
    for (int j = 0; j <= p; j++) ub[j] = uf[j] * C, rub[j] = ruf[j] * C; // units contiguous
    blocks(sb, cs, c->unit_send, c->send_rows, p, C, 2);
    blocks(rb, cr, c->unit_recv, c->recv_rows, p, C, 2);
    // out: peer j's block, its units' x then its slot rows' (unit, gate)
    for (int j = 0; j < p; j++) {
        float *o = c->xe + sb[j];
#pragma omp parallel for schedule(static)
        for (int64_t u = uf[j]; u < uf[j + 1]; u++)
            memcpy(o + (u - uf[j]) * C, x + (int64_t)c->unit_token[u] * C, (size_t)C * sizeof(float));
        memcpy(o + c->unit_send[j] * C, c->ep_meta_out + 2 * c->offsets[j * El], (size_t)(2 * c->send_rows[j]) * sizeof(float));
    }
    moe_status st = moe__dist_alltoallv_rows(c->xe, cs, d->a2a_buf, cr, 1);
    if (st != MOE_STATUS_OK) return st;
    // in: each slot row's unit made an index among all units received, its x gathered to local order
    for (int j = 0; j < p; j++) {
        const float *blk = d->a2a_buf + rb[j], *meta = blk + c->unit_recv[j] * C;
#pragma omp parallel for schedule(static)
        for (int64_t k = 0; k < c->recv_rows[j]; k++) {
            int64_t r = rrf[j] + k;
            int u = row_unit(meta, k);
            memcpy(c->xl + (int64_t)c->perm[r] * C, blk + (int64_t)u * C, (size_t)C * sizeof(float));
            u += (int)ruf[j];
            memcpy(c->ep_meta + 2 * r, &u, sizeof u);
            c->ep_meta[2 * r + 1] = meta[2 * k + 1];
        }
    }
    moe__experts_forward(c->yl, c->h1, c->h3, c->act, c->xl, c->loff, El, w, d);
    sum_units(d->a2a_buf, rub, ruf, rrf, c->yl, c, p, C, 1);
    if ((st = moe__dist_alltoallv_rows(d->a2a_buf, c->unit_recv, c->ye, c->unit_send, C)) != MOE_STATUS_OK) return st;
    memset(y, 0, (size_t)(N * C) * sizeof(float));
    scatter_units(y, c->ye, ub, uf, c, p, C);
    return MOE_STATUS_OK;
}

moe_status moe__ep_backward(float *dx, const moe__moe_weights *g, moe__moe_scratch *s, const float *dy,
                            const moe__moe_weights *w, const moe__moe_cache *c, const moe__moe_dims *d, int64_t N) {
    int C = d->C, El = d->El, p = d->ep, slots = moe__moe_slots(d);
    int64_t uf[p + 1], ruf[p + 1], rrf[p + 1], sb[p + 1], rb[p + 1], cs[p], cr[p]; // ep-sized
    prefix(uf, c->unit_send, p);
    prefix(ruf, c->unit_recv, p);
    prefix(rrf, c->recv_rows, p);
    int64_t RL = c->loff[El];
#pragma omp parallel for schedule(static)
    for (int64_t u = 0; u < uf[p]; u++) memcpy(s->dye + u * C, dy + (int64_t)c->unit_token[u] * C, (size_t)C * sizeof(float));
    moe_status st = moe__dist_alltoallv_rows(s->dye, c->unit_send, d->a2a_buf, c->unit_recv, C);
    if (st != MOE_STATUS_OK) return st;
    // each received slot row: d expert output = gate * dy of its unit, dgate = dy . expert output
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < RL; r++) {
        const float *du = d->a2a_buf + (int64_t)row_unit(c->ep_meta, r) * C, *ye = c->yl + (int64_t)c->perm[r] * C;
        float gw = c->ep_meta[2 * r + 1], dot = 0.0f, *dyl = s->dyl + (int64_t)c->perm[r] * C;
        for (int i = 0; i < C; i++) {
            dyl[i] = gw * du[i];
            dot += du[i] * ye[i];
        }
        s->ep_dgate[r] = dot;
    }
    memset(s->dxl, 0, (size_t)(RL * C) * sizeof(float));
    moe__experts_backward(s->dxl, g, s, s->dyl, c->xl, c->h1, c->h3, c->act, c->loff, El, w, d);
    // back: peer j's block, the dx of its units then the dgate of its slot rows
    blocks(rb, cr, c->unit_recv, c->recv_rows, p, C, 1);
    blocks(sb, cs, c->unit_send, c->send_rows, p, C, 1);
    sum_units(d->a2a_buf, rb, ruf, rrf, s->dxl, c, p, C, 0);
    for (int j = 0; j < p; j++)
        memcpy(d->a2a_buf + rb[j] + c->unit_recv[j] * C, s->ep_dgate + rrf[j], (size_t)c->recv_rows[j] * sizeof(float));
    if ((st = moe__dist_alltoallv_rows(d->a2a_buf, cr, s->dxe, cs, 1)) != MOE_STATUS_OK) return st;
    for (int j = 0; j < p; j++) // each row's dgate, in the sender's row order
        memcpy(s->ep_dgate_back + c->offsets[j * El], s->dxe + sb[j] + c->unit_send[j] * C,
               (size_t)c->send_rows[j] * sizeof(float));
    scatter_units(dx, s->dxe, sb, uf, c, p, C);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * slots; i++) s->dgate[i] = c->row_of[i] >= 0 ? s->ep_dgate_back[c->row_of[i]] : 0.0f;
    return MOE_STATUS_OK;
}
