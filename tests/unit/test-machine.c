/* The machine-type registry: lookup, -machine help, -machine properties, and
 * compat properties layered under -global. vmmd's sources are not a library
 * yet, so the file under test is included. */
#include "vmmd/machine.c"

#include <glib.h>

static void test_lookup(void)
{
    const VmmMachineType *t = vmm_machine_find(NULL, "microvm");
    g_assert_nonnull(t);
    g_assert_cmpstr(t->name, ==, "microvm-1.0");
    g_assert_true(vmm_machine_find(NULL, "microvm-1.0") == t);
    g_assert_true(vmm_machine_default(NULL) == t);
    g_assert_null(vmm_machine_find(NULL, "pc"));
    g_assert_null(vmm_machine_find(NULL, "microvm-"));
    g_assert_false(t->has_pci);
    g_assert_cmpuint(t->serial_8250, ==, 1);
    g_assert_cmpuint(t->virtio_mmio_slots, >, 0);
}

/* Every entry of the real registry is well formed: unique names and aliases,
 * one default, compat entries in driver.property=value form. */
static void test_registry_well_formed(void)
{
    const VmmMachineType *const *reg = vmm_machine_registry();
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    guint defaults = 0;
    for (const VmmMachineType *const *t = reg; *t; t++) {
        g_assert_true(g_hash_table_add(seen, (gpointer)(*t)->name));
        if ((*t)->alias)
            g_assert_true(g_hash_table_add(seen, (gpointer)(*t)->alias));
        g_assert_true(g_str_has_prefix((*t)->name, (*t)->family));
        defaults += (*t)->is_default;
        for (const char *const *c = (*t)->compat; c && *c; c++) {
            const char *eq = strchr(*c, '=');
            g_assert_nonnull(eq);
            g_assert_nonnull(memchr(*c, '.', eq - *c));
        }
    }
    g_assert_cmpuint(defaults, ==, 1);
}

static void test_help(void)
{
    g_autofree char *help = vmm_machine_help(NULL);
    g_assert_cmpstr(help, ==,
                    "Supported machines are:\n"
                    "microvm              microvm (i386) (alias of microvm-1.0)\n"
                    "microvm-1.0          microvm (i386) (default)\n");
}

static void test_properties(void)
{
    VmmMachineConfig m;
    vmm_machine_config_init(&m);
    g_assert_cmpstr(m.accel, ==, "kvm");
    g_assert_cmpint(m.kernel_irqchip, ==, VMM_IRQCHIP_ON);
    g_assert_true(m.dump_guest_core);
    g_assert_true(m.mem_merge);
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_machine_config_parse(&m, NULL,
                                           "microvm,accel=tcg:kvm,kernel-irqchip=split,"
                                           "dump-guest-core=off,mem-merge=off,memory-backend=ram0",
                                           &err));
    g_assert_no_error(err);
    g_assert_cmpstr(m.type->name, ==, "microvm-1.0");
    g_assert_cmpstr(m.accel, ==, "kvm");
    g_assert_cmpint(m.kernel_irqchip, ==, VMM_IRQCHIP_SPLIT);
    g_assert_false(m.dump_guest_core);
    g_assert_false(m.mem_merge);
    g_assert_cmpstr(m.memory_backend, ==, "ram0");
    /* A later -machine adds to the earlier one. */
    g_assert_true(vmm_machine_config_parse(&m, NULL, "kernel-irqchip=off", &err));
    g_assert_cmpint(m.kernel_irqchip, ==, VMM_IRQCHIP_OFF);
    g_assert_cmpstr(m.memory_backend, ==, "ram0");
    g_assert_true(vmm_machine_config_parse(&m, NULL, "type=microvm-1.0", &err));
    vmm_machine_config_clear(&m);
}

static void expect_machine_error(const char *value, const char *message)
{
    VmmMachineConfig m;
    vmm_machine_config_init(&m);
    g_autoptr(GError) err = NULL;
    g_assert_false(vmm_machine_config_parse(&m, NULL, value, &err));
    g_assert_nonnull(err);
    if (!strstr(err->message, message))
        g_error("-machine %s: got '%s', expected '%s'", value, err->message, message);
    vmm_machine_config_clear(&m);
}

