/* -drive, -blockdev, -device virtio-blk-device and -snapshot: QEMU 7.2's
 * syntax, defaults and messages (checked with qemu-system-x86_64 -M microvm),
 * and vmmd's own errors for what the microvm machine cannot have. vmmd's
 * sources are not a library yet, so the files under test are included. */
#include "vmmd/machine.c"
#include "vmmd/drive.c"
#include "vmmd/rng.c"
#include "vmmd/fsdev.c"
#include "vmmd/vm-options.c"
#include "vmmd/drive-files.c"
#include "blockd/block.h"

#include <glib.h>
#include <glib/gstdio.h>
#include <fcntl.h>

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

static void expect_error(const char *const *args, const char *message)
{
    VmmVmConfig vm;
    g_autoptr(GError) err = apply_args(&vm, args);
    if (!err)
        g_error("expected \"%s\", got success", message);
    if (!strstr(err->message, message))
        g_error("expected \"%s\" in \"%s\"", message, err->message);
    vmm_vm_config_clear(&vm);
}

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

static void expect_ok(VmmVmConfig *vm, const char *const *args)
{
    g_autoptr(GError) err = apply_args(vm, args);
    g_assert_no_error(err);
}

static VmmDrive *drive_at(VmmVmConfig *vm, guint i)
{
    g_assert_cmpuint(i, <, vm->drives.drives->len);
    return vm->drives.drives->pdata[i];
}

static VmmBlkDevice *device_at(VmmVmConfig *vm, guint i)
{
    g_assert_cmpuint(i, <, vm->drives.devices->len);
    return vm->drives.devices->pdata[i];
}

static void test_drive_defaults(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, ARGS("-drive", "file=/tmp/a.img,format=raw"));
    VmmDrive *d = drive_at(&vm, 0);
    /* microvm's default interface is none, as in QEMU: no device. */
    g_assert_cmpint(d->iface, ==, VMM_DRIVE_IF_NONE);
    g_assert_cmpstr(d->id, ==, "none00");
    g_assert_cmpstr(d->filename, ==, "/tmp/a.img");
    g_assert_cmpstr(d->format, ==, "raw");
    g_assert_false(d->read_only);
    g_assert_false(d->snapshot);
    g_assert_cmpint(d->werror, ==, VMM_DRIVE_ERROR_ENOSPC);
    g_assert_cmpint(d->rerror, ==, VMM_DRIVE_ERROR_REPORT);
    g_assert_cmpstr(vmm_drive_cache_mode(d), ==, "writeback");
    g_assert_true(vmm_opts_has(d->block_options, "cache.direct"));
    g_assert_false(vmm_opts_get_bool(d->block_options, "cache.direct", TRUE));
    g_assert_cmpuint(vm.drives.devices->len, ==, 0);
    vmm_vm_config_clear(&vm);
}

static void test_drive_virtio(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, ARGS("-drive", "file=/tmp/a.img,if=virtio", "-drive", "file=/tmp/b.qcow2,if=virtio,format=qcow2,readonly=on",
                        "-drive", "file=/tmp/c.img,if=none,format=raw"));
    g_assert_cmpstr(drive_at(&vm, 0)->id, ==, "virtio0");
    g_assert_null(drive_at(&vm, 0)->format); /* probed by vmmd and blockd */
    g_assert_cmpstr(drive_at(&vm, 1)->id, ==, "virtio1");
    g_assert_true(drive_at(&vm, 1)->read_only);
    g_assert_cmpstr(drive_at(&vm, 2)->id, ==, "none00");
    g_assert_cmpuint(vm.drives.devices->len, ==, 2);
    g_assert_cmpstr(device_at(&vm, 0)->drive, ==, "virtio0");
    g_assert_cmpstr(device_at(&vm, 1)->drive, ==, "virtio1");
    g_assert_true(device_at(&vm, 1)->read_only);
    g_assert_cmpuint(device_at(&vm, 1)->index, ==, 1);
    vmm_vm_config_clear(&vm);
}

