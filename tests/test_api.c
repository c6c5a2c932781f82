/*
 * test_api.c — the library's contract with its callers: error messages (a caller wrapping the
 * error it got in its own context, three deep, keeps every part once), statuses and their
 * names.
 */
#include "check.h"
#include "core/core.h"

#include <string.h>

static void test_error_chain(void) {
    // each level passes moe_last_error() back into moe__err: the buffer is source and target
    moe__err(MOE_STATUS_CONFIG, "config: 'n_embd' = %d is out of range [2, 65536]", 40960000);
    moe__err(MOE_STATUS_CONFIG, "'%s' gives a config moe cannot use: %s", "dir/config.json", moe_last_error());
    moe_status st = moe__err(MOE_STATUS_CONFIG, "import: %s", moe_last_error());
    CHECK(st == MOE_STATUS_CONFIG, "the status comes back");
    const char *want = "import: 'dir/config.json' gives a config moe cannot use: config: 'n_embd' = 40960000 is out of "
                       "range [2, 65536]";
    CHECK(!strcmp(moe_last_error(), want), "three chained errors: got \"%s\"", moe_last_error());
    // a message longer than the buffer is cut, never overrun, and stays a string
    char longer[3000];
    memset(longer, 'x', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    moe__err(MOE_STATUS_IO, "%s", longer);
    moe__err(MOE_STATUS_IO, "again: %s", moe_last_error());
    size_t n = strlen(moe_last_error());
    CHECK(n > 1000 && n < 1024 && !strncmp(moe_last_error(), "again: xxx", 10), "a long chain is cut at the buffer: %zu", n);
}

static void test_status_names(void) {
    for (int s = 0; s < MOE_STATUS_COUNT; s++)
        CHECK(moe_status_str((moe_status)s)[0] && strcmp(moe_status_str((moe_status)s), "unknown status"),
              "status %d has a name", s);
    CHECK(!strcmp(moe_status_str(MOE_STATUS_COUNT), "unknown status"), "out of range");
    CHECK(!strcmp(moe_status_str(MOE_STATUS_DEVICE), "device error"), "the device status");
}

int main(void) {
    test_error_chain();
    test_status_names();
    CHECK_SUMMARY("test_api");
}
