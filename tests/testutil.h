/* Shared helpers for the cmocka unit tests. */
#ifndef VLM_TESTUTIL_H
#define VLM_TESTUTIL_H

/* cmocka needs these before its header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>

/* Path of a file under the source tree, the shared/ folder or the build
 * folder, written to a static rotating buffer (valid for a few calls). */
const char *tu_src(const char *rel);
const char *tu_shared(const char *rel);
const char *tu_build(const char *rel);

/* A fresh empty temporary directory (removed by tu_rmtree). */
char *tu_mkdtemp(void);
void tu_rmtree(const char *dir);

/* Read a whole file into a malloc'd buffer (test code may use malloc). */
void *tu_read_file(const char *path, size_t *len);
bool tu_write_file(const char *path, const void *data, size_t len);

/* True when the shared/ reference folder is present. */
bool tu_have_shared(void);

#endif
