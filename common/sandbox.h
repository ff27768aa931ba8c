/* The sandbox every process enters once it holds what it needs:
 * all capabilities dropped (libcap-ng), PR_SET_NO_NEW_PRIVS, and a seccomp
 * allowlist built from named syscall groups (libseccomp), default action
 * KILL_PROCESS (TRAP where the kernel lacks it), applied to all threads (TSYNC).
 *
 * -sandbox on[,obsolete=allow|deny][,elevateprivileges=allow|deny|children]
 *            [,spawn=allow|deny][,resourcecontrol=allow|deny]
 * tunes every process's allowlist as QEMU's -sandbox tunes its denylist:
 *   obsolete=deny (default)   the "obsolete" group is never allowed
 *   elevateprivileges=deny    the "setid" group is removed
 *   elevateprivileges=children  as deny; no_new_privs also binds the children
 *   spawn=deny                the "spawn" group is removed (fork, vfork, execve,
 *                             clone without CLONE_THREAD)
 *   resourcecontrol=deny      the "sched" group is removed
 * The upstream default set (reboot, swapon, mount, kexec_load, ...) is never
 * allowed. -sandbox off (the default, as QEMU) loads no filter. */
#pragma once
#include <glib.h>
#include <json-glib/json-glib.h>

typedef enum {
    VMM_SANDBOX_ALLOW,
    VMM_SANDBOX_DENY,
    VMM_SANDBOX_CHILDREN, /* elevateprivileges only */
} VmmSandboxChoice;

typedef struct {
    gboolean enabled;
    VmmSandboxChoice obsolete;          /* default DENY */
    VmmSandboxChoice elevateprivileges; /* default ALLOW */
    VmmSandboxChoice spawn;             /* default ALLOW */
    VmmSandboxChoice resourcecontrol;   /* default ALLOW */
} VmmSandboxPolicy;

/* Defaults: disabled, obsolete=deny, the rest allow. */
void vmm_sandbox_policy_init(VmmSandboxPolicy *p);
/* Parses the value of -sandbox ("on", "off", "on,spawn=deny", ...). A bad
 * value is "invalid argument for spawn" (QEMU's words) and the like. */
gboolean vmm_sandbox_policy_parse(const char *value, VmmSandboxPolicy *p, GError **error);
/* The canonical option string, e.g. "on,obsolete=deny,elevateprivileges=allow,
 * spawn=allow,resourcecontrol=allow" or "off"; parse(to_string(p)) == p. */
char *vmm_sandbox_policy_to_string(const VmmSandboxPolicy *p);

/* A process's profile: the groups its work needs. */
typedef struct {
    const char *process;        /* "blockd" */
    const char *const *groups;  /* NULL-terminated group names */
} VmmSandboxProfile;

/* Names of all groups, and the syscalls of one (NULL if unknown). */
const char *const *vmm_sandbox_group_names(void);
const char *const *vmm_sandbox_group_syscalls(const char *group);

/* The effective allowlist for PROFILE under POLICY: sorted syscall names. */
GPtrArray *vmm_sandbox_allowlist(const VmmSandboxProfile *profile,
                                 const VmmSandboxPolicy *policy, GError **error);
/* Text for --dump-seccomp: the policy, then one line per group with its calls,
 * then what the policy removed. */
char *vmm_sandbox_dump(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy);

/* Drops capabilities and sets no_new_privs always; loads the filter when
 * POLICY->enabled. Call from a single-threaded point or rely on TSYNC. */
gboolean vmm_sandbox_enter(const VmmSandboxProfile *profile,
                           const VmmSandboxPolicy *policy, GError **error);
/* The same, keeping those of CAPS (NCAPS CAP_* numbers) that the process
 * has, in its permitted and bounding sets and, when EFFECTIVE, in its
 * effective set. Kept but not effective, they pass to a program a root
 * process execs (no_new_privs caps it at what the parent permits) and to
 * nothing else. */
gboolean vmm_sandbox_enter_keeping(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy,
                                   const unsigned *caps, gsize ncaps, gboolean effective, GError **error);
/* What a file server needs for real ownership and modes (QEMU's
 * virtfs-proxy-helper kept the same): CAP_CHOWN, CAP_DAC_OVERRIDE,
 * CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD. */
#define VMM_N_FILE_CAPS 6
extern const unsigned vmm_file_caps[VMM_N_FILE_CAPS];

/* Narrows the calling thread's allowlist (the process's filter stays for the
 * others): the calls the thread's job never needs die as a forbidden call
 * would: every call of vmm_vcpu_thread_denied(), and mmap/mprotect asking
 * for executable memory. Does nothing when vmm_sandbox_enter loaded no
 * filter (sandbox off). */
gboolean vmm_sandbox_restrict_thread(const char *what, const char *const *denied, GError **error);
/* What a vCPU thread never does: make threads, processes or sockets, exec,
 * open pipes or memfds, splice, trace. Its work (KVM_RUN, MMIO and port
 * handlers, console writes, eventfd and irq signalling, logging) needs none. */
const char *const *vmm_vcpu_thread_denied(void);

/* This process's state from /proc/self/status:
 * {"seccomp":0|2,"no_new_privs":bool,"cap_eff":"0000000000000000"} */
JsonObject *vmm_sandbox_state_self(void);

/* The upstream default set, removed from every allowlist whatever the groups say. */
const char *const *vmm_sandbox_never_allowed(void);
/* The state object above from the text of a /proc/PID/status file. */
JsonObject *vmm_sandbox_state_parse(const char *status);
/* The same for another process (PID <= 0: this one); NULL with ERROR if its
 * status cannot be read. vmm_sandbox_state_self() returns NULL in that case. */
JsonObject *vmm_sandbox_state_of_pid(int pid, GError **error);
