/* The machine-type registry, as data: adding a version is adding an entry. */
#include "vmmd/machine.h"
#include "common/error.h"
#include "common/opts.h"

#include <string.h>

/* microvm-1.0: QEMU's microvm as vmmd builds it: one 8250 UART, virtio-mmio
 * transports described in ACPI, no PCI. No compat properties: it is the
 * baseline later versions describe their differences against.
 *
 * A microvm-1.1 that changed one device default would be:
 *   static const char *const microvm_1_0_compat[] = { "virtio-blk-device.num-queues=1", NULL };
 *   { "microvm-1.1", "microvm", "microvm", "microvm (i386)", TRUE, 1, 8, FALSE, 288, NULL },
 * with the alias and default moved to it and microvm-1.0 gaining .compat. */
static const VmmMachineType microvm_1_0 = {
    .name = "microvm-1.0",
    .alias = "microvm",
    .family = "microvm",
    .desc = "microvm (i386)",
    .is_default = TRUE,
    .serial_8250 = 1,
    .virtio_mmio_slots = 8,
    .has_pci = FALSE,
    .max_cpus = 288,
    .compat = NULL,
};

static const VmmMachineType *const registry[] = { &microvm_1_0, NULL };

const VmmMachineType *const *vmm_machine_registry(void)
{
    return registry;
}

const VmmMachineType *vmm_machine_find(const VmmMachineType *const *reg, const char *name)
{
    for (const VmmMachineType *const *t = reg ? reg : registry; *t; t++) {
        if (g_str_equal((*t)->name, name) || ((*t)->alias && g_str_equal((*t)->alias, name)))
            return *t;
    }
    return NULL;
}

const VmmMachineType *vmm_machine_default(const VmmMachineType *const *reg)
{
    for (const VmmMachineType *const *t = reg ? reg : registry; *t; t++) {
        if ((*t)->is_default)
            return *t;
    }
    return NULL;
}

char *vmm_machine_help(const VmmMachineType *const *reg)
{
    /* QEMU 7.2's hw/core/machine-qmp-cmds.c layout: the alias line first. */
    GString *s = g_string_new("Supported machines are:\n");
    for (const VmmMachineType *const *t = reg ? reg : registry; *t; t++) {
        if ((*t)->alias)
            g_string_append_printf(s, "%-20s %s (alias of %s)\n", (*t)->alias, (*t)->desc,
                                   (*t)->name);
        g_string_append_printf(s, "%-20s %s%s\n", (*t)->name, (*t)->desc,
                               (*t)->is_default ? " (default)" : "");
    }
    return g_string_free(s, FALSE);
}

void vmm_machine_config_init(VmmMachineConfig *m)
{
    memset(m, 0, sizeof(*m));
    m->type = vmm_machine_default(NULL);
    m->accel = g_strdup("kvm");
    m->kernel_irqchip = VMM_IRQCHIP_ON;
    /* QEMU's defaults: guest memory in core dumps, KSM merging on. */
    m->dump_guest_core = TRUE;
    m->mem_merge = TRUE;
}

void vmm_machine_config_clear(VmmMachineConfig *m)
{
    g_free(m->accel);
    g_free(m->memory_backend);
    memset(m, 0, sizeof(*m));
}

gboolean vmm_machine_set_accel(VmmMachineConfig *m, const char *list, GError **error)
{
    static const char *const known[] = { "kvm", "tcg", "xen", "hvf", "whpx", "nvmm", "hax",
                                         "qtest", NULL };
    g_auto(GStrv) names = g_strsplit(list, ":", -1);
    const char *unsupported = NULL;
    for (char **n = names; *n; n++) {
        if (g_str_equal(*n, "kvm")) {
            g_free(m->accel);
            m->accel = g_strdup("kvm");
            return TRUE;
        }
        if (!g_strv_contains(known, *n)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid accelerator %s", *n);
            return FALSE;
        }
        unsupported = unsupported ? unsupported : *n;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_UNSUPPORTED,
                "accelerator '%s' is not supported: vmmd runs VMs with kvm only",
                unsupported ? unsupported : list);
    return FALSE;
}

