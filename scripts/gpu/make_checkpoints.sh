#!/usr/bin/env bash
# Make the GPU-sized ModelOpt FP8 checkpoints (random weights, nothing downloaded) under OUTDIR:
#   OUTDIR/qwen2.5-3b     Qwen2.5-3B geometry      (scripts/make_checkpoint.py --arch qwen2 --size 3b)
#   OUTDIR/qwen2.5-vl-3b  Qwen2.5-VL-3B geometry   (scripts/make_vl_checkpoint.py; vision + lm_head BF16)
#   OUTDIR/llama3-8b      Llama-3-8B geometry      (scripts/make_checkpoint.py --arch llama --size 8b)
# Usage: bash scripts/gpu/make_checkpoints.sh [OUTDIR=/tmp/ck] [WHICH="qwen3b vl llama8b"]
# Existing checkpoints are kept (delete the folder to remake one). Prints each one's timing.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/gpu/lib.sh

out=${1:-/tmp/ck}
which=${2:-${WHICH:-qwen3b vl llama8b}}
mkdir -p "$out"
log "making checkpoints [$which] under $out; GPU memory used/total: $(gpu_free_mib)"
total_start=$SECONDS
for item in $which; do
  start=$SECONDS
  case $item in
    qwen3b) "$PY" scripts/make_checkpoint.py --arch qwen2 --size 3b --device cuda --out "$out/qwen2.5-3b" ;;
    vl) "$PY" scripts/make_vl_checkpoint.py --size 3b --device cuda --out "$out/qwen2.5-vl-3b" ;;
    llama8b) "$PY" scripts/make_checkpoint.py --arch llama --size 8b --device cuda --out "$out/llama3-8b" ;;
    *) log "unknown checkpoint '$item' (expected qwen3b, vl, llama8b)"; exit 2 ;;
  esac
  log "$item: $((SECONDS - start)) s"
done
log "all checkpoints in $((SECONDS - total_start)) s:"
du -sh "$out"/* 2>/dev/null || true
for dir in "$out"/*/; do
  [ -f "$dir/hf_quant_config.json" ] || continue
  "$PY" - "$dir" <<'PY'
import json, sys
from pathlib import Path
d = Path(sys.argv[1])
q = json.loads((d / "hf_quant_config.json").read_text())["quantization"]
arch = json.loads((d / "config.json").read_text())["architectures"][0]
print(f"  {d.name}: {arch}, quant_algo={q.get('quant_algo')}, exclude_modules={q.get('exclude_modules')}")
PY
done
