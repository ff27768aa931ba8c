/* fsd: the 9P2000.L file server. Started by vmmd (--control-fd) it is a
 * sandboxed helper serving the exports vmmd hands over; started by hand it serves a directory on Unix or TCP
 * sockets (fsd/standalone.c). */
#include "fsd/fsd-standalone.h"
#include "fsd/helper-exports.h"
#include "fsd/fsd-sandbox.h"
#include "common/helper.h"
#include "common/profiles.h"

#include <string.h>

static gboolean started_by_vmmd(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (g_str_has_prefix(argv[i], "--control-fd") || strcmp(argv[i], "--dump-seccomp") == 0)
            return TRUE;
    }
    return FALSE;
}

/* vmmd adds --passthrough when an export of the VM uses security_model=
 * passthrough or none: only then does the helper keep the file capabilities
 * (fsd/sandbox.c); otherwise it drops them all, like every helper. */
static gboolean keep_file_caps;

static void take_passthrough_flag(int *argc, char **argv)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--passthrough") == 0)
            keep_file_caps = TRUE;
        else
            argv[out++] = argv[i];
    }
    argv[out] = NULL;
    *argc = out;
}

static gboolean enter_helper_sandbox(VmmHelper *h, const VmmSandboxPolicy *policy, GError **error)
{
    return fsd_sandbox_enter(keep_file_caps ? FSD_SM_PASSTHROUGH : FSD_SM_MAPPED_XATTR, policy, error);
}

int main(int argc, char **argv)
{
    if (!started_by_vmmd(argc, argv))
        return fsd_standalone_main(argc, argv);
    take_passthrough_flag(&argc, argv);
    VmmHelperDesc desc = {
        .role = "fsd",
        .profile = vmm_profile_for("fsd"),
        .handle_request = fsd_helper_handle_request,   /* fsdev-add (docs/fsdev.md) */
        .cleanup = fsd_helper_cleanup,
        .enter_sandbox = enter_helper_sandbox,
    };
    return vmm_helper_main(argc, argv, &desc);
}
