/*
 * htab.c - open addressing with linear probing; grows at 3/4 load (tombstones included).
 */
#include "htab.h"

#include "mem.h"

static size_t slot_of(uint64_t key, size_t cap) {
    key ^= key >> 33; /* a 64-bit mix (murmur3 finalizer) so sequential handles spread out */
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

void htab_init(htab_t *h) {
    h->keys = NULL;
    h->vals = NULL;
    h->cap = h->count = h->used = 0;
}

void htab_free(htab_t *h) {
    pg_free(h->keys);
    pg_free(h->vals);
    htab_init(h);
}

static int htab_grow(htab_t *h) {
    size_t cap = h->cap ? h->cap : 8;
    while (h->count * 2 >= cap) /* rehash to at most half full */
        cap *= 2;
    htab_t n;
    n.keys = pg_calloc_array(cap, sizeof(uint64_t));
    n.vals = pg_calloc_array(cap, sizeof(void *));
    if (!n.keys || !n.vals) {
        pg_free(n.keys);
        pg_free(n.vals);
        return -1;
    }
    n.cap = cap;
    n.count = n.used = 0;
    for (size_t i = 0; i < h->cap; i++)
        if (h->keys[i] != 0 && h->keys[i] != HTAB_TOMB)
            htab_put(&n, h->keys[i], h->vals[i]); /* cannot grow: n is at most half full */
    htab_free(h);
    *h = n;
    return 0;
}

int htab_put(htab_t *h, uint64_t key, void *val) {
    if ((h->used + 1) * 4 > h->cap * 3 && htab_grow(h) != 0)
        return -1;
    size_t i = slot_of(key, h->cap), tomb = SIZE_MAX;
    for (;; i = (i + 1) & (h->cap - 1)) {
        if (h->keys[i] == key) {
            h->vals[i] = val;
            return 0;
        }
        if (h->keys[i] == HTAB_TOMB && tomb == SIZE_MAX)
            tomb = i;
        if (h->keys[i] == 0)
            break;
    }
    if (tomb != SIZE_MAX)
        i = tomb; /* reuse a tombstone: used does not grow */
    else
        h->used++;
    h->keys[i] = key;
    h->vals[i] = val;
    h->count++;
    return 0;
}

static size_t htab_find(const htab_t *h, uint64_t key) {
    if (h->cap == 0 || key == 0 || key == HTAB_TOMB)
        return SIZE_MAX;
    for (size_t i = slot_of(key, h->cap);; i = (i + 1) & (h->cap - 1)) {
        if (h->keys[i] == key)
            return i;
        if (h->keys[i] == 0)
            return SIZE_MAX;
    }
}

void *htab_get(const htab_t *h, uint64_t key) {
    size_t i = htab_find(h, key);
    return i == SIZE_MAX ? NULL : h->vals[i];
}

void *htab_replace(htab_t *h, uint64_t key, void *val) {
    size_t i = htab_find(h, key);
    if (i == SIZE_MAX)
        return NULL;
    void *old = h->vals[i];
    h->vals[i] = val;
    return old;
}

void *htab_del(htab_t *h, uint64_t key) {
    size_t i = htab_find(h, key);
    if (i == SIZE_MAX)
        return NULL;
    void *v = h->vals[i];
    h->keys[i] = HTAB_TOMB;
    h->vals[i] = NULL;
    h->count--;
    return v;
}

void htab_each(const htab_t *h, void (*fn)(void *val, void *arg), void *arg) {
    for (size_t i = 0; i < h->cap; i++)
        if (h->keys[i] != 0 && h->keys[i] != HTAB_TOMB)
            fn(h->vals[i], arg);
}
