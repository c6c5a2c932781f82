/*
 * tensorboard.c — TensorBoard event files, written without TensorFlow or protobuf libraries.
 *
 * An event file (DIR/events.out.tfevents.TIME.HOST.PID.moe) is a TFRecord stream: each record is
 * u64 length, u32 masked CRC-32C of the length, the bytes, u32 masked CRC-32C of the bytes
 * (masked: ((crc >> 15) | (crc << 17)) + 0xa282ead8). Each record is one serialised Event
 * protocol buffer (tensorflow/core/util/event.proto):
 *   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
 *             SessionLog session_log = 7; }
 *   Summary { repeated Value value = 1; }
 *   Value   { string tag = 1; float simple_value = 2; HistogramProto histo = 5; }
 *   HistogramProto { double min = 1, max = 2, num = 3, sum = 4, sum_squares = 5;
 *                    repeated double bucket_limit = 6 [packed]; repeated double bucket = 7 [packed]; }
 *   SessionLog { SessionStatus status = 1; }   START = 1
 * The first record carries file_version "brain.Event:2". A resumed run opens a new file that
 * starts with SessionLog START at the first step it will write: TensorBoard then drops what an
 * earlier file recorded from that step on (steps written after the last checkpoint of a run that
 * died), so every step is shown once.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/io.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- CRC-32C */

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78u ^ (c >> 1) : c >> 1; // Castagnoli, reflected
        crc_table[i] = c;
    }
}

static uint32_t masked_crc(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    c ^= 0xffffffffu;
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

/* ---------------------------------------------------------------- protobuf encoding */

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int oom;
} pb;

struct moe__tb {
    FILE *f;
    char *path;
    pb sum;     /* the Summary of the step being built */
    pb ev, val, h, lim, cnt; /* scratch, reused from value to value: no allocation once grown */
    int failed; /* errno of the first failed write, or 0 */
};