static void test_drive_keys(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, ARGS("-drive", "file=/tmp/a.qcow2,format=qcow2,if=virtio,id=hd0,cache=none,aio=native,"
                                  "discard=unmap,detect-zeroes=unmap,werror=stop,rerror=ignore,"
                                  "l2-cache-size=1M,file.locking=off"));
    VmmDrive *d = drive_at(&vm, 0);
    g_assert_cmpstr(d->id, ==, "hd0");
    g_assert_cmpstr(vmm_drive_cache_mode(d), ==, "none");
    g_assert_true(vmm_opts_get_bool(d->block_options, "cache.direct", FALSE));
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "discard", NULL), ==, "unmap");
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "detect-zeroes", NULL), ==, "unmap");
    /* Driver options go to blockd untouched; aio to the file child. */
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "l2-cache-size", NULL), ==, "1M");
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "file.locking", NULL), ==, "off");
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "file.aio", NULL), ==, "native");
    g_assert_false(vmm_opts_has(d->block_options, "format"));
    g_assert_false(vmm_opts_has(d->block_options, "werror"));
    VmmBlkDevice *b = device_at(&vm, 0);
    g_assert_cmpint(b->werror, ==, VMM_DRIVE_ERROR_STOP);
    g_assert_cmpint(b->rerror, ==, VMM_DRIVE_ERROR_IGNORE);
    g_assert_true(b->writeback);
    vmm_vm_config_clear(&vm);

    static const struct {
        const char *cache, *mode;
        gboolean wb, direct, no_flush;
    } caches[] = {
        { "writeback", "writeback", TRUE, FALSE, FALSE }, { "none", "none", TRUE, TRUE, FALSE },
        { "off", "none", TRUE, TRUE, FALSE }, { "writethrough", "writethrough", FALSE, FALSE, FALSE },
        { "directsync", "directsync", FALSE, TRUE, FALSE }, { "unsafe", "unsafe", TRUE, FALSE, TRUE },
    };
    for (guint i = 0; i < G_N_ELEMENTS(caches); i++) {
        g_autofree char *v = g_strdup_printf("file=/x,if=virtio,cache=%s", caches[i].cache);
        expect_ok(&vm, ARGS("-drive", v));
        d = drive_at(&vm, 0);
        g_assert_cmpstr(vmm_drive_cache_mode(d), ==, caches[i].mode);
        g_assert_cmpint(d->cache_writeback, ==, caches[i].wb);
        g_assert_cmpint(d->cache_direct, ==, caches[i].direct);
        g_assert_cmpint(d->cache_no_flush, ==, caches[i].no_flush);
        g_assert_cmpint(device_at(&vm, 0)->writeback, ==, caches[i].wb);
        vmm_vm_config_clear(&vm);
    }

    /* media=cdrom: a read-only disk on virtio-blk, as QEMU makes it. */
    expect_ok(&vm, ARGS("-drive", "file=/x.iso,if=virtio,media=cdrom,format=raw"));
    g_assert_true(drive_at(&vm, 0)->read_only);
    vmm_vm_config_clear(&vm);

    /* driver= is format=; file.filename= is file=. */
    expect_ok(&vm, ARGS("-drive", "driver=qcow2,file.filename=/tmp/t.qcow2,file.driver=file,if=virtio"));
    g_assert_cmpstr(drive_at(&vm, 0)->format, ==, "qcow2");
    g_assert_cmpstr(drive_at(&vm, 0)->filename, ==, "/tmp/t.qcow2");
    g_assert_false(vmm_opts_has(drive_at(&vm, 0)->block_options, "file.filename"));
    vmm_vm_config_clear(&vm);

    /* An empty if=none drive is allowed until a device wants it. */
    expect_ok(&vm, ARGS("-drive", "if=none,id=empty"));
    vmm_vm_config_clear(&vm);
}

