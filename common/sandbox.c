/* The sandbox: capabilities dropped, no_new_privs, and a seccomp allowlist
 * built from named syscall groups. See common/sandbox.h and docs/sandbox.md. */
#include "common/sandbox.h"
#include "common/error.h"

#include <cap-ng.h>
#include <errno.h>
#include <malloc.h>
#include <sched.h>
#include <sys/sysinfo.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <string.h>
#include <sys/prctl.h>

/* ---- syscall groups (data) ------------------------------------------------
 * Names that do not exist on the build architecture are skipped when the
 * filter is built, so the lists may name calls of every Linux ABI. */

/* What any glib/libuv/json-glib program needs once it runs: memory, threads,
 * signals, time, polling, and I/O on descriptors it already holds.
 * "clone" here is the thread form only (see sandbox_add_clone_rules). */
static const char *const group_base[] = {
    "read", "write", "readv", "writev", "pread64", "pwrite64",
    "preadv", "pwritev", "preadv2", "pwritev2", "splice", "vmsplice", "tee",
    "close", "close_range", "fstat", "newfstatat", "statx", "lseek",
    "mmap", "munmap", "mprotect", "mremap", "madvise", "brk",
    "futex", "futex_waitv", "set_robust_list", "set_tid_address", "rseq",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigpending", "rt_sigtimedwait", "sigaltstack", "signalfd", "signalfd4",
    "restart_syscall", "exit", "exit_group",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "getpgid", "getpgrp", "getsid",
    "capget",
    "clock_gettime", "clock_getres", "gettimeofday", "time",
    "nanosleep", "clock_nanosleep", "sched_yield", "getcpu",
    "alarm", "getitimer", "setitimer", "pause",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "epoll_pwait2", "poll", "ppoll", "pselect6", "select",
    "eventfd", "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    "pipe", "pipe2", "dup", "dup2", "dup3", "fcntl", "ioctl",
    "getrandom", "uname", "prctl", "prlimit64", "getrlimit", "setrlimit",
    "getrusage", "times", "sysinfo", "membarrier", "tgkill", "tkill",
    "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "sendto", "recvfrom",
    "shutdown", "getsockopt", "setsockopt", "socketpair",
    "getsockname", "getpeername",
    "clone", "get_mempolicy",
    NULL
};

static const char *const group_fs_read[] = {
    "open", "openat", "openat2", "readlink", "readlinkat",
    "getdents", "getdents64", "access", "faccessat", "faccessat2",
    "stat", "lstat", "statfs", "fstatfs", "getcwd", "chdir", "fchdir",
    "fadvise64", "readahead",
    NULL
};

static const char *const group_fs_write[] = {
    "creat", "fallocate", "ftruncate", "truncate", "fsync", "fdatasync",
    "sync_file_range", "syncfs", "msync", "flock", "umask",
    "unlink", "unlinkat", "rmdir", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "mknod", "mknodat", "link", "linkat",
    "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "chown", "fchown", "fchownat", "lchown",
    "utime", "utimes", "futimesat", "utimensat", "copy_file_range", "sendfile",
    NULL
};

/* I/O on files a process already holds (an image handed to blockd): no
 * path is named, so nothing beyond those files is reachable. */
static const char *const group_file_io[] = {
    "fallocate", "ftruncate", "fsync", "fdatasync", "sync_file_range", "flock",
    "copy_file_range", "sendfile", "fadvise64", "readahead", "fstatfs",
    NULL
};

/* Removing what a server made at startup (its Unix socket, its pid file) when
 * it stops; alone, it cannot open or change any file's data. */
static const char *const group_unlink[] = {
    "unlink", "unlinkat",
    NULL
};

static const char *const group_xattr[] = {
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr",
    "flistxattr", "setxattr", "lsetxattr", "fsetxattr",
    "removexattr", "lremovexattr", "fremovexattr",
    NULL
};

static const char *const group_aio[] = {
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_uring_setup", "io_uring_enter", "io_uring_register",
    NULL
};

static const char *const group_memfd[] = {
    "memfd_create", "fallocate", "ftruncate",
    NULL
};

static const char *const group_net[] = {
    "socket", "bind", "listen", "connect", "accept", "accept4",
    NULL
};

static const char *const group_wait[] = {
    "wait4", "waitid", "kill", "pidfd_open", "pidfd_send_signal",
    "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    NULL
};

