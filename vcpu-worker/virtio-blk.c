/* virtio-blk device model. */
#include "vcpu-worker/virtio-blk.h"
#include "common/error.h"
#include "common/log.h"

#include <errno.h>
#include <string.h>

#define BLK_DEFAULT_QUEUE_SIZE 256
#define BLK_DEFAULT_MAX_SECTORS 0x3fffff
#define BLK_HEADER_BYTES 16
#define BLK_SEGMENT_BYTES 16

typedef struct {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
} BlkSegment;

struct VmmBlkRequest {
    VmmVirtioBlk *blk;
    VmmVirtqueue *vq;
    VmmVqElem *elem;
    uint64_t generation;
    uint32_t type;
    uint64_t sector;
    uint8_t *status;          /* the last writable byte */
    struct iovec *data;       /* IN/OUT payload pieces */
    unsigned n_data;
    uint64_t data_len;
    BlkSegment *segs;         /* DISCARD/WRITE_ZEROES ranges */
    unsigned n_segs;
    int pending;              /* backend calls not yet completed */
    int ret;                  /* the first error */
    bool flushed;             /* the writethrough flush was issued */
};

struct VmmVirtioBlk {
    GMutex lock;              /* requests, queues (the transport's queue lock) */
    VmmVirtioBlkConfig config;
    char *id;
    char *serial;
    VmmVirtioMmio *transport;
    const VmmBlkBackendOps *ops;
    void *backend;
    VmmBlkIoErrorFn io_error;
    void *io_error_opaque;

    uint64_t features;        /* negotiated, from DRIVER_OK */
    bool writeback_cfg;       /* the config space's writeback byte */
    uint64_t generation;      /* bumped by reset: older completions are dropped */
    unsigned in_flight;
    GQueue stopped;           /* VmmBlkRequest kept by a stop action */
};

const char *vmm_blk_error_action_name(VmmBlkErrorAction action)
{
    switch (action) {
    case VMM_BLK_ERROR_REPORT: return "report";
    case VMM_BLK_ERROR_IGNORE: return "ignore";
    case VMM_BLK_ERROR_STOP: return "stop";
    case VMM_BLK_ERROR_ENOSPC: return "enospc";
    }
    return "?";
}

gboolean vmm_blk_error_action_parse(const char *text, VmmBlkErrorAction *action, GError **error)
{
    static const VmmBlkErrorAction all[] = { VMM_BLK_ERROR_REPORT, VMM_BLK_ERROR_IGNORE,
                                             VMM_BLK_ERROR_STOP, VMM_BLK_ERROR_ENOSPC };
    for (gsize i = 0; i < G_N_ELEMENTS(all); i++) {
        if (g_strcmp0(text, vmm_blk_error_action_name(all[i])) == 0) {
            *action = all[i];
            return TRUE;
        }
    }
    g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                "error action '%s' is not one of report, ignore, stop, enospc", text);
    return FALSE;
}

void vmm_virtio_blk_config_init(VmmVirtioBlkConfig *config)
{
    memset(config, 0, sizeof(*config));
    config->werror = VMM_BLK_ERROR_ENOSPC;
    config->rerror = VMM_BLK_ERROR_REPORT;
}

/* ---- configuration ---- */

static bool has_feature(VmmVirtioBlk *blk, unsigned bit)
{
    return (blk->features >> bit) & 1;
}

/* Called with blk->lock held. */
static bool writeback_locked(VmmVirtioBlk *blk)
{
    if (!has_feature(blk, VIRTIO_BLK_F_FLUSH))
        return false;
    if (has_feature(blk, VIRTIO_BLK_F_CONFIG_WCE))
        return blk->writeback_cfg;
    return true;
}

static void put_le16(uint8_t *cfg, unsigned off, uint16_t v)
{
    v = GUINT16_TO_LE(v);
    memcpy(cfg + off, &v, 2);
}

static void put_le32(uint8_t *cfg, unsigned off, uint32_t v)
{
    v = GUINT32_TO_LE(v);
    memcpy(cfg + off, &v, 4);
}

static void put_le64(uint8_t *cfg, unsigned off, uint64_t v)
{
    v = GUINT64_TO_LE(v);
    memcpy(cfg + off, &v, 8);
}