/* The reference's messages, checked with qemu-system-x86_64 7.2. */
static void test_drive_errors(void)
{
    expect_error(ARGS("-drive", "file=/x,format=raw,cache=bogus"),
                 "-drive file=/x,format=raw,cache=bogus: invalid cache option");
    expect_error(ARGS("-drive", "file=/x,aio=bogus"), "invalid aio option");
    expect_error(ARGS("-drive", "file=/x,werror=bogus"), "'bogus' invalid write error action");
    expect_error(ARGS("-drive", "file=/x,rerror=enospc"), "'enospc' invalid read error action");
    expect_error(ARGS("-drive", "file=/x,media=bogus"), "'bogus' invalid media");
    expect_error(ARGS("-drive", "file=/x,readonly=maybe"), "Parameter 'read-only' expects 'on' or 'off'");
    expect_error(ARGS("-drive", "file=/x,snapshot=maybe"), "Parameter 'snapshot' expects 'on' or 'off'");
    expect_error(ARGS("-drive", "file=/x,discard=bogus"), "Invalid discard option");
    expect_error(ARGS("-drive", "file=/x,detect-zeroes=bogus"), "invalid parameter value: bogus");
    expect_error(ARGS("-drive", "file=/x,if=bogus"), "unsupported bus type 'bogus'");
    expect_error(ARGS("-drive", "file=/x,if=scsi"), "machine type does not support if=scsi,bus=0,unit=0");
    expect_error(ARGS("-drive", "file=/x,format=qcow3"), "Unknown driver 'qcow3'");
    expect_error(ARGS("-drive", "file=/x,format=raw,driver=raw"), "Cannot specify both 'driver' and 'format'");
    expect_error(ARGS("-drive", "file=/x,id=1a"), "Parameter 'id' expects an identifier");
    expect_error(ARGS("-drive", "format=raw,if=virtio"), "A block device must be specified for \"file\"");
    expect_error(ARGS("-drive", "file=/x,aio=native"),
                 "aio=native was specified, but it requires cache.direct=on, which was not specified.");
    expect_error(ARGS("-drive", "file=/x,id=d0", "-drive", "file=/y,id=d0"), "Duplicate ID 'd0' for drive");
    /* vmmd's own: the deprecated PCI address and geometry mean nothing here. */
    expect_error(ARGS("-drive", "file=/x,if=virtio,addr=5"), "no PCI bus");
    expect_error(ARGS("-drive", "file=/x,if=virtio,cyls=100,heads=16,secs=63"), "virtio-blk has no disk geometry");
    expect_error(ARGS("-drive", "file=/x,trans=lba"), "trans=lba: virtio-blk has no disk geometry");
    expect_error(ARGS("-drive", "file.driver=nbd,file.server.host=x,if=virtio"), "the protocol must be 'file'");
    expect_error(ARGS("-drive", "file=/x,iops=100"), "'iops' is not supported");
    expect_error(ARGS("-drive", "if=none,id=e", "-device", "virtio-blk-device,drive=e"),
                 "Device needs media, but drive is empty");
}

static void test_drive_serial_deprecated(void)
{
    VmmVmConfig vm;
    /* Forwarded to the device the drive implies, or to a -device without its own. */
    expect_ok(&vm, ARGS("-drive", "file=/x,if=virtio,serial=OLD1", "-drive", "file=/y,if=none,id=d1,serial=OLD2",
                        "-device", "virtio-blk-device,drive=d1"));
    g_assert_cmpstr(device_at(&vm, 0)->serial, ==, "OLD1");
    g_assert_cmpstr(device_at(&vm, 1)->serial, ==, "OLD2");
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, ARGS("-drive", "file=/y,if=none,id=d1,serial=OLD", "-device", "virtio-blk-device,drive=d1,serial=NEW"));
    g_assert_cmpstr(device_at(&vm, 0)->serial, ==, "NEW");
    vmm_vm_config_clear(&vm);
}

static void test_device(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, ARGS("-drive", "file=/x,if=none,id=d0,werror=stop", "-device",
                        "virtio-blk-device,drive=d0,serial=xyz,share-rw=on,id=disk0",
                        "-drive", "file=/y,if=none,id=d1", "-device", "driver=virtio-blk-device,drive=d1,werror=report,rerror=stop"));
    VmmBlkDevice *b = device_at(&vm, 0);
    g_assert_cmpstr(b->drive, ==, "d0");
    g_assert_cmpstr(b->serial, ==, "xyz");
    g_assert_cmpstr(b->id, ==, "disk0");
    g_assert_true(b->share_rw);
    g_assert_cmpint(b->werror, ==, VMM_DRIVE_ERROR_STOP);  /* auto: the drive's */
    g_assert_cmpint(b->rerror, ==, VMM_DRIVE_ERROR_REPORT);
    b = device_at(&vm, 1);
    g_assert_cmpint(b->werror, ==, VMM_DRIVE_ERROR_REPORT);
    g_assert_cmpint(b->rerror, ==, VMM_DRIVE_ERROR_STOP);
    vmm_vm_config_clear(&vm);

    expect_error(ARGS("-drive", "file=/x,if=none,id=d0", "-device", "virtio-blk-device,drive=d1"),
                 "-device virtio-blk-device,drive=d1: Property 'virtio-blk-device.drive' can't find value 'd1'");
    expect_error(ARGS("-device", "virtio-blk-device"), "drive property not set");
    expect_error(ARGS("-drive", "file=/x,if=none,id=d0", "-device", "virtio-blk-device,drive=d0", "-device",
                      "virtio-blk-device,drive=d0"), "Drive 'd0' is already in use by another device");
    expect_error(ARGS("-drive", "file=/x,if=virtio,id=d0", "-device", "virtio-blk-device,drive=d0"),
                 "Drive 'd0' is already in use by another device");
    expect_error(ARGS("-drive", "file=/x,if=none,id=d0", "-device", "virtio-blk-device,drive=d0,foo=1"),
                 "Property 'virtio-blk-device.foo' not found");
    expect_error(ARGS("-drive", "file=/x,if=none,id=d0", "-device", "virtio-blk-device,drive=d0,share-rw=maybe"),
                 "Parameter 'share-rw' expects 'on' or 'off'");
    expect_error(ARGS("-device", "virtio-blk-foo"), "-device virtio-blk-foo: 'virtio-blk-foo' is not a valid device model name");
}