/* ioctl, mmap and eventfd2 are in base; this group names what a vCPU or
 * irqfd user needs beyond that, so a profile can say so explicitly; and
 * seccomp, with which each vCPU thread narrows its own list further
 * (vmm_sandbox_restrict_thread: a filter can only take calls away). */
static const char *const group_kvm[] = {
    "ioctl", "mmap", "munmap", "eventfd2", "mlock", "mlock2", "munlock",
    "mbind", "set_mempolicy", "get_mempolicy", "seccomp",
    NULL
};

/* "clone" here is any clone: with spawn in the list the flags are not checked.
 * A filter outlives execve, so a spawned program starts under its spawner's
 * filter until it loads its own: arch_prctl (TLS set-up at start-up), and
 * capset and seccomp (entering its own sandbox) are what it needs beyond base
 * and fs-read. */
static const char *const group_spawn[] = {
    "fork", "vfork", "execve", "execveat", "clone", "arch_prctl", "capset", "seccomp",
    NULL
};

/* QEMU's elevateprivileges set, plus setgroups. */
static const char *const group_setid[] = {
    "setuid", "setgid", "setpgid", "setsid", "setreuid", "setregid",
    "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups",
    NULL
};

/* QEMU's resourcecontrol set, plus the sched_attr forms of the same
 * (GLib's thread pool copies its creator's settings with them). */
static const char *const group_sched[] = {
    "getpriority", "setpriority", "sched_setparam", "sched_getparam",
    "sched_setscheduler", "sched_getscheduler", "sched_setaffinity",
    "sched_getaffinity", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getattr", "sched_setattr",
    NULL
};

/* QEMU's obsolete set. */
static const char *const group_obsolete[] = {
    "readdir", "_sysctl", "bdflush", "create_module", "get_kernel_syms",
    "query_module", "sgetmask", "ssetmask", "sysfs", "uselib", "ustat",
    NULL
};

/* QEMU's always-on default set: removed from every allowlist, whatever the
 * groups say. */
static const char *const never_allowed[] = {
    "reboot", "swapon", "swapoff", "syslog", "mount", "umount", "umount2",
    "kexec_load", "kexec_file_load",
    "afs_syscall", "break", "ftime", "getpmsg", "gtty", "lock", "mpx",
    "prof", "profil", "putpmsg", "security", "stty", "tuxcall", "ulimit",
    "vserver",
    NULL
};

typedef struct {
    const char *name;
    const char *const *calls;
} SandboxGroup;

static const SandboxGroup sandbox_groups[] = {
    { "base", group_base },
    { "fs-read", group_fs_read },
    { "fs-write", group_fs_write },
    { "file-io", group_file_io },
    { "unlink", group_unlink },
    { "xattr", group_xattr },
    { "aio", group_aio },
    { "memfd", group_memfd },
    { "net", group_net },
    { "wait", group_wait },
    { "kvm", group_kvm },
    { "spawn", group_spawn },
    { "setid", group_setid },
    { "sched", group_sched },
    { "obsolete", group_obsolete },
};

static const char *const sandbox_group_name_list[] = {
    "base", "fs-read", "fs-write", "file-io", "unlink", "xattr", "aio", "memfd", "net", "wait",
    "kvm", "spawn", "setid", "sched", "obsolete", NULL
};

G_STATIC_ASSERT(G_N_ELEMENTS(sandbox_groups) + 1 == G_N_ELEMENTS(sandbox_group_name_list));

static const SandboxGroup *sandbox_find_group(const char *name)
{
    for (gsize i = 0; i < G_N_ELEMENTS(sandbox_groups); i++) {
        if (g_str_equal(sandbox_groups[i].name, name)) {
            return &sandbox_groups[i];
        }
    }
    return NULL;
}

const char *const *vmm_sandbox_group_names(void)
{
    return sandbox_group_name_list;
}

const char *const *vmm_sandbox_group_syscalls(const char *group)
{
    const SandboxGroup *g = group ? sandbox_find_group(group) : NULL;
    return g ? g->calls : NULL;
}

const char *const *vmm_sandbox_never_allowed(void)
{
    return never_allowed;
}

/* ---- policy ---------------------------------------------------------------- */

void vmm_sandbox_policy_init(VmmSandboxPolicy *p)
{
    p->enabled = FALSE;
    p->obsolete = VMM_SANDBOX_DENY;
    p->elevateprivileges = VMM_SANDBOX_ALLOW;
    p->spawn = VMM_SANDBOX_ALLOW;
    p->resourcecontrol = VMM_SANDBOX_ALLOW;
}