static void pb_bytes(pb *b, const void *data, size_t n) {
    if (b->oom) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void pb_varint(pb *b, uint64_t v) {
    uint8_t tmp[10];
    int n = 0;
    do {
        tmp[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    pb_bytes(b, tmp, (size_t)n);
}

static void pb_tag(pb *b, int field, int wire) { pb_varint(b, (uint64_t)field << 3 | (uint64_t)wire); }

/* n bytes of u, little-endian */
static void le(uint8_t *out, uint64_t u, int n) {
    for (int i = 0; i < n; i++) out[i] = (uint8_t)(u >> (8 * i));
}

static void pb_le(pb *b, uint64_t u, int n) {
    uint8_t t[8];
    le(t, u, n);
    pb_bytes(b, t, (size_t)n);
}

static uint64_t bits64(double v) {
    uint64_t u;
    memcpy(&u, &v, 8);
    return u;
}

static void pb_double(pb *b, int field, double v) { // fixed64
    pb_tag(b, field, 1);
    pb_le(b, bits64(v), 8);
}

static void pb_float(pb *b, int field, float v) { // fixed32
    uint32_t u;
    memcpy(&u, &v, 4);
    pb_tag(b, field, 5);
    pb_le(b, u, 4);
}

static void pb_sub(pb *b, int field, const pb *sub) { // length-delimited (strings, messages)
    pb_tag(b, field, 2);
    pb_varint(b, sub->len);
    pb_bytes(b, sub->p, sub->len);
}

static void pb_string(pb *b, int field, const char *s) {
    pb t = {(uint8_t *)s, strlen(s), 0, 0};
    pb_sub(b, field, &t);
}

/* ---------------------------------------------------------------- records */

static void write_record(moe__tb *tb, const uint8_t *data, size_t n) {
    if (tb->failed) return;
    uint8_t head[12], tail[4];
    le(head, n, 8);
    le(head + 8, masked_crc(head, 8), 4);
    le(tail, masked_crc(data, n), 4);
    if (fwrite(head, 1, 12, tb->f) != 12 || fwrite(data, 1, n, tb->f) != n || fwrite(tail, 1, 4, tb->f) != 4)
        tb->failed = errno ? errno : EIO;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Starts tb->ev as an Event of this step at the current time. */
static pb *event_begin(moe__tb *tb, int64_t step) {
    pb *e = &tb->ev;
    e->len = 0;
    pb_double(e, 1, wall_now());
    pb_tag(e, 2, 0);
    pb_varint(e, (uint64_t)step);
    return e;
}

static void event_write(moe__tb *tb) {
    if (tb->ev.oom) tb->failed = ENOMEM;
    else write_record(tb, tb->ev.p, tb->ev.len);
}

/* One Event with either file_version or session_log START, no summary. */
static void header_event(moe__tb *tb, int64_t step, int start) {
    pb *e = event_begin(tb, step);
    if (start) {
        pb *s = &tb->val;
        s->len = 0;
        pb_tag(s, 1, 0);
        pb_varint(s, 1); // START
        pb_sub(e, 7, s);
    } else {
        pb_string(e, 3, "brain.Event:2");
    }
    event_write(tb);
}

moe_status moe__tb_open(const char *dir, int64_t first_step, moe__tb **out) {
    static int crc_ready;
    if (!crc_ready) crc_init(), crc_ready = 1;
    *out = NULL;
    moe__tb *tb = calloc(1, sizeof *tb);
    char host[64] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    for (char *p = host; *p; p++)
        if (*p == '/') *p = '_';
    size_t n = strlen(dir) + 160;
    if (!tb || !(tb->path = malloc(n))) {
        free(tb);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    // the step in the name keeps the files of a resumed run in order even within one second
    snprintf(tb->path, n, "%s/events.out.tfevents.%lld.%s.%d.%lld.moe", dir, (long long)time(NULL), host, (int)getpid(),
             (long long)first_step);
    tb->f = fopen(tb->path, "wb");
    if (!tb->f) {
        moe_status st = moe__err(MOE_STATUS_IO, "cannot create '%s': %s", tb->path, strerror(errno));
        moe__tb_close(tb);
        return st;
    }
    header_event(tb, first_step > 0 ? first_step : 0, 0);
    if (first_step > 0) header_event(tb, first_step + 1, 1);
    moe_status st = moe__tb_flush(tb);
    if (st != MOE_STATUS_OK) {
        moe__tb_close(tb);
        return st;
    }
    *out = tb;
    return MOE_STATUS_OK;
}

void moe__tb_scalar(moe__tb *tb, const char *tag, float v) {
    pb *val = &tb->val;
    val->len = 0;
    pb_string(val, 1, tag);
    pb_float(val, 2, v);
    pb_sub(&tb->sum, 1, val);
}

void moe__tb_histogram(moe__tb *tb, const char *tag, const double *x, int n, const double *limits, int n_limits) {
    pb *h = &tb->h, *lim = &tb->lim, *cnt = &tb->cnt, *val = &tb->val;
    h->len = lim->len = cnt->len = val->len = 0;
    double mn = n ? x[0] : 0, mx = n ? x[0] : 0, sum = 0, sq = 0;
    for (int i = 0; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
        sum += x[i];
        sq += x[i] * x[i];
    }
    pb_double(h, 1, mn);
    pb_double(h, 2, mx);
    pb_double(h, 3, n);
    pb_double(h, 4, sum);
    pb_double(h, 5, sq);
    for (int b = 0; b < n_limits; b++) { // bucket b counts x in (limits[b-1], limits[b]]
        double lo = b ? limits[b - 1] : -1e300, c = 0;
        for (int i = 0; i < n; i++) c += x[i] > lo && x[i] <= limits[b];
        pb_le(lim, bits64(limits[b]), 8);
        pb_le(cnt, bits64(c), 8);
    }
    pb_sub(h, 6, lim);
    pb_sub(h, 7, cnt);
    pb_string(val, 1, tag);
    pb_sub(val, 5, h);
    pb_sub(&tb->sum, 1, val);
}

void moe__tb_step(moe__tb *tb, int64_t step) {
    pb *e = event_begin(tb, step);
    pb_sub(e, 5, &tb->sum);
    if (tb->sum.oom || tb->val.oom || tb->h.oom || tb->lim.oom || tb->cnt.oom) tb->failed = ENOMEM;
    event_write(tb);
    tb->sum.len = 0;
}

moe_status moe__tb_flush(moe__tb *tb) {
    if (!tb->failed && fflush(tb->f) != 0) tb->failed = errno ? errno : EIO;
    if (tb->failed) return moe__err(MOE_STATUS_IO, "cannot write '%s': %s", tb->path, strerror(tb->failed));
    return MOE_STATUS_OK;
}

void moe__tb_close(moe__tb *tb) {
    if (!tb) return;
    if (tb->f) fclose(tb->f);
    free(tb->path);
    pb *scratch[] = {&tb->sum, &tb->ev, &tb->val, &tb->h, &tb->lim, &tb->cnt};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) free(scratch[i]->p);
    free(tb);
}
