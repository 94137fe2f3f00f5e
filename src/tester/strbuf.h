/* tester/strbuf - a growable string in accounted memory for building JSON
 * lines, Markdown and HTML. Out of memory is sticky: appends after a failure
 * do nothing and tsb_take() returns NULL, so builders check once at the end. */
#ifndef VLM_TESTER_STRBUF_H
#define VLM_TESTER_STRBUF_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"

typedef struct tsb {
    char *p;    /* NUL-terminated when len > 0 */
    size_t len; /* bytes, without the NUL */
    size_t cap;
    bool oom;
} tsb;

void tsb_putn(tsb *b, const char *s, size_t n);
void tsb_puts(tsb *b, const char *s);
void tsb_printf(tsb *b, const char *fmt, ...) VLM_PRINTF(2, 3);
/* Append s with &, <, >, " and ' escaped for HTML text and attributes. */
void tsb_html(tsb *b, const char *s);
/* The string (caller frees with vlm_free), or NULL after an allocation
 * failure; the buffer is reset either way. An empty buffer gives "". */
char *tsb_take(tsb *b);
void tsb_free(tsb *b);

#endif
