#include "common/profiles.h"
#include <string.h>

static const char *const vmmd_groups[] = { "base", "fs-read", "fs-write", "net", "wait", "memfd", NULL };
static const char *const vcpu_worker_groups[] = { "base", "kvm", NULL };
/* blockd as vmmd's helper: no paths, only the image fds of drive-add
 * (blockd/preopen.h). */
static const char *const blockd_groups[] = { "base", "file-io", "net", NULL };
static const char *const fsd_groups[] = { "base", "fs-read", "fs-write", "net", "xattr", NULL };
static const char *const netfilterd_groups[] = { "base", "net", NULL };
/* blockd FILE (the qemu-nbd role): once the image, its listening socket and
 * its credentials are open, it reads and writes only what it holds. */
static const char *const blockd_standalone_groups[] = { "base", "file-io", "net", "unlink", NULL };
/* blockd --daemon (the qemu-storage-daemon role): exports are added by file
 * name at run time, so it keeps the filesystem; nothing else. */
static const char *const blockd_daemon_groups[] = { "base", "fs-read", "fs-write", "file-io", "net", NULL };
static const char *const spawner_groups[] = {
    "base", "fs-read", "fs-write", "file-io", "net", "kvm", "wait", "spawn", "xattr", NULL,
};

static const VmmSandboxProfile profiles[] = {
    { "vmmd", vmmd_groups },
    { "vcpu-worker", vcpu_worker_groups },
    { "blockd", blockd_groups },
    { "fsd", fsd_groups },
    { "netfilterd", netfilterd_groups },
    { "blockd-standalone", blockd_standalone_groups },
    { "blockd-daemon", blockd_daemon_groups },
    { "spawner", spawner_groups },
};

const VmmSandboxProfile *vmm_profile_for(const char *process)
{
    for (gsize i = 0; i < G_N_ELEMENTS(profiles); i++) {
        if (strcmp(profiles[i].process, process) == 0)
            return &profiles[i];
    }
    return NULL;
}

const VmmSandboxProfile *vmm_profile_spawner(void)
{
    return vmm_profile_for("spawner");
}
