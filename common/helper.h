/* The life of a helper process (vcpu-worker, blockd, fsd, netfilterd) when vmmd
 * starts it: parse the common arguments, open the control channel on the fd
 * vmmd handed over, let the helper acquire what it needs, enter the sandbox,
 * then serve requests on a libuv loop until "shutdown" or the channel closes.
 *
 *   HELPER --control-fd N [--sandbox SPEC] [--log SPEC]
 *   HELPER --dump-seccomp [--sandbox SPEC]   print the effective allowlist */
#pragma once
#include "common/channel.h"
#include "common/sandbox.h"

typedef struct VmmHelper VmmHelper;

typedef struct {
    const char *role;                  /* "blockd" */
    const VmmSandboxProfile *profile;  /* the groups its work needs */
    /* Before the sandbox: acquire what the helper needs. May be NULL. */
    gboolean (*prepare)(VmmHelper *h, GError **error);
    /* Requests beyond the common ones; FALSE if COMMAND is not this helper's
     * (it then gets CommandNotFound). May be NULL. */
    gboolean (*handle_request)(VmmHelper *h, VmmChannelRequest *req);
    /* After the loop stopped, while it and the channel still exist: release
     * what uses them (threads that post to the loop). May be NULL. */
    void (*cleanup)(VmmHelper *h);
    /* Enters the sandbox instead of vmm_sandbox_enter(profile) (fsd keeps the
     * file capabilities for passthrough exports). May be NULL. */
    gboolean (*enter_sandbox)(VmmHelper *h, const VmmSandboxPolicy *policy, GError **error);
} VmmHelperDesc;

int vmm_helper_main(int argc, char **argv, const VmmHelperDesc *desc);

uv_loop_t *vmm_helper_loop(VmmHelper *h);
VmmChannel *vmm_helper_channel(VmmHelper *h);
const VmmSandboxPolicy *vmm_helper_policy(VmmHelper *h);
void vmm_helper_set_data(VmmHelper *h, gpointer data);
gpointer vmm_helper_get_data(VmmHelper *h);
/* TRUE once the supervisor asked this process to shut down: the other
 * helpers are going too, so a lost connection to one of them is expected
 * (any thread). */
gboolean vmm_helper_stopping(void);