static gboolean parse_irqchip(const char *s, VmmIrqchipMode *out, GError **error)
{
    gboolean b;
    if (g_str_equal(s, "split")) {
        *out = VMM_IRQCHIP_SPLIT;
        return TRUE;
    }
    if (!vmm_parse_bool(NULL, NULL, s, &b, NULL)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Parameter 'kernel-irqchip' expects 'on', 'off' or 'split', not '%s'", s);
        return FALSE;
    }
    *out = b ? VMM_IRQCHIP_ON : VMM_IRQCHIP_OFF;
    return TRUE;
}

static gboolean set_machine_type(VmmMachineConfig *m, const VmmMachineType *const *reg,
                                 const char *name, GError **error)
{
    const VmmMachineType *t = vmm_machine_find(reg, name);
    if (!t) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "unsupported machine type '%s'; use -machine help to list supported machines",
                    name);
        return FALSE;
    }
    m->type = t;
    return TRUE;
}

static gboolean apply_machine_property(VmmMachineConfig *m, const char *key, const char *value,
                                       GError **error)
{
    if (g_str_equal(key, "accel"))
        return vmm_machine_set_accel(m, value, error);
    if (g_str_equal(key, "kernel-irqchip"))
        return parse_irqchip(value, &m->kernel_irqchip, error);
    if (g_str_equal(key, "dump-guest-core"))
        return vmm_parse_bool("machine", key, value, &m->dump_guest_core, error);
    if (g_str_equal(key, "mem-merge"))
        return vmm_parse_bool("machine", key, value, &m->mem_merge, error);
    if (g_str_equal(key, "memory-backend")) {
        g_free(m->memory_backend);
        m->memory_backend = g_strdup(value);
        return TRUE;
    }
    /* QEMU names the machine's QOM class: TYPE-machine. */
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Property '%s-machine.%s' not found",
                m->type->name, key);
    return FALSE;
}

static const VmmOptSpec machine_spec = { "machine", "type", NULL };

gboolean vmm_machine_config_parse(VmmMachineConfig *m, const VmmMachineType *const *reg,
                                  const char *value, GError **error)
{
    g_autoptr(JsonObject) o = vmm_opts_parse(&machine_spec, value, error);
    if (!o)
        return FALSE;
    /* The type first: property errors name it. */
    if (json_object_has_member(o, "type") &&
        !set_machine_type(m, reg, vmm_opts_get_string(o, "type", ""), error))
        return FALSE;
    g_autoptr(GList) keys = json_object_get_members(o);
    for (GList *k = keys; k; k = k->next) {
        const char *key = k->data;
        if (g_str_equal(key, "type"))
            continue;
        JsonNode *n = json_object_get_member(o, key);
        if (JSON_NODE_TYPE(n) != JSON_NODE_VALUE) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Property '%s-machine.%s' not found",
                        m->type->name, key);
            return FALSE;
        }
        if (!apply_machine_property(m, key, json_node_get_string(n), error))
            return FALSE;
    }
    return TRUE;
}

GHashTable *vmm_machine_props_new(const VmmMachineType *t)
{
    GHashTable *props = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    for (const char *const *c = t->compat; c && *c; c++) {
        const char *eq = strchr(*c, '=');
        /* The registry is our own data: a malformed entry is a bug, caught by tests. */
        g_return_val_if_fail(eq && memchr(*c, '.', eq - *c), props);
        g_hash_table_replace(props, g_strndup(*c, eq - *c), g_strdup(eq + 1));
    }
    return props;
}

gboolean vmm_machine_props_set(GHashTable *props, const char *driver, const char *property,
                               const char *value)
{
    g_hash_table_replace(props, g_strdup_printf("%s.%s", driver, property), g_strdup(value));
    return TRUE;
}

const char *vmm_machine_props_get(GHashTable *props, const char *driver, const char *property)
{
    g_autofree char *key = g_strdup_printf("%s.%s", driver, property);
    return g_hash_table_lookup(props, key);
}
