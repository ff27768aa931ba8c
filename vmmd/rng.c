/* -device virtio-rng-device and its entropy sources: see rng.h. */
#include "vmmd/rng.h"
#include "vmmd/vm-options.h"
#include "common/error.h"
#include "common/opts.h"

#include <string.h>

#define DEFAULT_PERIOD_MS 65536u
#define DEFAULT_MAX_BYTES ((guint64)G_MAXINT64)

void vmm_rng_device_free(gpointer p)
{
    VmmRngDevice *r = p;
    g_free(r->id);
    g_free(r->rng);
    g_free(r);
}

gboolean vmm_rng_device_is_rng(const char *driver)
{
    return g_str_equal(driver, "virtio-rng-device");
}

/* Integers without size suffixes, with QEMU 7.2's messages. */
static gboolean parse_max_bytes(const char *text, guint64 *out, GError **error)
{
    guint64 v;
    /* QEMU wraps a negative number and then refuses it with this message. */
    if (text[0] == '-' && vmm_parse_number(NULL, NULL, text + 1, &v, NULL))
        v = G_MAXUINT64;
    else if (!vmm_parse_number(NULL, NULL, text, &v, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'max-bytes' expects integer");
        return FALSE;
    }
    if (v > (guint64)G_MAXINT64) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "'max-bytes' parameter must be non-negative, and less than 2^63");
        return FALSE;
    }
    *out = v;
    return TRUE;
}

static gboolean parse_period(const char *text, guint32 *out, GError **error)
{
    guint64 v;
    gboolean negative = text[0] == '-';
    if (!vmm_parse_number(NULL, NULL, text + negative, &v, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'period' expects integer");
        return FALSE;
    }
    if (negative || v > G_MAXUINT32) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Parameter 'period' expects uint32_t");
        return FALSE;
    }
    if (v == 0) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "'period' parameter expects a positive integer");
        return FALSE;
    }
    *out = (guint32)v;
    return TRUE;
}

static gboolean fill_rng_device(VmmRngDevice *r, JsonObject *o, guint index, GError **error)
{
    static const char *const known[] = { "driver", "id", "rng", "max-bytes", "period", NULL };
    JsonObjectIter it;
    const char *key;
    json_object_iter_init(&it, o);
    while (json_object_iter_next(&it, &key, NULL)) {
        if (!g_strv_contains(known, key)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Property 'virtio-rng-device.%s' not found", key);
            return FALSE;
        }
    }
    r->id = vmm_opts_has(o, "id") ? g_strdup(vmm_opts_get_string(o, "id", "")) : g_strdup_printf("rng%u", index);
    r->rng = g_strdup(vmm_opts_get_string(o, "rng", NULL));
    r->max_bytes = DEFAULT_MAX_BYTES;
    r->period_ms = DEFAULT_PERIOD_MS;
    if (vmm_opts_has(o, "max-bytes") && !parse_max_bytes(vmm_opts_get_string(o, "max-bytes", ""), &r->max_bytes, error))
        return FALSE;
    if (vmm_opts_has(o, "period") && !parse_period(vmm_opts_get_string(o, "period", ""), &r->period_ms, error))
        return FALSE;
    return TRUE;
}

gboolean vmm_rng_device_parse(VmmVmConfig *vm, const char *value, GError **error)
{
    static const VmmOptSpec spec = { "device", "driver", NULL };
    g_autoptr(JsonObject) o = vmm_opts_parse(&spec, value, error);
    VmmRngDevice *r = g_new0(VmmRngDevice, 1);
    if (!o || !fill_rng_device(r, o, vm->rng_devices->len, error)) {
        g_prefix_error(error, "-device %s: ", value);
        vmm_rng_device_free(r);
        return FALSE;
    }
    g_ptr_array_add(vm->rng_devices, r);
    return TRUE;
}

gboolean vmm_rng_devices_finish(VmmVmConfig *vm, GError **error)
{
    for (guint i = 0; i < vm->rng_devices->len; i++) {
        VmmRngDevice *r = vm->rng_devices->pdata[i];
        if (!r->rng)
            continue;
        const VmmObjectConfig *o = vmm_vm_config_find_object(vm, r->rng);
        if (!o) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-device virtio-rng-device,rng=%s: "
                        "Device '%s' not found", r->rng, r->rng);
            return FALSE;
        }
        if (o->kind != VMM_OBJECT_RNG_RANDOM && o->kind != VMM_OBJECT_RNG_BUILTIN) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "-device virtio-rng-device,rng=%s: "
                        "Invalid parameter type for 'rng', expected: rng-backend", r->rng);
            return FALSE;
        }
    }
    return TRUE;
}
