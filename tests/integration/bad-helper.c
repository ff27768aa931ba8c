/* A helper for tests: it behaves like the helper named by argv[0] (handshake,
 * sandbox, status) and then, 300 ms after it started serving, makes a system
 * call that no profile allows (ptrace), so seccomp kills it. Built only for
 * tests; vmmd runs it through -helper-dir. */
#include "common/helper.h"
#include "common/profiles.h"

#include <sys/ptrace.h>

static uv_timer_t timer;

static void on_timer(uv_timer_t *t)
{
    ptrace(PTRACE_TRACEME, 0, NULL, NULL);
}

static gboolean prepare(VmmHelper *h, GError **error)
{
    uv_timer_init(vmm_helper_loop(h), &timer);
    uv_timer_start(&timer, on_timer, 300, 0);
    return TRUE;
}

int main(int argc, char **argv)
{
    g_autofree char *role = g_path_get_basename(argv[0]);
    VmmHelperDesc desc = {
        .role = role,
        .profile = vmm_profile_for(role),
        .prepare = prepare,
    };
    if (!desc.profile)
        return 2;
    return vmm_helper_main(argc, argv, &desc);
}
