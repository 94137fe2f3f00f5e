/* runtime/load_weights - see load_weights.h. */
#include "runtime/load_weights.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/alloc.h"
#include "tensor/quant.h"

void load_weights_init(load_weights *lw, const vlm_tensor_set *ts, vlm_precision prec,
                       cpu_pool *pool) {
    memset(lw, 0, sizeof *lw);
    lw->ts = ts;
    lw->prec = prec;
    lw->pool = pool;
}

vlm_weight_source load_weights_source(load_weights *lw) {
    return (vlm_weight_source){load_weights_lookup, lw};
}

void load_weights_free(load_weights *lw) {
    if (!lw) return;
    for (size_t i = 0; i < lw->n_bufs; i++) vlm_free(lw->bufs[i]);
    vlm_free(lw->bufs);
    lw->bufs = NULL;
    lw->n_bufs = lw->cap_bufs = 0;
    for (size_t i = 0; i < lw->n_maps; i++) vlm_st_range_unmap(&lw->maps[i]);
    vlm_free(lw->maps);
    lw->maps = NULL;
    lw->n_maps = lw->cap_maps = 0;
    lw->converted_bytes = lw->source_bytes = lw->kept_bytes = 0;
}

/* One conversion: rows of `row` elements from src (stored dtype) to dst. */
typedef struct conv_job {
    vlm_dtype from, to;
    int64_t row;
    const uint8_t *src;
    uint8_t *dst;
    size_t in_row_bytes, out_row_bytes;
    float *scratch; /* [n_threads][row] */
    int bad;        /* a row the converter refused (cannot happen for policy dtypes) */
} conv_job;

static void conv_rows(void *ctx, int64_t r0, int64_t r1, int ti) {
    conv_job *j = ctx;
    float *f = j->scratch + (size_t)ti * (size_t)j->row;
    const size_t n = (size_t)j->row;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *s = j->src + (size_t)r * j->in_row_bytes;
        uint8_t *d = j->dst + (size_t)r * j->out_row_bytes;
        if (!vlm_to_f32(j->from, s, f, n)) {
            j->bad = 1;
            return;
        }
        switch (j->to) {
        case VLM_DTYPE_F32:
            memcpy(d, f, n * sizeof(float));
            break;
        case VLM_DTYPE_BF16:
            for (size_t i = 0; i < n; i++) {
                uint16_t h = vlm_f32_to_bf16(f[i]);
                memcpy(d + 2 * i, &h, 2);
            }
            break;
        case VLM_DTYPE_F16:
            for (size_t i = 0; i < n; i++) {
                uint16_t h = vlm_f32_to_f16(f[i]);
                memcpy(d + 2 * i, &h, 2);
            }
            break;
        default:
            if (!vlm_quantize(j->to, f, d, n)) j->bad = 1;
            break;
        }
    }
}

/* Drop the mapped source pages of [p, p+len) wholly inside it: they were
 * read once to convert, and are refaulted from the file if read again. */
static void drop_pages(const void *p, size_t len) {
    long pg = sysconf(_SC_PAGESIZE);
    if (pg <= 0 || len == 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)pg - 1) & ~((uintptr_t)pg - 1);
    uintptr_t e = ((uintptr_t)p + len) & ~((uintptr_t)pg - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_DONTNEED);
}

