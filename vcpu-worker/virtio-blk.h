/* virtio-blk (virtio 1.x section 5.2) over virtio-mmio: a guest disk whose
 * data lives in a backend (later the NBD client speaking to blockd).
 *
 * Requests are handed to the backend as they are popped and finish whenever
 * the backend says so, in any order; many are in flight at once. A failed
 * request follows the drive's rerror (reads) or werror (writes, flushes,
 * discards, write-zeroes) action, as QEMU's -drive does. */
#pragma once
#include <glib.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "vcpu-worker/guest-mem.h"
#include "vcpu-worker/virtio-mmio.h"

#define VIRTIO_BLK_F_SIZE_MAX 1
#define VIRTIO_BLK_F_SEG_MAX 2
#define VIRTIO_BLK_F_GEOMETRY 4
#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_BLK_SIZE 6
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_F_TOPOLOGY 10
#define VIRTIO_BLK_F_CONFIG_WCE 11
#define VIRTIO_BLK_F_MQ 12
#define VIRTIO_BLK_F_DISCARD 13
#define VIRTIO_BLK_F_WRITE_ZEROES 14

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP 1
#define VIRTIO_BLK_ID_BYTES 20
#define VIRTIO_BLK_SECTOR_SIZE 512

/* Config space offsets (struct virtio_blk_config). */
#define VIRTIO_BLK_CFG_CAPACITY 0
#define VIRTIO_BLK_CFG_SIZE_MAX 8
#define VIRTIO_BLK_CFG_SEG_MAX 12
#define VIRTIO_BLK_CFG_BLK_SIZE 20
#define VIRTIO_BLK_CFG_PHYSICAL_BLOCK_EXP 24
#define VIRTIO_BLK_CFG_ALIGNMENT_OFFSET 25
#define VIRTIO_BLK_CFG_MIN_IO_SIZE 26
#define VIRTIO_BLK_CFG_OPT_IO_SIZE 28
#define VIRTIO_BLK_CFG_WRITEBACK 32
#define VIRTIO_BLK_CFG_NUM_QUEUES 34
#define VIRTIO_BLK_CFG_MAX_DISCARD_SECTORS 36
#define VIRTIO_BLK_CFG_MAX_DISCARD_SEG 40
#define VIRTIO_BLK_CFG_DISCARD_SECTOR_ALIGNMENT 44
#define VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SECTORS 48
#define VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SEG 52
#define VIRTIO_BLK_CFG_WRITE_ZEROES_MAY_UNMAP 56
#define VIRTIO_BLK_CONFIG_SIZE 60

/* What to do when the backend fails a request (QEMU's werror=/rerror=). */
typedef enum {
    VMM_BLK_ERROR_REPORT,   /* the guest gets VIRTIO_BLK_S_IOERR */
    VMM_BLK_ERROR_IGNORE,   /* the guest is told it succeeded */
    VMM_BLK_ERROR_STOP,     /* the request waits; the VM stops until resumed */
    VMM_BLK_ERROR_ENOSPC,   /* stop on ENOSPC, report anything else */
} VmmBlkErrorAction;

/* "report", "ignore", "stop", "enospc". */
const char *vmm_blk_error_action_name(VmmBlkErrorAction action);
gboolean vmm_blk_error_action_parse(const char *text, VmmBlkErrorAction *action, GError **error);

typedef struct VmmVirtioBlk VmmVirtioBlk;
typedef struct VmmBlkRequest VmmBlkRequest;

/* The disk's data. Every call starts one operation and returns; the backend
 * then calls vmm_virtio_blk_complete(REQ, 0 or -errno) exactly once, from any
 * thread, possibly before the call returns. One request may make more than
 * one call (a multi-segment discard, a write followed by a flush). The pieces
 * of IOV point into guest RAM and stay valid until the completion. Offsets and
 * lengths are in bytes. */
