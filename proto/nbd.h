/* The NBD protocol's wire constants, as the NBD project's doc/proto.md defines
 * them (fixed newstyle negotiation, structured replies, metadata contexts).
 * All integers on the wire are big-endian. */
#pragma once
#include <stdint.h>

#define NBD_DEFAULT_PORT 10809

/* Handshake */
#define NBD_MAGIC            0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT         0x49484156454F5054ULL /* "IHAVEOPT" */
#define NBD_OPT_REPLY_MAGIC  0x3e889045565a9ULL
#define NBD_FLAG_FIXED_NEWSTYLE   (1 << 0)
#define NBD_FLAG_NO_ZEROES        (1 << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_C_NO_ZEROES      (1 << 1)

/* Options (client -> server) */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* Option replies */
#define NBD_REP_ACK          1
#define NBD_REP_SERVER       2
#define NBD_REP_INFO         3
#define NBD_REP_META_CONTEXT 4
#define NBD_REP_FLAG_ERROR   (1U << 31)
#define NBD_REP_ERR_UNSUP           (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY          (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID         (NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_PLATFORM        (NBD_REP_FLAG_ERROR | 4)
#define NBD_REP_ERR_TLS_REQD        (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN         (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN        (NBD_REP_FLAG_ERROR | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8)
#define NBD_REP_ERR_TOO_BIG         (NBD_REP_FLAG_ERROR | 9)

/* NBD_REP_INFO / NBD_OPT_INFO,GO request types */
#define NBD_INFO_EXPORT      0
#define NBD_INFO_NAME        1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE  3

/* Transmission flags (16 bits) */
#define NBD_FLAG_HAS_FLAGS         (1 << 0)
#define NBD_FLAG_READ_ONLY         (1 << 1)
#define NBD_FLAG_SEND_FLUSH        (1 << 2)
#define NBD_FLAG_SEND_FUA          (1 << 3)
#define NBD_FLAG_ROTATIONAL        (1 << 4)
#define NBD_FLAG_SEND_TRIM         (1 << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1 << 6)
#define NBD_FLAG_SEND_DF           (1 << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1 << 8)
#define NBD_FLAG_SEND_RESIZE       (1 << 9)
#define NBD_FLAG_SEND_CACHE        (1 << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1 << 11)

/* Transmission */
#define NBD_REQUEST_MAGIC           0x25609513U
#define NBD_SIMPLE_REPLY_MAGIC      0x67446698U
#define NBD_STRUCTURED_REPLY_MAGIC  0x668e33efU
#define NBD_REQUEST_SIZE            28 /* magic, flags16, type16, cookie64, offset64, length32 */
#define NBD_SIMPLE_REPLY_SIZE       16 /* magic, error32, cookie64 */
#define NBD_STRUCTURED_REPLY_SIZE   20 /* magic, flags16, type16, cookie64, length32 */

#define NBD_CMD_READ         0
#define NBD_CMD_WRITE        1
#define NBD_CMD_DISC         2
#define NBD_CMD_FLUSH        3
#define NBD_CMD_TRIM         4
#define NBD_CMD_CACHE        5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7
#define NBD_CMD_RESIZE       8

#define NBD_CMD_FLAG_FUA       (1 << 0)
#define NBD_CMD_FLAG_NO_HOLE   (1 << 1)
#define NBD_CMD_FLAG_DF        (1 << 2)
#define NBD_CMD_FLAG_REQ_ONE   (1 << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1 << 4)

/* Structured reply chunks */
#define NBD_REPLY_FLAG_DONE         (1 << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        ((1 << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1 << 15) | 2)

/* Errors (errno values on the wire are these, whatever the host's) */
#define NBD_EPERM     1
#define NBD_EIO       5
#define NBD_ENOMEM    12
#define NBD_EINVAL    22
#define NBD_ENOSPC    28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP   95
#define NBD_ESHUTDOWN 108

/* Metadata contexts */
#define NBD_META_BASE_ALLOCATION "base:allocation"
#define NBD_STATE_HOLE (1 << 0)
#define NBD_STATE_ZERO (1 << 1)
#define NBD_META_QEMU_ALLOCATION_DEPTH "qemu:allocation-depth"

/* vmmd's own extension for the block channel between vcpu-worker and blockd
 * (docs/nbd-server.md, "Guest memory"): blockd maps the guest's RAM (the same
 * memfd vmmd handed vcpu-worker) and moves a READ's or WRITE's data straight
 * between the image and guest memory, so that no payload crosses the socket.
 *
 * NBD_OPT_VMM_GUEST_MEMORY, sent before NBD_OPT_GO, no data: NBD_REP_ACK when
 * this connection was given the guest's RAM (only the socketpairs vmmd makes
 * for a VM's drives), NBD_REP_ERR_UNSUP otherwise (every remote client).
 * Afterwards READ and WRITE may carry NBD_CMD_FLAG_VMM_GUEST_MEMORY: the
 * request is followed, instead of a WRITE's data, by a segment list
 *   u32 count, u32 zero, then COUNT times { u64 ram offset, u32 length, u32 zero }
 * whose lengths add up to the request's length; every segment lies inside the
 * RAM's size. The reply is a simple reply without data for both (a READ's
 * data is in guest memory when the reply says 0). A bad list gets EINVAL and
 * the connection goes on; COUNT over the limit ends the connection. The
 * option number is outside the range the NBD project assigns (it spells
 * "VMM\1"), so it never clashes with a standard option. */
#define NBD_OPT_VMM_GUEST_MEMORY       0x564d4d01U
#define NBD_CMD_FLAG_VMM_GUEST_MEMORY  (1 << 15)
#define NBD_VMM_SEGMENT_LIST_HEADER    8
#define NBD_VMM_SEGMENT_SIZE           16
#define NBD_VMM_MAX_SEGMENTS           16384

/* Limits we apply */
#define NBD_MAX_STRING   4096                /* export names, descriptions */
#define NBD_MAX_OPTION   (64 * 1024)         /* option payloads */
#define NBD_MAX_PAYLOAD  (32 * 1024 * 1024)  /* read/write request length, as qemu-nbd */
