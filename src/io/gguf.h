/* io/gguf - GGUF model files (llama.cpp / ggml): read and write.
 *
 * A GGUF file is: a header (magic "GGUF", version, tensor count, metadata
 * count), the metadata as key/typed-value pairs, one info record per tensor
 * (name, dims, type, offset), padding to the alignment, then the tensor data.
 * All integers are little-endian. Versions 2 and 3 are read (same layout);
 * version 1 (32-bit counts) and big-endian files are refused.
 *
 * The reader memory-maps the file read-only and validates everything before
 * returning: counts and string lengths against the bytes left, nesting
 * depth, UTF-8 names, known types, dims and byte sizes (overflow-checked),
 * offsets aligned, inside the file and not overlapping, unique names and
 * keys. Values and tensor data point into the mapping: nothing is copied
 * but the keys and tensor names (NUL-terminated copies for lookup).
 * Tensors and keys are found by name in O(1) (hash tables).
 *
 * Layout and rules in detail: docs/formats-gguf.md. */
#ifndef VLM_IO_GGUF_H
#define VLM_IO_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tensor/dtype.h"

#define VLM_GGUF_DEFAULT_ALIGNMENT 32
#define VLM_GGUF_MAX_DIMS          4
#define VLM_GGUF_MAX_DEPTH         8     /* arrays nested deeper are refused */
#define VLM_GGUF_MAX_KEY_LEN       65535 /* bytes */
#define VLM_GGUF_MAX_NAME_LEN      4096  /* bytes of a tensor name */

/* Metadata value types, with their ids in the file. */
typedef enum vlm_gguf_type {
    VLM_GGUF_UINT8 = 0,
    VLM_GGUF_INT8 = 1,
    VLM_GGUF_UINT16 = 2,
    VLM_GGUF_INT16 = 3,
    VLM_GGUF_UINT32 = 4,
    VLM_GGUF_INT32 = 5,
    VLM_GGUF_FLOAT32 = 6,
    VLM_GGUF_BOOL = 7,
    VLM_GGUF_STRING = 8,
    VLM_GGUF_ARRAY = 9,
    VLM_GGUF_UINT64 = 10,
    VLM_GGUF_INT64 = 11,
    VLM_GGUF_FLOAT64 = 12,
    VLM_GGUF_TYPE_COUNT
} vlm_gguf_type;

/* A string as stored: len bytes, not NUL-terminated, may hold any bytes. */
typedef struct vlm_gguf_str {
    const char *ptr;
    uint64_t len;
} vlm_gguf_str;

/* One metadata value. Integers are widened (u for unsigned and bool, i for
 * signed), floats to double (a FLOAT32 value converts exactly).
 *
 * Arrays: elem is the element type and n the count. Elements of a scalar
 * type lie packed in `data` (n * size little-endian values, any alignment;
 * read them with vlm_gguf_arr_*); elements of type STRING or ARRAY are the
 * n values in `items`. */
typedef struct vlm_gguf_value {
    vlm_gguf_type type;
    union {
        uint64_t u;
        int64_t i;
        double f;
        vlm_gguf_str str;
        struct {
            vlm_gguf_type elem;
            uint64_t n;
            const void *data;
            const struct vlm_gguf_value *items;
        } arr;
    };
} vlm_gguf_value;

typedef struct vlm_gguf_kv {
    const char *key; /* NUL-terminated copy */
    vlm_gguf_value value;
} vlm_gguf_kv;

typedef struct vlm_gguf_tensor {
    const char *name;                 /* NUL-terminated copy */
    uint32_t n_dims;                  /* 1..4 */
    uint64_t dims[VLM_GGUF_MAX_DIMS]; /* dims[0] varies fastest (ggml ne order); unused = 1 */
    uint32_t ggml_type;               /* type id in the file */
    vlm_dtype dtype;                  /* the same type as ours */
    uint64_t n_elems;                 /* product of dims */
    uint64_t offset;                  /* bytes from the start of the data section */
    uint64_t nbytes;                  /* bytes of data */
    const void *data; /* in the mapping, aligned as the file says; NULL if nbytes is 0 */
} vlm_gguf_tensor;

typedef struct vlm_gguf vlm_gguf;

/* --- reading --------------------------------------------------------------- */

/* Map and validate the file at path. On failure *out is NULL and err names
 * the file and the key or tensor at fault. */
vlm_status vlm_gguf_open(const char *path, vlm_gguf **out, vlm_err *err);

/* The same over bytes already in memory (size bytes at data, which must
 * stay valid until vlm_gguf_close); name is used in messages. */
vlm_status vlm_gguf_open_memory(const void *data, size_t size, const char *name, vlm_gguf **out,
                                vlm_err *err);

void vlm_gguf_close(vlm_gguf *g);

uint32_t vlm_gguf_version(const vlm_gguf *g);
uint64_t vlm_gguf_alignment(const vlm_gguf *g);
uint64_t vlm_gguf_data_offset(const vlm_gguf *g); /* file offset of the data section */
uint64_t vlm_gguf_file_size(const vlm_gguf *g);

size_t vlm_gguf_n_kv(const vlm_gguf *g);
const vlm_gguf_kv *vlm_gguf_kv_at(const vlm_gguf *g, size_t i); /* file order */
const vlm_gguf_value *vlm_gguf_find(const vlm_gguf *g, const char *key);

