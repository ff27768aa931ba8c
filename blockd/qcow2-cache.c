/* qcow2 metadata caches: L2 tables and refcount blocks, one cluster per entry.
 * Dirty entries are written back on eviction and on flush, after the caches
 * they depend on (see qcow2.h for the ordering rules). */
#include "blockd/qcow2.h"
#include "common/error.h"
#include <string.h>

typedef struct {
    guint64 offset;              /* 0: the slot is empty */
    guint8 *table;
    gboolean dirty;
    int ref;
    guint64 lru;
} Qcow2CacheEntry;

struct Qcow2Cache {
    const char *what;
    Qcow2CacheEntry *entries;
    int size;
    guint8 *mem;                 /* size * cluster_size bytes */
    guint64 cluster_size;
    GHashTable *index;           /* offset -> slot + 1 */
    guint64 lru_counter;
    guint64 clean_mark;          /* lru value at the last periodic clean */
    Qcow2Cache *depends;
    gboolean depends_on_flush;
};

Qcow2Cache *q2_cache_new(Qcow2State *s, int entries, const char *what)
{
    Qcow2Cache *c = g_new0(Qcow2Cache, 1);

    c->what = what;
    c->size = entries;
    c->cluster_size = s->cluster_size;
    c->entries = g_new0(Qcow2CacheEntry, entries);
    c->mem = g_malloc0((gsize)entries * s->cluster_size);
    for (int i = 0; i < entries; i++)
        c->entries[i].table = c->mem + (gsize)i * s->cluster_size;
    c->index = g_hash_table_new(g_int64_hash, g_int64_equal);
    return c;
}

void q2_cache_free(Qcow2Cache *c)
{
    if (!c)
        return;
    g_hash_table_destroy(c->index);
    g_free(c->mem);
    g_free(c->entries);
    g_free(c);
}

int q2_cache_entries(const Qcow2Cache *c)
{
    return c->size;
}

static int slot_of_table(Qcow2Cache *c, const guint8 *table)
{
    gsize i = (gsize)(table - c->mem) / c->cluster_size;

    g_assert(table >= c->mem && i < (gsize)c->size);
    return (int)i;
}

static int lookup(Qcow2Cache *c, guint64 offset)
{
    gpointer v = g_hash_table_lookup(c->index, &offset);
    return v ? GPOINTER_TO_INT(v) - 1 : -1;
}

static void forget_slot(Qcow2Cache *c, int i)
{
    if (c->entries[i].offset)
        g_hash_table_remove(c->index, &c->entries[i].offset);
    c->entries[i].offset = 0;
    c->entries[i].dirty = FALSE;
}

static void remember_slot(Qcow2Cache *c, int i, guint64 offset)
{
    c->entries[i].offset = offset;
    g_hash_table_insert(c->index, &c->entries[i].offset, GINT_TO_POINTER(i + 1));
}

static gboolean flush_dependency(Qcow2State *s, Qcow2Cache *c, GError **error)
{
    if (!q2_cache_flush(s, c->depends, error))
        return FALSE;
    c->depends = NULL;
    c->depends_on_flush = FALSE;
    return TRUE;
}

/* Writes one dirty entry, after whatever must reach the disk before it. */
static gboolean write_entry(Qcow2State *s, Qcow2Cache *c, int i, GError **error)
{
    Qcow2CacheEntry *e = &c->entries[i];

    if (!e->dirty || !e->offset)
        return TRUE;
    if (c->depends) {
        if (!flush_dependency(s, c, error))
            return FALSE;
    } else if (c->depends_on_flush) {
        if (!q2_file_flush(s, error))
            return FALSE;
        c->depends_on_flush = FALSE;
    }
    if (!q2_file_pwrite(s, e->offset, c->cluster_size, e->table, error))
        return FALSE;
    e->dirty = FALSE;
    return TRUE;
}

