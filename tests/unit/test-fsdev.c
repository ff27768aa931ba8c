/* -fsdev, -virtfs and -device virtio-9p-device: QEMU 7.2's syntax, defaults
 * and messages (each expected text below was produced by
 * qemu-system-x86_64 -M microvm with the same option), and vmmd's own rules
 * where it differs (socket=/sock_fd= with the local driver, modes above
 * 07777, writeout values). vmmd's sources are not a library yet, so the
 * files under test are included. */
#include "vmmd/machine.c"
#include "vmmd/drive.c"
#include "vmmd/rng.c"
#include "vmmd/fsdev.c"
#include "vmmd/vm-options.c"

#include <glib.h>

/* Applies ARGS ("-opt", "value", ..., NULL) to VM and finishes; returns the error. */
static GError *apply_args(VmmVmConfig *vm, const char *const *args)
{
    GError *err = NULL;
    gboolean exit_now = FALSE;
    vmm_vm_config_init(vm);
    for (const char *const *a = args; *a; a++) {
        const char *opt = *a + 1;
        g_assert_true(vmm_vm_option_known(opt));
        const char *value = vmm_vm_option_takes_arg(opt) ? *++a : NULL;
        if (!vmm_vm_config_apply(vm, opt, value, &exit_now, &err))
            return err;
    }
    vmm_vm_config_finish(vm, &err);
    return err;
}

/* ARGS must fail with exactly MESSAGE. */
static void expect_error(const char *const *args, const char *message)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, args);
    g_assert_nonnull(err);
    g_assert_cmpstr(err->message, ==, message);
    vmm_vm_config_clear(&vm);
}

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })
#define FSDEV_OK "local,id=f1,path=/srv,security_model=none"

static void test_fsdev_full(void)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-fsdev",
        "local,id=share,path=/srv/a,,b,security_model=mapped,readonly=on,writeout=immediate,"
        "fmode=0644,dmode=0x1ed,multidevs=remap,throttling.bps-total=1048576,throttling.iops-read=100,"
        "throttling.iops-read-max=200,throttling.iops-size=4096"));
    g_assert_no_error(err);
    g_assert_cmpuint(vm.fsdevs.fsdevs->len, ==, 1);
    VmmFsdev *f = vm.fsdevs.fsdevs->pdata[0];
    g_assert_cmpstr(f->id, ==, "share");
    g_assert_cmpstr(f->driver, ==, "local");
    g_assert_cmpstr(f->path, ==, "/srv/a,b");
    g_assert_cmpstr(f->security_model, ==, "mapped-xattr");   /* QEMU's alias */
    g_assert_true(f->readonly);
    g_assert_true(f->writeout_immediate);
    g_assert_true(f->fmode_set && f->dmode_set);
    g_assert_cmpuint(f->fmode, ==, 0644);
    g_assert_cmpuint(f->dmode, ==, 0755);
    g_assert_cmpstr(f->multidevs, ==, "remap");
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_BPS_TOTAL], ==, 1048576);
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_IOPS_READ], ==, 100);
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_IOPS_READ_MAX], ==, 200);
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_IOPS_SIZE], ==, 4096);
    g_assert_false(vmm_fsdev_is_external(f));
    g_assert_false(f->in_use);   /* no device: QEMU accepts an unused fsdev */
    vmm_vm_config_clear(&vm);
}

static void test_fsdev_defaults(void)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-fsdev", "local,id=f1,path=/srv,security_model=mapped-file"));
    g_assert_no_error(err);
    VmmFsdev *f = vm.fsdevs.fsdevs->pdata[0];
    g_assert_false(f->readonly);
    g_assert_false(f->writeout_immediate);
    g_assert_false(f->fmode_set);
    g_assert_cmpuint(f->fmode, ==, 0600);   /* QEMU's SM_LOCAL_MODE_BITS */
    g_assert_cmpuint(f->dmode, ==, 0700);
    g_assert_cmpint(f->sock_fd, ==, -1);
    vmm_vm_config_clear(&vm);
    /* QemuOpts' number syntax: no leading 0, decimal. */
    err = apply_args(&vm, ARGS("-fsdev", "local,id=f1,path=/srv,security_model=mapped,fmode=420"));
    g_assert_no_error(err);
    g_assert_cmpuint(((VmmFsdev *)vm.fsdevs.fsdevs->pdata[0])->fmode, ==, 0644);
    vmm_vm_config_clear(&vm);
}

