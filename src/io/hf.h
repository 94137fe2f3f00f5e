/* io/hf - model references: a local path, or "org/name[@revision]" in the
 * Hugging Face hub cache.
 *
 * Cache layout (as huggingface_hub writes it):
 *     <cache>/models--<org>--<name>/refs/<revision>      a file holding a commit hash
 *     <cache>/models--<org>--<name>/snapshots/<commit>/  the files of that commit
 * The cache folders tried, in order: $HF_HUB_CACHE; $HF_HOME/hub;
 * $XDG_CACHE_HOME/huggingface/hub; ~/.cache/huggingface/hub (each only when
 * its variables are set, duplicates skipped). The default revision is "main";
 * a revision of 40 hex digits is a commit and is looked up in snapshots/
 * directly. When nothing is found the error lists every place looked at. */
#ifndef VLM_IO_HF_H
#define VLM_IO_HF_H

#include <stdbool.h>

#include "base/status.h"

/* Resolve ref to a folder or file path (accounted string in *out; free with
 * vlm_free). A ref that exists as a path wins over a cache lookup. */
vlm_status vlm_hf_resolve(const char *ref, char **out, vlm_err *err);

/* True if ref has the shape org/name[@revision] (one '/', no empty parts,
 * no ".." part, characters [A-Za-z0-9._-] in org and name). */
bool vlm_hf_is_repo_id(const char *ref);

#endif
