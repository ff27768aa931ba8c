/* -fsdev throttling.*: one leaky bucket per limit, as QEMU's throttle layer
 * (util/throttle.c) keeps them. A bucket's level drains at the limit's rate;
 * a request may start while the level is below the bucket size (the -max
 * burst, or a tenth of a second of the rate without one) and then adds its
 * bytes or operations. Requests wait, they are never refused. Only reads
 * and writes are throttled, as in QEMU. */
#include "fsd/fsd-internal.h"
#include "common/error.h"

#include <string.h>

struct FsdThrottle {
    FsdThrottleConfig cfg;
    GMutex lock;
    gint64 last_us;
    double level[FSD_THR_N];
};

static const char *const bucket_keys[FSD_THR_N] = {
    "bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write",
};

gboolean fsd_throttle_config_set(FsdThrottleConfig *c, const char *key, guint64 value, GError **error)
{
    if (g_str_has_prefix(key, "throttling."))
        key += strlen("throttling.");
    if (strcmp(key, "iops-size") == 0) {
        c->iops_size = value;
        return TRUE;
    }
    for (int i = 0; i < FSD_THR_N; i++) {
        gsize n = strlen(bucket_keys[i]);
        if (strncmp(key, bucket_keys[i], n) != 0)
            continue;
        if (key[n] == '\0') {
            c->avg[i] = value;
            return TRUE;
        }
        if (strcmp(key + n, "-max") == 0) {
            c->max[i] = value;
            return TRUE;
        }
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "throttling: unknown key '%s'", key);
    return FALSE;
}

gboolean fsd_throttle_config_check(const FsdThrottleConfig *c, GError **error)
{
    for (int base = 0; base < FSD_THR_N; base += 3) {
        if ((c->avg[base] || c->max[base]) && (c->avg[base + 1] || c->avg[base + 2] ||
                                               c->max[base + 1] || c->max[base + 2])) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "bps/iops_total(_max) and bps/iops_read/write(_max) cannot be used at the same time");
            return FALSE;
        }
    }
    for (int i = 0; i < FSD_THR_N; i++) {
        if (c->max[i] && !c->avg[i]) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "throttling.%s-max requires throttling.%s to be set", bucket_keys[i], bucket_keys[i]);
            return FALSE;
        }
        if (c->max[i] && c->max[i] < c->avg[i]) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "throttling.%s-max must not be lower than throttling.%s", bucket_keys[i], bucket_keys[i]);
            return FALSE;
        }
    }
    return TRUE;
}

gboolean fsd_throttle_config_enabled(const FsdThrottleConfig *c)
{
    for (int i = 0; i < FSD_THR_N; i++) {
        if (c->avg[i])
            return TRUE;
    }
    return FALSE;
}

FsdThrottle *fsd_throttle_new(const FsdThrottleConfig *c)
{
    FsdThrottle *t = g_new0(FsdThrottle, 1);
    t->cfg = *c;
    g_mutex_init(&t->lock);
    t->last_us = g_get_monotonic_time();
    return t;
}

void fsd_throttle_free(FsdThrottle *t)
{
    if (!t)
        return;
    g_mutex_clear(&t->lock);
    g_free(t);
}

static double bucket_size(const FsdThrottle *t, int i)
{
    return t->cfg.max[i] ? (double)t->cfg.max[i] : (double)t->cfg.avg[i] / 10.0;
}

static void drain(FsdThrottle *t)
{
    gint64 now = g_get_monotonic_time();
    double secs = (double)(now - t->last_us) / G_USEC_PER_SEC;
    t->last_us = now;
    for (int i = 0; i < FSD_THR_N; i++) {
        t->level[i] -= secs * (double)t->cfg.avg[i];
        if (t->level[i] < 0)
            t->level[i] = 0;
    }
}

/* Microseconds until every bucket of the request has room; 0 = go now. */
static gint64 wait_needed(FsdThrottle *t, const int *buckets, int n)
{
    gint64 wait = 0;
    for (int k = 0; k < n; k++) {
        int i = buckets[k];
        if (!t->cfg.avg[i])
            continue;
        double over = t->level[i] - bucket_size(t, i);
        if (over >= 0) {
            gint64 us = (gint64)(over / (double)t->cfg.avg[i] * G_USEC_PER_SEC) + 1;
            wait = MAX(wait, us);
        }
    }
    return wait;
}

gboolean fsd_throttle_wait(FsdThrottle *t, gboolean is_write, guint64 bytes, const gint *cancelled)
{
    int buckets[4] = {
        FSD_THR_BPS_TOTAL, is_write ? FSD_THR_BPS_WRITE : FSD_THR_BPS_READ,
        FSD_THR_OPS_TOTAL, is_write ? FSD_THR_OPS_WRITE : FSD_THR_OPS_READ,
    };
    double ops = 1.0;
    if (t->cfg.iops_size && bytes > t->cfg.iops_size)
        ops = (double)bytes / (double)t->cfg.iops_size;
    for (;;) {
        g_mutex_lock(&t->lock);
        drain(t);
        gint64 wait = wait_needed(t, buckets, 4);
        if (wait == 0) {
            t->level[buckets[0]] += (double)bytes;
            t->level[buckets[1]] += (double)bytes;
            t->level[buckets[2]] += ops;
            t->level[buckets[3]] += ops;
            g_mutex_unlock(&t->lock);
            return TRUE;
        }
        g_mutex_unlock(&t->lock);
        /* Short naps so that a flush of the waiting request is seen soon. */
        g_usleep(MIN(wait, 10000));
        if (cancelled && g_atomic_int_get(cancelled))
            return FALSE;
    }
}
