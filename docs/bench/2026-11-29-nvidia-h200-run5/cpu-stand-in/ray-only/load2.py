import asyncio, sys, httpx, time
async def main(url, c, n):
    lim = asyncio.Semaphore(c)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=c+10)) as cl:
        async def one():
            async with lim:
                async with cl.stream("GET", url + "/s") as r:
                    async for _ in r.aiter_raw():
                        pass
        t=time.time()
        await asyncio.gather(*(one() for _ in range(n)))
        print(f"{n} requests in {time.time()-t:.1f} s")
        for wait in (0, 2, 12):
            await asyncio.sleep(wait)
            print(f"after +{wait}s:", (await cl.get(url + "/debug")).json())
asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
