/* Starting a program with exactly the file descriptors meant for it. */
#pragma once
#include <glib.h>
#include <sys/types.h>

typedef struct {
    int parent_fd; /* an fd in this process */
    int child_fd;  /* the number it gets in the child */
} VmmFdMap;

/* fork+exec ARGV[0] (a path) with ARGV and ENVP (NULL: inherit environ).
 * The child gets MAP's fds at their child numbers, close-on-exec cleared, and
 * no other fd: stdin is /dev/null and stdout/stderr are inherited unless MAP
 * names 0, 1 or 2. With CLONE_PARENT the child becomes a child of our parent
 * (the spawner uses it so that vmmd reaps the helpers it asked for).
 * Returns the pid, or -1 with ERROR (exec failures are reported: the child
 * writes errno into a close-on-exec pipe). */
pid_t vmm_spawn(const char *const *argv, const char *const *envp, const VmmFdMap *map,
                guint nmap, gboolean clone_parent, GError **error);

/* "exited with status 3", "killed by signal 31 (SIGSYS)", ... */
char *vmm_describe_wait_status(int status);
