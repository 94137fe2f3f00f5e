/* io/safetensors - Hugging Face safetensors files: read (memory-mapped,
 * strictly validated), look up by name in O(1), write (whole or streamed),
 * and sharded checkpoints through model.safetensors.index.json.
 *
 * File layout (little-endian):
 *     u64 N                      header length in bytes
 *     N bytes of UTF-8 JSON      {"__metadata__": {str: str}, name: {"dtype": "BF16",
 *                                 "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
 *     data area                  tensor bytes; offsets are relative to its start (8 + N)
 *
 * Opening parses the header only: the data area is mapped read-only and no
 * page of it is touched, so an 8 GB checkpoint opens in milliseconds with a
 * resident cost of the header plus the name table. Mapped bytes are counted
 * with vlm_alloc_note_mapped.
 *
 * Validation (every error names the file, and the tensor where there is one):
 *   - header length >= 2, <= VLM_ST_MAX_HEADER, <= file size - 8;
 *   - the header is a JSON object; `__metadata__`, if present, maps strings
 *     to strings; every other member is a tensor object with a known dtype
 *     (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL), a shape of at most
 *     VLM_ST_MAX_RANK non-negative integers and two integer data offsets;
 *   - names are unique, non-empty and valid UTF-8;
 *   - end - begin == dtype size x product(shape), overflow-checked;
 *   - offsets lie inside the data area and, sorted by begin, do not overlap.
 * Gaps between tensors and trailing bytes after the last one are accepted
 * (reading them is safe); the reference Rust library refuses them, so our
 * writer never produces them: it packs tensors back to back. */
#ifndef VLM_IO_SAFETENSORS_H
#define VLM_IO_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

#define VLM_ST_MAX_RANK   8
#define VLM_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000) /* bytes, as the reference library */

/* One tensor as stored. `data` points into the read-only mapping (or the
 * caller's buffer for vlm_st_open_memory); it is aligned only as well as the
 * writer chose (our writer and HF's align each tensor to its element size). */
typedef struct vlm_st_tensor {
    const char *name;
    vlm_dtype dtype;
    int rank;
    int64_t shape[VLM_ST_MAX_RANK]; /* shape[0] is the slowest-varying axis */
    uint64_t nelem;                 /* product of shape (1 for rank 0) */
    uint64_t offset;                /* bytes from the start of the file */
    uint64_t nbytes;
    const void *data; /* NULL when opened unmapped: read or map it (below) */
    const char *file; /* path of the file holding it */
    int fd;           /* unmapped: the open file it is read from; else -1 */
} vlm_st_tensor;

typedef struct vlm_st_file vlm_st_file;

/* Open and validate a .safetensors file, mapping it read-only. */
vlm_status vlm_st_open(const char *path, vlm_st_file **out, vlm_err *err);
/* Parse and validate a file image held in memory (not copied: it must
 * outlive the handle). `what` names it in messages. */
vlm_status vlm_st_open_memory(const void *data, size_t len, const char *what, vlm_st_file **out,
                              vlm_err *err);
/* Open and validate without mapping the data area: the header is read with
 * pread into accounted memory and the file stays open; every tensor's data
 * is NULL. A limit on the address space (RLIMIT_AS) then only has to hold
 * what is read or mapped tensor by tensor (vlm_st_tensor_read / _map), not
 * the whole checkpoint. */
vlm_status vlm_st_open_unmapped(const char *path, vlm_st_file **out, vlm_err *err);
void vlm_st_close(vlm_st_file *f);

/* Copy bytes [off, off + len) of tensor t into buf: pread for an unmapped
 * tensor, memcpy from the mapping otherwise. */
vlm_status vlm_st_tensor_read(const vlm_st_tensor *t, uint64_t off, void *buf, size_t len,
                              vlm_err *err);

/* A read-only mapping of just one tensor: the page-aligned range of the file
 * covering it (at most one page more on each side), counted as mapped
 * bytes. For a tensor of a mapped file, data is t->data and nothing is
 * mapped. Unmap with vlm_st_range_unmap (safe on a zeroed range). */
typedef struct vlm_st_range {
    void *base; /* the mapping, NULL when nothing was mapped */
    size_t len; /* bytes mapped */
    const void *data;
} vlm_st_range;
vlm_status vlm_st_tensor_map(const vlm_st_tensor *t, vlm_st_range *out, vlm_err *err);
void vlm_st_range_unmap(vlm_st_range *r);
/* Unmapped tensor read once (converted): drop its pages from the page cache. */
void vlm_st_tensor_drop_cache(const vlm_st_tensor *t);

const char *vlm_st_path(const vlm_st_file *f);
uint64_t vlm_st_file_size(const vlm_st_file *f);
uint64_t vlm_st_header_size(const vlm_st_file *f); /* N, the JSON length */
size_t vlm_st_count(const vlm_st_file *f);
/* Tensors in the order of their data offsets. */
const vlm_st_tensor *vlm_st_at(const vlm_st_file *f, size_t i);
/* NULL when absent. */
const vlm_st_tensor *vlm_st_find(const vlm_st_file *f, const char *name);

