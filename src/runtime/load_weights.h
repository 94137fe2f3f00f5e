/* runtime/load_weights - the weight source a model is built over at load:
 * each tensor as stored (a view into the memory-mapped checkpoint), or
 * converted to the dtype the quantization policy (vlm_plan_tensor_dtype)
 * gives it at the load precision.
 *
 * Conversion is tensor by tensor when the model asks for the tensor: rows
 * are widened from the mapping to f32 (one row of scratch per thread) and
 * written in the target dtype (Q8_0/Q4_0/Q4_K blocks, or f32/bf16/f16) into
 * an accounted buffer of category weights. No second full-precision copy is
 * made: the peak during load is the converted bytes plus n_threads rows of
 * f32. The source pages are dropped from the page cache mapping after each
 * conversion (madvise), so resident memory follows the converted size.
 *
 * Over a set opened unmapped (vlm_tensor_set_open_unmapped, as vlm_model_load
 * does) nothing of the checkpoint is mapped up front: a tensor kept as
 * stored is mapped on its own (the page-aligned range covering it), and a
 * tensor converted is read with pread, vlm_plan_read_block_bytes at a time
 * (whole rows), into one accounted scratch buffer. Address space then
 * follows what the plan counts (weights + scratch), so a limit on it
 * (prlimit --as) below the checkpoint's size can still hold a quantized
 * rung. */
#ifndef VLM_RUNTIME_LOAD_WEIGHTS_H
#define VLM_RUNTIME_LOAD_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "backend/cpu/parallel.h"
#include "io/safetensors.h"
#include "models/weights.h"
#include "runtime/planner.h"

typedef struct load_weights {
    const vlm_tensor_set *ts;
    vlm_precision prec;
    cpu_pool *pool; /* converts rows in parallel; may be NULL */
    void **bufs;    /* [n_bufs] converted tensors (accounted, weights) */
    size_t n_bufs, cap_bufs;
    vlm_st_range *maps; /* [n_maps] unmapped set: the kept tensors' own mappings */
    size_t n_maps, cap_maps;
    uint64_t converted_bytes; /* bytes of the converted tensors */
    uint64_t source_bytes;    /* their stored bytes */
    uint64_t kept_bytes;      /* stored bytes of the tensors kept mapped */
} load_weights;

void load_weights_init(load_weights *lw, const vlm_tensor_set *ts, vlm_precision prec,
                       cpu_pool *pool);
/* The weight source over lw (lookup = load_weights_lookup, ctx = lw). */
vlm_weight_source load_weights_source(load_weights *lw);
/* vlm_weight_lookup_fn: the view of `name` at lw's precision. */
vlm_status load_weights_lookup(void *ctx, const char *name, vlm_tensor_view *out, vlm_err *err);
/* Free every converted tensor. */
void load_weights_free(load_weights *lw);

#endif
