#!/usr/bin/env bash
# vlmtest mem: the JSON snapshot parses and carries the documented keys, on
# this machine and on fixture copies of /proc and /sys; the table prints;
# --watch repeats; bad arguments are usage errors.
set -euo pipefail
# The GPU part checks the machine without one; on the GPU machine it is hidden.
export CUDA_VISIBLE_DEVICES=""
: "${VLM_BIN:?}" "${VLM_SOURCE_DIR:?}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# This machine: every key there, with the right types.
"$VLM_BIN" mem --json >"$tmp/real.json"
python3 - "$tmp/real.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
num = (int, float)
for k in ["rss_bytes", "peak_rss_bytes", "mem_total_bytes", "mem_available_bytes",
          "swap_used_bytes", "oom_kills", "mapped_bytes", "threads"]:
    assert isinstance(d[k], num) and not isinstance(d[k], bool), (k, d[k])
for k in ["cgroup_limit_bytes", "cgroup_current_bytes"]:
    assert k in d and (d[k] is None or isinstance(d[k], num)), (k, d.get(k))
assert d["rss_bytes"] > 0 and d["peak_rss_bytes"] >= d["rss_bytes"]
assert 0 < d["mem_available_bytes"] <= d["mem_total_bytes"]
assert d["threads"] >= 1
p = d["pressure"]
assert p["level"] in ("normal", "elevated", "critical", "unknown"), p
for k in ["some_avg10", "full_avg10"]:
    assert k in p and (p[k] is None or isinstance(p[k], num))
cats = ["weights", "kv_cache", "activations", "image", "scratch", "other", "total"]
assert all(isinstance(d["accounted"][c], num) for c in cats), d["accounted"]
# no GPU in this build (or on this machine): said so
assert d["gpu"] == "none", d["gpu"]
PY
"$VLM_BIN" mem | grep -q "^gpu none$"

# The v1 fixture: values from its files.
"$VLM_BIN" mem --json --root "$VLM_SOURCE_DIR/tests/data/proc/v1" >"$tmp/v1.json"
python3 - "$tmp/v1.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["cgroup_version"] == 1
assert d["cgroup_limit_bytes"] == 2147483648
assert d["cgroup_current_bytes"] == 1500000000
assert d["oom_kills"] == 1
assert d["rss_bytes"] == 524288 * 1024 and d["peak_rss_bytes"] == 1048576 * 1024
assert d["mem_total_bytes"] == 8000000 * 1024 and d["mem_available_bytes"] == 2000000 * 1024
assert d["pressure"] == {"level": "critical", "some_avg10": 45, "full_avg10": 12}, d["pressure"]
PY

# No sources at all: nulls, and the level says it does not know.
"$VLM_BIN" mem --json --root "$VLM_SOURCE_DIR/tests/data/proc/missing" >"$tmp/none.json"
python3 - "$tmp/none.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k in ["rss_bytes", "mem_total_bytes", "cgroup_limit_bytes", "cgroup_current_bytes"]:
    assert d[k] is None, (k, d[k])
assert d["pressure"]["level"] == "unknown" and d["pressure"]["some_avg10"] is None
PY

# The threshold from the environment and from the option.
VLM_MEM_THRESHOLD=1K "$VLM_BIN" mem --json >"$tmp/th.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["threshold_bytes"]==1024 and d["over_threshold"] is True, d' "$tmp/th.json"
"$VLM_BIN" mem --json --threshold 1T >"$tmp/th.json"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["threshold_bytes"]==2**40 and d["over_threshold"] is False, d' "$tmp/th.json"

# --watch: one JSON object per line, as many as --count.
"$VLM_BIN" mem --json --watch 20 --count 3 >"$tmp/watch.jsonl"
python3 - "$tmp/watch.jsonl" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 3, lines
t = [json.loads(l)["time_ms"] for l in lines]
assert t[0] <= t[1] <= t[2] and t[2] - t[0] >= 40, t
PY

# The table names every section.
"$VLM_BIN" mem >"$tmp/table.txt"
for word in process machine container pressure accounted kv_cache threads; do
  grep -q "$word" "$tmp/table.txt" || { echo "table lacks '$word'" >&2; exit 1; }
done

# Usage errors.
rc=0; "$VLM_BIN" mem --bogus 2>/dev/null || rc=$?
[ "$rc" = 2 ] || { echo "expected exit 2 for an unknown option, got $rc" >&2; exit 1; }
rc=0; "$VLM_BIN" mem --watch 0 2>/dev/null || rc=$?
[ "$rc" = 2 ] || { echo "expected exit 2 for --watch 0, got $rc" >&2; exit 1; }
echo "test_mem: ok"
