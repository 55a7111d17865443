/*
 * mem.h - the daemon's two allocators.
 *
 * Client data (tensor storage and the frame buffers that become tensors) is reserved against the
 * --max-memory budget before it is allocated: that reservation is what `stats` reports as
 * bytes_in_use and what makes an oversized put an out_of_memory reply instead of an OOM kill.
 * Small internal structures (connections, requests, tables) go through pg_malloc, which counts
 * live bytes so that tests can check that everything came back, and checks n * size overflow.
 */
#ifndef PG_MEM_H
#define PG_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sets the client-data budget in bytes. Call once at start. */
void mem_init(uint64_t limit);

/* Reserves n bytes of the budget; returns false (reserving nothing) when they do not fit. */
bool mem_reserve(uint64_t n);
/* Gives back n bytes reserved earlier. */
void mem_release(uint64_t n);

/* Reserves n bytes and allocates them 64-byte aligned. Returns NULL when the budget or the system
 * refuses. The caller owns the result; free it with mem_data_free(p, n) with the same n. */
void *mem_data_alloc(uint64_t n);
/* Frees a mem_data_alloc() block and gives its bytes back to the budget. NULL is ignored. */
void mem_data_free(void *p, uint64_t n);
/* Frees the large blocks mem_data_free() kept for reuse (at shutdown). */
void mem_data_trim(void);

uint64_t mem_in_use(void); /* bytes reserved now */
uint64_t mem_peak(void);   /* the most ever reserved at once */
uint64_t mem_limit(void);  /* the budget */

/* Internal allocations: counted, overflow-checked, NULL on failure or for n == 0.
 * Free with pg_free(). */
void *pg_malloc(size_t n);
void *pg_calloc_array(size_t count, size_t size);
void *pg_realloc_array(void *p, size_t count, size_t size);
char *pg_strdup(const char *s);
void pg_free(void *p);
/* Internal bytes live now (for leak checks in tests). */
uint64_t pg_malloc_live(void);

#endif /* PG_MEM_H */
