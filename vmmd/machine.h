/* vmmd's machine types: a registry of data, as DESIGN.md "Machine types and
 * migration" describes. A type names the devices the VM gets and a list of
 * compat properties in -global's "driver.property=value" form; every release
 * keeps every older version so that old guests can migrate to new releases. */
#pragma once
#include <glib.h>

typedef struct {
    const char *name;          /* "microvm-1.0": what migration streams carry */
    const char *alias;         /* "microvm" for the newest of a family, or NULL */
    const char *family;        /* "microvm" */
    const char *desc;          /* the text -machine help prints */
    gboolean is_default;       /* the type used without -machine */
    guint serial_8250;         /* 8250 UARTs created */
    guint virtio_mmio_slots;   /* virtio-mmio transports created */
    gboolean has_pci;
    guint max_cpus;
    const char *const *compat; /* "driver.property=value", NULL-terminated; may be NULL */
} VmmMachineType;

/* The registry: a NULL-terminated list, newest version of a family first. */
const VmmMachineType *const *vmm_machine_registry(void);

/* By name or alias, in REGISTRY (NULL: vmmd's own). NULL if unknown. */
const VmmMachineType *vmm_machine_find(const VmmMachineType *const *registry, const char *name);
const VmmMachineType *vmm_machine_default(const VmmMachineType *const *registry);

/* "-machine help" text, in QEMU 7.2's layout (g_free). */
char *vmm_machine_help(const VmmMachineType *const *registry);

typedef enum {
    VMM_IRQCHIP_ON,            /* in-kernel irqchip (QEMU's default for KVM) */
    VMM_IRQCHIP_OFF,
    VMM_IRQCHIP_SPLIT,
} VmmIrqchipMode;

/* -machine TYPE[,accel=..][,kernel-irqchip=..][,dump-guest-core=..][,mem-merge=..]
 * [,memory-backend=ID] */
typedef struct {
    const VmmMachineType *type;
    char *accel;               /* "kvm": the first of the ':' list that vmmd supports */
    VmmIrqchipMode kernel_irqchip;
    gboolean dump_guest_core;
    gboolean mem_merge;
    char *memory_backend;      /* -object memory-backend-* id, or NULL */
} VmmMachineConfig;

void vmm_machine_config_init(VmmMachineConfig *m);
void vmm_machine_config_clear(VmmMachineConfig *m);
/* Parses VALUE of -machine into M; later -machine options add to earlier
 * ones, as in QEMU. REGISTRY NULL: vmmd's own. */
gboolean vmm_machine_config_parse(VmmMachineConfig *m, const VmmMachineType *const *registry,
                                  const char *value, GError **error);
/* The accelerator list of accel= or -accel: the first supported one wins
 * ("tcg:kvm" -> kvm); none supported is an error. */
gboolean vmm_machine_set_accel(VmmMachineConfig *m, const char *list, GError **error);

/* Device properties in force: the machine type's compat properties first,
 * then each -global in command-line order on top (vmm_machine_props_set), so
 * a later -global wins, exactly as QEMU's global property list does.
 * Keys are "driver.property". */
GHashTable *vmm_machine_props_new(const VmmMachineType *t);
gboolean vmm_machine_props_set(GHashTable *props, const char *driver, const char *property,
                               const char *value);
const char *vmm_machine_props_get(GHashTable *props, const char *driver, const char *property);
