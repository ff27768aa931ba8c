/* The 9P2000.L protocol's wire constants, as the Linux v9fs client uses them
 * (include/net/9p/9p.h, fs/9p/) and QEMU's server answers them (hw/9pfs/9p.c).
 *
 * A message is size[4] type[1] tag[2] body; size counts the whole message.
 * Integers are little-endian; a string is len[2] bytes (UTF-8, no NUL); a qid
 * is type[1] version[4] path[8]. The codec is fsd/9p-wire.c; docs/fsd.md
 * describes the server. */
#pragma once
#include <stdint.h>

#define P9_VERSION_L        "9P2000.L"
#define P9_VERSION_UNKNOWN  "unknown"
#define P9_NOTAG            ((uint16_t)~0)
#define P9_NOFID            ((uint32_t)~0)
#define P9_NONUNAME         ((uint32_t)~0)
#define P9_MAXWELEM         16         /* names in one Twalk */
#define P9_HDRSZ            7          /* size[4] type[1] tag[2] */
#define P9_IOHDRSZ          24         /* Twrite header: what a data message adds */
#define P9_READDIRHDRSZ     24
#define P9_QIDSZ            13
#define P9_MIN_MSIZE        4096       /* QEMU refuses less */
#define P9_XATTR_SIZE_MAX   65536      /* Linux's XATTR_SIZE_MAX */

/* Message types. 9P2000.L adds the 6..77 range to the classic 100..127 set,
 * of which it keeps version, auth, attach, flush, walk, read, write, clunk,
 * remove (Rerror 107 is replaced by Rlerror 7). */
enum {
    P9_TLERROR = 6,      P9_RLERROR,
    P9_TSTATFS = 8,      P9_RSTATFS,
    P9_TLOPEN = 12,      P9_RLOPEN,
    P9_TLCREATE = 14,    P9_RLCREATE,
    P9_TSYMLINK = 16,    P9_RSYMLINK,
    P9_TMKNOD = 18,      P9_RMKNOD,
    P9_TRENAME = 20,     P9_RRENAME,
    P9_TREADLINK = 22,   P9_RREADLINK,
    P9_TGETATTR = 24,    P9_RGETATTR,
    P9_TSETATTR = 26,    P9_RSETATTR,
    P9_TXATTRWALK = 30,  P9_RXATTRWALK,
    P9_TXATTRCREATE = 32, P9_RXATTRCREATE,
    P9_TREADDIR = 40,    P9_RREADDIR,
    P9_TFSYNC = 50,      P9_RFSYNC,
    P9_TLOCK = 52,       P9_RLOCK,
    P9_TGETLOCK = 54,    P9_RGETLOCK,
    P9_TLINK = 70,       P9_RLINK,
    P9_TMKDIR = 72,      P9_RMKDIR,
    P9_TRENAMEAT = 74,   P9_RRENAMEAT,
    P9_TUNLINKAT = 76,   P9_RUNLINKAT,
    P9_TVERSION = 100,   P9_RVERSION,
    P9_TAUTH = 102,      P9_RAUTH,
    P9_TATTACH = 104,    P9_RATTACH,
    P9_TERROR = 106,     P9_RERROR,
    P9_TFLUSH = 108,     P9_RFLUSH,
    P9_TWALK = 110,      P9_RWALK,
    P9_TOPEN = 112,      P9_ROPEN,
    P9_TCREATE = 114,    P9_RCREATE,
    P9_TREAD = 116,      P9_RREAD,
    P9_TWRITE = 118,     P9_RWRITE,
    P9_TCLUNK = 120,     P9_RCLUNK,
    P9_TREMOVE = 122,    P9_RREMOVE,
    P9_TSTAT = 124,      P9_RSTAT,
    P9_TWSTAT = 126,     P9_RWSTAT,
};

/* vmmd's own messages between vcpu-worker and fsd (docs/fsd.md, "Guest
 * memory"), only on a connection to which vmmd gave fsd the guest's RAM (fsd
 * answers them Rlerror(EOPNOTSUPP) anywhere else): a Tread or Twrite whose
 * data is in guest RAM. Body: fid[4] offset[8] count[4] segments, where the
 * COUNT bytes are a list of {ram offset[8] length[4]} (P9_VMM_SEGMENT_SIZE
 * each); the data is what the list names, in order. Tread.vmm's list is
 * where the data goes (at most msize - 11 bytes of it are read); the replies
 * are count[4] alone: Rread.vmm says how many bytes fsd put there, Rwrite.vmm
 * how many it wrote. */