vlm_status load_weights_lookup(void *ctx, const char *name, vlm_tensor_view *out, vlm_err *err) {
    load_weights *lw = ctx;
    const vlm_st_tensor *t = vlm_tensor_set_find(lw->ts, name);
    if (!t)
        return vlm_err_set(err, VLM_ERR_NOT_FOUND, "%s: tensor \"%s\" is missing",
                           vlm_tensor_set_path(lw->ts), name);
    if (t->rank > VLM_TENSOR_MAX_DIMS)
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" has rank %d", t->file, name,
                           t->rank);
    memset(out, 0, sizeof *out);
    out->ndim = t->rank;
    uint64_t nelem = 1;
    for (int i = 0; i < t->rank; i++) {
        out->shape[i] = t->shape[i];
        nelem *= (uint64_t)t->shape[i];
    }
    vlm_dtype to = vlm_plan_tensor_dtype(lw->prec, name, t->rank, t->shape, t->dtype);
    if (to == t->dtype || nelem == 0) {
        /* the kernels read 2-byte elements in place (F32 is read with memcpy) */
        if ((t->dtype == VLM_DTYPE_BF16 || t->dtype == VLM_DTYPE_F16) && ((uintptr_t)t->data & 1))
            return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is not 2-byte aligned",
                               t->file, name);
        out->dtype = t->dtype;
        out->data = t->data;
        if (!t->data && nelem > 0) {
            /* unmapped set: map just this tensor's pages */
            if (lw->n_maps == lw->cap_maps) {
                size_t cap = lw->cap_maps ? lw->cap_maps * 2 : 64;
                vlm_st_range *nm = vlm_realloc(lw->maps, cap * sizeof *nm, VLM_MEM_OTHER);
                if (!nm)
                    return vlm_err_set(err, VLM_ERR_NOMEM, "tensor \"%s\": out of memory", name);
                lw->maps = nm;
                lw->cap_maps = cap;
            }
            vlm_st_range r;
            vlm_status st = vlm_st_tensor_map(t, &r, err);
            if (st) return st;
            if ((t->dtype == VLM_DTYPE_BF16 || t->dtype == VLM_DTYPE_F16) &&
                ((uintptr_t)r.data & 1)) {
                vlm_st_range_unmap(&r);
                return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is not 2-byte aligned",
                                   t->file, name);
            }
            lw->maps[lw->n_maps++] = r;
            out->data = r.data;
        }
        lw->kept_bytes += t->nbytes;
        return VLM_OK;
    }
    const vlm_dtype_info *fi = vlm_dtype_get(t->dtype), *ti = vlm_dtype_get(to);
    if (!fi || !ti || fi->block_elems != 1)
        return vlm_err_set(err, VLM_ERR_UNSUPPORTED, "%s: tensor \"%s\": cannot convert %s to %s",
                           t->file, name, fi ? fi->name : "?", ti ? ti->name : "?");
    conv_job j;
    memset(&j, 0, sizeof j);
    j.from = t->dtype;
    j.to = to;
    j.row = t->rank ? t->shape[t->rank - 1] : 1;
    const uint64_t rows = nelem / (uint64_t)j.row;
    j.src = t->data;
    j.in_row_bytes = (size_t)j.row * fi->block_bytes;
    j.out_row_bytes = (size_t)vlm_plan_dtype_bytes(to, (uint64_t)j.row);
    size_t total;
    if (!vlm_size_mul((size_t)rows, j.out_row_bytes, &total))
        return vlm_err_set(err, VLM_ERR_FORMAT, "%s: tensor \"%s\" is too large", t->file, name);
    if (lw->n_bufs == lw->cap_bufs) {
        size_t cap = lw->cap_bufs ? lw->cap_bufs * 2 : 64;
        void **nb = vlm_realloc(lw->bufs, cap * sizeof *nb, VLM_MEM_OTHER);
        if (!nb)
            return vlm_err_set(err, VLM_ERR_NOMEM, "tensor \"%s\": out of memory converting to %s",
                               name, ti->name);
        lw->bufs = nb;
        lw->cap_bufs = cap;
    }
    int threads = lw->pool ? cpu_pool_threads(lw->pool) : 1;
    /* Unmapped: the stored rows are read block by block (pread) into one
     * accounted buffer of at most LOAD_READ_BLOCK bytes (whole rows). */
    const uint64_t blk_bytes = t->data ? 0 : vlm_plan_read_block_bytes(j.in_row_bytes, t->nbytes);
    const uint64_t blk_rows = t->data ? rows : blk_bytes / j.in_row_bytes;
    uint8_t *blk = NULL, *dst = vlm_alloc(total, VLM_MEM_WEIGHTS);
    j.scratch = VLM_NEW_ARRAY(float, (size_t)threads *(size_t)j.row, VLM_MEM_SCRATCH);
    if (dst && j.scratch && blk_bytes) blk = vlm_alloc((size_t)blk_bytes, VLM_MEM_SCRATCH);
    if (!dst || !j.scratch || (blk_bytes && !blk)) {
        vlm_free(dst);
        vlm_free(j.scratch);
        vlm_free(blk);
        return vlm_err_set(err, VLM_ERR_NOMEM,
                           "tensor \"%s\": out of memory converting to %s (%zu bytes)", name,
                           ti->name, total);
    }
    vlm_status st = VLM_OK;
    for (uint64_t r0 = 0; r0 < rows && !j.bad; r0 += blk_rows) {
        uint64_t nr = rows - r0 < blk_rows ? rows - r0 : blk_rows;
        j.dst = dst + (size_t)r0 * j.out_row_bytes;
        if (blk) {
            st =
                vlm_st_tensor_read(t, r0 * j.in_row_bytes, blk, (size_t)(nr * j.in_row_bytes), err);
            if (st) break;
            j.src = blk;
        } else {
            j.src = (const uint8_t *)t->data + (size_t)r0 * j.in_row_bytes;
        }
        parallel_for(lw->pool, (int64_t)nr, conv_rows, &j);
    }
    vlm_free(j.scratch);
    vlm_free(blk);
    if (st || j.bad) {
        vlm_free(dst);
        if (st) return st;
        return vlm_err_set(err, VLM_ERR_INTERNAL, "tensor \"%s\": conversion %s -> %s failed", name,
                           fi->name, ti->name);
    }
    j.dst = dst;
    if (t->data)
        drop_pages(t->data, (size_t)t->nbytes);
    else
        vlm_st_tensor_drop_cache(t);
    lw->bufs[lw->n_bufs++] = j.dst;
    lw->converted_bytes += total;
    lw->source_bytes += t->nbytes;
    out->dtype = to;
    out->data = j.dst;
    return VLM_OK;
}
