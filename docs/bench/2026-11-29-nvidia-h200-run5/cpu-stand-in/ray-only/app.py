import asyncio, time, os
from ray import serve
from fastapi import FastAPI
from starlette.responses import StreamingResponse, JSONResponse

CHUNKS = int(os.environ.get("CHUNKS", "10"))
GAP = float(os.environ.get("GAP", "0.15"))

@serve.deployment(max_ongoing_requests=1024, max_queued_requests=4096)
class Down:
    def __init__(self):
        self.busy = None
        self.inflight = 0
        self.peak = 0
        self.r2r = []
    async def _burn(self):
        busy = float(os.environ.get("BUSY", "0.003"))
        while True:
            await asyncio.sleep(0.005)
            end = time.perf_counter() + busy
            while time.perf_counter() < end:
                pass
    async def stream(self, sent_at: float):
        if self.busy is None:
            self.busy = asyncio.get_running_loop().create_task(self._burn())
        self.r2r.append(time.time() - sent_at)
        self.inflight += 1
        self.peak = max(self.peak, self.inflight)
        try:
            for i in range(CHUNKS):
                await asyncio.sleep(GAP)
                yield "data: x\n\n"
        finally:
            self.inflight -= 1
    async def stats(self):
        r = sorted(self.r2r); self.r2r = []
        out = {"peak": self.peak, "n": len(r)}
        self.peak = self.inflight
        if r:
            out.update(p50=r[len(r)//2], p90=r[int(len(r)*.9)], p99=r[int(len(r)*.99)])
        return out

api = FastAPI()

@serve.deployment(max_ongoing_requests=4096)
@serve.ingress(api)
class Front:
    def __init__(self, down):
        self.down = down.options(stream=True)
        self.plain = down
    @api.get("/s")
    async def s(self):
        gen = self.down.stream.remote(time.time())
        first = await gen.__anext__()
        async def relay():
            yield first
            async for c in gen:
                yield c
        return StreamingResponse(relay(), media_type="text/event-stream")
    @api.get("/stats")
    async def st(self):
        return JSONResponse(await self.plain.stats.remote())

app = Front.bind(Down.bind())
