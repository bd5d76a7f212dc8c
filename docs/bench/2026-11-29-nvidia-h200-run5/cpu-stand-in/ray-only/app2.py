import asyncio, time, os, gc
import ray
from ray import serve
from fastapi import FastAPI
from starlette.responses import StreamingResponse, JSONResponse

CHUNKS = int(os.environ.get("CHUNKS", "10"))
GAP = float(os.environ.get("GAP", "0.02"))
BREAK = os.environ.get("BREAK", "1") == "1"

@serve.deployment(max_ongoing_requests=1024, max_queued_requests=4096)
class Down:
    async def stream(self, sent_at: float):
        for i in range(CHUNKS):
            await asyncio.sleep(GAP)
            yield "data: x\n\n"
        yield "data: [DONE]\n\n"

api = FastAPI()

@serve.deployment(max_ongoing_requests=4096)
@serve.ingress(api)
class Front:
    def __init__(self, down):
        self.down = down.options(stream=True)
    @api.get("/s")
    async def s(self):
        gen = self.down.stream.remote(time.time())
        first = await gen.__anext__()
        async def relay():
            yield first
            async for c in gen:
                yield c
                if BREAK and c.endswith("[DONE]\n\n"):
                    break
        return StreamingResponse(relay(), media_type="text/event-stream")
    @api.get("/debug")
    async def debug(self):
        rr = self.down._router._asyncio_router._request_router
        cache = {str(k)[-8:]: (v.queue_len, round(time.time() - v.timestamp, 1)) for k, v in rr._replica_queue_len_cache._cache.items()}
        inflight = sum(len(v) for v in ray.serve.context._in_flight_requests.values()) if hasattr(ray.serve.context, "_in_flight_requests") else None
        return JSONResponse({"cache": cache, "in_flight": inflight, "gc_counts": gc.get_count()})

app = Front.bind(Down.bind())
