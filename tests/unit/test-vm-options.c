/* The VM's options (-m, -smp, -cpu, -serial, -object, ...): QEMU's forms,
 * defaults and messages. vmmd's sources are not a library yet, so the files
 * under test are included. */
#include "vmmd/machine.c"
#include "vmmd/drive.c"
#include "vmmd/rng.c"
#include "vmmd/fsdev.c"
#include "vmmd/vm-options.c"

#include <glib.h>
#include <unistd.h>

/* Applies ARGS ("-opt", "value", ..., NULL) and finishes; returns the error. */
static GError *parse_args(VmmVmConfig *vm, const char *const *args)
{
    GError *err = NULL;
    gboolean exit_now = FALSE;
    for (const char *const *a = args; *a; a++) {
        const char *opt = *a + 1;
        g_assert_true(vmm_vm_option_known(opt));
        const char *value = vmm_vm_option_takes_arg(opt) ? *++a : NULL;
        if (!vmm_vm_config_apply(vm, opt, value, &exit_now, &err))
            return err;
        g_assert_false(exit_now);
    }
    vmm_vm_config_finish(vm, &err);
    return err;
}

static void expect_ok(VmmVmConfig *vm, const char *const *args)
{
    vmm_vm_config_init(vm);
    g_autoptr(GError) err = parse_args(vm, args);
    g_assert_no_error(err);
}

#define EXPECT_ERROR(message, ...) expect_error(message, (const char *const[]){ __VA_ARGS__, NULL })

static void expect_error(const char *message, const char *const *args)
{
    VmmVmConfig vm;
    vmm_vm_config_init(&vm);
    g_autoptr(GError) err = parse_args(&vm, args);
    if (!err)
        g_error("%s %s: accepted, expected '%s'", args[0], args[1] ? args[1] : "", message);
    if (!strstr(err->message, message))
        g_error("%s %s: got '%s', expected '%s'", args[0], args[1] ? args[1] : "", err->message,
                message);
    vmm_vm_config_clear(&vm);
}

static void test_defaults(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ NULL });
    g_assert_cmpuint(vm.ram_size, ==, 128 * MiB);
    g_assert_cmpuint(vm.maxmem, ==, 128 * MiB);
    g_assert_cmpuint(vm.cpus, ==, 1);
    g_assert_cmpuint(vm.max_cpus, ==, 1);
    g_assert_cmpuint(vm.sockets * vm.dies * vm.cores * vm.threads, ==, 1);
    g_assert_cmpstr(vm.cpu_model, ==, "host");
    g_assert_cmpstr(vm.machine.type->name, ==, "microvm-1.0");
    g_assert_cmpstr(vm.machine.accel, ==, "kvm");
    g_assert_false(vm.nographic || vm.no_reboot || vm.no_shutdown || vm.start_paused);
    g_assert_cmpuint(vm.serials->len, ==, 0);
    vmm_vm_config_clear(&vm);
}

static void test_memory(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-m", "512", NULL });
    g_assert_cmpuint(vm.ram_size, ==, 512 * MiB); /* suffix-less: MiB */
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-m", "1G", NULL });
    g_assert_cmpuint(vm.ram_size, ==, 1024 * MiB);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-m", "size=256M,slots=2,maxmem=1G", NULL });
    g_assert_cmpuint(vm.ram_size, ==, 256 * MiB);
    g_assert_cmpuint(vm.maxmem, ==, 1024 * MiB);
    g_assert_cmpuint(vm.mem_slots, ==, 2);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-m", "0", NULL });
    g_assert_cmpuint(vm.ram_size, ==, 128 * MiB);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-m", "1001k", NULL });
    g_assert_cmpuint(vm.ram_size, ==, 126 * 8192); /* rounded up to 8 KiB */
    vmm_vm_config_clear(&vm);

    EXPECT_ERROR("Parameter 'size' expects a non-negative number", "-m", "foo");
    EXPECT_ERROR("Parameter 'size' expects a non-negative number", "-m", "1Q");
    EXPECT_ERROR("Parameter 'size' expects a non-negative number", "-m", "size=");
    EXPECT_ERROR("too large", "-m", "99999999999999");
    EXPECT_ERROR("slots specified but no max-size", "-m", "1G,slots=2");
    EXPECT_ERROR("must be at least the initial memory size (0x40000000)", "-m", "1G,maxmem=512M");
    EXPECT_ERROR("unknown key 'colour'", "-m", "1G,colour=red");
}