static void test_blockdev(void)
{
    VmmVmConfig vm;
    expect_ok(&vm, ARGS("-blockdev", "driver=qcow2,node-name=n0,file.driver=file,file.filename=/tmp/t.qcow2,"
                                     "file.locking=off,read-only=on,l2-cache-size=2M",
                        "-device", "virtio-blk-device,drive=n0",
                        "-blockdev", "{\"driver\":\"raw\",\"node-name\":\"n1\",\"discard\":\"unmap\","
                                     "\"file\":{\"driver\":\"file\",\"filename\":\"/tmp/t.raw\"},\"read-only\":false}",
                        "-device", "virtio-blk-device,drive=n1",
                        "-blockdev", "driver=file,node-name=f0,filename=/tmp/f.raw",
                        "-device", "virtio-blk-device,drive=f0"));
    VmmDrive *d = drive_at(&vm, 0);
    g_assert_true(d->from_blockdev);
    g_assert_cmpstr(d->id, ==, "n0");
    g_assert_cmpstr(d->format, ==, "qcow2");
    g_assert_cmpstr(d->filename, ==, "/tmp/t.qcow2");
    g_assert_true(d->read_only);
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "file.locking", NULL), ==, "off");
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "l2-cache-size", NULL), ==, "2M");
    g_assert_false(vmm_opts_has(d->block_options, "node-name"));
    d = drive_at(&vm, 1);
    g_assert_cmpstr(d->format, ==, "raw");
    g_assert_cmpstr(d->filename, ==, "/tmp/t.raw");
    g_assert_false(d->read_only);
    g_assert_cmpstr(vmm_opts_get_string(d->block_options, "discard", NULL), ==, "unmap");
    d = drive_at(&vm, 2);
    g_assert_cmpstr(d->format, ==, "raw");
    g_assert_cmpstr(d->filename, ==, "/tmp/f.raw");
    g_assert_cmpuint(vm.drives.devices->len, ==, 3);
    g_assert_true(device_at(&vm, 0)->read_only);
    vmm_vm_config_clear(&vm);

    expect_error(ARGS("-blockdev", "driver=qcow2,file.driver=file,file.filename=/t"),
                 "'node-name' must be specified for the root node");
    expect_error(ARGS("-blockdev", "node-name=n0,file.driver=file,file.filename=/t"), "Parameter 'driver' is missing");
    expect_error(ARGS("-blockdev", "driver=qcow2,node-name=n0"), "Parameter 'file' is missing");
    expect_error(ARGS("-blockdev", "driver=qcow2,node-name=n0,file.driver=file"), "Parameter 'file.filename' is missing");
    expect_error(ARGS("-blockdev", "driver=qcow2,node-name=n0,file.filename=/t"), "Parameter 'file.driver' is missing");
    expect_error(ARGS("-blockdev", "driver=qcow3,node-name=n0"), "Parameter 'driver' does not accept value 'qcow3'");
    expect_error(ARGS("-blockdev", "driver=file,node-name=f0"), "Parameter 'filename' is missing");
    expect_error(ARGS("-blockdev", "driver=raw,node-name=n0,file.driver=file,file.filename=/t", "-blockdev",
                      "driver=raw,node-name=n0,file.driver=file,file.filename=/t"),
                 "Duplicate nodes with node-name='n0'");
    expect_error(ARGS("-blockdev", "{\"driver\":"), "-blockdev {\"driver\":: ");
}

