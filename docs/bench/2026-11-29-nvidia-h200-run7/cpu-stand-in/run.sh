#!/usr/bin/env bash
# CPU stand-in: one CPU-engine model behind make serve's layout, 32 streams, a 5 s loop profile.
set -u
cd /work/main
.venv/bin/python - <<'PY'
import yaml
from serve_app.registry.layout import serve_config
doc = serve_config([{"name": "qwen", "checkpoint": "/work/main/checkpoints/qwen2-small", "engine": "cpu", "max_model_len": 2048}], port=8123)
yaml.safe_dump(doc, open("/tmp/cpuprof/models.yaml", "w"), sort_keys=False)
PY
env RAY_TMPDIR=/tmp/ray-prof RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH=67108864 \
  setsid .venv/bin/python -m serve_app run /tmp/cpuprof/models.yaml > /tmp/cpuprof/server.log 2>&1 &
PID=$!
for i in $(seq 150); do curl -sf http://127.0.0.1:8123/readyz >/dev/null && break; sleep 2; done
echo "ready after $((i*2)) s"
.venv/bin/python - <<'PY'
import asyncio, json, time, httpx
async def one(c, i):
    async with c.stream("POST", "http://127.0.0.1:8123/v1/completions", json={"model": "qwen", "prompt": f"hello {i}", "max_tokens": 400, "ignore_eos": True, "stream": True}) as r:
        async for _ in r.aiter_lines():
            pass
async def main():
    async with httpx.AsyncClient(timeout=300) as c:
        tasks = [asyncio.create_task(one(c, i)) for i in range(32)]
        await asyncio.sleep(8)
        t = time.time()
        stats = (await c.get("http://127.0.0.1:8123/stats", params={"profile": "5", "waiting": "1"}, timeout=120)).json()
        print("stats took", round(time.time() - t, 1))
        json.dump(stats, open("/tmp/cpuprof/stats.json", "w"), indent=1)
        for t in tasks: t.cancel()
asyncio.run(main())
PY
# Ctrl-C as a user would, then wait for the drain (up to 45 s) and Ray's stop: killing the runner
# earlier leaves Ray's own processes (and HAProxy, on ports 8404 and 9101) running.
kill -INT $PID
for i in $(seq 90); do kill -0 $PID 2>/dev/null || break; sleep 1; done
kill -0 $PID 2>/dev/null && kill -KILL -- -$PID
true
