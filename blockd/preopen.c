/* The table of images handed over as fds: see preopen.h. */
#include "blockd/preopen.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

static GMutex lock;
static GHashTable *table;   /* path -> fd (GINT_TO_POINTER) */
static gboolean strict;

static void close_entry(gpointer fd)
{
    close(GPOINTER_TO_INT(fd));
}

void vmm_block_preopen_add(const char *path, int fd)
{
    g_mutex_lock(&lock);
    if (!table)
        table = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, close_entry);
    g_hash_table_replace(table, g_strdup(path), GINT_TO_POINTER(fd));
    g_mutex_unlock(&lock);
}

void vmm_block_preopen_remove(const char *path)
{
    g_mutex_lock(&lock);
    if (table)
        g_hash_table_remove(table, path);
    g_mutex_unlock(&lock);
}

void vmm_block_preopen_clear(void)
{
    g_mutex_lock(&lock);
    g_clear_pointer(&table, g_hash_table_unref);
    g_mutex_unlock(&lock);
}

void vmm_block_preopen_set_strict(gboolean on)
{
    g_atomic_int_set(&strict, on);
}

gboolean vmm_block_preopen_is_strict(void)
{
    return g_atomic_int_get(&strict);
}

static int dup_entry(int entry, int oflags)
{
    int have = fcntl(entry, F_GETFL);
    if (have < 0)
        return -1;
    if ((oflags & O_ACCMODE) != O_RDONLY && (have & O_ACCMODE) == O_RDONLY) {
        errno = EACCES;     /* vmmd opened it read-only: so the drive says */
        return -1;
    }
    int fd = fcntl(entry, F_DUPFD_CLOEXEC, 3);
    /* The flag lives in the open file description the entry shares. */
    if (fd >= 0 && (oflags & O_DIRECT) && !(have & O_DIRECT) && fcntl(fd, F_SETFL, have | O_DIRECT) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

gboolean vmm_block_preopen_open(const char *path, int oflags, int *fd)
{
    g_mutex_lock(&lock);
    gpointer entry;
    gboolean found = table && g_hash_table_lookup_extended(table, path, NULL, &entry);
    if (found)
        *fd = dup_entry(GPOINTER_TO_INT(entry), oflags);
    g_mutex_unlock(&lock);
    if (found)
        return TRUE;
    if (!vmm_block_preopen_is_strict())
        return FALSE;
    *fd = -1;
    errno = EACCES;     /* not handed over: a sandboxed blockd may not open it */
    return TRUE;
}