static void blk_get_config(void *dev, uint8_t *cfg)
{
    VmmVirtioBlk *blk = dev;
    const VmmVirtioBlkConfig *c = &blk->config;

    g_mutex_lock(&blk->lock);
    put_le64(cfg, VIRTIO_BLK_CFG_CAPACITY, c->capacity);
    put_le32(cfg, VIRTIO_BLK_CFG_SIZE_MAX, c->size_max);
    put_le32(cfg, VIRTIO_BLK_CFG_SEG_MAX, c->seg_max);
    put_le32(cfg, VIRTIO_BLK_CFG_BLK_SIZE, c->blk_size);
    cfg[VIRTIO_BLK_CFG_PHYSICAL_BLOCK_EXP] = c->physical_block_exp;
    cfg[VIRTIO_BLK_CFG_ALIGNMENT_OFFSET] = c->alignment_offset;
    put_le16(cfg, VIRTIO_BLK_CFG_MIN_IO_SIZE, c->min_io_size);
    put_le32(cfg, VIRTIO_BLK_CFG_OPT_IO_SIZE, c->opt_io_size);
    cfg[VIRTIO_BLK_CFG_WRITEBACK] = blk->writeback_cfg;
    put_le16(cfg, VIRTIO_BLK_CFG_NUM_QUEUES, c->num_queues);
    put_le32(cfg, VIRTIO_BLK_CFG_MAX_DISCARD_SECTORS, c->max_discard_sectors);
    put_le32(cfg, VIRTIO_BLK_CFG_MAX_DISCARD_SEG, c->max_discard_seg);
    put_le32(cfg, VIRTIO_BLK_CFG_DISCARD_SECTOR_ALIGNMENT, c->discard_sector_alignment);
    put_le32(cfg, VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SECTORS, c->max_write_zeroes_sectors);
    put_le32(cfg, VIRTIO_BLK_CFG_MAX_WRITE_ZEROES_SEG, c->max_write_zeroes_seg);
    cfg[VIRTIO_BLK_CFG_WRITE_ZEROES_MAY_UNMAP] = c->write_zeroes_may_unmap;
    g_mutex_unlock(&blk->lock);
}

static void blk_set_config(void *dev, uint32_t offset, const uint8_t *data, uint32_t len)
{
    VmmVirtioBlk *blk = dev;

    /* Only the writeback byte is writable, and only with CONFIG_WCE. */
    if (offset > VIRTIO_BLK_CFG_WRITEBACK || offset + len <= VIRTIO_BLK_CFG_WRITEBACK)
        return;
    g_mutex_lock(&blk->lock);
    if (blk->config.config_wce)
        blk->writeback_cfg = data[VIRTIO_BLK_CFG_WRITEBACK - offset] != 0;
    g_mutex_unlock(&blk->lock);
}

static uint64_t blk_device_features(const VmmVirtioBlkConfig *c)
{
    uint64_t f = (1ULL << VIRTIO_BLK_F_SEG_MAX) | (1ULL << VIRTIO_BLK_F_BLK_SIZE) |
                 (1ULL << VIRTIO_BLK_F_FLUSH) | (1ULL << VIRTIO_BLK_F_TOPOLOGY);
    if (c->size_max)
        f |= 1ULL << VIRTIO_BLK_F_SIZE_MAX;
    if (c->read_only)
        f |= 1ULL << VIRTIO_BLK_F_RO;
    if (c->discard && !c->read_only)
        f |= 1ULL << VIRTIO_BLK_F_DISCARD;
    if (c->write_zeroes && !c->read_only)
        f |= 1ULL << VIRTIO_BLK_F_WRITE_ZEROES;
    if (c->num_queues > 1)
        f |= 1ULL << VIRTIO_BLK_F_MQ;
    if (c->config_wce)
        f |= 1ULL << VIRTIO_BLK_F_CONFIG_WCE;
    return f;
}