size_t vlm_gguf_n_tensors(const vlm_gguf *g);
const vlm_gguf_tensor *vlm_gguf_tensor_at(const vlm_gguf *g, size_t i); /* file order */
const vlm_gguf_tensor *vlm_gguf_find_tensor(const vlm_gguf *g, const char *name);

/* Typed metadata getters. VLM_ERR_NOT_FOUND when the key is absent,
 * VLM_ERR_FORMAT when its type does not fit (messages name file and key).
 * get_u64/get_i64 take any integer type whose value fits; get_f64 takes
 * floats and integers; get_str takes STRING; get_arr takes an ARRAY whose
 * element type is elem (VLM_GGUF_TYPE_COUNT: any). */
vlm_status vlm_gguf_get_u64(const vlm_gguf *g, const char *key, uint64_t *out, vlm_err *err);
vlm_status vlm_gguf_get_i64(const vlm_gguf *g, const char *key, int64_t *out, vlm_err *err);
vlm_status vlm_gguf_get_f64(const vlm_gguf *g, const char *key, double *out, vlm_err *err);
vlm_status vlm_gguf_get_bool(const vlm_gguf *g, const char *key, bool *out, vlm_err *err);
vlm_status vlm_gguf_get_str(const vlm_gguf *g, const char *key, vlm_gguf_str *out, vlm_err *err);
vlm_status vlm_gguf_get_arr(const vlm_gguf *g, const char *key, vlm_gguf_type elem,
                            const vlm_gguf_value **out, vlm_err *err);

/* Element i of an array of a scalar type, converted; false when i is out of
 * range or the conversion does not fit (u64: integers >= 0 and bools; i64:
 * integers up to INT64_MAX; f64: any number). */
bool vlm_gguf_arr_u64(const vlm_gguf_value *a, uint64_t i, uint64_t *out);
bool vlm_gguf_arr_i64(const vlm_gguf_value *a, uint64_t i, int64_t *out);
bool vlm_gguf_arr_f64(const vlm_gguf_value *a, uint64_t i, double *out);
/* Element i of an array of strings; false if out of range or not strings. */
bool vlm_gguf_arr_str(const vlm_gguf_value *a, uint64_t i, vlm_gguf_str *out);

/* "UINT8", ..., "FLOAT64"; "?" for anything else. */
const char *vlm_gguf_type_name(vlm_gguf_type t);
/* Bytes of one value of a scalar type; 0 for STRING, ARRAY and unknown. */
size_t vlm_gguf_type_size(vlm_gguf_type t);

/* ggml tensor type ids <-> our dtypes: -1 where there is no counterpart.
 * vlm_gguf_ggml_type_name also names the ggml types we do not support
 * ("IQ2_XXS", ...) and gives NULL for ids no ggml version defines. */
int vlm_gguf_dtype_from_ggml(uint32_t ggml_type);
int vlm_gguf_ggml_from_dtype(vlm_dtype t);
const char *vlm_gguf_ggml_type_name(uint32_t ggml_type);

/* --- writing --------------------------------------------------------------- */

typedef struct vlm_gguf_writer vlm_gguf_writer;

vlm_status vlm_gguf_writer_new(vlm_gguf_writer **out, vlm_err *err);
void vlm_gguf_writer_free(vlm_gguf_writer *w);

/* Version to write (2 or 3; default 3). */
vlm_status vlm_gguf_writer_set_version(vlm_gguf_writer *w, uint32_t version, vlm_err *err);

/* Add a metadata pair (keys unique, valid UTF-8, 1..65535 bytes). The value
 * is serialized at once, so v and what it points to need not outlive the
 * call. Scalar array elements are read from arr.data as host (little-
 * endian) values. "general.alignment" must be a UINT32 power of two and
 * sets the alignment of the data. */
vlm_status vlm_gguf_writer_add(vlm_gguf_writer *w, const char *key, const vlm_gguf_value *v,
                               vlm_err *err);
vlm_status vlm_gguf_writer_add_u32(vlm_gguf_writer *w, const char *key, uint32_t v, vlm_err *err);
vlm_status vlm_gguf_writer_add_u64(vlm_gguf_writer *w, const char *key, uint64_t v, vlm_err *err);
vlm_status vlm_gguf_writer_add_i64(vlm_gguf_writer *w, const char *key, int64_t v, vlm_err *err);
vlm_status vlm_gguf_writer_add_f32(vlm_gguf_writer *w, const char *key, float v, vlm_err *err);
vlm_status vlm_gguf_writer_add_bool(vlm_gguf_writer *w, const char *key, bool v, vlm_err *err);
vlm_status vlm_gguf_writer_add_str(vlm_gguf_writer *w, const char *key, const char *s,
                                   vlm_err *err);

/* Add a tensor of type t with dims (dims[0] varies fastest). data holds
 * its bytes (vlm_dtype_nbytes of the element count) and is only borrowed:
 * it must stay valid until vlm_gguf_writer_write. */
vlm_status vlm_gguf_writer_add_tensor(vlm_gguf_writer *w, const char *name, vlm_dtype t,
                                      uint32_t n_dims, const uint64_t *dims, const void *data,
                                      vlm_err *err);

/* Write the file (through a temporary file in the same folder, renamed into
 * place, so a reader never sees half a file). The writer stays usable. */
vlm_status vlm_gguf_writer_write(vlm_gguf_writer *w, const char *path, vlm_err *err);

#endif