static void test_fsdev_errors(void)
{
    static const char sm_hint[] = "Valid options are: security_model=[passthrough|mapped-xattr|mapped-file|none]";
    g_autofree char *no_sm = g_strdup_printf("-fsdev local,id=f1,path=/tmp/q9: security_model property not set\n%s",
                                             sm_hint);
    expect_error(ARGS("-fsdev", "local,id=f1,path=/tmp/q9"), no_sm);
    g_autofree char *bad_sm = g_strdup_printf("-fsdev local,id=f1,path=/tmp/q9,security_model=bogus: invalid "
                                              "security_model property 'bogus'\n%s", sm_hint);
    expect_error(ARGS("-fsdev", "local,id=f1,path=/tmp/q9,security_model=bogus"), bad_sm);
    expect_error(ARGS("-fsdev", "bogus,id=f1,path=/tmp/q9,security_model=none"),
                 "-fsdev bogus,id=f1,path=/tmp/q9,security_model=none: fsdev: fsdriver bogus not found");
    expect_error(ARGS("-fsdev", "local,path=/tmp/q9,security_model=none"),
                 "-fsdev local,path=/tmp/q9,security_model=none: fsdev: No id specified");
    expect_error(ARGS("-fsdev", "id=f1,path=/tmp/q9,security_model=none"),
                 "-fsdev id=f1,path=/tmp/q9,security_model=none: fsdev: No fsdriver specified");
    expect_error(ARGS("-fsdev", "local,id=f1,security_model=none"),
                 "-fsdev local,id=f1,security_model=none: path property not set");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-fsdev", FSDEV_OK),
                 "-fsdev " FSDEV_OK ": Duplicate ID 'f1' for fsdev");
    expect_error(ARGS("-fsdev", "local,id=1f,path=/tmp/q9,security_model=none"),
                 "-fsdev local,id=1f,path=/tmp/q9,security_model=none: Parameter 'id' expects an identifier\n"
                 "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    expect_error(ARGS("-fsdev", FSDEV_OK ",fmode=0644"),
                 "-fsdev " FSDEV_OK ",fmode=0644: fmode is only valid for mapped security modes");
    expect_error(ARGS("-fsdev", "local,id=f1,path=/tmp/q9,security_model=passthrough,dmode=0700"),
                 "-fsdev local,id=f1,path=/tmp/q9,security_model=passthrough,dmode=0700: dmode is only "
                 "valid for mapped security modes");
    expect_error(ARGS("-fsdev", "local,id=f1,path=/tmp/q9,security_model=mapped,fmode=abc"),
                 "-fsdev local,id=f1,path=/tmp/q9,security_model=mapped,fmode=abc: Parameter 'fmode' expects a number");
    expect_error(ARGS("-fsdev", FSDEV_OK ",readonly=foo"),
                 "-fsdev " FSDEV_OK ",readonly=foo: Parameter 'readonly' expects 'on' or 'off'");
    expect_error(ARGS("-fsdev", FSDEV_OK ",bogus=1"), "-fsdev " FSDEV_OK ",bogus=1: Invalid parameter 'bogus'");
    expect_error(ARGS("-fsdev", FSDEV_OK ",multidevs=foo"),
                 "-fsdev " FSDEV_OK ",multidevs=foo: invalid multidevs property 'foo'\n"
                 "Valid options are: multidevs=[remap|forbid|warn]");
    expect_error(ARGS("-fsdev", FSDEV_OK ",throttling.bps-total=abc"),
                 "-fsdev " FSDEV_OK ",throttling.bps-total=abc: Parameter 'throttling.bps-total' expects a number");
}

/* vmmd's own rules: modes are modes, writeout has one value. */
static void test_fsdev_vmmd_rules(void)
{
    expect_error(ARGS("-fsdev", "local,id=f1,path=/p,security_model=mapped,fmode=99999"),
                 "-fsdev local,id=f1,path=/p,security_model=mapped,fmode=99999: fmode=99999: a file mode is "
                 "at most 07777 (write it in octal with a leading 0, e.g. 0644)");
    expect_error(ARGS("-fsdev", FSDEV_OK ",writeout=foo"),
                 "-fsdev " FSDEV_OK ",writeout=foo: writeout=foo: the only valid value is 'immediate'");
    expect_error(ARGS("-fsdev", FSDEV_OK ",throttling.bps-total-max-length=2"),
                 "-fsdev " FSDEV_OK ",throttling.bps-total-max-length=2: 'throttling.bps-total-max-length' is "
                 "not supported: fsd's burst lasts one second (QEMU's default)");
}

