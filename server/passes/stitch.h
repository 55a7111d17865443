/*
 * stitch.h - stitching a row reduction into the kernel that reads it back (see stitch.c).
 */
#ifndef PG_STITCH_H
#define PG_STITCH_H

#include "../../kernels/codegen/kir.h"

/*
 * Tries to compute kernel P (whose result is graph node kin_k[q], read by kernel K as its input
 * q) inside K, as stitch.c describes. kin_k and kin_p name the graph node behind each kernel's
 * inputs. On success writes the combined kernel to *out and its input nodes to kin_out and
 * returns true; K and P are unchanged either way (out must not alias them).
 */
bool stitch_inline(const kir_kernel_t *K, const int32_t *kin_k, int q, const kir_kernel_t *P,
                   const int32_t *kin_p, kir_kernel_t *out, int32_t *kin_out);

#endif /* PG_STITCH_H */