/* QemuOpts' boolean words (qapi_bool_parse), case-sensitive as there. */
static gboolean sandbox_parse_enable(const char *s, gboolean *out, GError **error)
{
    static const char *const yes[] = { "on", "yes", "true", "y", NULL };
    static const char *const no[] = { "off", "no", "false", "n", NULL };

    if (g_strv_contains(yes, s)) {
        *out = TRUE;
        return TRUE;
    }
    if (g_strv_contains(no, s)) {
        *out = FALSE;
        return TRUE;
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "Parameter 'enable' expects 'on' or 'off'");
    return FALSE;
}

/* One suboption value; the message is QEMU's, word for word. */
static gboolean sandbox_parse_choice(const char *key, const char *s, gboolean children_ok,
                                     VmmSandboxChoice *out, GError **error)
{
    if (g_str_equal(s, "allow")) {
        *out = VMM_SANDBOX_ALLOW;
    } else if (g_str_equal(s, "deny")) {
        *out = VMM_SANDBOX_DENY;
    } else if (children_ok && g_str_equal(s, "children")) {
        *out = VMM_SANDBOX_CHILDREN;
    } else {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "invalid argument for %s", key);
        return FALSE;
    }
    return TRUE;
}

static gboolean sandbox_apply_pair(const char *key, const char *value,
                                   VmmSandboxPolicy *p, GError **error)
{
    if (g_str_equal(key, "enable")) {
        return sandbox_parse_enable(value, &p->enabled, error);
    }
    if (g_str_equal(key, "obsolete")) {
        return sandbox_parse_choice(key, value, FALSE, &p->obsolete, error);
    }
    if (g_str_equal(key, "elevateprivileges")) {
        return sandbox_parse_choice(key, value, TRUE, &p->elevateprivileges, error);
    }
    if (g_str_equal(key, "spawn")) {
        return sandbox_parse_choice(key, value, FALSE, &p->spawn, error);
    }
    if (g_str_equal(key, "resourcecontrol")) {
        return sandbox_parse_choice(key, value, FALSE, &p->resourcecontrol, error);
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID, "Invalid parameter '%s'", key);
    return FALSE;
}

/* QemuOpts grammar without escapes (the sandbox values have no commas):
 * the first item may be a bare value of the implied key "enable"; a later
 * bare word is "word=on"; the last occurrence of a key wins. Every value is
 * checked even for "off", where QEMU would ignore the suboptions: a typo is
 * reported rather than silently kept for the day the sandbox is turned on. */
gboolean vmm_sandbox_policy_parse(const char *value, VmmSandboxPolicy *p, GError **error)
{
    VmmSandboxPolicy parsed;
    vmm_sandbox_policy_init(&parsed);

    if (value == NULL || value[0] == '\0') {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "Parameter 'enable' expects 'on' or 'off'");
        return FALSE;
    }
    g_auto(GStrv) items = g_strsplit(value, ",", -1);
    for (guint i = 0; items[i] != NULL; i++) {
        const char *item = items[i];
        const char *eq = strchr(item, '=');
        if (item[0] == '\0') {
            continue; /* QemuOpts skips empty items ("on,,"-style trailing commas) */
        }
        g_autofree char *key = NULL;
        const char *val;
        if (eq != NULL) {
            key = g_strndup(item, eq - item);
            val = eq + 1;
        } else if (i == 0) {
            key = g_strdup("enable");
            val = item;
        } else {
            key = g_strdup(item);
            val = "on";
        }
        if (!sandbox_apply_pair(key, val, &parsed, error)) {
            return FALSE;
        }
    }
    *p = parsed;
    return TRUE;
}

static const char *sandbox_choice_name(VmmSandboxChoice c)
{
    switch (c) {
    case VMM_SANDBOX_ALLOW:
        return "allow";
    case VMM_SANDBOX_DENY:
        return "deny";
    case VMM_SANDBOX_CHILDREN:
        return "children";
    }
    return "deny";
}

static gboolean sandbox_policy_is_default_off(const VmmSandboxPolicy *p)
{
    VmmSandboxPolicy def;
    vmm_sandbox_policy_init(&def);
    return !p->enabled && p->obsolete == def.obsolete &&
           p->elevateprivileges == def.elevateprivileges &&
           p->spawn == def.spawn && p->resourcecontrol == def.resourcecontrol;
}

/* A disabled policy with non-default suboptions keeps them ("off,spawn=deny")
 * so that parse(to_string(p)) == p holds for every p. */