static gboolean blk_check_config(VmmVirtioBlkConfig *c, GError **error)
{
    if (c->blk_size == 0)
        c->blk_size = VIRTIO_BLK_SECTOR_SIZE;
    if (c->blk_size < VIRTIO_BLK_SECTOR_SIZE || c->blk_size > 65536 ||
        (c->blk_size & (c->blk_size - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s': logical block size %u is not a power of 2 in 512..65536", c->id,
                    c->blk_size);
        return FALSE;
    }
    if (c->queue_size == 0)
        c->queue_size = BLK_DEFAULT_QUEUE_SIZE;
    if (c->queue_size < 4 || c->queue_size > VMM_VQ_MAX_SIZE ||
        (c->queue_size & (c->queue_size - 1))) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s': queue size %u is not a power of 2 in 4..%d", c->id,
                    c->queue_size, VMM_VQ_MAX_SIZE);
        return FALSE;
    }
    if (c->num_queues == 0)
        c->num_queues = 1;
    if (c->num_queues > 64) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s': %u queues, at most 64", c->id, c->num_queues);
        return FALSE;
    }
    /* Two descriptors of every request are the header and the status. */
    if (c->seg_max == 0 || c->seg_max > (uint32_t)c->queue_size - 2)
        c->seg_max = c->queue_size - 2;
    if (c->max_discard_sectors == 0)
        c->max_discard_sectors = BLK_DEFAULT_MAX_SECTORS;
    if (c->max_discard_seg == 0)
        c->max_discard_seg = 1;
    if (c->discard_sector_alignment == 0)
        c->discard_sector_alignment = c->blk_size / VIRTIO_BLK_SECTOR_SIZE;
    if (c->max_write_zeroes_sectors == 0)
        c->max_write_zeroes_sectors = BLK_DEFAULT_MAX_SECTORS;
    if (c->max_write_zeroes_seg == 0)
        c->max_write_zeroes_seg = 1;
    return TRUE;
}

/* ---- requests ---- */

static VmmBlkRequest *request_new(VmmVirtioBlk *blk, VmmVirtqueue *vq, VmmVqElem *elem)
{
    VmmBlkRequest *req = g_new0(VmmBlkRequest, 1);
    req->blk = blk;
    req->vq = vq;
    req->elem = elem;
    req->generation = blk->generation;
    return req;
}

static void request_free(VmmBlkRequest *req)
{
    g_free(req->data);
    g_free(req->segs);
    g_free(req->elem);
    g_free(req);
}

/* Writes the status byte and returns the request to the driver. Called with
 * blk->lock held; returns whether the driver wants an interrupt. */
static bool request_finish_locked(VmmBlkRequest *req, uint8_t status)
{
    VmmVirtioBlk *blk = req->blk;
    bool notify = false;

    if (req->generation == blk->generation && req->vq->ready) {
        *req->status = status;
        vmm_vq_push(req->vq, req->elem, MIN(req->elem->in_bytes, UINT32_MAX));
        notify = vmm_vq_should_notify(req->vq);
    }
    request_free(req);
    return notify;
}

/* Splits the chain into header, payload and status. A chain without room
 * for the header or the status is the driver breaking the protocol. */
static gboolean request_parse_frame(VmmBlkRequest *req, GError **error)
{
    VmmVqElem *e = req->elem;
    uint8_t hdr[BLK_HEADER_BYTES];

    if (e->out_bytes < BLK_HEADER_BYTES || e->in_bytes < 1) {
        g_set_error(error, VMM_ERROR, VMM_ERROR_INVALID,
                    "drive '%s': request %u has %" G_GUINT64_FORMAT " readable and %"
                    G_GUINT64_FORMAT " writable bytes, no room for header and status",
                    req->blk->id, e->head, e->out_bytes, e->in_bytes);
        return FALSE;
    }
    vmm_iov_to_buf(e->out, e->n_out, 0, hdr, sizeof(hdr));
    uint32_t type;
    uint64_t sector;
    memcpy(&type, hdr, 4);
    memcpy(&sector, hdr + 8, 8);
    req->type = GUINT32_FROM_LE(type);
    req->sector = GUINT64_FROM_LE(sector);

    const struct iovec *last = &e->in[e->n_in - 1];
    req->status = (uint8_t *)last->iov_base + last->iov_len - 1;
    return TRUE;
}

static void request_take_data(VmmBlkRequest *req, const struct iovec *iov, unsigned n,
                              size_t offset, size_t len)
{
    req->data = g_new(struct iovec, MAX(n, 1));
    req->n_data = vmm_iov_slice(iov, n, offset, len, req->data, n);
    req->data_len = len;
}