gboolean q2_cache_write(Qcow2State *s, Qcow2Cache *c, GError **error)
{
    for (int i = 0; i < c->size; i++) {
        if (!write_entry(s, c, i, error))
            return FALSE;
    }
    return TRUE;
}

gboolean q2_cache_flush(Qcow2State *s, Qcow2Cache *c, GError **error)
{
    if (!q2_cache_write(s, c, error))
        return FALSE;
    return q2_file_flush(s, error);
}

gboolean q2_cache_set_dependency(Qcow2State *s, Qcow2Cache *c, Qcow2Cache *dep, GError **error)
{
    if (dep->depends && !flush_dependency(s, dep, error))
        return FALSE;
    if (c->depends && c->depends != dep && !flush_dependency(s, c, error))
        return FALSE;
    c->depends = dep;
    return TRUE;
}

void q2_cache_depends_on_flush(Qcow2Cache *c)
{
    c->depends_on_flush = TRUE;
}

static int find_victim(Qcow2Cache *c)
{
    int best = -1;

    for (int i = 0; i < c->size; i++) {
        if (c->entries[i].ref)
            continue;
        if (!c->entries[i].offset)
            return i;
        if (best < 0 || c->entries[i].lru < c->entries[best].lru)
            best = i;
    }
    return best;
}

static gboolean do_get(Qcow2State *s, Qcow2Cache *c, guint64 offset, gboolean read,
                       guint8 **table, GError **error)
{
    int i = lookup(c, offset);

    if (i < 0) {
        i = find_victim(c);
        if (i < 0) {
            g_set_error(error, VMM_ERROR, VMM_ERROR_FAILED,
                        "%s: every %s cache entry is in use", s->bs->filename, c->what);
            return FALSE;
        }
        if (!write_entry(s, c, i, error))
            return FALSE;
        forget_slot(c, i);
        if (read && !q2_file_pread(s, offset, c->cluster_size, c->entries[i].table, c->what,
                                   error))
            return FALSE;
        remember_slot(c, i, offset);
    }
    c->entries[i].ref++;
    c->entries[i].lru = ++c->lru_counter;
    *table = c->entries[i].table;
    return TRUE;
}

gboolean q2_cache_get(Qcow2State *s, Qcow2Cache *c, guint64 offset, guint8 **table, GError **error)
{
    return do_get(s, c, offset, TRUE, table, error);
}

gboolean q2_cache_get_empty(Qcow2State *s, Qcow2Cache *c, guint64 offset, guint8 **table,
                            GError **error)
{
    return do_get(s, c, offset, FALSE, table, error);
}

void q2_cache_put(Qcow2Cache *c, guint8 *table)
{
    int i = slot_of_table(c, table);

    g_assert(c->entries[i].ref > 0);
    c->entries[i].ref--;
}

void q2_cache_mark_dirty(Qcow2Cache *c, guint8 *table)
{
    c->entries[slot_of_table(c, table)].dirty = TRUE;
}

/* The cluster at OFFSET was freed: its cached copy must never be written back
 * over whatever the cluster holds next. */
void q2_cache_discard(Qcow2Cache *c, guint64 offset)
{
    int i = lookup(c, offset);

    if (i >= 0 && !c->entries[i].ref)
        forget_slot(c, i);
    else if (i >= 0)
        c->entries[i].dirty = FALSE;
}

/* cache-clean-interval: drops clean entries unused since the last call. */
void q2_cache_clean_unused(Qcow2Cache *c)
{
    for (int i = 0; i < c->size; i++) {
        Qcow2CacheEntry *e = &c->entries[i];

        if (e->offset && !e->ref && !e->dirty && e->lru <= c->clean_mark)
            forget_slot(c, i);
    }
    c->clean_mark = c->lru_counter;
}

gboolean q2_cache_empty(Qcow2State *s, Qcow2Cache *c, GError **error)
{
    if (!q2_cache_flush(s, c, error))
        return FALSE;
    for (int i = 0; i < c->size; i++) {
        if (!c->entries[i].ref)
            forget_slot(c, i);
    }
    return TRUE;
}