char *vmm_sandbox_policy_to_string(const VmmSandboxPolicy *p)
{
    if (sandbox_policy_is_default_off(p)) {
        return g_strdup("off");
    }
    return g_strdup_printf("%s,obsolete=%s,elevateprivileges=%s,spawn=%s,resourcecontrol=%s",
                           p->enabled ? "on" : "off",
                           sandbox_choice_name(p->obsolete),
                           sandbox_choice_name(p->elevateprivileges),
                           sandbox_choice_name(p->spawn),
                           sandbox_choice_name(p->resourcecontrol));
}

/* ---- effective groups and allowlist ---------------------------------------- */

typedef struct {
    GPtrArray *groups;  /* const char *: effective group names, table order */
    GPtrArray *removed; /* char *: "spawn (spawn=deny)" */
} SandboxPlan;

static void sandbox_plan_clear(SandboxPlan *plan)
{
    g_clear_pointer(&plan->groups, g_ptr_array_unref);
    g_clear_pointer(&plan->removed, g_ptr_array_unref);
}

static gboolean sandbox_profile_lists(const VmmSandboxProfile *profile, const char *group)
{
    return profile->groups != NULL && g_strv_contains(profile->groups, group);
}

/* The policy's verdict on GROUP: NULL if it may stay, else the reason it goes. */
static const char *sandbox_policy_removes(const VmmSandboxPolicy *policy, const char *group)
{
    if (g_str_equal(group, "obsolete") && policy->obsolete != VMM_SANDBOX_ALLOW) {
        return "obsolete=deny";
    }
    if (g_str_equal(group, "spawn") && policy->spawn != VMM_SANDBOX_ALLOW) {
        return "spawn=deny";
    }
    if (g_str_equal(group, "setid") && policy->elevateprivileges != VMM_SANDBOX_ALLOW) {
        return policy->elevateprivileges == VMM_SANDBOX_CHILDREN
                   ? "elevateprivileges=children" : "elevateprivileges=deny";
    }
    if (g_str_equal(group, "sched") && policy->resourcecontrol != VMM_SANDBOX_ALLOW) {
        return "resourcecontrol=deny";
    }
    return NULL;
}

/* Groups the policy adds to every profile when they are allowed, as QEMU
 * allows them by default. */
static gboolean sandbox_policy_implies(const VmmSandboxPolicy *policy, const char *group)
{
    if (g_str_equal(group, "setid")) {
        return policy->elevateprivileges == VMM_SANDBOX_ALLOW;
    }
    if (g_str_equal(group, "sched")) {
        return policy->resourcecontrol == VMM_SANDBOX_ALLOW;
    }
    if (g_str_equal(group, "obsolete")) {
        return policy->obsolete == VMM_SANDBOX_ALLOW;
    }
    return FALSE;
}

static gboolean sandbox_check_profile(const VmmSandboxProfile *profile, GError **error)
{
    const char *process = profile->process ? profile->process : "?";
    for (guint i = 0; profile->groups != NULL && profile->groups[i] != NULL; i++) {
        if (sandbox_find_group(profile->groups[i]) == NULL) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_NOT_FOUND,
                        "sandbox profile '%s': unknown syscall group '%s'",
                        process, profile->groups[i]);
            return FALSE;
        }
    }
    return TRUE;
}

static gboolean sandbox_plan(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy,
                             SandboxPlan *plan, GError **error)
{
    if (!sandbox_check_profile(profile, error)) {
        return FALSE;
    }
    plan->groups = g_ptr_array_new();
    plan->removed = g_ptr_array_new_with_free_func(g_free);
    for (gsize i = 0; i < G_N_ELEMENTS(sandbox_groups); i++) {
        const char *name = sandbox_groups[i].name;
        gboolean wanted = sandbox_profile_lists(profile, name) ||
                          sandbox_policy_implies(policy, name);
        const char *why = sandbox_policy_removes(policy, name);
        gboolean would_be = sandbox_profile_lists(profile, name) ||
                            g_str_equal(name, "setid") || g_str_equal(name, "sched");
        if (why == NULL && wanted) {
            g_ptr_array_add(plan->groups, (gpointer)name);
        } else if (why != NULL && would_be) {
            g_ptr_array_add(plan->removed, g_strdup_printf("%s (%s)", name, why));
        }
    }
    return TRUE;
}

static gboolean sandbox_plan_has(const SandboxPlan *plan, const char *group)
{
    for (guint i = 0; i < plan->groups->len; i++) {
        if (g_str_equal(g_ptr_array_index(plan->groups, i), group)) {
            return TRUE;
        }
    }
    return FALSE;
}

