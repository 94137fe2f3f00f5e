#!/usr/bin/env bash
# The libvlm half of the worker backend (src/tester/worker_vlm.c under
# VLM_WITH_ENGINE) compiles cleanly against the public API in
# include/vlm/vlm.h, so it is ready to link the day the engine is built in.
set -euo pipefail
: "${VLM_SOURCE_DIR:?}"
cc=${CC:-cc}
# shellcheck disable=SC2046
"$cc" -std=c17 -Wall -Wextra -Wpedantic -Werror -Wshadow -Wstrict-prototypes \
  -Wno-unused-parameter -D_GNU_SOURCE -DVLM_WITH_ENGINE \
  -I"$VLM_SOURCE_DIR/include" -I"$VLM_SOURCE_DIR/src" $(pkg-config --cflags libcjson) \
  -fsyntax-only "$VLM_SOURCE_DIR/src/tester/worker_vlm.c"
echo PASS