static void test_fsdev_throttling(void)
{
    static const char prefix[] = "invalid throttle configuration: ";
    struct {
        const char *keys, *why;
    } cases[] = {
        { "throttling.bps-total=10,throttling.bps-read=5",
          "bps/iops/max total values and read/write values cannot be used at the same time" },
        { "throttling.iops-total-max=10,throttling.iops-write-max=5",
          "bps/iops/max total values and read/write values cannot be used at the same time" },
        { "throttling.bps-total-max=10", "bps_max/iops_max require corresponding bps/iops values" },
        { "throttling.bps-total=10,throttling.bps-total-max=5", "bps_max/iops_max cannot be lower than bps/iops" },
        { "throttling.iops-size=10", "iops size requires an iops value to be set" },
        { "throttling.bps-read=1000000000000001", "bps/iops/max values must be within [0, 1000000000000000]" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *value = g_strdup_printf(FSDEV_OK ",%s", cases[i].keys);
        g_autofree char *msg = g_strdup_printf("-fsdev %s: %s%s", value, prefix, cases[i].why);
        expect_error(ARGS("-fsdev", value), msg);
    }
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-fsdev", FSDEV_OK ",throttling.bps-read=10,throttling.bps-write=20,"
                                                  "throttling.bps-write-max=40,throttling.iops-total=5"));
    g_assert_no_error(err);
    VmmFsdev *f = vm.fsdevs.fsdevs->pdata[0];
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_BPS_WRITE_MAX], ==, 40);
    g_assert_cmpuint(f->throttle[VMM_FSDEV_THR_IOPS_TOTAL], ==, 5);
    g_assert_cmpstr(vmm_fsdev_throttle_key_name(VMM_FSDEV_THR_IOPS_SIZE), ==, "iops-size");
    vmm_vm_config_clear(&vm);
}

/* An fsd that runs already: socket=PATH or sock_fd=N, with local (vmmd's
 * extension) or QEMU's proxy spelling. */
static void test_fsdev_external(void)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-fsdev", "local,id=f1,socket=/run/fsd.sock",
                                                  "-fsdev", "proxy,id=f2,sock_fd=7"));
    g_assert_no_error(err);
    VmmFsdev *f1 = vm.fsdevs.fsdevs->pdata[0], *f2 = vm.fsdevs.fsdevs->pdata[1];
    g_assert_cmpstr(f1->socket, ==, "/run/fsd.sock");
    g_assert_null(f1->path);
    g_assert_null(f1->security_model);
    g_assert_true(vmm_fsdev_is_external(f1));
    g_assert_cmpint(f2->sock_fd, ==, 7);
    g_assert_true(vmm_fsdev_is_external(f2));
    vmm_vm_config_clear(&vm);

    /* Export keys are checked but are the running fsd's business (a warning). */
    err = apply_args(&vm, ARGS("-fsdev", "local,id=f1,socket=/s,path=/p,security_model=none"));
    g_assert_no_error(err);
    vmm_vm_config_clear(&vm);
    expect_error(ARGS("-fsdev", "local,id=f1,socket=/s,security_model=bogus"),
                 "-fsdev local,id=f1,socket=/s,security_model=bogus: invalid security_model property 'bogus'\n"
                 "Valid options are: security_model=[passthrough|mapped-xattr|mapped-file|none]");

    expect_error(ARGS("-fsdev", "proxy,id=f1"), "-fsdev proxy,id=f1: both socket and sock_fd properties are missing");
    expect_error(ARGS("-fsdev", "proxy,id=f1,socket=/tmp/x,sock_fd=3"),
                 "-fsdev proxy,id=f1,socket=/tmp/x,sock_fd=3: both socket and sock_fd properties are set");
    expect_error(ARGS("-fsdev", "local,id=f1,socket=/tmp/x,sock_fd=3"),
                 "-fsdev local,id=f1,socket=/tmp/x,sock_fd=3: both socket and sock_fd properties are set");
    expect_error(ARGS("-fsdev", "proxy,id=f1,sock_fd=3,path=/tmp/q9"),
                 "-fsdev proxy,id=f1,sock_fd=3,path=/tmp/q9: 'path' is invalid for fsdriver 'proxy'");
    expect_error(ARGS("-fsdev", "proxy,id=f1,sock_fd=3,security_model=none"),
                 "-fsdev proxy,id=f1,sock_fd=3,security_model=none: 'security_model' is invalid for fsdriver 'proxy'");
    expect_error(ARGS("-fsdev", "proxy,id=f1,sock_fd=abc"),
                 "-fsdev proxy,id=f1,sock_fd=abc: Parameter 'sock_fd' expects a number");
}

