#!/usr/bin/env bash
# The CUDA context's device footprint, for PLAN_GPU_CONTEXT_BYTES (512 MiB
# until measured) and PLAN_GPU_CUBLAS_BYTES (runtime/planner.h). Run on the
# GPU machine from the repository root:
#     OUT=/path bash bench/gpu_context.sh
# For each stage (context; + a kernel; + cuBLAS/cuBLASLt handles, a 32 MiB
# workspace and one bf16 GEMM) and module loading LAZY / EAGER it records
# the device's used memory before the process and while it holds the stage
# (nvidia-smi --query-gpu=memory.used), the process's own figure
# (--query-compute-apps; empty in a PID namespace), and cudaMemGetInfo.
# Writes $OUT/context.jsonl (one line per run) and prints a table last:
# "context MiB" = used while held - used before - what the program
# allocated itself.
set -euo pipefail
OUT=${OUT:-/tmp/vlm-gpu-context}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" -O2 -arch=native -o "$OUT/gpu_context" bench/gpu_context.cu -lcublas -lcublasLt
: >"$OUT/context.jsonl"
used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "${GPU:-0}"; }
for mode in LAZY EAGER; do
    for stage in ctx kernel cublas; do
        before=$(used_mib)
        CUDA_MODULE_LOADING=$mode "$OUT/gpu_context" "$stage" 4 >"$OUT/run.json" &
        pid=$!
        for _ in $(seq 40); do [ -s "$OUT/run.json" ] && break; sleep 0.1; done
        sleep 0.5
        during=$(used_mib)
        proc=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits |
            awk -F', *' -v p="$pid" '$1 == p { print $2 }')
        wait "$pid"
        python3 - "$OUT/run.json" "$mode" "$before" "$during" "${proc:-}" >>"$OUT/context.jsonl" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r.update(mode=sys.argv[2], used_before_mib=int(sys.argv[3]), used_during_mib=int(sys.argv[4]),
         process_mib=int(sys.argv[5]) if sys.argv[5] else None)
r["context_mib"] = r["used_during_mib"] - r["used_before_mib"] - r["own_bytes"] / 2**20
print(json.dumps(r))
PY
    done
done
python3 - "$OUT/context.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'mode':6} {'stage':7} {'context MiB':>12} {'process MiB':>12} {'free GiB':>9}  device")
for r in rows:
    p = r["process_mib"] if r["process_mib"] is not None else "-"
    print(f"{r['mode']:6} {r['stage']:7} {r['context_mib']:12.0f} {p!s:>12} "
          f"{r['free_bytes'] / 2**30:9.2f}  {r['device']}")
PY
