#!/usr/bin/env bash
# Serve examples/gpu.yaml (two FP8 models sharing one GPU), ask both through the OpenAI client,
# then stop serving and check greedy answers against offline vllm.LLM.generate token for token.
#   [INGRESS=haproxy|proxy] bash scripts/gpu/serve_check.sh [CONFIG=examples/gpu.yaml] [OUT=tmp]
# Writes OUT/<model>/ (chat_prompts.py), OUT/compare/ (compare_offline.py) and OUT/serve.log.
# Exit status: 0 all good; 1 a step failed (the log's tail is printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/gpu/lib.sh

config=${1:-examples/gpu.yaml}
out=${2:-tmp}
READY_TIMEOUT=${READY_TIMEOUT:-420}
PORT=${PORT:-8000}
mkdir -p "$out"

cleanup_leftovers
# INGRESS=haproxy (default, as `make serve`) or proxy (Ray Serve's HTTP proxy actor).
INGRESS=${INGRESS:-haproxy}
ingress_env=""
[ "$INGRESS" = haproxy ] && ingress_env=$FAST_INGRESS_ENV
# shellcheck disable=SC2086
start_bg "serve run" "$out/serve.log" env -u RAY_ADDRESS $ingress_env "$PY" -m ray.serve.scripts run "$config"
pid=$BG_PID
trap 'stop_bg "serve run" '"$pid"' 30; stop_ray' EXIT
start=$SECONDS
wait_http "serve run" "http://127.0.0.1:$PORT/readyz" "$pid" "$out/serve.log" "$READY_TIMEOUT"
log "app ready after $((SECONDS - start)) s; GPU memory used/total: $(gpu_free_mib)"
curl -s "http://127.0.0.1:$PORT/readyz" | tee "$out/readyz.json" | head -c 3000; curl -s "http://127.0.0.1:$PORT/stats" >"$out/stats.json"
echo

status=0
log "chat_prompts.py: every served model, chat API"
"$PY" scripts/chat_prompts.py --base-url "http://127.0.0.1:$PORT/v1" --out "$out" --max-tokens 48 || status=1
log "chat_prompts.py: completions API, streamed"
"$PY" scripts/chat_prompts.py --base-url "http://127.0.0.1:$PORT/v1" --out "$out/completions" \
  --api completions --max-tokens 48 || status=1
log "compare_offline.py query"
"$PY" scripts/gpu/compare_offline.py query --config "$config" --out "$out/compare" \
  --base-url "http://127.0.0.1:$PORT/v1" || status=1

log "metrics: vLLM's RayPrometheusStatLogger series on the router's /metrics (docs/operations.md)"
sleep 12  # Ray's metrics agents publish every 10 s
curl -s "http://127.0.0.1:$PORT/metrics" >"$out/metrics.txt"
grep -E '^vllm:(e2e_request_latency_seconds_count|generation_tokens_total|num_requests_running)\{' "$out/metrics.txt" \
  || { echo "no vllm:* series on /metrics"; status=1; }

stop_bg "serve run" "$pid" 90
stop_ray
trap - EXIT
log "GPU memory used/total after stopping: $(gpu_free_mib)"
grep -c "Engine core died unexpectedly\|EngineDeadError" "$out/serve.log" | sed 's/^/engine-died lines in serve.log: /' || true

log "compare_offline.py offline"
"$PY" scripts/gpu/compare_offline.py offline --config "$config" --out "$out/compare" || status=1
log "serve_check done (status $status)"
exit $status