static void test_fsdev_short_bool(void)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-fsdev", FSDEV_OK ",readonly"));
    g_assert_no_error(err);
    g_assert_true(((VmmFsdev *)vm.fsdevs.fsdevs->pdata[0])->readonly);
    vmm_vm_config_clear(&vm);
    /* Later keys win, as in QemuOpts. */
    err = apply_args(&vm, ARGS("-fsdev", FSDEV_OK ",readonly=on,readonly=off"));
    g_assert_no_error(err);
    g_assert_false(((VmmFsdev *)vm.fsdevs.fsdevs->pdata[0])->readonly);
    vmm_vm_config_clear(&vm);
}

static void test_device(void)
{
    VmmVmConfig vm;
    /* The device may come before its fsdev: devices are realized last. */
    g_autoptr(GError) err = apply_args(&vm, ARGS("-device", "virtio-9p-device,id=d9,fsdev=f1,mount_tag=hostshare",
                                                  "-fsdev", FSDEV_OK,
                                                  "-device", "driver=virtio-9p-device,fsdev=f1,mount_tag=second"));
    g_assert_no_error(err);
    g_assert_cmpuint(vm.fsdevs.devices->len, ==, 2);
    VmmFsDevice *d0 = vm.fsdevs.devices->pdata[0], *d1 = vm.fsdevs.devices->pdata[1];
    g_assert_cmpstr(d0->id, ==, "d9");
    g_assert_cmpstr(d0->fsdev, ==, "f1");
    g_assert_cmpstr(d0->mount_tag, ==, "hostshare");
    g_assert_cmpuint(d0->index, ==, 0);
    g_assert_null(d1->id);
    g_assert_cmpuint(d1->index, ==, 1);
    g_assert_true(vmm_fsdev_find(&vm.fsdevs, "f1")->in_use);
    vmm_vm_config_clear(&vm);

    /* 31 bytes are fine; an empty tag too (QEMU 7.2 starts with it). */
    err = apply_args(&vm, ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1,mount_tag="
                               "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "-device", "virtio-9p-device,fsdev=f1,mount_tag="));
    g_assert_no_error(err);
    vmm_vm_config_clear(&vm);
}

static void test_device_errors(void)
{
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device"),
                 "-device virtio-9p-device: 9pfs device couldn't find fsdev with the id = NULL");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,mount_tag=t"),
                 "-device virtio-9p-device,mount_tag=t: 9pfs device couldn't find fsdev with the id = NULL");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=nope,mount_tag=t"),
                 "-device virtio-9p-device,fsdev=nope,mount_tag=t: 9pfs device couldn't find fsdev with the id = nope");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1"),
                 "-device virtio-9p-device,fsdev=f1: fsdev with id f1 needs mount_tag arguments");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1,mount_tag=t,bogus=1"),
                 "-device virtio-9p-device,fsdev=f1,mount_tag=t,bogus=1: Property 'virtio-9p-device.bogus' not found");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1,mount_tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
                 "-device virtio-9p-device,fsdev=f1,mount_tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: mount tag "
                 "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' (32 bytes) is longer than maximum (31 bytes)");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1,mount_tag=t,id=9x"),
                 "-device virtio-9p-device,fsdev=f1,mount_tag=t,id=9x: Parameter 'id' expects an identifier\n"
                 "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    expect_error(ARGS("-fsdev", FSDEV_OK, "-device", "virtio-9p-device,fsdev=f1,mount_tag=t,id=d9",
                      "-device", "virtio-9p-device,fsdev=f1,mount_tag=t,id=d9"),
                 "-device virtio-9p-device,fsdev=f1,mount_tag=t,id=d9: Duplicate ID 'd9' for device");
}

static void test_virtfs(void)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, ARGS("-virtfs", "local,path=/srv,mount_tag=hostshare,security_model=mapped-xattr,"
                                                  "fmode=0640,dmode=0750,readonly=on,writeout=immediate",
                                                  "-virtfs", "local,id=other,path=/x,mount_tag=t2,security_model=none"));
    g_assert_no_error(err);
    g_assert_cmpuint(vm.fsdevs.fsdevs->len, ==, 2);
    g_assert_cmpuint(vm.fsdevs.devices->len, ==, 2);
    VmmFsdev *f = vm.fsdevs.fsdevs->pdata[0];
    g_assert_cmpstr(f->id, ==, "hostshare");   /* QEMU: the mount tag without id= */
    g_assert_cmpstr(f->path, ==, "/srv");
    g_assert_cmpuint(f->fmode, ==, 0640);
    g_assert_true(f->readonly && f->writeout_immediate && f->in_use);
    VmmFsDevice *d = vm.fsdevs.devices->pdata[0];
    g_assert_cmpstr(d->fsdev, ==, "hostshare");
    g_assert_cmpstr(d->mount_tag, ==, "hostshare");
    g_assert_null(d->id);
    g_assert_cmpstr(((VmmFsdev *)vm.fsdevs.fsdevs->pdata[1])->id, ==, "other");
    g_assert_cmpstr(((VmmFsDevice *)vm.fsdevs.devices->pdata[1])->fsdev, ==, "other");
    vmm_vm_config_clear(&vm);

    err = apply_args(&vm, ARGS("-virtfs", "proxy,socket=/run/fsd.sock,mount_tag=t"));
    g_assert_no_error(err);
    g_assert_cmpstr(((VmmFsdev *)vm.fsdevs.fsdevs->pdata[0])->socket, ==, "/run/fsd.sock");
    vmm_vm_config_clear(&vm);
}

