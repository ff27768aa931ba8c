/* See guest-ram.h. */
#include "common/guest-ram.h"
#include "common/log.h"

#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A huge page needs its virtual range aligned; KVM maps a huge page into the
 * guest only where guest-physical and host-virtual addresses agree modulo
 * 2 MiB, and a process mapping the file elsewhere gets it in 4 KiB pieces.
 * Under nested virtualisation every page first touched costs a nested page
 * fault: 4 KiB pages made Linux's boot ~0.7 s slower in the rig. */
void *vmm_guest_ram_map(int fd, guint64 size, int flags)
{
    const guint64 huge = 2 * 1024 * 1024;
    struct stat st;
    /* A regular file (a memfd too) shorter than SIZE would SIGBUS on access. */
    if (size == 0 || size > G_MAXSIZE - huge || fstat(fd, &st) < 0 ||
        (S_ISREG(st.st_mode) && (guint64)st.st_size < size)) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    guint8 *area = mmap(NULL, size + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED)
        return MAP_FAILED;
    guint8 *start = (guint8 *)(((guintptr)area + huge - 1) & ~(guintptr)(huge - 1));
    void *p = mmap(start, size, PROT_READ | PROT_WRITE, flags | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) {
        int saved = errno;
        munmap(area, size + huge);
        errno = saved;
        return MAP_FAILED;
    }
    /* What is left of the reservation on either side; the tail is never empty. */
    if (start > area)
        munmap(area, (size_t)(start - area));
    munmap(start + size, (size_t)(area + huge - start));
    /* Advice only: hugetlbfs files have huge pages anyway and refuse it. */
    madvise(p, size, MADV_HUGEPAGE);
    return p;
}

guint8 *vmm_guest_ram_adopt(int fd, guint64 size, const char *what)
{
    static guint8 *adopted;
    static guint64 adopted_size;
    if (adopted) {
        close(fd);
        return size == adopted_size ? adopted : NULL;
    }
    void *p = vmm_guest_ram_map(fd, size, MAP_SHARED);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED) {
        vmm_warn("guest memory of %" G_GUINT64_FORMAT " bytes: mmap: %s; %s goes through the socket", size,
                 g_strerror(err), what);
        return NULL;
    }
    /* The guest's memory is not the helper's to dump. */
    madvise(p, (size_t)size, MADV_DONTDUMP);
    adopted = p;
    adopted_size = size;
    return adopted;
}
