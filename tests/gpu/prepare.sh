# tests/gpu/prepare.sh - sourced (from the repo root, with LOGS set) by the
# short GPU scripts (quick.sh, profile.sh): builds build-gpu/ through run.sh
# (ONLY_BUILD=1; exits on failure with the build log's tail), then sets what
# the programs need: the private library prefix run.sh unpacked, CUDA's
# tools on PATH, the shared reference folder (SHARED) and the test
# programs' VLM_* variables, and CK, the full-size synthetic checkpoint's
# folder (run.sh's).
ONLY_BUILD=1 OUT="$LOGS" bash tests/gpu/run.sh >"$LOGS/build.log" 2>&1 || {
  tail -40 "$LOGS/build.log"
  exit 1
}
P=/tmp/vlmdeps
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
export LD_LIBRARY_PATH="$P/usr/lib/$MA:$P/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="/usr/local/cuda/bin:$PATH"
SHARED=$(cd .gpu/shared 2>/dev/null && pwd || echo ../shared)
export VLM_SOURCE_DIR=$PWD VLM_SHARED_DIR=$SHARED VLM_BUILD_DIR=$PWD/build-gpu
CK=/tmp/vlm-synth-phi35v