/* A name goes into a filter only if this architecture has it and it is not
 * in the never-allowed set. */
static gboolean sandbox_call_usable(const char *call)
{
    if (g_strv_contains(never_allowed, call)) {
        return FALSE;
    }
    return seccomp_syscall_resolve_name(call) >= 0;
}

static gint sandbox_compare_names(gconstpointer a, gconstpointer b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static GPtrArray *sandbox_plan_allowlist(const SandboxPlan *plan)
{
    g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
    GPtrArray *calls = g_ptr_array_new_with_free_func(g_free);

    for (guint i = 0; i < plan->groups->len; i++) {
        const SandboxGroup *g = sandbox_find_group(g_ptr_array_index(plan->groups, i));
        for (guint j = 0; g->calls[j] != NULL; j++) {
            const char *call = g->calls[j];
            if (sandbox_call_usable(call) && g_hash_table_add(seen, (gpointer)call)) {
                g_ptr_array_add(calls, g_strdup(call));
            }
        }
    }
    g_ptr_array_sort(calls, sandbox_compare_names);
    return calls;
}

GPtrArray *vmm_sandbox_allowlist(const VmmSandboxProfile *profile,
                                 const VmmSandboxPolicy *policy, GError **error)
{
    SandboxPlan plan = { 0 };
    if (!sandbox_plan(profile, policy, &plan, error)) {
        return NULL;
    }
    GPtrArray *calls = sandbox_plan_allowlist(&plan);
    sandbox_plan_clear(&plan);
    return calls;
}

/* ---- dump ------------------------------------------------------------------- */

static uint32_t sandbox_kill_action(void)
{
    /* KILL_PROCESS needs API level 3; older kernels only kill the thread,
     * which would leave a half-dead process, so trap instead. */
    return seccomp_api_get() >= 3 ? SCMP_ACT_KILL_PROCESS : SCMP_ACT_TRAP;
}

static void sandbox_dump_group(GString *out, const char *group)
{
    const SandboxGroup *g = sandbox_find_group(group);
    g_string_append_printf(out, "%s:", group);
    for (guint j = 0; g->calls[j] != NULL; j++) {
        if (sandbox_call_usable(g->calls[j])) {
            g_string_append_printf(out, " %s", g->calls[j]);
        }
    }
    g_string_append_c(out, '\n');
}

static void sandbox_dump_conditional(GString *out, const SandboxPlan *plan)
{
    g_string_append(out, "conditional:");
    if (sandbox_plan_has(plan, "base") && !sandbox_plan_has(plan, "spawn")) {
        g_string_append(out, " clone(only with CLONE_THREAD)");
    }
    if (!sandbox_plan_has(plan, "sched")) {
        g_string_append(out, " sched_setscheduler(only SCHED_IDLE)"
                             " sched_getaffinity(answered ENOSYS) sched_getattr(answered ENOSYS)");
    }
    g_string_append(out, " clone3(answered ENOSYS, glibc falls back to clone)\n");
}

static void sandbox_dump_removed(GString *out, const SandboxPlan *plan)
{
    g_string_append(out, "removed by policy:");
    if (plan->removed->len == 0) {
        g_string_append(out, " nothing");
    }
    for (guint i = 0; i < plan->removed->len; i++) {
        g_string_append_printf(out, "%s %s", i ? "," : "",
                               (const char *)g_ptr_array_index(plan->removed, i));
    }
    g_string_append_c(out, '\n');
}

char *vmm_sandbox_dump(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy)
{
    GString *out = g_string_new(NULL);
    g_autofree char *pol = vmm_sandbox_policy_to_string(policy);
    g_autoptr(GError) error = NULL;
    SandboxPlan plan = { 0 };

    g_string_append_printf(out, "process: %s\n", profile->process ? profile->process : "?");
    g_string_append_printf(out, "policy: %s%s\n", pol,
                           policy->enabled ? "" : " (no filter is loaded; the list is what 'on' would load)");
    if (!sandbox_plan(profile, policy, &plan, &error)) {
        g_string_append_printf(out, "error: %s\n", error->message);
        return g_string_free(out, FALSE);
    }
    g_string_append_printf(out, "default action: %s\n",
                           sandbox_kill_action() == SCMP_ACT_KILL_PROCESS ? "kill-process" : "trap");
    for (guint i = 0; i < plan.groups->len; i++) {
        sandbox_dump_group(out, g_ptr_array_index(plan.groups, i));
    }
    sandbox_dump_conditional(out, &plan);
    g_string_append(out, "never allowed:");
    for (guint i = 0; never_allowed[i] != NULL; i++) {
        g_string_append_printf(out, " %s", never_allowed[i]);
    }
    g_string_append_c(out, '\n');
    sandbox_dump_removed(out, &plan);
    sandbox_plan_clear(&plan);
    return g_string_free(out, FALSE);
}

/* ---- entering the sandbox ---------------------------------------------------- */

static gboolean sandbox_fail_rc(GError **error, int rc, const char *process, const char *what)
{
    /* libseccomp returns -errno */
    return vmm_set_errno(error, rc < 0 ? -rc : EINVAL, "sandbox '%s': %s", process, what);
}

const unsigned vmm_file_caps[VMM_N_FILE_CAPS] = {
    CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD,
};

/* Drops every capability but KEEP (those of them the process has: in the
 * permitted and bounding sets, and effective when EFFECTIVE). The bounding
 * set goes first, while CAP_SETPCAP (needed to shrink it) is still held;
 * ambient ones go explicitly because they survive execve of unprivileged
 * programs. */
static gboolean sandbox_drop_capabilities(const char *process, const unsigned *keep, gsize nkeep,
                                          gboolean effective, GError **error)
{
    if (capng_get_caps_process() != 0) {
        return vmm_set_errno(error, errno ? errno : EPERM,
                             "sandbox '%s': reading capabilities", process);
    }
    gboolean setpcap = capng_have_capability(CAPNG_EFFECTIVE, CAP_SETPCAP);
    gboolean *have = g_newa(gboolean, nkeep + 1);
    for (gsize i = 0; i < nkeep; i++) {
        have[i] = capng_have_capability(CAPNG_PERMITTED, keep[i]);
    }
    capng_clear(setpcap ? CAPNG_SELECT_BOTH : CAPNG_SELECT_CAPS);
    for (gsize i = 0; i < nkeep; i++) {
        if (have[i]) {
            capng_update(CAPNG_ADD, CAPNG_PERMITTED | (effective ? CAPNG_EFFECTIVE : 0) |
                                    (setpcap ? CAPNG_BOUNDING_SET : 0), keep[i]);
        }
    }
    if (setpcap && capng_apply(CAPNG_SELECT_BOUNDS) != 0) {
        return vmm_set_errno(error, errno ? errno : EPERM,
                             "sandbox '%s': clearing the capability bounding set", process);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
        return vmm_set_errno(error, errno, "sandbox '%s': clearing ambient capabilities", process);
    }
    if (capng_apply(CAPNG_SELECT_CAPS) != 0) {
        return vmm_set_errno(error, errno ? errno : EPERM,
                             "sandbox '%s': dropping capabilities", process);
    }
    return TRUE;
}

/* The register that holds clone's flags: s390 swaps the first two. */
#if defined(__s390__) || defined(__s390x__)
#define SANDBOX_CLONE_FLAGS_ARG(cmp, a, b) SCMP_A1(cmp, a, b)
#else
#define SANDBOX_CLONE_FLAGS_ARG(cmp, a, b) SCMP_A0(cmp, a, b)
#endif

/* Threads are always allowed: clone with CLONE_THREAD. Without the spawn
 * group that is the only clone that passes. clone3 passes its flags in
 * memory, which seccomp cannot read, so it is answered ENOSYS and glibc
 * falls back to clone (QEMU does the same). */
static int sandbox_add_clone_rules(scmp_filter_ctx ctx, const SandboxPlan *plan)
{
    int rc = 0;
    if (!sandbox_plan_has(plan, "spawn") && sandbox_plan_has(plan, "base")) {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                              SANDBOX_CLONE_FLAGS_ARG(SCMP_CMP_MASKED_EQ,
                                                      CLONE_THREAD, CLONE_THREAD));
    }
    if (rc == 0 && seccomp_syscall_resolve_name("clone3") >= 0) {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS),
                              seccomp_syscall_resolve_name("clone3"), 0);
    }
    return rc;
}