/* `__metadata__` entries (in header order). */
size_t vlm_st_metadata_count(const vlm_st_file *f);
void vlm_st_metadata_at(const vlm_st_file *f, size_t i, const char **key, const char **value);
/* NULL when absent. */
const char *vlm_st_metadata_get(const vlm_st_file *f, const char *key);

/* --- writing ---------------------------------------------------------------- */

/* A tensor to write. With data NULL, the writer asks `fill` for its bytes in
 * pieces, so a checkpoint larger than memory can be streamed out. */
typedef struct vlm_st_wtensor {
    const char *name;
    vlm_dtype dtype; /* a safetensors dtype (not a GGUF block type) */
    int rank;
    int64_t shape[VLM_ST_MAX_RANK];
    const void *data; /* dtype size x product(shape) bytes, or NULL */
    int shard;        /* 0-based shard for vlm_st_write_sharded; ignored otherwise */
} vlm_st_wtensor;

/* Fill `len` bytes of tensor `index` (into the array passed to the writer)
 * starting at byte `offset` of that tensor. */
typedef vlm_status (*vlm_st_fill_fn)(void *user, size_t index, uint64_t offset, void *buf,
                                     size_t len, vlm_err *err);

typedef struct vlm_st_kv {
    const char *key;
    const char *value;
} vlm_st_kv;

/* Write one file. The header is padded with spaces to a multiple of 8 bytes
 * (as HF does) and tensors are laid out back to back, largest element size
 * first, so each is aligned to its element size. The file is written to a
 * temporary name and renamed into place. */
vlm_status vlm_st_write(const char *path, const vlm_st_wtensor *t, size_t n, const vlm_st_kv *meta,
                        size_t n_meta, vlm_st_fill_fn fill, void *user, vlm_err *err);

/* Write n_shards files dir/model-0000K-of-0000S.safetensors (K = shard+1)
 * and dir/model.safetensors.index.json ({"metadata": {"total_size": bytes},
 * "weight_map": {name: file}}). With n_shards == 1, writes dir/model.safetensors
 * and no index. Every shard must hold at least one tensor. */
vlm_status vlm_st_write_sharded(const char *dir, const vlm_st_wtensor *t, size_t n, int n_shards,
                                const vlm_st_kv *meta, size_t n_meta, vlm_st_fill_fn fill,
                                void *user, vlm_err *err);

/* Assign shards so that no shard's tensor bytes exceed max_bytes (a tensor
 * larger than that gets a shard of its own), in array order; returns the
 * number of shards in *n_shards. */
void vlm_st_plan_shards(vlm_st_wtensor *t, size_t n, uint64_t max_bytes, int *n_shards);

/* --- a model's tensors: one file or a sharded set ----------------------------- */

typedef struct vlm_tensor_set vlm_tensor_set;

/* Open a model's tensors. `path` is
 *   - a .safetensors file,
 *   - a model.safetensors.index.json (shards are resolved next to it), or
 *   - a folder holding model.safetensors.index.json, else model.safetensors,
 *     else exactly one *.safetensors file.
 * With an index: every file it names is opened once; every name it maps must
 * be in the file it names; a name in two shards is an error; a tensor in a
 * shard but absent from the weight map is an error too (the index is the
 * contract). */
vlm_status vlm_tensor_set_open(const char *path, vlm_tensor_set **out, vlm_err *err);
/* The same, every file opened with vlm_st_open_unmapped (tensor data NULL). */
vlm_status vlm_tensor_set_open_unmapped(const char *path, vlm_tensor_set **out, vlm_err *err);
/* Bytes of the whole-file mappings the set holds (0 when unmapped). */
uint64_t vlm_tensor_set_mapped_bytes(const vlm_tensor_set *s);
void vlm_tensor_set_close(vlm_tensor_set *s);

size_t vlm_tensor_set_count(const vlm_tensor_set *s);
/* Tensors in a stable order: shard by shard, each by data offset. */
const vlm_st_tensor *vlm_tensor_set_at(const vlm_tensor_set *s, size_t i);
const vlm_st_tensor *vlm_tensor_set_find(const vlm_tensor_set *s, const char *name);
size_t vlm_tensor_set_file_count(const vlm_tensor_set *s);
const vlm_st_file *vlm_tensor_set_file(const vlm_tensor_set *s, size_t i);
/* The path the set was opened from (file, index or folder). */
const char *vlm_tensor_set_path(const vlm_tensor_set *s);

/* Parse an index JSON held in memory: calls `each` for every weight_map
 * entry (stops at the first error it returns). Checks the structure: an
 * object with "weight_map" mapping names to file names that are plain file
 * names (no '/', not "." or ".."), and an optional "metadata" object. For
 * the fuzzer and for vlm_tensor_set_open. The tree is parsed inside a
 * base/json parse scope: `each` must copy what it keeps and make no cJSON
 * value that outlives the call. */
vlm_status vlm_st_index_parse(const char *text, size_t len, const char *what,
                              vlm_status (*each)(void *user, const char *name, const char *file,
                                                 vlm_err *err),
                              void *user, vlm_err *err);

/* True if s (len bytes) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF). */
bool vlm_utf8_valid(const char *s, size_t len);

#endif
