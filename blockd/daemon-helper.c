/* blockd as a helper of vmmd: handshake, sandbox, status. */
#include "blockd/daemon.h"
#include "common/helper.h"
#include "common/profiles.h"

int blockd_helper_main(int argc, char **argv)
{
    VmmHelperDesc desc = {
        .role = "blockd",
        .profile = vmm_profile_for("blockd"),
    };
    return vmm_helper_main(argc, argv, &desc);
}
