/* fsd's sandbox: the common one (common/sandbox.c: capabilities dropped,
 * no_new_privs, the "fsd" seccomp profile). passthrough keeps real
 * ownership and modes, which needs the file capabilities (vmm_file_caps,
 * as QEMU's virtfs-proxy-helper kept); under it they stay, the rest go.
 *
 * Seccomp cannot say "only beneath the export": it sees descriptors and
 * pointers, not paths. What confines fsd to the export is that every path
 * is resolved beneath the export's descriptor (openat2 RESOLVE_BENEATH, one
 * component at a time, fsd/node.c). */
#include "fsd/fsd-sandbox.h"
#include "common/error.h"
#include "common/log.h"
#include "common/profiles.h"

#include <cap-ng.h>
#include <errno.h>
#include <unistd.h>

/* Only what the process has can be kept: an fsd started without them
 * (an unprivileged user, a spawner that kept none) works as an unprivileged
 * QEMU does: changes of ownership fail. */
static void warn_missing_file_caps(void)
{
    if (capng_get_caps_process() != 0)
        return;
    guint missing = 0;
    for (gsize i = 0; i < VMM_N_FILE_CAPS; i++)
        missing += !capng_have_capability(CAPNG_PERMITTED, vmm_file_caps[i]);
    if (missing)
        vmm_warn("security_model=passthrough: fsd lacks %u of the %u file capabilities it needs "
                 "(CAP_CHOWN, CAP_DAC_OVERRIDE, ...); changes of ownership will fail", missing,
                 (guint)VMM_N_FILE_CAPS);
}

gboolean fsd_sandbox_enter(FsdModel model, const VmmSandboxPolicy *policy, GError **error)
{
    const VmmSandboxProfile *profile = vmm_profile_for("fsd");
    if (model != FSD_SM_PASSTHROUGH || geteuid() != 0)
        return vmm_sandbox_enter(profile, policy, error);
    warn_missing_file_caps();
    return vmm_sandbox_enter_keeping(profile, policy, vmm_file_caps, VMM_N_FILE_CAPS, TRUE, error);
}
