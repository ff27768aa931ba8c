/* fsd's sandbox. Every model but passthrough enters the common one
 * (common/sandbox.c: all capabilities dropped, no_new_privs, the "fsd"
 * seccomp profile). passthrough keeps real ownership and modes, which needs
 * the file capabilities (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
 * CAP_FOWNER, CAP_FSETID, CAP_MKNOD, as QEMU's virtfs-proxy-helper kept):
 * vmm_sandbox_enter has no way to keep some, so here the capabilities are
 * narrowed to those and the same allowlist is loaded from
 * vmm_sandbox_allowlist with the same argument rules. (When common/sandbox.h
 * grows a "keep these capabilities" field this file becomes one call.)
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
#include <linux/sched.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <unistd.h>

static const unsigned int passthrough_caps[] = {
    CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD,
};

static gboolean keep_file_caps(GError **error)
{
    if (capng_get_caps_process() != 0)
        return vmm_set_errno(error, errno ? errno : EPERM, "sandbox 'fsd': reading capabilities");
    gboolean setpcap = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);
    /* Only what the process has can be kept: a helper started by a sandboxed
     * spawner has none, and passthrough then works as for an unprivileged
     * QEMU (ownership changes fail). */
    gboolean have[G_N_ELEMENTS(passthrough_caps)];
    guint missing = 0;
    for (gsize i = 0; i < G_N_ELEMENTS(passthrough_caps); i++) {
        have[i] = capng_have_capability(CAPNG_PERMITTED, passthrough_caps[i]);
        missing += !have[i];
    }
    capng_clear(setpcap ? CAPNG_SELECT_BOTH : CAPNG_SELECT_CAPS);
    for (gsize i = 0; i < G_N_ELEMENTS(passthrough_caps); i++) {
        if (have[i])
            capng_update(CAPNG_ADD, CAPNG_EFFECTIVE | CAPNG_PERMITTED | (setpcap ? CAPNG_BOUNDING_SET : 0),
                         passthrough_caps[i]);
    }
    if (missing)
        vmm_warn("security_model=passthrough: fsd lacks %u of the %u file capabilities it needs "
                 "(CAP_CHOWN, CAP_DAC_OVERRIDE, ...); changes of ownership will fail", missing,
                 (guint)G_N_ELEMENTS(passthrough_caps));
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return vmm_set_errno(error, errno, "sandbox 'fsd': clearing ambient capabilities");
    if (capng_apply(setpcap ? CAPNG_SELECT_BOTH : CAPNG_SELECT_CAPS) != 0)
        return vmm_set_errno(error, errno ? errno : EPERM, "sandbox 'fsd': narrowing capabilities");
    return TRUE;
}

static gboolean fail_rc(GError **error, int rc, const char *what)
{
    return vmm_set_errno(error, rc < 0 ? -rc : EINVAL, "sandbox 'fsd': %s", what);
}

static gboolean load_filter(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy, GError **error)
{
    g_autoptr(GPtrArray) calls = vmm_sandbox_allowlist(profile, policy, error);
    if (!calls)
        return FALSE;
    gboolean have_sched = FALSE;
    scmp_filter_ctx ctx = seccomp_init(seccomp_api_get() >= 3 ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_TRAP);
    if (!ctx) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "sandbox 'fsd': seccomp_init failed");
        return FALSE;
    }
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    for (guint i = 0; rc == 0 && i < calls->len; i++) {
        const char *call = calls->pdata[i];
        if (g_str_equal(call, "sched_getaffinity"))
            have_sched = TRUE;
        if (g_str_equal(call, "clone"))
            continue;   /* threads only, below */
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, seccomp_syscall_resolve_name(call), 0);
    }
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
    if (rc == 0 && seccomp_syscall_resolve_name("clone3") >= 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), seccomp_syscall_resolve_name("clone3"), 0);
    if (rc == 0 && !have_sched) {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(sched_setscheduler), 1,
                              SCMP_A1(SCMP_CMP_EQ, SCHED_IDLE));
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(sched_getaffinity), 0);
        if (rc == 0)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(sched_getattr), 0);
    }
    if (rc == 0)
        rc = seccomp_load(ctx);
    seccomp_release(ctx);
    return rc == 0 ? TRUE : fail_rc(error, rc, "loading the seccomp filter");
}

gboolean fsd_sandbox_enter(FsdModel model, const VmmSandboxPolicy *policy, GError **error)
{
    const VmmSandboxProfile *profile = vmm_profile_for("fsd");
    if (model != FSD_SM_PASSTHROUGH || geteuid() != 0)
        return vmm_sandbox_enter(profile, policy, error);
    if (!keep_file_caps(error))
        return FALSE;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return vmm_set_errno(error, errno, "sandbox 'fsd': setting no_new_privs");
    if (!policy->enabled)
        return TRUE;
    return load_filter(profile, policy, error);
}
