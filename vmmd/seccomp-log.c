/* When seccomp kills a process (SECCOMP_RET_KILL_PROCESS), the kernel logs an
 * audit record "type=1326 ... pid=N ... sig=31 arch=c000003e syscall=41" to
 * the kernel log. The exit status only says SIGSYS, so vmmd reads that record
 * to name the forbidden call. /dev/kmsg is opened at start (before vmmd's own
 * sandbox) and positioned at its end, so only new records are read. The kernel
 * rate-limits these records (10 per 5 s when no audit daemon takes them): after
 * a burst of kills the call may be unknown, and vmmd says so. */
#include "vmmd/vmmd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int vmm_seccomp_log_open(void)
{
    int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0)
        lseek(fd, 0, SEEK_END);
    return fd;
}

/* Parses one kmsg record; returns the syscall number if it is a seccomp
 * record for PID, else -1. */
static long seccomp_record_syscall(const char *rec, int pid, guint32 *arch)
{
    if (!strstr(rec, "type=1326"))
        return -1;
    g_autofree char *needle = g_strdup_printf(" pid=%d ", pid);
    if (!strstr(rec, needle))
        return -1;
    const char *a = strstr(rec, " arch=");
    if (a)
        *arch = (guint32)strtoul(a + 6, NULL, 16);
    const char *s = strstr(rec, " syscall=");
    return s ? strtol(s + 9, NULL, 10) : -1;
}

/* The audit record is printed by the kauditd thread, so it may reach the log
 * a little after the process is gone: wait this long for it. */
#define RECORD_WAIT_MS 300

char *vmm_seccomp_log_lookup(int kmsg_fd, int pid)
{
    if (kmsg_fd < 0)
        return NULL;
    char rec[8192];
    long found = -1;
    guint32 arch = 0;
    gint64 deadline = g_get_monotonic_time() + RECORD_WAIT_MS * 1000;
    while (found < 0) {
        ssize_t n = read(kmsg_fd, rec, sizeof(rec) - 1);
        if (n < 0 && errno == EPIPE)
            continue; /* records were overwritten; go on with the next */
        if (n < 0 && errno == EAGAIN) {
            gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
            struct pollfd p = { .fd = kmsg_fd, .events = POLLIN };
            if (left_ms <= 0 || poll(&p, 1, (int)left_ms) <= 0)
                break;
            continue;
        }
        if (n <= 0)
            break;
        rec[n] = '\0';
        found = seccomp_record_syscall(rec, pid, &arch);
    }
    if (found < 0)
        return NULL;
    char *name = seccomp_syscall_resolve_num_arch(arch ? arch : SCMP_ARCH_NATIVE, (int)found);
    char *result = name ? g_strdup_printf("%s (%ld)", name, found) : g_strdup_printf("#%ld", found);
    free(name);
    return result;
}
