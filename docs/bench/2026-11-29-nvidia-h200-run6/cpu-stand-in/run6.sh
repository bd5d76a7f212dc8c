set -u
cd /tmp/stand6
export PYTHONPATH=/work/main:/tmp/stand6 RAY_TMPDIR=/tmp/ray-s6 RAY_AUTH_MODE=token
ENVS="RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=67108864 RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=70 RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=5"
env $ENVS FAKE_STEP=${FAKE_STEP:-0.01} BURN_US=${BURN_US:-100} setsid /work/main/.venv/bin/python -m ray.serve.scripts run router.yaml > serve.log 2>&1 &
SP=$!
for i in $(seq 90); do curl -s -o /dev/null -w '%{http_code}' localhost:8000/healthz 2>/dev/null | grep -q 200 && break; sleep 2; done
env $ENVS FAKE_STEP=${FAKE_STEP:-0.01} BURN_US=${BURN_US:-100} /work/main/.venv/bin/python deploy_fake.py > deploy.log 2>&1
tail -1 deploy.log
for spec in $LOADS; do
  set -- ${spec//,/ }
  echo "== c=$1 n=$2 max_tokens=$3 census at $4 s (STEP ${FAKE_STEP:-0.01}, BURN_US ${BURN_US:-100})"
  timeout 300 /work/main/.venv/bin/python load6.py "$1" "$2" "$3" "$4" 2>&1 | tail -30
done
kill -INT -- -$SP; sleep 20; pgrep -f "ray-s6" | head -3