static void test_smp(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-smp", "4", NULL });
    /* Cores are preferred over sockets since QEMU 6.2. */
    g_assert_cmpuint(vm.cpus, ==, 4);
    g_assert_cmpuint(vm.sockets, ==, 1);
    g_assert_cmpuint(vm.cores, ==, 4);
    g_assert_cmpuint(vm.threads, ==, 1);
    g_assert_cmpuint(vm.max_cpus, ==, 4);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-smp", "2,maxcpus=8,sockets=2,threads=2", NULL });
    g_assert_cmpuint(vm.cpus, ==, 2);
    g_assert_cmpuint(vm.cores, ==, 2);
    g_assert_cmpuint(vm.max_cpus, ==, 8);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-smp", "sockets=2,cores=3", NULL });
    g_assert_cmpuint(vm.cpus, ==, 6);
    g_assert_cmpuint(vm.max_cpus, ==, 6);
    vmm_vm_config_clear(&vm);

    EXPECT_ERROR("sockets (3) * dies (1) * cores (1) * threads (1) != maxcpus (4)", "-smp", "4,sockets=3");
    EXPECT_ERROR("maxcpus must be equal to or greater than smp: sockets (1) * dies (1) * cores (2) * "
                 "threads (1) == maxcpus (2) < smp_cpus (4)", "-smp", "4,maxcpus=2");
    EXPECT_ERROR("!= maxcpus (2)", "-smp", "2,sockets=1,cores=1,threads=1");
    EXPECT_ERROR("The max CPUs supported by machine 'microvm-1.0' is 288", "-smp", "300");
    EXPECT_ERROR("must be greater than zero", "-smp", "0");
    EXPECT_ERROR("must be greater than zero", "-smp", "2,cores=0");
    EXPECT_ERROR("cpus", "-smp", "foo");
    EXPECT_ERROR("unknown key 'books'", "-smp", "2,books=1");
}

static void test_cpu(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-cpu", "host,-x2apic,+invtsc,pmu=off,kvm-pv-eoi=on", NULL });
    g_assert_cmpuint(vm.cpu_features->len, ==, 4);
    g_assert_cmpstr(vm.cpu_features->pdata[0], ==, "-x2apic");
    g_assert_cmpstr(vm.cpu_features->pdata[1], ==, "+invtsc");
    g_assert_cmpstr(vm.cpu_features->pdata[2], ==, "-pmu");
    g_assert_cmpstr(vm.cpu_features->pdata[3], ==, "+kvm-pv-eoi");
    vmm_vm_config_clear(&vm);
    EXPECT_ERROR("unable to find CPU model 'EPYC'", "-cpu", "EPYC");
    EXPECT_ERROR("expected +FEATURE", "-cpu", "host,x2apic=maybe");
    EXPECT_ERROR("expected +FEATURE", "-cpu", "host,+");
}

static void test_boot_and_flags(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-kernel", "/k", "-initrd", "/i", "-append", "console=ttyS0 a=b,c",
                                          "-nographic", "-no-reboot", "-no-shutdown", "-S",
                                          "-enable-kvm", "-accel", "kvm", NULL });
    g_assert_cmpstr(vm.kernel, ==, "/k");
    g_assert_cmpstr(vm.initrd, ==, "/i");
    g_assert_cmpstr(vm.append, ==, "console=ttyS0 a=b,c");
    g_assert_true(vm.nographic && vm.no_reboot && vm.no_shutdown && vm.start_paused);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-accel", "kvm,kernel-irqchip=split", NULL });
    g_assert_cmpint(vm.machine.kernel_irqchip, ==, VMM_IRQCHIP_SPLIT);
    vmm_vm_config_clear(&vm);
    EXPECT_ERROR("'tcg' is not supported", "-accel", "tcg");
    EXPECT_ERROR("invalid accelerator foo", "-accel", "foo");
    EXPECT_ERROR("Property 'microvm-1.0-machine.foo' not found", "-M", "microvm,foo=on");
    EXPECT_ERROR("unsupported machine type 'q35'", "-machine", "q35");
}

