/* A view of guest RAM for the device models: guest-physical ranges mapped into
 * our address space. Every access a device makes on behalf of the guest goes
 * through here, and every translation checks the whole range, so a malicious
 * driver cannot make a device read or write outside RAM. */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#define VMM_GUEST_MEM_MAX_REGIONS 4

typedef struct {
    uint64_t gpa;   /* first guest-physical address */
    uint64_t size;
    uint8_t *host;  /* where the region is mapped here */
} VmmGuestMemRegion;

typedef struct {
    unsigned n_regions;
    VmmGuestMemRegion regions[VMM_GUEST_MEM_MAX_REGIONS];
} VmmGuestMem;

/* One region: RAM at guest-physical 0..SIZE, mapped at BASE. */
void vmm_guest_mem_init(VmmGuestMem *mem, void *base, uint64_t size);
/* Adds a region (e.g. RAM above the 32-bit MMIO hole). Regions must not
 * overlap; errors name the conflict. */
gboolean vmm_guest_mem_add_region(VmmGuestMem *mem, uint64_t gpa, void *host, uint64_t size,
                                  GError **error);

/* The host address of [GPA, GPA+LEN) when it lies wholly inside one region,
 * else NULL. LEN 0 is allowed and checks GPA alone. */
void *vmm_guest_mem_ptr(const VmmGuestMem *mem, uint64_t gpa, uint64_t len);
/* The host address of GPA and, in *CONTIGUOUS, how many bytes from there up to
 * LEN are in the same region; NULL when GPA is not RAM. */
void *vmm_guest_mem_map_prefix(const VmmGuestMem *mem, uint64_t gpa, uint64_t len,
                               uint64_t *contiguous);
/* Whole-range copies that may cross adjacent regions; FALSE (nothing copied
 * out of RAM) when any byte of the range is not RAM. */
bool vmm_guest_mem_read(const VmmGuestMem *mem, uint64_t gpa, void *buf, uint64_t len);
bool vmm_guest_mem_write(const VmmGuestMem *mem, uint64_t gpa, const void *buf, uint64_t len);
/* Total bytes of RAM over all regions. */
uint64_t vmm_guest_mem_total(const VmmGuestMem *mem);

/* A piece of a guest-RAM mapping, as offset from its start (an offset into
 * the RAM's memfd, which blockd and fsd map too). */
typedef struct {
    uint64_t offset;
    uint32_t len;
} VmmRamRange;
/* The buffers IOV (N) as ranges of the RAM mapped at BASE (SIZE bytes) in
 * OUT (room for N): adjacent buffers merged, no range over 4 GiB - 1.
 * Returns how many, or 0 when a buffer is not wholly inside it. */
unsigned vmm_guest_ram_ranges(const uint8_t *base, uint64_t size, const struct iovec *iov, unsigned n,
                              VmmRamRange *out);
