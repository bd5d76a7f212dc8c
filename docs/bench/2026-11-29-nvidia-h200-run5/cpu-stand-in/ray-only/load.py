import asyncio, sys, time, httpx
async def main(url, c, n):
    lim = asyncio.Semaphore(c)
    ttft = []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=c+10)) as cl:
        async def one():
            async with lim:
                t = time.time()
                async with cl.stream("GET", url + "/s") as r:
                    first = None
                    async for _ in r.aiter_raw():
                        if first is None:
                            first = time.time() - t
                    ttft.append(first)
        t0 = time.time()
        await asyncio.gather(*(one() for _ in range(n)))
        dt = time.time() - t0
        s = (await cl.get(url + "/stats")).json()
    ttft.sort()
    print(f"c={c} n={n} {n/dt:.1f} req/s ttft p50 {ttft[len(ttft)//2]*1000:.0f} ms p99 {ttft[int(len(ttft)*.99)]*1000:.0f} ms; down {s}")
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