enum {
    P9_TREAD_VMM = 204,  P9_RREAD_VMM,
    P9_TWRITE_VMM = 206, P9_RWRITE_VMM,
};
#define P9_VMM_SEGMENT_SIZE 12

/* qid.type */
#define P9_QTDIR     0x80
#define P9_QTAPPEND  0x40
#define P9_QTEXCL    0x20
#define P9_QTMOUNT   0x10
#define P9_QTAUTH    0x08
#define P9_QTTMP     0x04
#define P9_QTSYMLINK 0x02
#define P9_QTLINK    0x01
#define P9_QTFILE    0x00

/* Tgetattr request_mask / Rgetattr valid */
#define P9_GETATTR_MODE         0x00000001ULL
#define P9_GETATTR_NLINK        0x00000002ULL
#define P9_GETATTR_UID          0x00000004ULL
#define P9_GETATTR_GID          0x00000008ULL
#define P9_GETATTR_RDEV         0x00000010ULL
#define P9_GETATTR_ATIME        0x00000020ULL
#define P9_GETATTR_MTIME        0x00000040ULL
#define P9_GETATTR_CTIME        0x00000080ULL
#define P9_GETATTR_INO          0x00000100ULL
#define P9_GETATTR_SIZE         0x00000200ULL
#define P9_GETATTR_BLOCKS       0x00000400ULL
#define P9_GETATTR_BTIME        0x00000800ULL
#define P9_GETATTR_GEN          0x00001000ULL
#define P9_GETATTR_DATA_VERSION 0x00002000ULL
#define P9_GETATTR_BASIC        0x000007ffULL
#define P9_GETATTR_ALL          0x00003fffULL

/* Tsetattr valid: ATIME/MTIME alone mean "now"; with *_SET the given time. */
#define P9_ATTR_MODE      (1u << 0)
#define P9_ATTR_UID       (1u << 1)
#define P9_ATTR_GID       (1u << 2)
#define P9_ATTR_SIZE      (1u << 3)
#define P9_ATTR_ATIME     (1u << 4)
#define P9_ATTR_MTIME     (1u << 5)
#define P9_ATTR_CTIME     (1u << 6)
#define P9_ATTR_ATIME_SET (1u << 7)
#define P9_ATTR_MTIME_SET (1u << 8)

/* Tlopen/Tlcreate flags as Linux sends them (its own numbering, equal to
 * x86's open(2) flags but defined here so other hosts translate). */
#define P9_DOTL_RDONLY    00000000
#define P9_DOTL_WRONLY    00000001
#define P9_DOTL_RDWR      00000002
#define P9_DOTL_NOACCESS  00000003
#define P9_DOTL_ACCMODE   00000003
#define P9_DOTL_CREATE    00000100
#define P9_DOTL_EXCL      00000200
#define P9_DOTL_NOCTTY    00000400
#define P9_DOTL_TRUNC     00001000
#define P9_DOTL_APPEND    00002000
#define P9_DOTL_NONBLOCK  00004000
#define P9_DOTL_DSYNC     00010000
#define P9_DOTL_FASYNC    00020000
#define P9_DOTL_DIRECT    00040000
#define P9_DOTL_LARGEFILE 00100000
#define P9_DOTL_DIRECTORY 00200000
#define P9_DOTL_NOFOLLOW  00400000
#define P9_DOTL_NOATIME   01000000
#define P9_DOTL_CLOEXEC   02000000
#define P9_DOTL_SYNC      04000000

/* Tunlinkat flags */
#define P9_DOTL_AT_REMOVEDIR 0x200

/* Txattrcreate flags (setxattr(2)'s) */
#define P9_XATTR_CREATE  1
#define P9_XATTR_REPLACE 2

/* Tlock / Tgetlock */
#define P9_LOCK_TYPE_RDLCK 0
#define P9_LOCK_TYPE_WRLCK 1
#define P9_LOCK_TYPE_UNLCK 2
#define P9_LOCK_FLAGS_BLOCK   1
#define P9_LOCK_FLAGS_RECLAIM 2
#define P9_LOCK_SUCCESS 0
#define P9_LOCK_BLOCKED 1
#define P9_LOCK_ERROR   2
#define P9_LOCK_GRACE   3

/* Rstatfs type: V9FS_MAGIC, what the Linux client reports for a 9p mount
 * when the server has nothing better (QEMU passes the host's f_type). */
#define P9_V9FS_MAGIC 0x01021997
