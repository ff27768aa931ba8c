/*
 * kvm-probe: proves that /dev/kvm is a usable KVM, as the rig's self-test needs.
 * Opens the device, checks the stable API version and creates (and drops) a VM.
 * Exit status 0 when all of that works, 1 otherwise, with the failing step named.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define KVM_STABLE_API_VERSION 12

static int open_kvm(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        fprintf(stderr, "kvm-probe: %s: open: %s\n", path, strerror(errno));
    return fd;
}

static int check_api_version(int kvm, const char *path)
{
    int version = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (version < 0) {
        fprintf(stderr, "kvm-probe: %s: KVM_GET_API_VERSION: %s\n", path, strerror(errno));
        return -1;
    }
    if (version != KVM_STABLE_API_VERSION) {
        fprintf(stderr, "kvm-probe: %s: API version %d, expected %d\n", path, version,
                KVM_STABLE_API_VERSION);
        return -1;
    }
    printf("kvm-probe: %s: API version %d\n", path, version);
    return 0;
}

static int check_create_vm(int kvm, const char *path)
{
    int vm;

    /* Retry on EINTR: creating a VM may be interrupted on loaded hosts. */
    do {
        vm = ioctl(kvm, KVM_CREATE_VM, 0);
    } while (vm < 0 && errno == EINTR);
    if (vm < 0) {
        fprintf(stderr, "kvm-probe: %s: KVM_CREATE_VM: %s\n", path, strerror(errno));
        return -1;
    }
    printf("kvm-probe: %s: KVM_CREATE_VM ok\n", path);
    close(vm);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "/dev/kvm";
    int kvm = open_kvm(path);
    int ok;

    if (kvm < 0)
        return 1;
    ok = check_api_version(kvm, path) == 0 && check_create_vm(kvm, path) == 0;
    close(kvm);
    return ok ? 0 : 1;
}
