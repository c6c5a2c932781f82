/*
 * events.c — the typed event records of metrics.jsonl (docs/metrics.md): besides one record per
 * step, a record {"event": "start" | "resume", "step": S, "data": ..., "val_data": ...} each
 * time a training process starts on the run, so that a run says what it was trained on and a
 * resume with other data is on record ("data_changed": true with what the data was before), and
 * {"event": "threads", ...} when an automatic run changes its thread count.
 * Readers tell the kinds apart by the "event" key; every record has "step" (resume trimming).
 */
#define _POSIX_C_SOURCE 200809L
#include "train/train.h"
#include "dist/dist.h"

#include <cjson/cJSON.h>
#include <string.h>

/* The "data" of the last start or resume record of the metrics file (a new string), or NULL. */
static char *last_data(const char *path) {
    size_t len;
    char *buf = moe__read_file(path, &len), *found = NULL;
    if (!buf) return NULL;
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (strstr(line, "\"event\"")) {
            cJSON *o = cJSON_Parse(line);
            cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "data");
            if (cJSON_IsString(d)) {
                free(found);
                found = strdup(d->valuestring);
            }
            cJSON_Delete(o);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    return found;
}

/* Appends record o (freed) to metrics.jsonl, flushed. */
static moe_status write_record(moe_trainer *t, cJSON *o) {
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    int bad = fprintf(t->metrics, "%s\n", s) < 0 || fflush(t->metrics) != 0;
    free(s);
    return bad ? moe__err(MOE_STATUS_IO, "cannot write '%s'", t->metrics_path) : MOE_STATUS_OK;
}

moe_status moe__events_start(moe_trainer *t, int resume) {
    if (moe__dist_get()->rank != 0 || !t->metrics) return MOE_STATUS_OK;
    const char *data = moe_dataset_source(t->train), *val = moe_dataset_source(t->val);
    char *before = resume ? last_data(t->metrics_path) : NULL;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        free(before);
        return moe__err(MOE_STATUS_NOMEM, "out of memory");
    }
    cJSON_AddStringToObject(o, "event", resume ? "resume" : "start");
    cJSON_AddNumberToObject(o, "step", (double)t->run.step);
    cJSON_AddStringToObject(o, "data", data);
    cJSON_AddStringToObject(o, "val_data", val);
    cJSON_AddStringToObject(o, "blas", moe_blas_info()); // what the step times were measured on
    cJSON_AddBoolToObject(o, "threads_auto", t->tuner.on);
    free(t->data_change);
    t->data_change = NULL;
    if (before && strcmp(before, data)) {
        cJSON_AddTrueToObject(o, "data_changed");
        cJSON_AddStringToObject(o, "data_before", before);
        size_t n = strlen(before) + strlen(data) + 64;
        if ((t->data_change = malloc(n))) snprintf(t->data_change, n, "the run was trained on %s; it goes on with %s", before, data);
    }
    free(before);
    return write_record(t, o);
}

const char *moe_trainer_data_change(const moe_trainer *t) { return t->data_change; }

moe_status moe__events_threads(moe_trainer *t, const char *change) {
    if (moe__dist_get()->rank != 0 || !t->metrics) return MOE_STATUS_OK;
    cJSON *o = cJSON_CreateObject();
    if (!o) return moe__err(MOE_STATUS_NOMEM, "out of memory");
    cJSON_AddStringToObject(o, "event", "threads");
    cJSON_AddNumberToObject(o, "step", (double)t->run.step);
    cJSON_AddNumberToObject(o, "threads", t->tuner.cur);
    cJSON_AddStringToObject(o, "why", change);
    return write_record(t, o);
}
