import asyncio, sys, time, json, httpx
async def main(c, n, max_tokens, census_at):
    lim = asyncio.Semaphore(c); ttft = []; t_all = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=c + 10)) as cl:
        async def one():
            async with lim:
                t = time.time(); first = None
                body = {"model": "fake", "prompt": "hello", "max_tokens": max_tokens, "stream": True}
                async with cl.stream("POST", "http://127.0.0.1:8000/v1/completions", json=body) as r:
                    async for _ in r.aiter_raw():
                        if first is None: first = time.time() - t
                ttft.append(first); t_all.append(time.time() - t)
        async def census():
            await asyncio.sleep(census_at)
            m = (await cl.get("http://127.0.0.1:8000/metrics")).text
            gauges = [l for l in m.splitlines() if l.startswith(("ray_serve_replica_processing_queries", "ray_serve_deployment_queued_queries")) and 'application="fake"' in l]
            s = (await cl.get("http://127.0.0.1:8000/stats", params={"waiting": "1"})).json()
            w = s["models"]["fake"]["waiting"]
            print("GAUGES", *[g.split("}")[-1] + " " + g.split("{")[0] for g in gauges])
            print("MODEL census: suspended", w.get("suspended"), "leaves", w.get("leaves"), "at_yield", w.get("at_yield"))
            for place, count in w.get("not_started", [])[:6]: print("  not_started", count, place)
            for place, count in w.get("top", [])[:14]: print("  ", count, place)
        t0 = time.time()
        await asyncio.gather(census(), *(one() for _ in range(n)))
        dt = time.time() - t0
        s = (await cl.get("http://127.0.0.1:8000/stats")).json()
    ttft.sort(); t_all.sort()
    m = s["models"]["fake"]
    print(f"c={c} {n/dt:.1f} req/s; client ttft p50 {ttft[len(ttft)//2]*1000:.0f} p99 {ttft[int(len(ttft)*.99)]*1000:.0f} ms; e2e p50 {t_all[len(t_all)//2]:.2f} s")
    print("  r2r", {k: m['latency']['router_to_replica'].get(k) for k in ('p50_ms','p90_ms','p99_ms')}, "efo", m['latency']['engine_first_output'].get('p50_ms'), "tok", m['latency']['tokenize'].get('p99_ms'))
    print("  model loop", {k: m['loop']['loop_lag'].get(k) for k in ('p50_ms','p90_ms','p99_ms','max_ms')}, "router loop", {k: s['router']['loop_lag'].get(k) for k in ('p50_ms','p90_ms','p99_ms')})
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