/* Without the sched group: as QEMU's resourcecontrol=deny, switching to
 * SCHED_IDLE (lowering oneself) stays possible. The two queries that
 * libraries make on their own answer ENOSYS instead of killing:
 * sched_getaffinity (glibc's pthread_getattr_np and malloc's arena sizing,
 * both of which treat ENOSYS as "no such facility") and sched_getattr
 * (GLib's first thread pool then falls back to a spawner thread). */
static int sandbox_add_sched_rules(scmp_filter_ctx ctx, const SandboxPlan *plan)
{
    if (sandbox_plan_has(plan, "sched")) {
        return 0;
    }
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(sched_setscheduler), 1,
                              SCMP_A1(SCMP_CMP_EQ, SCHED_IDLE));
    if (rc == 0) {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(sched_getaffinity), 0);
    }
    if (rc == 0) {
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(sched_getattr), 0);
    }
    return rc;
}

/* Without fs-read, opening a path answers EACCES instead of killing: glibc
 * opens files on its own in the middle of ordinary calls (malloc reads
 * /proc/sys/vm/overcommit_memory the first time free() shrinks a thread's
 * heap, and /sys/devices/system/cpu/online when it sizes its arenas) and
 * copes with a failed open, but not with SIGSYS. Such a process still opens
 * nothing. */
