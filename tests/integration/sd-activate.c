/* A stand-in for systemd in tests: binds a listening Unix socket and a
 * notification socket, then runs COMMAND with the socket at fd 3 and the
 * environment systemd sets (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
 * NOTIFY_SOCKET, WATCHDOG_USEC). Every notification datagram is printed as one
 * line ("READY=1|STATUS=..."). Exits with COMMAND's status, or 124 after
 * --timeout seconds (the command is then killed by its pid).
 *   sd-activate --listen PATH --notify PATH [--timeout S] -- COMMAND ARGS... */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>

static int unix_socket(int type, const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    if (fd < 0 || strlen(path) >= sizeof(sa.sun_path))
        return -1;
    strcpy(sa.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return -1;
    if (type == SOCK_STREAM && listen(fd, 16) < 0)
        return -1;
    return fd;
}

static void print_datagram(int fd)
{
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (char *p = buf; *p; p++) {
        if (*p == '\n')
            *p = '|';
    }
    printf("%s\n", buf);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    const char *listen_path = NULL, *notify_path = NULL;
    int timeout = 60, i;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_path = argv[++i];
        else if (!strcmp(argv[i], "--notify") && i + 1 < argc)
            notify_path = argv[++i];
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
            timeout = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
    }
    if (!listen_path || !notify_path || i >= argc) {
        fprintf(stderr, "usage: sd-activate --listen PATH --notify PATH [--timeout S] -- COMMAND...\n");
        return 2;
    }
    int lfd = unix_socket(SOCK_STREAM, listen_path);
    int nfd = unix_socket(SOCK_DGRAM, notify_path);
    if (lfd < 0 || nfd < 0) {
        perror("sd-activate: socket");
        return 2;
    }
    pid_t pid = fork();
    if (pid == 0) {
        char pidbuf[32];
        if (dup2(lfd, 3) < 0)
            _exit(127);
        /* dup2 onto itself (the socket already was fd 3) keeps close-on-exec. */
        if (fcntl(3, F_SETFD, 0) < 0)
            _exit(127);
        snprintf(pidbuf, sizeof(pidbuf), "%d", getpid());
        setenv("LISTEN_FDS", "1", 1);
        setenv("LISTEN_PID", pidbuf, 1);
        setenv("LISTEN_FDNAMES", "qmp", 1);
        setenv("NOTIFY_SOCKET", notify_path, 1);
        setenv("WATCHDOG_USEC", "400000", 1);
        execv(argv[i], argv + i);
        _exit(127);
    }
    close(lfd);
    time_t deadline = time(NULL) + timeout;
    int status;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (time(NULL) > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "sd-activate: timed out\n");
            return 124;
        }
        struct pollfd p = { .fd = nfd, .events = POLLIN };
        if (poll(&p, 1, 100) > 0)
            print_datagram(nfd);
    }
    print_datagram(nfd);
    unlink(listen_path);
    unlink(notify_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
