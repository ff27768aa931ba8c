#include "common/spawn.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Runs in the child between fork and exec: only async-signal-safe calls. */
static void move_fds_above(const VmmFdMap *map, guint nmap, int *moved, int floor)
{
    for (guint i = 0; i < nmap; i++) {
        /* Duplicating every source above all targets first means no dup2 below
         * can clobber a source that another entry still needs. */
        moved[i] = fcntl(map[i].parent_fd, F_DUPFD, floor);
    }
}

static G_NORETURN void child_exec(const char *const *argv, const char *const *envp,
                                  const VmmFdMap *map, guint nmap, int errpipe)
{
    int moved[64];
    int max_target = 2;
    gboolean have[3] = { FALSE, FALSE, FALSE };
    int err;

    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    }
    if (nmap > G_N_ELEMENTS(moved))
        goto fail_inval;
    for (guint i = 0; i < nmap; i++) {
        if (map[i].child_fd > max_target)
            max_target = map[i].child_fd;
    }
    int floor = MAX(max_target + 1, errpipe + 1);
    move_fds_above(map, nmap, moved, floor);
    for (guint i = 0; i < nmap; i++) {
        if (moved[i] < 0)
            goto fail;
    }
    int errpipe_high = fcntl(errpipe, F_DUPFD_CLOEXEC, floor + (int)nmap + 1);
    if (errpipe_high < 0)
        goto fail;
    errpipe = errpipe_high;
    for (guint i = 0; i < nmap; i++) {
        if (dup2(moved[i], map[i].child_fd) < 0)
            goto fail;
        if (map[i].child_fd <= 2)
            have[map[i].child_fd] = TRUE;
    }
    if (!have[0]) {
        int null = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null < 0 || dup2(null, 0) < 0)
            goto fail;
        if (null != 0)
            close(null);
    }
    /* Everything between the highest mapped fd and the error pipe goes, and so
     * does every unmapped fd below it (but stdout/stderr stay inherited). */
    for (int fd = 3; fd <= max_target; fd++) {
        gboolean wanted = FALSE;
        for (guint i = 0; i < nmap; i++)
            wanted |= map[i].child_fd == fd;
        if (!wanted)
            close(fd);
    }
    if (syscall(SYS_close_range, max_target + 1, errpipe - 1, 0) < 0)
        goto fail;
    if (syscall(SYS_close_range, errpipe + 1, ~0U, 0) < 0)
        goto fail;
    execve(argv[0], (char *const *)argv, (char *const *)(envp ? envp : (const char *const *)environ));
fail:
    err = errno;
    (void)!write(errpipe, &err, sizeof(err));
    _exit(127);
fail_inval:
    err = EINVAL;
    (void)!write(errpipe, &err, sizeof(err));
    _exit(127);
}

pid_t vmm_spawn(const char *const *argv, const char *const *envp, const VmmFdMap *map,
                guint nmap, gboolean clone_parent, GError **error)
{
    int errpipe[2];
    if (pipe2(errpipe, O_CLOEXEC) < 0) {
        vmm_set_errno(error, errno, "spawn %s: pipe", argv[0]);
        return -1;
    }
    pid_t pid;
    if (clone_parent)
        pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, NULL, NULL, NULL, 0);
    else
        pid = fork();
    if (pid < 0) {
        int e = errno;
        close(errpipe[0]);
        close(errpipe[1]);
        vmm_set_errno(error, e, "spawn %s: fork", argv[0]);
        return -1;
    }
    if (pid == 0) {
        close(errpipe[0]);
        child_exec(argv, envp, map, nmap, errpipe[1]);
    }
    close(errpipe[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(errpipe[0], &child_errno, sizeof(child_errno));
    } while (n < 0 && errno == EINTR);
    close(errpipe[0]);
    if (n == sizeof(child_errno)) {
        /* Our own child can be reaped here; a CLONE_PARENT child belongs to our
         * parent, which will see it exit with 127. */
        if (!clone_parent)
            waitpid(pid, NULL, 0);
        vmm_set_errno(error, child_errno, "spawn %s", argv[0]);
        return -1;
    }
    return pid;
}

char *vmm_describe_wait_status(int status)
{
    if (WIFEXITED(status))
        return g_strdup_printf("exited with status %d", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        const char *name = sigabbrev_np(sig);
        return g_strdup_printf("killed by signal %d (SIG%s)%s", sig, name ? name : "?",
                               WCOREDUMP(status) ? ", core dumped" : "");
    }
    return g_strdup_printf("stopped or unknown status 0x%x", status);
}
