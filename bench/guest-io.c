/* guest-io: the guest side of bench/bench-guest.sh, built static so that it
 * runs in the rig's busybox guest. One measurement per run, with O_DIRECT so
 * that the guest's page cache stays out of it:
 *   guest-io DEV seqread|seqwrite MIB BASE      1 MiB requests over MIB MiB from BASE
 *   guest-io DEV randread|randwrite COUNT BASE  COUNT 4 KiB requests at seeded random
 *                                               4 KiB-aligned offsets from BASE to the end
 * BASE (bytes, 4 KiB-aligned) keeps the header of the bench's disks intact.
 * Prints "GUEST-IO OP BYTES NANOSECONDS". Queue depth 1 (one request at a time). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64: the same offsets in both VMMs' guests. */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int transfer(int fd, int write_op, void *buf, size_t len, off_t off)
{
    ssize_t n = write_op ? pwrite(fd, buf, len, off) : pread(fd, buf, len, off);
    if (n != (ssize_t)len) {
        perror(write_op ? "pwrite" : "pread");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: guest-io DEV seqread|seqwrite|randread|randwrite N BASE\n");
        return 2;
    }
    const char *op = argv[2];
    int write_op = strstr(op, "write") != NULL, random_op = strncmp(op, "rand", 4) == 0;
    long n = atol(argv[3]);
    uint64_t base = strtoull(argv[4], NULL, 0);
    int fd = open(argv[1], (write_op ? O_RDWR : O_RDONLY) | O_DIRECT);
    uint64_t dev_size = 0;
    if (fd < 0 || ioctl(fd, BLKGETSIZE64, &dev_size) < 0 || n <= 0 || base % 4096 ||
        base + (1 << 20) > dev_size) {
        perror(argv[1]);
        return 1;
    }
    size_t len = random_op ? 4096 : 1 << 20;
    void *buf;
    if (posix_memalign(&buf, 4096, len))
        return 1;
    memset(buf, 0x5a, len);
    uint64_t seed = 0x9e3779b97f4a7c15ull, blocks = (dev_size - base) / 4096, t0 = now_ns();
    for (long i = 0; i < n; i++) {
        off_t off = (off_t)base + (random_op ? (off_t)(next_random(&seed) % blocks) * 4096 : (off_t)i * (off_t)len);
        if (transfer(fd, write_op, buf, len, off) < 0)
            return 1;
    }
    if (write_op && fdatasync(fd) < 0) {
        perror("fdatasync");
        return 1;
    }
    printf("GUEST-IO %s %llu %llu\n", op, (unsigned long long)(n * len), (unsigned long long)(now_ns() - t0));
    return 0;
}