static void test_serial(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-serial", "stdio", "-serial", "null", "-serial", "none",
                                          "-serial", "file:/tmp/x,y", "-serial",
                                          "unix:/tmp/s.sock,server=on,wait=off", NULL });
    g_assert_cmpuint(vm.serials->len, ==, 4);
    VmmSerialConfig *s = vm.serials->pdata[0];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_STDIO);
    s = vm.serials->pdata[1];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_NULL);
    s = vm.serials->pdata[2];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_FILE);
    g_assert_cmpstr(s->path, ==, "/tmp/x,y");
    s = vm.serials->pdata[3];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_UNIX);
    g_assert_cmpstr(s->path, ==, "/tmp/s.sock");
    g_assert_true(s->server);
    g_assert_false(s->wait);
    vmm_vm_config_clear(&vm);
    EXPECT_ERROR("'foo:bar' is not a valid char driver", "-serial", "foo:bar");
    EXPECT_ERROR("'file:' is not a valid char driver", "-serial", "file:");
    EXPECT_ERROR("unknown key 'bogus'", "-serial", "unix:/tmp/x,server=on,bogus=1");
    EXPECT_ERROR("server", "-serial", "unix:/tmp/x,server=maybe");
}

static void test_chardev(void)
{
    VmmVmConfig vm;
    /* -serial chardev: may come before its -chardev, as in QEMU. */
    expect_ok(&vm, (const char *const[]){ "-serial", "chardev:c1", "-serial", "chardev:c0",
                                          "-chardev", "socket,id=c0,path=/tmp/c.sock,server=on,wait=off",
                                          "-chardev", "file,id=c1,path=/tmp/log,append=on",
                                          "-chardev", "stdio,id=c2", "-chardev", "null,id=c3", NULL });
    g_assert_cmpuint(vm.chardevs->len, ==, 4);
    VmmSerialConfig *s = vm.serials->pdata[0];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_FILE);
    g_assert_cmpstr(s->path, ==, "/tmp/log");
    g_assert_true(s->append);
    s = vm.serials->pdata[1];
    g_assert_cmpint(s->kind, ==, VMM_SERIAL_UNIX);
    g_assert_cmpstr(s->path, ==, "/tmp/c.sock");
    g_assert_true(s->server);
    g_assert_false(s->wait);
    vmm_vm_config_clear(&vm);
    /* QEMU's default for a server socket is to wait for its client. */
    expect_ok(&vm, (const char *const[]){ "-chardev", "socket,id=x,path=/tmp/c.sock,server=on",
                                          "-serial", "chardev:x", NULL });
    g_assert_true(((VmmSerialConfig *)vm.serials->pdata[0])->wait);
    vmm_vm_config_clear(&vm);
    EXPECT_ERROR("chardev 'nope' not found", "-serial", "chardev:nope");
    EXPECT_ERROR("Parameter 'id' is missing", "-chardev", "null");
    EXPECT_ERROR("duplicate", "-chardev", "null,id=a", "-chardev", "stdio,id=a");
    EXPECT_ERROR("'vc' is not a valid char driver name", "-chardev", "vc,id=a");
    EXPECT_ERROR("path", "-chardev", "socket,id=a,host=localhost,port=4444");
    EXPECT_ERROR("Parameter 'path' is missing", "-chardev", "file,id=a");
}

