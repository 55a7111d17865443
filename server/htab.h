/*
 * htab.h - a small open-addressing hash table from uint64 keys to pointers.
 *
 * Sessions use it to map handles to tensors. Keys are never 0 (handles start at 1), which lets 0
 * mark an empty slot; deleted slots become tombstones so that probe chains stay intact.
 */
#ifndef PG_HTAB_H
#define PG_HTAB_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *keys; /* 0: empty, HTAB_TOMB: deleted, else a key */
    void **vals;    /* values of live keys */
    size_t cap;     /* slots, a power of two (0 before the first insert) */
    size_t count;   /* live keys */
    size_t used;    /* live keys + tombstones (what decides when to grow) */
} htab_t;

#define HTAB_TOMB UINT64_MAX

/* Prepares an empty table (allocates nothing). */
void htab_init(htab_t *h);
/* Frees the table's arrays (not the values). */
void htab_free(htab_t *h);
/* Inserts or replaces key (1 to 2^64-2). Returns 0, or -1 when memory runs out. */
int htab_put(htab_t *h, uint64_t key, void *val);
/* Returns the value of key, or NULL. */
void *htab_get(const htab_t *h, uint64_t key);
/* Replaces the value of a key that is present and returns the old value; returns NULL and
 * changes nothing when key is absent. Never allocates, so it cannot fail on a present key. */
void *htab_replace(htab_t *h, uint64_t key, void *val);
/* Removes key and returns its value, or NULL when absent. */
void *htab_del(htab_t *h, uint64_t key);
/* Calls fn(val, arg) for every live value, in no particular order. */
void htab_each(const htab_t *h, void (*fn)(void *val, void *arg), void *arg);

#endif /* PG_HTAB_H */