static bool sector_range_ok(VmmVirtioBlk *blk, uint64_t sector, uint64_t bytes)
{
    uint64_t lbs_sectors = blk->config.blk_size / VIRTIO_BLK_SECTOR_SIZE;
    uint64_t sectors = bytes / VIRTIO_BLK_SECTOR_SIZE;

    if (bytes % blk->config.blk_size || sector % lbs_sectors)
        return false;
    return sector <= blk->config.capacity && sectors <= blk->config.capacity - sector;
}

/* Checks an IN/OUT request; returns the status to finish it with now, or -1
 * when it goes to the backend. */
static int prepare_rw(VmmBlkRequest *req)
{
    VmmVirtioBlk *blk = req->blk;
    VmmVqElem *e = req->elem;

    if (req->type == VIRTIO_BLK_T_IN)
        request_take_data(req, e->in, e->n_in, 0, e->in_bytes - 1);
    else
        request_take_data(req, e->out, e->n_out, BLK_HEADER_BYTES, e->out_bytes - BLK_HEADER_BYTES);
    if (req->type == VIRTIO_BLK_T_OUT && blk->config.read_only)
        return VIRTIO_BLK_S_IOERR;
    if (!sector_range_ok(blk, req->sector, req->data_len))
        return VIRTIO_BLK_S_IOERR;
    if (req->data_len == 0)
        return VIRTIO_BLK_S_OK;
    return -1;
}

static int prepare_get_id(VmmBlkRequest *req)
{
    char id[VIRTIO_BLK_ID_BYTES] = { 0 };
    VmmVqElem *e = req->elem;

    /* Not NUL-terminated when 20 bytes long, as the spec says. */
    memcpy(id, req->blk->serial, MIN(strlen(req->blk->serial), sizeof(id)));
    vmm_iov_from_buf(e->in, e->n_in, 0, id, MIN(sizeof(id), e->in_bytes - 1));
    return VIRTIO_BLK_S_OK;
}

static int check_segment(VmmBlkRequest *req, const BlkSegment *s, bool zeroes)
{
    VmmVirtioBlk *blk = req->blk;
    uint32_t max = zeroes ? blk->config.max_write_zeroes_sectors : blk->config.max_discard_sectors;
    uint32_t allowed_flags = zeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;

    if (s->flags & ~allowed_flags)
        return VIRTIO_BLK_S_UNSUPP;
    if (s->num_sectors > max)
        return VIRTIO_BLK_S_IOERR;
    if (!sector_range_ok(blk, s->sector, (uint64_t)s->num_sectors * VIRTIO_BLK_SECTOR_SIZE))
        return VIRTIO_BLK_S_IOERR;
    return -1;
}

static int prepare_discard(VmmBlkRequest *req)
{
    VmmVirtioBlk *blk = req->blk;
    VmmVqElem *e = req->elem;
    bool zeroes = req->type == VIRTIO_BLK_T_WRITE_ZEROES;
    unsigned feature = zeroes ? VIRTIO_BLK_F_WRITE_ZEROES : VIRTIO_BLK_F_DISCARD;
    uint32_t max_seg = zeroes ? blk->config.max_write_zeroes_seg : blk->config.max_discard_seg;
    uint64_t bytes = e->out_bytes - BLK_HEADER_BYTES;

    if (!has_feature(blk, feature))
        return VIRTIO_BLK_S_UNSUPP;
    if (blk->config.read_only)
        return VIRTIO_BLK_S_IOERR;
    if (bytes == 0 || bytes % BLK_SEGMENT_BYTES || bytes / BLK_SEGMENT_BYTES > max_seg)
        return VIRTIO_BLK_S_UNSUPP;

    req->n_segs = bytes / BLK_SEGMENT_BYTES;
    req->segs = g_new(BlkSegment, req->n_segs);
    for (unsigned i = 0; i < req->n_segs; i++) {
        uint8_t raw[BLK_SEGMENT_BYTES];
        vmm_iov_to_buf(e->out, e->n_out, BLK_HEADER_BYTES + i * BLK_SEGMENT_BYTES, raw, sizeof(raw));
        BlkSegment *s = &req->segs[i];
        memcpy(&s->sector, raw, 8);
        memcpy(&s->num_sectors, raw + 8, 4);
        memcpy(&s->flags, raw + 12, 4);
        s->sector = GUINT64_FROM_LE(s->sector);
        s->num_sectors = GUINT32_FROM_LE(s->num_sectors);
        s->flags = GUINT32_FROM_LE(s->flags);
        int status = check_segment(req, s, zeroes);
        if (status >= 0)
            return status;
    }
    return -1;
}