static int sandbox_add_open_rules(scmp_filter_ctx ctx, const SandboxPlan *plan)
{
    static const char *const opens[] = { "open", "openat", "openat2", NULL };
    if (sandbox_plan_has(plan, "fs-read") || !sandbox_plan_has(plan, "base")) {
        return 0;
    }
    for (const char *const *c = opens; *c; c++) {
        int nr = seccomp_syscall_resolve_name(*c);
        if (nr < 0) {
            continue;
        }
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), nr, 0);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

static gboolean sandbox_add_allow_rules(scmp_filter_ctx ctx, const SandboxPlan *plan,
                                        const char *process, GError **error)
{
    g_autoptr(GPtrArray) calls = sandbox_plan_allowlist(plan);
    gboolean any_clone = sandbox_plan_has(plan, "spawn");

    for (guint i = 0; i < calls->len; i++) {
        const char *call = g_ptr_array_index(calls, i);
        if (g_str_equal(call, "clone") && !any_clone) {
            continue; /* the conditional rule covers it */
        }
        int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, seccomp_syscall_resolve_name(call), 0);
        if (rc != 0) {
            g_autofree char *what = g_strdup_printf("seccomp rule for '%s'", call);
            return sandbox_fail_rc(error, rc, process, what);
        }
    }
    int rc = sandbox_add_clone_rules(ctx, plan);
    if (rc == 0) {
        rc = sandbox_add_sched_rules(ctx, plan);
    }
    if (rc == 0) {
        rc = sandbox_add_open_rules(ctx, plan);
    }
    if (rc != 0) {
        return sandbox_fail_rc(error, rc, process, "seccomp argument rules");
    }
    return TRUE;
}

static gboolean sandbox_load_filter(const VmmSandboxProfile *profile,
                                    const VmmSandboxPolicy *policy, GError **error)
{
    const char *process = profile->process ? profile->process : "?";
    SandboxPlan plan = { 0 };
    if (!sandbox_plan(profile, policy, &plan, error)) {
        return FALSE;
    }
    gboolean ok = FALSE;
    scmp_filter_ctx ctx = seccomp_init(sandbox_kill_action());
    if (ctx == NULL) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED,
                    "sandbox '%s': seccomp_init failed", process);
        goto out;
    }
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
    if (rc != 0) {
        sandbox_fail_rc(error, rc, process, "seccomp thread sync");
        goto out;
    }
    if (!sandbox_add_allow_rules(ctx, &plan, process, error)) {
        goto out;
    }
    rc = seccomp_load(ctx);
    if (rc != 0) {
        sandbox_fail_rc(error, rc, process, "loading the seccomp filter");
        goto out;
    }
    ok = TRUE;
out:
    if (ctx != NULL) {
        seccomp_release(ctx);
    }
    sandbox_plan_clear(&plan);
    return ok;
}

/* When a thread makes glibc create its ninth malloc arena, glibc counts the
 * CPUs to cap the arenas, by opening /sys/devices/system/cpu/online: a process
 * without fs-read would be killed in the middle of its work, at random (seen
 * in blockd's NBD workers). Setting the same cap now (glibc's default, 8 per
 * CPU) means glibc never has to look. */
static void sandbox_fix_malloc_arenas(void)
{
    int cpus = get_nprocs();
    mallopt(M_ARENA_MAX, 8 * (cpus > 0 ? cpus : 1));
}

static gboolean sandbox_filter_loaded;

static const char *const vcpu_thread_denied[] = {
    "clone", "clone3", "fork", "vfork", "execve", "execveat",
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "pipe", "pipe2", "memfd_create", "splice", "vmsplice", "tee",
    "ptrace", "process_vm_readv", "process_vm_writev",
    NULL
};

