#!/usr/bin/env bash
# tests/gpu/stage_shared.sh - copy the reference files the GPU benchmarks read
# (mkcheckpoint: the Phi-3.5-vision config, the published shard index, the
# preprocessor config and tokenizer files; bench_hf.py: the config) from the
# shared folder into .gpu/shared (ignored by git, ~2 MB). The ../shared beside
# a checkout does not travel to the GPU machine; name .gpu/shared in the
# device run's `carry` and run.sh finds it there.
#   bash tests/gpu/stage_shared.sh        (from the repo root, before the run)
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC=${VLM_SHARED_DIR:-../shared}
DST=.gpu/shared/models
mkdir -p "$DST/phi-3.5-vision-instruct" "$DST/phi-3-vision-128k-instruct"
cp "$SRC/models/phi-3.5-vision-instruct/config.reconstructed.json" "$DST/phi-3.5-vision-instruct/"
for f in config.json model.safetensors.index.json preprocessor_config.json tokenizer.json \
  tokenizer_config.json special_tokens_map.json; do
  cp "$SRC/models/phi-3-vision-128k-instruct/$f" "$DST/phi-3-vision-128k-instruct/"
done
du -sh .gpu/shared
