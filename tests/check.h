/*
 * check.h — tiny assertion helpers for the C tests: each failure prints both operands and the
 * location; the test's main ends with CHECK_SUMMARY(), which exits non-zero on any failure.
 */
#ifndef MOE_TEST_CHECK_H
#define MOE_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int check_failures = 0, check_count = 0;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        check_count++;                                                                    \
        if (!(cond)) {                                                                    \
            check_failures++;                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fprintf(stderr, "\n");                                                        \
        }                                                                                 \
    } while (0)

/* |got - want| <= atol + rtol * |want| */
#define CHECK_CLOSE(got, want, atol, rtol, what)                                          \
    do {                                                                                  \
        double g_ = (got), w_ = (want);                                                   \
        CHECK(fabs(g_ - w_) <= (atol) + (rtol) * fabs(w_) && isfinite(g_), "%s: got %.8g want %.8g", what, g_, w_); \
    } while (0)

#define CHECK_OK(expr)                                                                    \
    do {                                                                                  \
        moe_status s_ = (expr);                                                           \
        CHECK(s_ == MOE_STATUS_OK, "%s -> %s: %s", #expr, moe_status_str(s_), moe_last_error()); \
        if (s_ != MOE_STATUS_OK) exit(1);                                                 \
    } while (0)

/* Compares arrays with a per-element tolerance; reports the worst element. Returns max error. */
static inline double check_arrays(const float *got, const float *want, long n, double atol, double rtol,
                                  const char *what, const char *file, int line) {
    double worst = 0, worst_excess = -1;
    long wi = -1;
    for (long i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        double excess = err - (atol + rtol * fabs((double)want[i]));
        if (err > worst) worst = err;
        if (excess > worst_excess || !isfinite(got[i])) {
            worst_excess = isfinite(got[i]) ? excess : INFINITY;
            wi = i;
        }
    }
    check_count++;
    if (worst_excess > 0) {
        check_failures++;
        fprintf(stderr, "FAIL %s:%d: %s: element %ld got %.8g want %.8g (atol %g rtol %g)\n", file, line, what, wi,
                got[wi], want[wi], atol, rtol);
    }
    return worst;
}
#define CHECK_ARRAYS(got, want, n, atol, rtol, what) check_arrays(got, want, n, atol, rtol, what, __FILE__, __LINE__)

#define CHECK_SUMMARY(name)                                                               \
    do {                                                                                  \
        printf("%s: %d checks, %d failed -> %s\n", name, check_count, check_failures,     \
               check_failures ? "FAIL" : "ok");                                           \
        return check_failures ? 1 : 0;                                                    \
    } while (0)

#endif