const char *const *vmm_vcpu_thread_denied(void)
{
    return vcpu_thread_denied;
}

gboolean vmm_sandbox_restrict_thread(const char *what, const char *const *denied, GError **error)
{
    if (!sandbox_filter_loaded)
        return TRUE;
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (!ctx) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED, "sandbox '%s': seccomp_init failed", what);
        return FALSE;
    }
    uint32_t kill = sandbox_kill_action();
    int rc = 0;
    for (const char *const *c = denied; *c && rc == 0; c++) {
        int nr = seccomp_syscall_resolve_name(*c);
        if (nr != __NR_SCMP_ERROR)
            rc = seccomp_rule_add(ctx, kill, nr, 0);
    }
    /* No code made at run time on this thread: W^X for its own mappings. */
    if (rc == 0)
        rc = seccomp_rule_add(ctx, kill, SCMP_SYS(mmap), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, kill, SCMP_SYS(mprotect), 1, SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC));
    if (rc == 0)
        rc = seccomp_load(ctx);   /* this thread only: no TSYNC */
    seccomp_release(ctx);
    if (rc != 0)
        return sandbox_fail_rc(error, rc, what, "loading the thread's seccomp filter");
    return TRUE;
}

gboolean vmm_sandbox_enter(const VmmSandboxProfile *profile,
                           const VmmSandboxPolicy *policy, GError **error)
{
    return vmm_sandbox_enter_keeping(profile, policy, NULL, 0, FALSE, error);
}

gboolean vmm_sandbox_enter_keeping(const VmmSandboxProfile *profile, const VmmSandboxPolicy *policy,
                                   const unsigned *caps, gsize ncaps, gboolean effective, GError **error)
{
    const char *process = profile->process ? profile->process : "?";

    /* Check the profile first so a typo fails before anything is dropped. */
    if (!sandbox_check_profile(profile, error)) {
        return FALSE;
    }
    if (!sandbox_drop_capabilities(process, caps, ncaps, effective, error)) {
        return FALSE;
    }
    /* Always, not only for elevateprivileges=children: it also binds every
     * child, and a filter cannot be loaded without CAP_SYS_ADMIN otherwise. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        return vmm_set_errno(error, errno, "sandbox '%s': setting no_new_privs", process);
    }
    if (!policy->enabled) {
        return TRUE;
    }
    sandbox_fix_malloc_arenas();
    if (!sandbox_load_filter(profile, policy, error))
        return FALSE;
    sandbox_filter_loaded = TRUE;
    return TRUE;
}

/* ---- state -------------------------------------------------------------------- */

JsonObject *vmm_sandbox_state_parse(const char *status)
{
    JsonObject *obj = json_object_new();
    gint64 seccomp_mode = 0;
    gboolean nnp = FALSE;
    const char *cap_eff = "";
    g_auto(GStrv) lines = g_strsplit(status, "\n", -1);

    for (guint i = 0; lines[i] != NULL; i++) {
        char *colon = strchr(lines[i], ':');
        if (colon == NULL) {
            continue;
        }
        *colon = '\0';
        const char *val = g_strstrip(colon + 1);
        if (g_str_equal(lines[i], "Seccomp")) {
            seccomp_mode = g_ascii_strtoll(val, NULL, 10);
        } else if (g_str_equal(lines[i], "NoNewPrivs")) {
            nnp = g_ascii_strtoll(val, NULL, 10) != 0;
        } else if (g_str_equal(lines[i], "CapEff")) {
            cap_eff = val;
        }
    }
    json_object_set_int_member(obj, "seccomp", seccomp_mode);
    json_object_set_boolean_member(obj, "no_new_privs", nnp);
    json_object_set_string_member(obj, "cap_eff", cap_eff);
    return obj;
}

JsonObject *vmm_sandbox_state_of_pid(int pid, GError **error)
{
    g_autofree char *path = pid > 0 ? g_strdup_printf("/proc/%d/status", pid)
                                    : g_strdup("/proc/self/status");
    g_autofree char *text = NULL;
    g_autoptr(GError) local = NULL;

    if (!g_file_get_contents(path, &text, NULL, &local)) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_IO, "sandbox state: %s", local->message);
        return NULL;
    }
    return vmm_sandbox_state_parse(text);
}

JsonObject *vmm_sandbox_state_self(void)
{
    return vmm_sandbox_state_of_pid(0, NULL);
}
