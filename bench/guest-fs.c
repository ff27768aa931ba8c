/* guest-fs: the file-system workloads of bench/bench-9p.sh, built static so
 * that the same binary runs in the rig's busybox guest (on a virtio-9p mount)
 * and in L1 (on a 9p mount over TCP). One measurement per run:
 *   guest-fs seqwrite FILE MIB   write MIB MiB in 1 MiB requests, then fsync
 *   guest-fs seqread FILE MIB    read them back in 1 MiB requests
 *   guest-fs create DIR N        mkdir DIR; N files of 1 KiB (open, write, close)
 *   guest-fs stat DIR N          stat each of them
 *   guest-fs delete DIR N        unlink each, rmdir DIR
 *   guest-fs mkfiles DIR N       mkdir DIR; N empty files (setup for readdir)
 *   guest-fs readdir DIR ROUNDS  list DIR ROUNDS times (opendir, readdir to the end)
 * Prints "GUEST-FS OP COUNT NANOSECONDS" (COUNT: bytes for seq*, files or
 * entries otherwise). Exit 1 with a message on any failure. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SEQ_CHUNK (1 << 20)
#define SMALL_SIZE 1024

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "guest-fs: %s %s: %s\n", what, path, strerror(errno));
    return -1;
}

static long seq_io(const char *file, long mib, int write_op)
{
    int fd = write_op ? open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(file, O_RDONLY);
    if (fd < 0)
        return fail("open", file);
    char *buf = malloc(SEQ_CHUNK);
    if (!buf)
        return -1;
    memset(buf, 0x5a, SEQ_CHUNK);
    for (long i = 0; i < mib; i++) {
        size_t done = 0;
        while (done < SEQ_CHUNK) {
            ssize_t n = write_op ? write(fd, buf + done, SEQ_CHUNK - done) : read(fd, buf + done, SEQ_CHUNK - done);
            if (n <= 0)
                return fail(write_op ? "write" : "read (short file?)", file);
            done += (size_t)n;
        }
    }
    if (write_op && fsync(fd) < 0)
        return fail("fsync", file);
    free(buf);
    close(fd);
    return mib * SEQ_CHUNK;
}

static void name_of(char *out, size_t len, const char *dir, long i)
{
    snprintf(out, len, "%s/f%06ld", dir, i);
}

static long make_files(const char *dir, long n, size_t size)
{
    char path[4096], buf[SMALL_SIZE];
    memset(buf, 'x', sizeof(buf));
    if (mkdir(dir, 0755) < 0)
        return fail("mkdir", dir);
    for (long i = 0; i < n; i++) {
        name_of(path, sizeof(path), dir, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0)
            return fail("create", path);
        if (size && write(fd, buf, size) != (ssize_t)size)
            return fail("write", path);
        close(fd);
    }
    return n;
}

static long stat_files(const char *dir, long n)
{
    char path[4096];
    struct stat st;
    for (long i = 0; i < n; i++) {
        name_of(path, sizeof(path), dir, i);
        if (stat(path, &st) < 0)
            return fail("stat", path);
    }
    return n;
}

static long delete_files(const char *dir, long n)
{
    char path[4096];
    for (long i = 0; i < n; i++) {
        name_of(path, sizeof(path), dir, i);
        if (unlink(path) < 0)
            return fail("unlink", path);
    }
    if (rmdir(dir) < 0)
        return fail("rmdir", dir);
    return n;
}

static long list_dir(const char *dir, long rounds)
{
    long total = 0;
    for (long r = 0; r < rounds; r++) {
        DIR *d = opendir(dir);
        if (!d)
            return fail("opendir", dir);
        errno = 0;
        while (readdir(d))
            total++;
        if (errno)
            return fail("readdir", dir);
        closedir(d);
    }
    return total;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: guest-fs seqwrite|seqread|create|stat|delete|mkfiles|readdir PATH N\n");
        return 2;
    }
    const char *op = argv[1], *path = argv[2];
    long n = atol(argv[3]), count;
    if (n <= 0) {
        fprintf(stderr, "guest-fs: N must be positive\n");
        return 2;
    }
    uint64_t t0 = now_ns();
    if (!strcmp(op, "seqwrite") || !strcmp(op, "seqread"))
        count = seq_io(path, n, op[3] == 'w');
    else if (!strcmp(op, "create"))
        count = make_files(path, n, SMALL_SIZE);
    else if (!strcmp(op, "mkfiles"))
        count = make_files(path, n, 0);
    else if (!strcmp(op, "stat"))
        count = stat_files(path, n);
    else if (!strcmp(op, "delete"))
        count = delete_files(path, n);
    else if (!strcmp(op, "readdir"))
        count = list_dir(path, n);
    else {
        fprintf(stderr, "guest-fs: unknown operation '%s'\n", op);
        return 2;
    }
    if (count < 0)
        return 1;
    printf("GUEST-FS %s %ld %llu\n", op, count, (unsigned long long)(now_ns() - t0));
    fflush(stdout);
    return 0;
}
