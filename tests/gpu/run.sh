#!/usr/bin/env bash
# tests/gpu/run.sh - everything the GPU machine runs, from the repo root:
#   bash tests/gpu/run.sh
# 1. deps: libraries the machine lacks (libcjson, libpcre2, libutf8proc,
#    libwebp, libcmocka dev packages) unpacked from .debs/*.deb into a
#    private prefix (/tmp/vlmdeps; never into /), .pc prefixes rewritten;
# 2. configure + build with CUDA=ON, Release (-O3: what the benchmarks
#    measure; BUILD_TYPE=RelWithDebInfo for source lines in sanitizer reports),
#    -j16, into build-gpu/;
# 3. ctest -L gpu; the demo model on the GPU (test_demo_equivalence.sh);
# 4. compute-sanitizer memcheck and racecheck over the gpu test programs;
# 5. build-gpu/gpubench; a full-size synthetic checkpoint (mkcheckpoint, in
#    /tmp) through build-gpu/gpu_model_bench; reference/bench_hf.py
#    (transformers on the same shapes);
# then a summary table, last. Logs go to $OUT (if set) or build-gpu/logs.
# Bounded: every step has a timeout, the whole a budget (BUDGET, 540 s: one
# command of the GPU machine may run 10 minutes);
# phase 1's steps took 21 s, the model benches are about a minute or two each.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${BUILD:-build-gpu}
LOGS=${OUT:-$ROOT/$BUILD/logs}
mkdir -p "$LOGS"
rm -f "$LOGS/notes.txt"
T0=$(date +%s)
declare -a NAMES=() RESULTS=() SECS=()
BUDGET=${BUDGET:-540} # seconds for the whole run; later steps are skipped past it
step() { # step NAME TIMEOUT_S CMD... : run, log to $LOGS/NAME.log, record
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - ($(date +%s) - T0)))
  if [ $left -le 5 ]; then
    NAMES+=("$name"); RESULTS+=("SKIPPED (time)"); SECS+=(0)
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t=$(date +%s)
  echo "=== $name: $*" | tee "$LOGS/$name.log"
  if declare -F "$1" >/dev/null; then # a function of this script (deps): bounded by its own steps
    "$@" >>"$LOGS/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" >>"$LOGS/$name.log" 2>&1
  fi
  local rc=$?
  tail -n 40 "$LOGS/$name.log"
  NAMES+=("$name")
  SECS+=($(($(date +%s) - t)))
  if [ $rc -eq 0 ]; then RESULTS+=("ok"); elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    RESULTS+=("TIMEOUT"); else RESULTS+=("FAIL rc=$rc"); fi
  return $rc
}

