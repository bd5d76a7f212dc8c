"""How a /metrics scrape affects other requests through the router: a client times
``GET /v1/models`` every 5 ms; each trial is 4 s idle, then 4 s while a second client fetches
``/metrics`` every 1.1 s (the router's cache lasts 1 s, so every fetch merges anew).

    python scripts/bench_metrics_scrape.py [--url http://127.0.0.1:8000] [--trials 3]

against a running ``make serve`` (send a few completions first, so that the engines' series
exist). Prints, per phase, requests timed and their p50 / p99 / max in ms; for the scraped phase
also each scrape's duration and the document's size. Results: docs/benchmarks.md ("Router
``/metrics`` and its event loop") and docs/bench/2026-11-30-cpu-metrics-scrape/.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx


async def probe(client: httpx.AsyncClient, url: str, seconds: float) -> tuple[int, float, float, float]:
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        await client.get(f"{url}/v1/models")
        latencies.append((time.perf_counter() - start) * 1e3)
        await asyncio.sleep(0.005)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    return len(latencies), round(statistics.median(latencies), 2), round(p99, 2), round(latencies[-1], 2)


async def scrape(url: str, seconds: float) -> tuple[list[int], int]:
    async with httpx.AsyncClient(timeout=30) as client:
        durations, size = [], 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = time.perf_counter()
            response = await client.get(f"{url}/metrics")
            durations.append(round((time.perf_counter() - start) * 1e3))
            size = len(response.content)
            await asyncio.sleep(1.1)
        return durations, size


async def main(url: str, trials: int) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(trials):
            print("idle    n/p50/p99/max ms", await probe(client, url, 4))
            scraping = asyncio.create_task(scrape(url, 4))
            timed = await probe(client, url, 4)
            print("scraped n/p50/p99/max ms", timed, "scrape ms/bytes", await scraping)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.trials))
