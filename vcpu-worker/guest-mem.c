/* Bounds-checked guest-physical to host translation. */
#include "vcpu-worker/guest-mem.h"
#include "common/error.h"

#include <string.h>

void vmm_guest_mem_init(VmmGuestMem *mem, void *base, uint64_t size)
{
    memset(mem, 0, sizeof(*mem));
    mem->regions[0] = (VmmGuestMemRegion){ .gpa = 0, .size = size, .host = base };
    mem->n_regions = 1;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

gboolean vmm_guest_mem_add_region(VmmGuestMem *mem, uint64_t gpa, void *host, uint64_t size,
                                  GError **error)
{
    if (mem->n_regions >= VMM_GUEST_MEM_MAX_REGIONS) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_TOO_BIG,
                    "guest memory: more than %d RAM regions", VMM_GUEST_MEM_MAX_REGIONS);
        return FALSE;
    }
    if (size == 0 || gpa + size < gpa) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "guest memory: region at 0x%" G_GINT64_MODIFIER "x of size 0x%"
                    G_GINT64_MODIFIER "x is empty or wraps", gpa, size);
        return FALSE;
    }
    for (unsigned i = 0; i < mem->n_regions; i++) {
        const VmmGuestMemRegion *r = &mem->regions[i];
        if (ranges_overlap(gpa, size, r->gpa, r->size)) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                        "guest memory: region at 0x%" G_GINT64_MODIFIER "x overlaps the one at 0x%"
                        G_GINT64_MODIFIER "x", gpa, r->gpa);
            return FALSE;
        }
    }
    mem->regions[mem->n_regions++] = (VmmGuestMemRegion){ .gpa = gpa, .size = size, .host = host };
    return TRUE;
}

static const VmmGuestMemRegion *find_region(const VmmGuestMem *mem, uint64_t gpa)
{
    for (unsigned i = 0; i < mem->n_regions; i++) {
        const VmmGuestMemRegion *r = &mem->regions[i];
        /* Written as an offset so that no sum can wrap. */
        if (gpa >= r->gpa && gpa - r->gpa < r->size)
            return r;
    }
    return NULL;
}

void *vmm_guest_mem_map_prefix(const VmmGuestMem *mem, uint64_t gpa, uint64_t len,
                               uint64_t *contiguous)
{
    const VmmGuestMemRegion *r = find_region(mem, gpa);
    if (!r)
        return NULL;
    uint64_t offset = gpa - r->gpa;
    *contiguous = MIN(len, r->size - offset);
    return r->host + offset;
}

void *vmm_guest_mem_ptr(const VmmGuestMem *mem, uint64_t gpa, uint64_t len)
{
    uint64_t contiguous;
    if (len == 0) {
        const VmmGuestMemRegion *r = find_region(mem, gpa);
        return r ? r->host + (gpa - r->gpa) : NULL;
    }
    void *p = vmm_guest_mem_map_prefix(mem, gpa, len, &contiguous);
    return p && contiguous == len ? p : NULL;
}

static bool range_is_ram(const VmmGuestMem *mem, uint64_t gpa, uint64_t len)
{
    while (len > 0) {
        uint64_t n;
        if (!vmm_guest_mem_map_prefix(mem, gpa, len, &n))
            return false;
        gpa += n;
        len -= n;
    }
    return true;
}

bool vmm_guest_mem_read(const VmmGuestMem *mem, uint64_t gpa, void *buf, uint64_t len)
{
    if (gpa + len < gpa || !range_is_ram(mem, gpa, len))
        return false;
    uint8_t *out = buf;
    while (len > 0) {
        uint64_t n;
        const uint8_t *p = vmm_guest_mem_map_prefix(mem, gpa, len, &n);
        memcpy(out, p, n);
        out += n;
        gpa += n;
        len -= n;
    }
    return true;
}

bool vmm_guest_mem_write(const VmmGuestMem *mem, uint64_t gpa, const void *buf, uint64_t len)
{
    if (gpa + len < gpa || !range_is_ram(mem, gpa, len))
        return false;
    const uint8_t *in = buf;
    while (len > 0) {
        uint64_t n;
        uint8_t *p = vmm_guest_mem_map_prefix(mem, gpa, len, &n);
        memcpy(p, in, n);
        in += n;
        gpa += n;
        len -= n;
    }
    return true;
}

uint64_t vmm_guest_mem_total(const VmmGuestMem *mem)
{
    uint64_t total = 0;
    for (unsigned i = 0; i < mem->n_regions; i++)
        total += mem->regions[i].size;
    return total;
}

unsigned vmm_guest_ram_ranges(const uint8_t *base, uint64_t size, const struct iovec *iov, unsigned n,
                              VmmRamRange *out)
{
    unsigned count = 0;
    uint64_t last_end = UINT64_MAX;
    for (unsigned i = 0; i < n; i++) {
        uintptr_t b = (uintptr_t)iov[i].iov_base, start = (uintptr_t)base;
        size_t len = iov[i].iov_len;
        if (b < start || len > size || (uint64_t)(b - start) > size - len || len > UINT32_MAX)
            return 0;
        uint64_t at = (uint64_t)(b - start);
        if (count && at == last_end && out[count - 1].len + (uint64_t)len <= UINT32_MAX)
            out[count - 1].len += (uint32_t)len;
        else
            out[count++] = (VmmRamRange){ at, (uint32_t)len };
        last_end = at + len;
    }
    return count;
}