static void test_errors(void)
{
    expect_machine_error("microvm,foo=bar", "Property 'microvm-1.0-machine.foo' not found");
    expect_machine_error("microvm,a.b=c", "Property 'microvm-1.0-machine.a' not found");
    expect_machine_error("pc", "unsupported machine type 'pc'");
    expect_machine_error("microvm,accel=tcg", "'tcg' is not supported");
    expect_machine_error("microvm,accel=xen:tcg", "'xen' is not supported");
    expect_machine_error("microvm,accel=warp", "invalid accelerator warp");
    expect_machine_error("microvm,kernel-irqchip=maybe", "'kernel-irqchip' expects 'on', 'off' or 'split'");
    expect_machine_error("microvm,dump-guest-core=maybe", "dump-guest-core");
    expect_machine_error("microvm,mem-merge=2", "mem-merge");
    expect_machine_error("microvm,accel=kvm,accel=kvm", "accel");
}

/* A test-only registry: what adding microvm-1.1 that changes one device
 * property looks like. The old version carries the old value as compat. */
static const char *const test_microvm_1_0_compat[] = {
    "virtio-blk-device.num-queues=1",
    NULL,
};
static const VmmMachineType test_microvm_1_1 = {
    "microvm-1.1", "microvm", "microvm", "microvm (i386)", TRUE, 1, 8, FALSE, 288, NULL,
};
static const VmmMachineType test_microvm_1_0 = {
    "microvm-1.0", NULL, "microvm", "microvm (i386)", FALSE, 1, 8, FALSE, 288,
    test_microvm_1_0_compat,
};
static const VmmMachineType *const test_registry[] = { &test_microvm_1_1, &test_microvm_1_0, NULL };

static void test_new_version_is_data(void)
{
    g_assert_true(vmm_machine_find(test_registry, "microvm") == &test_microvm_1_1);
    g_assert_true(vmm_machine_default(test_registry) == &test_microvm_1_1);
    g_autofree char *help = vmm_machine_help(test_registry);
    g_assert_cmpstr(help, ==,
                    "Supported machines are:\n"
                    "microvm              microvm (i386) (alias of microvm-1.1)\n"
                    "microvm-1.1          microvm (i386) (default)\n"
                    "microvm-1.0          microvm (i386)\n");
    VmmMachineConfig m;
    vmm_machine_config_init(&m);
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_machine_config_parse(&m, test_registry, "microvm-1.0", &err));
    g_assert_true(m.type == &test_microvm_1_0);
    vmm_machine_config_clear(&m);
}

static void test_compat_layers_under_global(void)
{
    /* The old type: its compat value, unless a -global says otherwise. */
    g_autoptr(GHashTable) old = vmm_machine_props_new(&test_microvm_1_0);
    g_assert_cmpstr(vmm_machine_props_get(old, "virtio-blk-device", "num-queues"), ==, "1");
    g_assert_null(vmm_machine_props_get(old, "virtio-blk-device", "serial"));
    /* -global virtio-blk-device.num-queues=4 -global virtio-blk-device.num-queues=2:
     * applied in command-line order on top of the compat list; the last wins. */
    vmm_machine_props_set(old, "virtio-blk-device", "num-queues", "4");
    g_assert_cmpstr(vmm_machine_props_get(old, "virtio-blk-device", "num-queues"), ==, "4");
    vmm_machine_props_set(old, "virtio-blk-device", "num-queues", "2");
    g_assert_cmpstr(vmm_machine_props_get(old, "virtio-blk-device", "num-queues"), ==, "2");
    /* The new type has no compat entry: the device's own default stands. */
    g_autoptr(GHashTable) cur = vmm_machine_props_new(&test_microvm_1_1);
    g_assert_null(vmm_machine_props_get(cur, "virtio-blk-device", "num-queues"));
    g_assert_cmpuint(g_hash_table_size(cur), ==, 0);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/machine/lookup", test_lookup);
    g_test_add_func("/machine/registry-well-formed", test_registry_well_formed);
    g_test_add_func("/machine/help", test_help);
    g_test_add_func("/machine/properties", test_properties);
    g_test_add_func("/machine/errors", test_errors);
    g_test_add_func("/machine/new-version-is-data", test_new_version_is_data);
    g_test_add_func("/machine/compat-layers-under-global", test_compat_layers_under_global);
    return g_test_run();
}