/* Returns the status to finish the request with now, or -1 when the backend
 * has to do it. */
static int request_prepare(VmmBlkRequest *req)
{
    switch (req->type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
        return prepare_rw(req);
    case VIRTIO_BLK_T_FLUSH:
        return -1;
    case VIRTIO_BLK_T_GET_ID:
        return prepare_get_id(req);
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        return prepare_discard(req);
    default:
        return VIRTIO_BLK_S_UNSUPP;
    }
}

/* Starts the backend calls of a request. Called without blk->lock: a backend
 * may complete before it returns. One extra pending count keeps the request
 * alive until every call is made. */
static void request_submit(VmmBlkRequest *req)
{
    VmmVirtioBlk *blk = req->blk;
    const VmmBlkBackendOps *ops = blk->ops;
    uint64_t offset = req->sector * VIRTIO_BLK_SECTOR_SIZE;

    req->pending = 1;
    req->ret = 0;
    req->flushed = false;
    switch (req->type) {
    case VIRTIO_BLK_T_IN:
        req->pending++;
        ops->read(blk->backend, offset, req->data, req->n_data, req);
        break;
    case VIRTIO_BLK_T_OUT:
        req->pending++;
        ops->write(blk->backend, offset, req->data, req->n_data, req);
        break;
    case VIRTIO_BLK_T_FLUSH:
        req->pending++;
        ops->flush(blk->backend, req);
        break;
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        req->pending += req->n_segs;
        for (unsigned i = 0; i < req->n_segs; i++) {
            const BlkSegment *s = &req->segs[i];
            uint64_t off = s->sector * VIRTIO_BLK_SECTOR_SIZE;
            uint64_t len = (uint64_t)s->num_sectors * VIRTIO_BLK_SECTOR_SIZE;
            if (req->type == VIRTIO_BLK_T_DISCARD)
                ops->discard(blk->backend, off, len, req);
            else
                ops->write_zeroes(blk->backend, off, len,
                                  s->flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, req);
        }
        break;
    }
    vmm_virtio_blk_complete(req, 0);
}

static bool request_is_read(const VmmBlkRequest *req)
{
    return req->type == VIRTIO_BLK_T_IN;
}

static VmmBlkErrorAction error_action(VmmVirtioBlk *blk, const VmmBlkRequest *req, int err)
{
    VmmBlkErrorAction action = request_is_read(req) ? blk->config.rerror : blk->config.werror;
    if (action == VMM_BLK_ERROR_ENOSPC)
        action = err == ENOSPC ? VMM_BLK_ERROR_STOP : VMM_BLK_ERROR_REPORT;
    return action;
}

static bool needs_writethrough_flush(VmmVirtioBlk *blk, const VmmBlkRequest *req)
{
    return !req->flushed && !writeback_locked(blk) &&
           (req->type == VIRTIO_BLK_T_OUT || req->type == VIRTIO_BLK_T_WRITE_ZEROES);
}

/* What a finished backend call leads to, decided under the lock and acted
 * on outside it. */
typedef struct {
    bool notify;         /* raise the used-ring interrupt */
    bool flush;          /* issue the writethrough flush */
    bool error;          /* tell the error hook */
    bool is_read;
    int err;
    VmmBlkErrorAction action;
} BlkOutcome;

static void fail_request_locked(VmmVirtioBlk *blk, VmmBlkRequest *req, BlkOutcome *out)
{
    out->error = true;
    out->err = -req->ret;
    out->is_read = request_is_read(req);
    out->action = error_action(blk, req, out->err);
    blk->in_flight--;
    if (out->action == VMM_BLK_ERROR_STOP) {
        g_queue_push_tail(&blk->stopped, req);
        return;
    }
    uint8_t status = out->action == VMM_BLK_ERROR_IGNORE ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
    out->notify = request_finish_locked(req, status);
}

