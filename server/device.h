/*
 * device.h - the daemon's devices: which exist, how requests name them, and what `hello` says.
 *
 * A request names a device with a string: "cpu", "cuda" (the first GPU) or "cuda:N". `put`, `run`
 * and `explain` take one in their optional field "device" (default "cpu"). The CPU always runs;
 * CUDA devices are those the driver lists when the backend was built (PICOGRAD_CUDA) and could be
 * loaded at start (kernels/cuda/load.c) with NVRTC and cuBLAS; any other CUDA device is
 * refused with `no_device` and a message that says why, so a client never gets a silent CPU
 * result for a GPU request.
 */
#ifndef PG_DEVICE_H
#define PG_DEVICE_H

#include "../protocol/proto.h"

#include <msgpack.h>
#include <stdbool.h>

typedef enum { DEV_CPU = 0, DEV_CUDA } dev_kind_t;

#define DEV_TEXT_MAX 16   /* the longest device string, NUL included ("cuda:" + 9 digits) */
#define DEV_MAX_INDEX 999999999

/* A parsed device string. */
typedef struct {
    dev_kind_t kind;
    int index;                /* "cuda:N": N; -1 for "cuda" (the first device); 0 for the CPU */
    char text[DEV_TEXT_MAX];  /* the string as the client wrote it, for messages */
} dev_id_t;

/* Parses device string s (n bytes, not NUL-terminated): "cpu", "cpu:0", "cuda" or "cuda:N"
 * (N decimal, no sign or leading zero, at most DEV_MAX_INDEX). Returns 0, or -PG_EBAD_REQUEST
 * with err naming field (e.g. "device") and, when printable, the string. */
int dev_parse(const char *s, size_t n, const char *field, dev_id_t *out, proto_err_t *err);

/* Returns 0 when this daemon can run on d, else -PG_ENO_DEVICE with a message naming the device
 * and the reason ("device 'cuda:3' does not exist: this daemon has 1 CUDA device"). */
int dev_check(const dev_id_t *d, proto_err_t *err);

/* Reads a request's optional "device" field (absent or nil: the CPU), parses and checks it.
 * Returns 0, -PG_EBAD_REQUEST (not a string, malformed) or -PG_ENO_DEVICE, with err filled. */
int dev_from_request(const msgpack_object *args, dev_id_t *out, proto_err_t *err);

/* Loads the CUDA backend when it was built (logs what it found), with its cubin cache under
 * cache_dir (NULL: none); call once at start. */
void dev_init(const char *cache_dir);
/* Unloads it (at exit). */
void dev_shutdown(void);

/* The number of CUDA devices listed by hello (0 without the backend or a GPU). */
int dev_cuda_count(void);
/* Packs stats' "cuda" key and its map (1 map entry): "devices", per GPU its name and bytes in
 * tensors, kept by the caching allocator and at most in use; "kernels", the CUDA kernel cache's
 * compiled / memory_hits / disk_hits / compile_seconds. Empty list and zeros without a GPU. */
void dev_pack_stats(msgpack_packer *pk);
/* Packs hello's map for CUDA device i (< dev_cuda_count()): name, kind, model, memory,
 * compute_capability, ready. */
void dev_pack_cuda(msgpack_packer *pk, int i);

#endif /* PG_DEVICE_H */
