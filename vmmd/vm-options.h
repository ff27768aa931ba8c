/* The VM's part of vmmd's command line (QEMU's options and messages): what
 * the VM is made of. Parsed and checked here; vmmd does not act on them yet
 * (docs/machine.md). */
#pragma once
#include "vmmd/machine.h"
#include "vmmd/drive.h"
#include "vmmd/fsdev.h"

typedef enum {
    VMM_SERIAL_STDIO,
    VMM_SERIAL_NULL,
    VMM_SERIAL_FILE,
    VMM_SERIAL_UNIX,
} VmmSerialKind;

typedef struct {
    VmmSerialKind kind;
    char *path;                /* file: and unix: */
    gboolean server, wait;     /* unix: */
    gboolean append;           /* file: append=on (-chardev) instead of truncating */
    char *chardev;             /* -serial chardev:ID until vmm_vm_config_finish resolves it */
} VmmSerialConfig;

/* -chardev BACKEND,id=ID,...: a named backend that -serial chardev:ID uses. */
typedef struct {
    char *id;
    VmmSerialConfig backend;
} VmmChardevConfig;

typedef enum {
    VMM_OBJECT_MEMORY_MEMFD,
    VMM_OBJECT_MEMORY_FILE,
    VMM_OBJECT_RNG_RANDOM,
    VMM_OBJECT_RNG_BUILTIN,
} VmmObjectKind;

typedef struct {
    VmmObjectKind kind;
    char *id;
    guint64 size;              /* memory backends */
    char *mem_path;            /* memory-backend-file */
    gboolean share, discard_data, prealloc;
    char *filename;            /* rng-random: default /dev/urandom */
} VmmObjectConfig;

typedef struct VmmVmConfig {
    VmmMachineConfig machine;
    guint64 ram_size;          /* -m; 128 MiB by default, as QEMU */
    gboolean ram_size_set;     /* -m size= was given (else a memory backend's size rules) */
    guint64 maxmem;            /* -m maxmem=, else ram_size */
    guint64 mem_slots;         /* -m slots= */
    /* -smp as given (0: absent), then resolved by vmm_vm_config_finish. */
    guint64 cpus, sockets, dies, cores, threads, max_cpus;
    char *cpu_model;           /* "host" */
    GPtrArray *cpu_features;   /* char*: "+feat" or "-feat", in order */
    char *kernel, *initrd, *append;
    gboolean nographic, no_reboot, no_shutdown, start_paused;
    GPtrArray *serials;        /* VmmSerialConfig*, one per -serial */
    GPtrArray *chardevs;       /* VmmChardevConfig*, one per -chardev */
    GPtrArray *objects;        /* VmmObjectConfig* */
    VmmDriveSet drives;        /* -drive, -blockdev, -device virtio-blk-device, -snapshot */
    VmmFsdevSet fsdevs;        /* -fsdev, -virtfs, -device virtio-9p-device */
    GPtrArray *rng_devices;    /* VmmRngDevice*: -device virtio-rng-device (vmmd/rng.h) */
} VmmVmConfig;

void vmm_vm_config_init(VmmVmConfig *vm);
void vmm_vm_config_clear(VmmVmConfig *vm);

/* Whether OPT (without its dash) is a VM option, and whether it takes a value. */
gboolean vmm_vm_option_known(const char *opt);
gboolean vmm_vm_option_takes_arg(const char *opt);
/* Applies one VM option. "-machine help" prints the machine list and sets
 * *EXIT_NOW. */
gboolean vmm_vm_config_apply(VmmVmConfig *vm, const char *opt, const char *value,
                             gboolean *exit_now, GError **error);
/* Checks what needs the whole command line (SMP topology against the machine
 * type, -machine memory-backend= against -object) and fills in defaults. */
gboolean vmm_vm_config_finish(VmmVmConfig *vm, GError **error);

const VmmObjectConfig *vmm_vm_config_find_object(const VmmVmConfig *vm, const char *id);