static void request_done_locked(VmmVirtioBlk *blk, VmmBlkRequest *req, BlkOutcome *out)
{
    /* Discard is advisory: a backend that cannot do it has done enough. */
    if (req->type == VIRTIO_BLK_T_DISCARD && (req->ret == -ENOTSUP || req->ret == -EOPNOTSUPP))
        req->ret = 0;

    if (req->generation != blk->generation) {
        /* The device was reset meanwhile: the driver forgot this request. */
        blk->in_flight--;
        request_free(req);
    } else if (req->ret == 0 && needs_writethrough_flush(blk, req)) {
        req->flushed = true;
        req->pending = 1;
        out->flush = true;
    } else if (req->ret == 0) {
        blk->in_flight--;
        out->notify = request_finish_locked(req, VIRTIO_BLK_S_OK);
    } else {
        fail_request_locked(blk, req, out);
    }
}

void vmm_virtio_blk_complete(VmmBlkRequest *req, int ret)
{
    VmmVirtioBlk *blk = req->blk;
    BlkOutcome out = { 0 };

    g_mutex_lock(&blk->lock);
    if (ret < 0 && req->ret == 0)
        req->ret = ret;
    if (--req->pending > 0) {
        g_mutex_unlock(&blk->lock);
        return;
    }
    request_done_locked(blk, req, &out);
    g_mutex_unlock(&blk->lock);

    if (out.flush) {
        blk->ops->flush(blk->backend, req);
        return;
    }
    if (out.error) {
        vmm_debug("drive '%s': %s error: %s; action %s", blk->id, out.is_read ? "read" : "write",
                  g_strerror(out.err), vmm_blk_error_action_name(out.action));
        if (blk->io_error)
            blk->io_error(blk->io_error_opaque, blk, out.action, out.is_read, out.err);
    }
    if (out.notify)
        vmm_virtio_mmio_interrupt_vring(blk->transport);
}

/* ---- queue processing ---- */

/* Takes the next request off VQ: finishes it at once when it needs no
 * backend, else appends it to SUBMIT. Returns FALSE when the queue is empty
 * or broken (then *ERROR is set). Called with blk->lock held. */
static gboolean take_request_locked(VmmVirtioBlk *blk, VmmVirtqueue *vq, GPtrArray *submit,
                                    bool *notify, GError **error)
{
    VmmVqElem *elem;

    switch (vmm_vq_pop(vq, &elem, error)) {
    case VMM_VQ_EMPTY: return FALSE;
    case VMM_VQ_ERROR: return FALSE;
    case VMM_VQ_OK: break;
    }
    VmmBlkRequest *req = request_new(blk, vq, elem);
    if (!request_parse_frame(req, error)) {
        request_free(req);
        return FALSE;
    }
    int status = request_prepare(req);
    if (status >= 0) {
        *notify |= request_finish_locked(req, status);
        return TRUE;
    }
    blk->in_flight++;
    g_ptr_array_add(submit, req);
    return TRUE;
}

static void blk_queue_notify(void *dev, unsigned queue)
{
    VmmVirtioBlk *blk = dev;
    VmmVirtqueue *vq = vmm_virtio_mmio_queue(blk->transport, queue);
    g_autoptr(GPtrArray) submit = g_ptr_array_new();
    g_autoptr(GError) error = NULL;
    bool notify = false;

    g_mutex_lock(&blk->lock);
    do {
        vmm_vq_set_notification(vq, false);
        while (take_request_locked(blk, vq, submit, &notify, &error))
            ;
        if (error)
            break;
        vmm_vq_set_notification(vq, true);
    } while (vmm_vq_has_avail(vq));
    g_mutex_unlock(&blk->lock);

    for (guint i = 0; i < submit->len; i++)
        request_submit(submit->pdata[i]);
    if (error)
        vmm_virtio_mmio_set_needs_reset(blk->transport, error);
    if (notify)
        vmm_virtio_mmio_interrupt_vring(blk->transport);
}

/* Called with blk->lock held, by the transport. */
static void blk_reset(void *dev)
{
    VmmVirtioBlk *blk = dev;
    VmmBlkRequest *req;

    blk->generation++;
    while ((req = g_queue_pop_head(&blk->stopped)))
        request_free(req);
    blk->features = 0;
    blk->writeback_cfg = !blk->config.writethrough;
}

static void blk_driver_ok(void *dev, uint64_t features)
{
    VmmVirtioBlk *blk = dev;
    blk->features = features;
}

