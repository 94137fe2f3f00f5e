/* vlm/status.h - the one status type of libvlm.
 *
 * Every function that can fail returns a vlm_status and, where the caller
 * passes one, fills a vlm_err with a message that names the file, tensor,
 * argument or line at fault. Nothing in the library aborts or exits on
 * anything a user or the machine can cause. */
#ifndef VLM_STATUS_H
#define VLM_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum vlm_status {
    VLM_OK = 0,
    VLM_ERR_NOMEM,       /* an allocation failed (real or injected) */
    VLM_ERR_IO,          /* open/read/write/mmap failed */
    VLM_ERR_FORMAT,      /* a file or text is malformed */
    VLM_ERR_INVALID_ARG, /* a caller-supplied argument is out of range */
    VLM_ERR_NOT_FOUND,   /* a file, tensor, key or model is missing */
    VLM_ERR_UNSUPPORTED, /* valid, but not something we implement */
    VLM_ERR_LIMIT,       /* over a configured limit (pixels, context, budget) */
    VLM_ERR_DEVICE,      /* an accelerator reported an error */
    VLM_ERR_CANCELLED,   /* stopped on request */
    VLM_ERR_INTERNAL,    /* a broken invariant: a bug in libvlm */
    VLM_STATUS_COUNT
} vlm_status;

#define VLM_ERR_MSG_SIZE 512

/* Error details: the status and a human-readable message. */
typedef struct vlm_err {
    vlm_status status;
    char msg[VLM_ERR_MSG_SIZE];
} vlm_err;

/* A short stable name for a status ("ok", "out_of_memory", ...). */
const char *vlm_status_name(vlm_status s);

#ifdef __cplusplus
}
#endif
#endif