static void test_objects(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){
        "-object", "memory-backend-memfd,id=ram0,size=256M,prealloc=on",
        "-object", "memory-backend-file,id=ram1,size=1G,mem-path=/dev/shm/x,share=on,discard-data=on",
        "-object", "rng-random,id=rng0",
        "-object", "rng-random,id=rng1,filename=/dev/random",
        "-object", "rng-builtin,id=rng2",
        "-machine", "memory-backend=ram0", "-m", "256M", NULL });
    const VmmObjectConfig *o = vmm_vm_config_find_object(&vm, "ram0");
    g_assert_nonnull(o);
    g_assert_cmpint(o->kind, ==, VMM_OBJECT_MEMORY_MEMFD);
    g_assert_cmpuint(o->size, ==, 256 * MiB);
    g_assert_true(o->share); /* a memfd is shared */
    g_assert_true(o->prealloc);
    g_assert_false(o->discard_data);
    o = vmm_vm_config_find_object(&vm, "ram1");
    g_assert_cmpint(o->kind, ==, VMM_OBJECT_MEMORY_FILE);
    g_assert_cmpstr(o->mem_path, ==, "/dev/shm/x");
    g_assert_true(o->share && o->discard_data);
    g_assert_false(o->prealloc);
    o = vmm_vm_config_find_object(&vm, "rng0");
    g_assert_cmpstr(o->filename, ==, "/dev/urandom");
    o = vmm_vm_config_find_object(&vm, "rng1");
    g_assert_cmpstr(o->filename, ==, "/dev/random");
    o = vmm_vm_config_find_object(&vm, "rng2");
    g_assert_cmpint(o->kind, ==, VMM_OBJECT_RNG_BUILTIN);
    g_assert_null(vmm_vm_config_find_object(&vm, "nope"));
    g_assert_cmpstr(vm.machine.memory_backend, ==, "ram0");
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, (const char *const[]){ "-object", "memory-backend-file,id=f,size=1M,mem-path=/x", NULL });
    g_assert_false(vmm_vm_config_find_object(&vm, "f")->share); /* a file is private by default */
    vmm_vm_config_clear(&vm);

    EXPECT_ERROR("Duplicate ID 'm' for object", "-object", "memory-backend-memfd,id=m,size=1G",
                 "-object", "memory-backend-memfd,id=m,size=1G");
    EXPECT_ERROR("-object rng-builtin,id=r: Duplicate ID 'r' for object", "-object", "rng-random,id=r",
                 "-object", "rng-builtin,id=r");
    EXPECT_ERROR("Parameter 'size' is missing", "-object", "memory-backend-memfd,id=m");
    EXPECT_ERROR("Parameter 'id' is missing", "-object", "rng-builtin");
    EXPECT_ERROR("Parameter 'mem-path' is missing", "-object", "memory-backend-file,id=m,size=1M");
    EXPECT_ERROR("Invalid parameter 'mem-path'", "-object", "memory-backend-memfd,id=m,size=1M,mem-path=/x");
    EXPECT_ERROR("Invalid parameter 'foo'", "-object", "rng-random,id=r,foo=1");
    EXPECT_ERROR("Parameter 'qom-type' does not accept value 'foo'", "-object", "foo,id=x");
    EXPECT_ERROR("size 0", "-object", "memory-backend-memfd,id=m,size=0");
    EXPECT_ERROR("size", "-object", "memory-backend-memfd,id=m,size=lots");
    EXPECT_ERROR("share", "-object", "memory-backend-memfd,id=m,size=1M,share=perhaps");
    EXPECT_ERROR("Memory backend 'nope' not found", "-M", "microvm,memory-backend=nope");
    EXPECT_ERROR("Memory backend 'r' not found", "-object", "rng-builtin,id=r", "-M", "memory-backend=r");
}