static const VmmVirtioDeviceOps blk_device_ops = {
    .device_id = VIRTIO_ID_BLOCK,
    .get_config = blk_get_config,
    .set_config = blk_set_config,
    .queue_notify = blk_queue_notify,
    .reset = blk_reset,
    .driver_ok = blk_driver_ok,
};

/* ---- the device ---- */

VmmVirtioBlk *vmm_virtio_blk_new(const VmmVirtioBlkConfig *config, const VmmGuestMem *mem,
                                 const VmmBlkBackendOps *ops, void *backend, GError **error)
{
    VmmVirtioBlkConfig c = *config;

    if (!c.id)
        c.id = "virtio-blk";
    if (!blk_check_config(&c, error))
        return NULL;

    VmmVirtioBlk *blk = g_new0(VmmVirtioBlk, 1);
    g_mutex_init(&blk->lock);
    blk->id = g_strdup(c.id);
    blk->serial = g_strdup(c.serial ? c.serial : "");
    c.id = blk->id;
    c.serial = blk->serial;
    blk->config = c;
    blk->ops = ops;
    blk->backend = backend;
    blk->writeback_cfg = !c.writethrough;
    g_queue_init(&blk->stopped);

    g_autofree char *name = g_strdup_printf("virtio-blk '%s'", c.id);
    VmmVirtioMmioConfig tc = {
        .name = name,
        .mem = mem,
        .ops = &blk_device_ops,
        .dev = blk,
        .queue_lock = &blk->lock,
        .num_queues = c.num_queues,
        .queue_num_max = c.queue_size,
        .device_features = blk_device_features(&c),
        .config_size = VIRTIO_BLK_CONFIG_SIZE,
    };
    blk->transport = vmm_virtio_mmio_new(&tc);
    return blk;
}

void vmm_virtio_blk_free(VmmVirtioBlk *blk)
{
    VmmBlkRequest *req;

    if (!blk)
        return;
    while ((req = g_queue_pop_head(&blk->stopped)))
        request_free(req);
    vmm_virtio_mmio_free(blk->transport);
    g_free(blk->id);
    g_free(blk->serial);
    g_mutex_clear(&blk->lock);
    g_free(blk);
}

VmmVirtioMmio *vmm_virtio_blk_transport(VmmVirtioBlk *blk)
{
    return blk->transport;
}

void vmm_virtio_blk_set_io_error_hook(VmmVirtioBlk *blk, VmmBlkIoErrorFn fn, void *opaque)
{
    g_mutex_lock(&blk->lock);
    blk->io_error = fn;
    blk->io_error_opaque = opaque;
    g_mutex_unlock(&blk->lock);
}

void vmm_virtio_blk_resume(VmmVirtioBlk *blk)
{
    GQueue retry = G_QUEUE_INIT;
    VmmBlkRequest *req;

    g_mutex_lock(&blk->lock);
    while ((req = g_queue_pop_head(&blk->stopped))) {
        blk->in_flight++;
        g_queue_push_tail(&retry, req);
    }
    g_mutex_unlock(&blk->lock);
    while ((req = g_queue_pop_head(&retry)))
        request_submit(req);
}

unsigned vmm_virtio_blk_in_flight(VmmVirtioBlk *blk)
{
    g_mutex_lock(&blk->lock);
    unsigned n = blk->in_flight;
    g_mutex_unlock(&blk->lock);
    return n;
}

unsigned vmm_virtio_blk_stopped(VmmVirtioBlk *blk)
{
    g_mutex_lock(&blk->lock);
    unsigned n = g_queue_get_length(&blk->stopped);
    g_mutex_unlock(&blk->lock);
    return n;
}

void vmm_virtio_blk_set_capacity(VmmVirtioBlk *blk, uint64_t sectors)
{
    g_mutex_lock(&blk->lock);
    blk->config.capacity = sectors;
    g_mutex_unlock(&blk->lock);
    vmm_virtio_mmio_config_changed(blk->transport);
}

bool vmm_virtio_blk_writeback(VmmVirtioBlk *blk)
{
    g_mutex_lock(&blk->lock);
    bool wb = writeback_locked(blk);
    g_mutex_unlock(&blk->lock);
    return wb;
}
