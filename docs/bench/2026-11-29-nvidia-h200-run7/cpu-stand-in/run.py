"""Router + a ClockEngine model in make serve's layout (throughput mode, gRPC between
deployments), N streams through the router's HTTP, then /stats?profile=5; prints items/s."""
import asyncio, json, os, sys, time
sys.path.insert(0, "/tmp/standin")
import httpx
import ray
from ray import serve

N = int(os.environ.get("N", "64"))
TOKENS = int(os.environ.get("TOKENS", "600"))
ITEMS = float(os.environ.get("ITEMS_PER_S", "2560"))
INTERVAL = float(os.environ.get("INTERVAL_S", "0.05"))
PORT = 8125

def main():
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": "/tmp/standin:/work/main"}})
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    from serve_app.app import build_router
    from serve_app.deployments.model_server import ModelServer
    from serve_app.deployments.builder import plan_models
    from serve_app.engines.selection import Platform, engine_config
    from serve_app.registry.models import ModelSpec
    from clock_engine import ClockEngine
    spec = ModelSpec(name="clock", checkpoint="/work/main/checkpoints/qwen2-small", engine="cpu", max_model_len=4096)
    (planned,) = plan_models([spec], Platform(has_vllm=False, gpus=0))
    app = serve.deployment(ModelServer).options(**planned.options).bind(ClockEngine, engine_config(spec), INTERVAL, None, None, None, None, ITEMS)
    serve.run(app, name="clock", route_prefix=None)
    serve.run(build_router({}), name="router", route_prefix="/")
    base = f"http://127.0.0.1:{PORT}"
    for _ in range(120):
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200: break
        except Exception: pass
        time.sleep(1)
    chunks = 0
    async def one(c, i):
        nonlocal chunks
        async with c.stream("POST", f"{base}/v1/completions", json={"model": "clock", "prompt": "hi", "max_tokens": TOKENS, "stream": True}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"): chunks += 1
    async def run():
        nonlocal chunks
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=N + 10)) as c:
            tasks = [asyncio.create_task(one(c, i)) for i in range(N)]
            await asyncio.sleep(2)
            c0, t0 = chunks, time.time()
            stats = (await c.get(f"{base}/stats", params={"profile": "4", "waiting": "1"}, timeout=120)).json()
            rate = (chunks - c0) / (time.time() - t0)
            for t in tasks: t.cancel()
            return stats, rate
    stats, rate = asyncio.run(run())
    m = stats["models"]["clock"]["profile"]
    print(json.dumps({"N": N, "interval_s": INTERVAL, "items_per_s_budget": ITEMS, "client_chunks_per_s": round(rate), "model_busy": m["busy_share"], "by_package": m["by_package"][:6], "top_total": m["top_total"][:25], "top_self": m["top_self"][:15], "router_busy": stats["router"]["profile"]["busy_share"]}, indent=1))
    serve.shutdown(); ray.shutdown()
main()