static void test_help_exits(void)
{
    static const char *const opts[][2] = {
        { "machine", "help" }, { "M", "?" }, { "m", "help" }, { "smp", "help" },
        { "cpu", "help" }, { "accel", "help" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(opts); i++) {
        VmmVmConfig vm;
        vmm_vm_config_init(&vm);
        gboolean exit_now = FALSE;
        g_autoptr(GError) err = NULL;
        /* The help text goes to stdout; only the outcome is checked here. */
        int saved = dup(1);
        FILE *null = freopen("/dev/null", "w", stdout);
        g_assert_nonnull(null);
        g_assert_true(vmm_vm_config_apply(&vm, opts[i][0], opts[i][1], &exit_now, &err));
        fflush(stdout);
        dup2(saved, 1);
        close(saved);
        g_assert_no_error(err);
        g_assert_true(exit_now);
        vmm_vm_config_clear(&vm);
    }
}

static void test_rng_device(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, (const char *const[]){ "-device", "virtio-rng-device", NULL });
    g_assert_cmpuint(vm.rng_devices->len, ==, 1);
    VmmRngDevice *r = vm.rng_devices->pdata[0];
    g_assert_cmpstr(r->id, ==, "rng0");
    g_assert_null(r->rng);
    g_assert_cmpuint(r->max_bytes, ==, (guint64)G_MAXINT64);
    g_assert_cmpuint(r->period_ms, ==, 65536);
    vmm_vm_config_clear(&vm);

    /* The object may come after the device, as QEMU creates objects first. */
    expect_ok(&vm, (const char *const[]){ "-device", "virtio-rng-device,rng=r0,id=hw,max-bytes=1024,period=500",
                                          "-object", "rng-random,id=r0,filename=/dev/random", NULL });
    r = vm.rng_devices->pdata[0];
    g_assert_cmpstr(r->id, ==, "hw");
    g_assert_cmpstr(r->rng, ==, "r0");
    g_assert_cmpuint(r->max_bytes, ==, 1024);
    g_assert_cmpuint(r->period_ms, ==, 500);
    g_assert_cmpstr(vmm_vm_config_find_object(&vm, "r0")->filename, ==, "/dev/random");
    vmm_vm_config_clear(&vm);

    expect_ok(&vm, (const char *const[]){ "-object", "rng-random,id=r0", "-device", "virtio-rng-device,rng=r0", NULL });
    g_assert_cmpstr(vmm_vm_config_find_object(&vm, "r0")->filename, ==, "/dev/urandom");
    vmm_vm_config_clear(&vm);

    /* QEMU 7.2's messages. */
    EXPECT_ERROR("Device 'nope' not found", "-device", "virtio-rng-device,rng=nope");
    EXPECT_ERROR("Invalid parameter type for 'rng', expected: rng-backend",
                 "-object", "memory-backend-memfd,id=m,size=1M", "-device", "virtio-rng-device,rng=m");
    EXPECT_ERROR("Property 'virtio-rng-device.foo' not found", "-device", "virtio-rng-device,foo=1");
    EXPECT_ERROR("'period' parameter expects a positive integer", "-device", "virtio-rng-device,period=0");
    EXPECT_ERROR("Parameter 'period' expects uint32_t", "-device", "virtio-rng-device,period=-1");
    EXPECT_ERROR("Parameter 'period' expects uint32_t", "-device", "virtio-rng-device,period=4294967296");
    EXPECT_ERROR("Parameter 'period' expects integer", "-device", "virtio-rng-device,period=1k");
    EXPECT_ERROR("'max-bytes' parameter must be non-negative, and less than 2^63",
                 "-device", "virtio-rng-device,max-bytes=-1");
    EXPECT_ERROR("'max-bytes' parameter must be non-negative, and less than 2^63",
                 "-device", "virtio-rng-device,max-bytes=9223372036854775808");
    EXPECT_ERROR("Parameter 'max-bytes' expects integer", "-device", "virtio-rng-device,max-bytes=1k");
    EXPECT_ERROR("'virtio-rnd-device' is not a valid device model name", "-device", "virtio-rnd-device");
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/vm-options/defaults", test_defaults);
    g_test_add_func("/vm-options/memory", test_memory);
    g_test_add_func("/vm-options/smp", test_smp);
    g_test_add_func("/vm-options/cpu", test_cpu);
    g_test_add_func("/vm-options/boot-and-flags", test_boot_and_flags);
    g_test_add_func("/vm-options/serial", test_serial);
    g_test_add_func("/vm-options/chardev", test_chardev);
    g_test_add_func("/vm-options/objects", test_objects);
    g_test_add_func("/vm-options/help-exits", test_help_exits);
    g_test_add_func("/vm-options/rng-device", test_rng_device);
    return g_test_run();
}