static void test_snapshot(void)
{
    VmmVmConfig vm;
    /* -snapshot covers every -drive but not -blockdev, as in QEMU. */
    expect_ok(&vm, ARGS("-snapshot", "-drive", "file=/x,if=virtio", "-blockdev",
                        "driver=file,node-name=f0,filename=/y", "-device", "virtio-blk-device,drive=f0"));
    g_assert_true(drive_at(&vm, 0)->snapshot);
    g_assert_false(drive_at(&vm, 1)->snapshot);
    vmm_vm_config_clear(&vm);
    expect_ok(&vm, ARGS("-drive", "file=/x,if=virtio,snapshot=on", "-drive", "file=/y,if=virtio"));
    g_assert_true(drive_at(&vm, 0)->snapshot);
    g_assert_false(drive_at(&vm, 1)->snapshot);
    vmm_vm_config_clear(&vm);
}


/* ---- vmmd opening a drive's images (drive-files.c) ------------------------ */

/* A minimal qcow2 header (version 3) naming BACKING and, if FMT, its format. */
static void write_qcow2(const char *path, const char *backing, const char *fmt, guint64 incompat)
{
    guint8 h[4096] = { 0 };
    put_be32(h, QCOW2_MAGIC);
    put_be32(h + 4, 3);
    put_be32(h + 20, 16);
    put_be64(h + 72, incompat);
    put_be32(h + 96, 4);
    put_be32(h + 100, 104);
    gsize ext = 104;
    if (fmt) {
        put_be32(h + ext, QCOW2_EXT_BACKING_FORMAT);
        put_be32(h + ext + 4, (guint32)strlen(fmt));
        memcpy(h + ext + 8, fmt, strlen(fmt));
        ext += 8 + ((strlen(fmt) + 7) & ~(gsize)7);
    }
    put_be32(h + ext, 0); /* end of extensions */
    if (backing) {
        put_be64(h + 8, 512);
        put_be32(h + 16, (guint32)strlen(backing));
        memcpy(h + 512, backing, strlen(backing));
    }
    g_assert_true(g_file_set_contents(path, (const char *)h, sizeof(h), NULL));
}

static VmmDrive *parse_one(VmmVmConfig *vm, const char *value)
{
    expect_ok(vm, ARGS("-drive", value));
    return drive_at(vm, 0);
}