static void test_virtfs_errors(void)
{
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t: security_model property not set\n"
                 "Valid options are: security_model=[passthrough|mapped-xattr|mapped-file|none]");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,security_model=none"),
                 "-virtfs local,path=/tmp/q9,security_model=none: Usage: -virtfs fsdriver,mount_tag=tag");
    expect_error(ARGS("-virtfs", "path=/tmp/q9,mount_tag=t,security_model=none"),
                 "-virtfs path=/tmp/q9,mount_tag=t,security_model=none: Usage: -virtfs fsdriver,mount_tag=tag");
    expect_error(ARGS("-virtfs", "local,mount_tag=t,security_model=none"),
                 "-virtfs local,mount_tag=t,security_model=none: path property not set");
    expect_error(ARGS("-virtfs", "bogus,path=/tmp/q9,mount_tag=t,security_model=none"),
                 "-virtfs bogus,path=/tmp/q9,mount_tag=t,security_model=none: fsdev: fsdriver bogus not found");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none,bogus=1"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t,security_model=none,bogus=1: Invalid parameter 'bogus'");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none,throttling.bps-total=10"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t,security_model=none,throttling.bps-total=10: Invalid "
                 "parameter 'throttling.bps-total'");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none,fsdev=x"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t,security_model=none,fsdev=x: Invalid parameter 'fsdev'");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none,id=1x"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t,security_model=none,id=1x: Parameter 'id' expects an "
                 "identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none",
                      "-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none"),
                 "-virtfs local,path=/tmp/q9,mount_tag=t,security_model=none: duplicate or invalid fsdev id: t");
    expect_error(ARGS("-virtfs", "local,path=/tmp/q9,mount_tag=t,security_model=none,id=f1", "-fsdev", FSDEV_OK),
                 "-fsdev " FSDEV_OK ": Duplicate ID 'f1' for fsdev");
    expect_error(ARGS("-virtfs", "proxy,mount_tag=t"),
                 "-virtfs proxy,mount_tag=t: both socket and sock_fd properties are missing");
    expect_error(ARGS("-virtfs", "local,path=/p,mount_tag=t,security_model=none,fmode=0600"),
                 "-virtfs local,path=/p,mount_tag=t,security_model=none,fmode=0600: fmode is only valid for mapped "
                 "security modes");
    expect_error(ARGS("-virtfs", "local,path=/p,mount_tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,id=f,security_model=none"),
                 "-virtfs local,path=/p,mount_tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,id=f,security_model=none: mount "
                 "tag 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' (32 bytes) is longer than maximum (31 bytes)");
}

static void test_device_help(void)
{
    g_assert_true(vmm_fsdev_device_is_9p("virtio-9p-device"));
    g_assert_false(vmm_fsdev_device_is_9p("virtio-9p-pci"));
    g_assert_true(vmm_vm_option_takes_arg("fsdev"));
    g_assert_true(vmm_vm_option_takes_arg("virtfs"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    vmm_log_init("test-fsdev");
    g_test_add_func("/fsdev/full", test_fsdev_full);
    g_test_add_func("/fsdev/defaults", test_fsdev_defaults);
    g_test_add_func("/fsdev/errors", test_fsdev_errors);
    g_test_add_func("/fsdev/vmmd-rules", test_fsdev_vmmd_rules);
    g_test_add_func("/fsdev/throttling", test_fsdev_throttling);
    g_test_add_func("/fsdev/external", test_fsdev_external);
    g_test_add_func("/fsdev/short-bool", test_fsdev_short_bool);
    g_test_add_func("/fsdev/device", test_device);
    g_test_add_func("/fsdev/device-errors", test_device_errors);
    g_test_add_func("/fsdev/virtfs", test_virtfs);
    g_test_add_func("/fsdev/virtfs-errors", test_virtfs_errors);
    g_test_add_func("/fsdev/names", test_device_help);
    return g_test_run();
}