# --- 1. deps --------------------------------------------------------------
deps() {
  local need=()
  for m in libcjson libpcre2-8 libutf8proc libwebp cmocka; do
    pkg-config --exists "$m" || need+=("$m")
  done
  if [ ${#need[@]} -eq 0 ]; then echo "all dev packages present"; return 0; fi
  echo "missing: ${need[*]}"
  if ! ls .debs/*.deb >/dev/null 2>&1; then echo "no .debs/ folder to unpack from"; return 1; fi
  local P=/tmp/vlmdeps
  rm -rf "$P" && mkdir -p "$P"
  for d in .debs/*.deb; do dpkg -x "$d" "$P" || return 1; done
  # .pc files name /usr; point them at the private prefix (once per path).
  find "$P" -name '*.pc' -print0 | xargs -0 -r sed -i -E "s#(=|-I|-L)/usr#\\1$P/usr#g"
  # A dev package's libX.so points at the runtime package's libX.so.N; when
  # that one was not carried, the system's copy serves.
  local ma l b
  ma=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
  while IFS= read -r l; do
    b=$(basename "$(readlink "$l")")
    [ -e "/usr/lib/$ma/$b" ] && ln -sf "/usr/lib/$ma/$b" "$l" && echo "linked $l -> /usr/lib/$ma/$b"
  done < <(find "$P" -xtype l -name '*.so*')
  echo "unpacked $(ls .debs/*.deb | wc -l) packages into $P"
}
P=/tmp/vlmdeps
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
export PKG_CONFIG_PATH="$P/usr/lib/$MA/pkgconfig:$P/usr/lib/pkgconfig:$P/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$P/usr/lib/$MA:$P/usr/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LDFLAGS="-Wl,-rpath-link,$P/usr/lib/$MA -Wl,-rpath,$P/usr/lib/$MA ${LDFLAGS:-}"
export CMAKE_PREFIX_PATH="$P/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="/usr/local/cuda/bin:$PATH"
step deps 120 deps

# --- 2. build -------------------------------------------------------------
step configure 120 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" -DVLM_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_C_FLAGS="-I$P/usr/include" \
  -DCMAKE_EXE_LINKER_FLAGS="$LDFLAGS" &&
  step build 300 cmake --build "$BUILD" -j "${JOBS:-16}" --target gpu_test_cuda_ops gpu_test_cuda_model \
    gpubench mkcheckpoint gpu_model_bench vlmtest gemm90probe &&
  BUILT=1 || BUILT=0

# ONLY_BUILD=1: stop here (tests/gpu/profile.sh builds through this script).
if [ "${ONLY_BUILD:-0}" = 1 ]; then
  [ "$BUILT" = 1 ] && exit 0 || exit 1
fi

# The shared reference folder: the ../shared beside a developer's checkout
# does not travel to the GPU machine; tests/gpu/stage_shared.sh copies what
# the benchmarks read into .gpu/shared, which the run's `carry` takes along.
SHARED=""
for d in "${VLM_SHARED_DIR:-}" "$ROOT/shared" "$ROOT/.gpu/shared" "$ROOT/../shared"; do
  if [ -n "$d" ] && [ -f "$d/models/phi-3-vision-128k-instruct/model.safetensors.index.json" ]; then
    SHARED=$(cd "$d" && pwd)
    break
  fi
done
echo "shared folder: ${SHARED:-none (run tests/gpu/stage_shared.sh and carry .gpu/shared)}"

# --- 3-5. test, sanitizers, bench ------------------------------------------
# memcheck_run LIMIT PROGRAM: memcheck with leak check, API errors reported.
# gpu_test_cuda_ops asks the card for more than it has on purpose
# (test_dev_alloc: the allocator must return NULL and count nothing), and
# memcheck reports each refused cudaMalloc, and the cudaGetLastError that
# clears it, as an API error. Those, and only those, are accepted: every
# "Program hit" record must be cudaErrorMemoryAllocation with test_dev_alloc
# in its backtrace, and the error summary must count nothing else (memory
# access errors, leaks, other API errors all fail the step). The count goes
# to notes.txt and the summary.
memcheck_run() {
  local limit=$1 prog=$2 raw
  raw="$LOGS/memcheck-raw-$(basename "$prog").log"
  timeout --kill-after=10 "$limit" env VLM_SOURCE_DIR="$ROOT" VLM_SHARED_DIR="${SHARED:-$ROOT/../shared}" \
    VLM_BUILD_DIR="$ROOT/$BUILD" "$SAN" --tool memcheck --leak-check full --error-exitcode 3 \
    "$prog" >"$raw" 2>&1
  local rc=$?
  cat "$raw"
  [ $rc -eq 3 ] || return $rc # clean (0), or the test itself failed / timed out
  awk -v name="$(basename "$prog")" '
    function close_rec() { if (inrec) { if (ok && frame) expected++; else other++ } inrec = 0 }
    /========= Program hit/ { close_rec(); inrec = 1; frame = 0
      ok = /cudaErrorMemoryAllocation/ && /API call to (cudaMalloc|cudaGetLastError)\./; next }
    /Host Frame:.*test_dev_alloc/ { if (inrec) frame = 1; next }
    /=========[ ]*$/ { close_rec(); next }
    /ERROR SUMMARY:/ { close_rec(); match($0, /[0-9]+ error/); total = substr($0, RSTART, RLENGTH) + 0 }
    END { close_rec()
      if (other == 0 && expected > 0 && total == expected) {
        printf "%s memcheck: %d API errors, all the deliberate cudaMalloc refusals of test_dev_alloc; no memory errors, no leaks\n", name, expected
        exit 0 }
      printf "%s memcheck: %d errors, %d of them expected refusals, %d other API records\n", name, total, expected, other
      exit 3 }' "$raw" | tee -a "$LOGS/notes.txt"
  return "${PIPESTATUS[0]}"
}
# racecheck_run LIMIT PROGRAM: racecheck, shared-memory hazards reported.
# cuBLAS(Lt)'s Hopper kernels (nvjet_*, the bias epilogues the tower's
# products use) fill shared memory through the TMA and wait on mbarriers,
# an asynchronous proxy racecheck does not model: it reports their loads
# as racing with their own stores. Hazards whose every access lies in such
# a library kernel (nvjet_, cutlass, cublas, xmma names) are counted and
# accepted; any hazard that touches one of our kernels fails the step.
racecheck_run() {
  local limit=$1 prog=$2 raw
  raw="$LOGS/racecheck-raw-$(basename "$prog").log"
  timeout --kill-after=10 "$limit" env VLM_SOURCE_DIR="$ROOT" VLM_SHARED_DIR="${SHARED:-$ROOT/../shared}" \
    VLM_BUILD_DIR="$ROOT/$BUILD" "$SAN" --tool racecheck --error-exitcode 3 "$prog" >"$raw" 2>&1
  local rc=$?
  cat "$raw"
  [ $rc -eq 3 ] || return $rc
  racecheck_filter "$(basename "$prog")" "$raw" | tee -a "$LOGS/notes.txt"
  return "${PIPESTATUS[0]}"
}
racecheck_filter() { # NAME RAWLOG: 0 when every reported hazard is a library kernel's own
  awk -v name="$1" '
    function lib(s) { return s ~ /access at (nvjet_|cutlass|cublas|sm[0-9]+_xmma)/ }
    /Race reported between/ { recs++; if (!lib($0)) ours++; next }
    /^=+ +and (Read|Write) access at/ { if (!lib($0)) ours++; next }
    END {
      if (recs > 0 && ours == 0) {
        printf "%s racecheck: %d hazard records, all inside cuBLAS library kernels (TMA/mbarrier, not modelled); none in ours\n", name, recs
        exit 0 }
      printf "%s racecheck: %d hazard records, %d accesses in our kernels\n", name, recs, ours
      exit 3 }' "$2"
}
if [ "$BUILT" = 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv \
    >"$LOGS/nvidia-smi.txt" 2>/dev/null || true
  step ctest-gpu 150 ctest --test-dir "$BUILD" -L gpu --output-on-failure
  # the bundled demo model on the GPU: the same greedy answers as PyTorch on
  # suites/smoke and suites/context (issue 8's check, here on the card)
  step demo-cuda 240 env VLM_DEMO_DEVICE=cuda VLM_BIN="$ROOT/$BUILD/vlmtest" \
    VLM_SOURCE_DIR="$ROOT" bash tests/cli/test_demo_equivalence.sh
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null)
  if [ -n "$SAN" ]; then
    for t in "$BUILD"/gpu_test_*; do
      [ -x "$t" ] || continue
      n=$(basename "$t")
      # racecheck checks shared-memory hazards: only the ops use shared
      # memory (block sums), so the model program gets memcheck only.
      tools=(memcheck)
      [ "$n" = gpu_test_cuda_ops ] && tools+=(racecheck)
      for tool in "${tools[@]}"; do
        if [ "$tool" = memcheck ]; then
          step "$tool-$n" 90 memcheck_run 90 "$t"
        else
          step "$tool-$n" 90 racecheck_run 90 "$t"
        fi
      done
    done
  else
    NAMES+=("compute-sanitizer"); RESULTS+=("absent"); SECS+=(0)
  fi
  [ -x "$BUILD/gpubench" ] && step gpubench 120 "$BUILD/gpubench"
  # fc1 with quick-GELU in gemm90's epilogue against cuBLAS and the pass
  [ -x "$BUILD/gemm90probe" ] && step gemm90probe 60 "$BUILD/gemm90probe"
  # The whole model on the GPU: a full-size synthetic Phi-3.5-vision
  # checkpoint (bf16, 8.3 GB, random weights; /tmp has the room), then the
  # same shapes in transformers for comparison.
  CK=/tmp/vlm-synth-phi35v
  if [ -n "$SHARED" ]; then
    step mkcheckpoint 240 "$BUILD/mkcheckpoint" --out "$CK" --shared "$SHARED" &&
      step gpu_model_bench 360 "$BUILD/gpu_model_bench" "$CK" 64 800 &&
      # the tower's own GPU time (CUDA events around it, VLM_CUDA_TIMING)
      step tower_time 120 env VLM_CUDA_TIMING=1 VLM_LOG=info "$BUILD/gpu_model_bench" "$CK" 8 800 v
  else
    NAMES+=("mkcheckpoint + gpu_model_bench"); RESULTS+=("SKIPPED (no shared folder)"); SECS+=(0)
  fi
  step bench_hf 300 env VLM_SHARED_DIR="$SHARED" python3 reference/bench_hf.py "$LOGS/bench_hf.json"
fi

# --- summary, last -----------------------------------------------------------
fail=0
for r in "${RESULTS[@]}"; do case "$r" in ok | absent) ;; *) fail=1 ;; esac; done
{
  echo
  # the machine's copy of .git may lag the tree it was sent: the hash of the
  # sources (scripts/src-hash.sh; run it on the local checkout to match)
  echo "=== tests/gpu/run.sh summary (git $(git rev-parse --short HEAD 2>/dev/null), sources $(bash scripts/src-hash.sh), $(head -2 "$LOGS/nvidia-smi.txt" 2>/dev/null | tail -1))"
  printf "%-40s %-14s %6s\n" step result secs
  for i in "${!NAMES[@]}"; do
    printf "%-40s %-14s %6s\n" "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}"
  done
  [ -f "$LOGS/notes.txt" ] && { echo; cat "$LOGS/notes.txt"; }
  if [ -f "$LOGS/gpubench.log" ]; then echo; grep -E "ms|device" "$LOGS/gpubench.log"; fi
  if [ -f "$LOGS/gpu_model_bench.log" ]; then
    echo; echo "whole model, vlmtest (build-gpu/gpu_model_bench):"
    grep -E "tok/s|ms|GB/s" "$LOGS/gpu_model_bench.log" | grep -v '^{'
  fi
  if [ -f "$LOGS/tower_time.log" ]; then
    echo; echo "the vision tower's GPU time (VLM_CUDA_TIMING; the first of four calls warms up):"
    grep -o "[0-9]* crops (GPU time).*tower [0-9.]* ms" "$LOGS/tower_time.log" | sed 's/: pixels.*tower/: tower/'
  fi
  if [ -f "$LOGS/gemm90probe.log" ]; then echo; tail -7 "$LOGS/gemm90probe.log"; fi
  if [ -f "$LOGS/bench_hf.log" ]; then
    echo; echo "whole model, transformers (reference/bench_hf.py):"
    grep -E "^device|tok/s| ms$" "$LOGS/bench_hf.log"
  fi
  echo "total $(($(date +%s) - T0)) s; logs in $LOGS"
} | tee "$LOGS/summary.txt"
exit $fail