static void test_files(void)
{
    g_autofree char *dir = g_dir_make_tmp("drive-files-XXXXXX", NULL);
    g_autofree char *base = g_build_filename(dir, "base.raw", NULL);
    g_autofree char *mid = g_build_filename(dir, "mid.qcow2", NULL);
    g_autofree char *top = g_build_filename(dir, "top.qcow2", NULL);
    g_autofree char *bad = g_build_filename(dir, "bad.qcow2", NULL);
    g_autofree char *remote = g_build_filename(dir, "remote.qcow2", NULL);
    g_assert_true(g_file_set_contents(base, "raw data", -1, NULL));
    write_qcow2(mid, "base.raw", "raw", 0);
    write_qcow2(top, "mid.qcow2", NULL, 0);   /* no format: probed */
    write_qcow2(bad, NULL, NULL, 1ULL << 2);  /* external data file */
    write_qcow2(remote, "nbd://host/x", "raw", 0);

    /* The chain, named as blockd resolves it: relative to the naming image. */
    VmmVmConfig vm;
    g_autofree char *v = g_strdup_printf("file=%s,if=virtio", top);
    VmmDrive *d = parse_one(&vm, v);
    VmmDriveFiles f;
    vmm_drive_files_init(&f);
    g_autoptr(GError) err = NULL;
    g_assert_true(vmm_drive_files_open(d, &f, &err));
    g_assert_no_error(err);
    g_assert_cmpuint(f.n, ==, 3);
    g_assert_cmpstr(f.paths[0], ==, top);
    g_autofree char *mid_named = g_strdup_printf("%s/mid.qcow2", dir);
    g_autofree char *base_named = g_strdup_printf("%s/base.raw", dir);
    g_assert_cmpstr(f.paths[1], ==, mid_named);
    g_assert_cmpstr(f.paths[2], ==, base_named);
    g_assert_cmpstr(f.format, ==, "qcow2");
    g_assert_true(f.probed);
    g_assert_cmpstr(f.backing_file, ==, "mid.qcow2");
    /* The top read-write, the backing files read-only; no overlay. */
    g_assert_cmpint(fcntl(f.fds[0], F_GETFL) & O_ACCMODE, ==, O_RDWR);
    g_assert_cmpint(fcntl(f.fds[1], F_GETFL) & O_ACCMODE, ==, O_RDONLY);
    g_assert_cmpint(fcntl(f.fds[2], F_GETFL) & O_ACCMODE, ==, O_RDONLY);
    g_assert_cmpint(f.overlay_fd, ==, -1);
    vmm_drive_files_clear(&f);
    vmm_vm_config_clear(&vm);

    /* Read-only and snapshot drives: the top read-only; snapshot gets an
     * unlinked overlay file. format=raw: no chain even on a qcow2 file. */
    g_free(v);
    v = g_strdup_printf("file=%s,format=raw,if=virtio,snapshot=on", top);
    d = parse_one(&vm, v);
    g_assert_true(vmm_drive_files_open(d, &f, &err));
    g_assert_cmpuint(f.n, ==, 1);
    g_assert_false(f.probed);
    g_assert_cmpint(fcntl(f.fds[0], F_GETFL) & O_ACCMODE, ==, O_RDONLY);
    g_assert_cmpint(f.overlay_fd, >=, 0);
    struct stat st;
    g_assert_cmpint(fstat(f.overlay_fd, &st), ==, 0);
    g_assert_cmpint(st.st_nlink, ==, 0);
    vmm_drive_files_clear(&f);
    vmm_vm_config_clear(&vm);

    static const struct {
        const char *file, *message;
    } errors[] = {
        { "missing.raw", "/missing.raw': No such file or directory" },
        { "bad.qcow2", "keeps its data in an external data file" },
        { "remote.qcow2", "has the backing file 'nbd://host/x', which is not a local file" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(errors); i++) {
        g_free(v);
        v = g_strdup_printf("file=%s/%s,if=virtio", dir, errors[i].file);
        d = parse_one(&vm, v);
        g_autoptr(GError) e = NULL;
        g_assert_false(vmm_drive_files_open(d, &f, &e));
        const char *want = errors[i].message;
        if (!e || !strstr(e->message, want))
            g_error("expected \"%s\", got \"%s\"", want, e ? e->message : "success");
        vmm_drive_files_clear(&f);
        vmm_vm_config_clear(&vm);
    }

    /* A missing backing file, as QEMU words it. */
    g_unlink(base);
    g_free(v);
    v = g_strdup_printf("file=%s,if=virtio", mid);
    d = parse_one(&vm, v);
    g_autoptr(GError) e2 = NULL;
    g_assert_false(vmm_drive_files_open(d, &f, &e2));
    g_assert_nonnull(strstr(e2->message, "Could not open backing file: Could not open"));
    vmm_drive_files_clear(&f);
    vmm_vm_config_clear(&vm);

    for (const char *const *p = (const char *const[]){ mid, top, bad, remote, NULL }; *p; p++)
        g_unlink(*p);
    g_rmdir(dir);
}

static void test_resolve_backing(void)
{
    static const struct {
        const char *image, *backing, *want;
    } cases[] = {
        { "/a/b/top.qcow2", "base.raw", "/a/b/base.raw" },
        { "/a/b/top.qcow2", "../c/base.raw", "/a/b/../c/base.raw" },
        { "/a/b/top.qcow2", "/abs/base.raw", "/abs/base.raw" },
        { "/a/b/top.qcow2", "nbd:host:10809", "nbd:host:10809" },
        { "top.qcow2", "base.raw", "base.raw" },
        { "/a/b/top.qcow2", "./x:y.raw", "/a/b/./x:y.raw" },
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *got = vmm_drive_resolve_backing(cases[i].image, cases[i].backing);
        g_assert_cmpstr(got, ==, cases[i].want);
        /* The same as blockd's block layer: the keys of its fd table. */
        g_autofree char *theirs = vmm_block_resolve_backing(cases[i].image, cases[i].backing);
        g_assert_cmpstr(got, ==, theirs);
    }
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/drive/defaults", test_drive_defaults);
    g_test_add_func("/drive/virtio", test_drive_virtio);
    g_test_add_func("/drive/keys", test_drive_keys);
    g_test_add_func("/drive/errors", test_drive_errors);
    g_test_add_func("/drive/serial-deprecated", test_drive_serial_deprecated);
    g_test_add_func("/drive/device", test_device);
    g_test_add_func("/drive/blockdev", test_blockdev);
    g_test_add_func("/drive/snapshot", test_snapshot);
    g_test_add_func("/drive/files", test_files);
    g_test_add_func("/drive/resolve-backing", test_resolve_backing);
    return g_test_run();
}