typedef struct {
    void (*read)(void *backend, uint64_t offset, const struct iovec *iov, unsigned niov,
                 VmmBlkRequest *req);
    void (*write)(void *backend, uint64_t offset, const struct iovec *iov, unsigned niov,
                  VmmBlkRequest *req);
    void (*flush)(void *backend, VmmBlkRequest *req);
    void (*discard)(void *backend, uint64_t offset, uint64_t len, VmmBlkRequest *req);
    void (*write_zeroes)(void *backend, uint64_t offset, uint64_t len, bool may_unmap,
                         VmmBlkRequest *req);
} VmmBlkBackendOps;

/* The VM-level side of errors: called, outside the device's lock, for every
 * failed request with the action taken (QMP's BLOCK_IO_ERROR). With
 * VMM_BLK_ERROR_STOP (and ENOSPC that stops) the hook stops the VM; the
 * request is kept until vmm_virtio_blk_resume(). */
typedef void (*VmmBlkIoErrorFn)(void *opaque, VmmVirtioBlk *blk, VmmBlkErrorAction action,
                                bool is_read, int err);

typedef struct {
    const char *id;               /* the drive, for messages */
    uint64_t capacity;            /* in 512-byte sectors */
    uint32_t blk_size;            /* logical block size; 0 means 512 */
    uint8_t physical_block_exp;   /* physical block = blk_size << exp */
    uint8_t alignment_offset;
    uint16_t min_io_size;         /* in logical blocks */
    uint32_t opt_io_size;         /* in logical blocks */
    uint32_t size_max;            /* largest piece; 0: not advertised */
    uint32_t seg_max;             /* most data pieces per request; 0: queue size - 2 */
    uint16_t num_queues;          /* 0 means 1; more than 1 offers MQ */
    uint16_t queue_size;          /* 0 means 256 */
    bool read_only;
    bool discard;
    bool write_zeroes;
    bool config_wce;              /* offer CONFIG_WCE: the guest may switch the cache mode */
    bool writethrough;            /* start with the write cache off */
    uint32_t max_discard_sectors;       /* 0 means 0x3fffff */
    uint32_t max_discard_seg;           /* 0 means 1 */
    uint32_t discard_sector_alignment;  /* 0 means blk_size / 512 */
    uint32_t max_write_zeroes_sectors;  /* 0 means 0x3fffff */
    uint32_t max_write_zeroes_seg;      /* 0 means 1 */
    bool write_zeroes_may_unmap;
    const char *serial;           /* GET_ID; at most 20 bytes are used */
    VmmBlkErrorAction werror;
    VmmBlkErrorAction rerror;
} VmmVirtioBlkConfig;

/* QEMU's defaults: werror=enospc, rerror=report. */
void vmm_virtio_blk_config_init(VmmVirtioBlkConfig *config);

VmmVirtioBlk *vmm_virtio_blk_new(const VmmVirtioBlkConfig *config, const VmmGuestMem *mem,
                                 const VmmBlkBackendOps *ops, void *backend, GError **error);
void vmm_virtio_blk_free(VmmVirtioBlk *blk);
VmmVirtioMmio *vmm_virtio_blk_transport(VmmVirtioBlk *blk);
void vmm_virtio_blk_set_io_error_hook(VmmVirtioBlk *blk, VmmBlkIoErrorFn fn, void *opaque);

/* The backend's completion of one call; RET is 0 or -errno. */
void vmm_virtio_blk_complete(VmmBlkRequest *req, int ret);
/* Resubmits the requests a stop action kept (QMP cont). */
void vmm_virtio_blk_resume(VmmVirtioBlk *blk);
/* Requests at the backend, and requests kept by a stop action. */
unsigned vmm_virtio_blk_in_flight(VmmVirtioBlk *blk);
unsigned vmm_virtio_blk_stopped(VmmVirtioBlk *blk);
/* The disk was resized: new capacity in sectors, config interrupt. */
void vmm_virtio_blk_set_capacity(VmmVirtioBlk *blk, uint64_t sectors);
/* Whether the write cache is on (FLUSH and CONFIG_WCE as negotiated). */
bool vmm_virtio_blk_writeback(VmmVirtioBlk *blk);
