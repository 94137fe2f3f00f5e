#include "tester/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "base/alloc.h"

static bool tsb_reserve(tsb *b, size_t extra) {
    if (b->oom) return false;
    size_t need;
    if (!vlm_size_add(b->len, extra + 1, &need)) {
        b->oom = true;
        return false;
    }
    if (need <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *p = vlm_realloc(b->p, cap, VLM_MEM_OTHER);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void tsb_putn(tsb *b, const char *s, size_t n) {
    if (!tsb_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void tsb_puts(tsb *b, const char *s) {
    tsb_putn(b, s, strlen(s));
}

void tsb_printf(tsb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !tsb_reserve(b, (size_t)n)) {
        if (n < 0) b->oom = true;
        va_end(ap2);
        return;
    }
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
}

void tsb_html(tsb *b, const char *s) {
    if (!s) return;
    for (const char *q = s; *q; q++) {
        switch (*q) {
        case '&':
            tsb_puts(b, "&amp;");
            break;
        case '<':
            tsb_puts(b, "&lt;");
            break;
        case '>':
            tsb_puts(b, "&gt;");
            break;
        case '"':
            tsb_puts(b, "&quot;");
            break;
        case '\'':
            tsb_puts(b, "&#39;");
            break;
        default:
            tsb_putn(b, q, 1);
        }
    }
}

char *tsb_take(tsb *b) {
    if (!b->oom && !b->p) tsb_reserve(b, 0);
    if (b->oom) {
        tsb_free(b);
        return NULL;
    }
    char *p = b->p;
    p[b->len] = '\0';
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void tsb_free(tsb *b) {
    vlm_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}
