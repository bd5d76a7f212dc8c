"""The OpenAI-compatible ingress: routes each request by its ``model`` field.

(No ``from __future__ import annotations`` here: FastAPI reads the route signatures at runtime.)

The hot path is thin on purpose: validate the body, pick the handle from a dict built once,
and relay the model server's ready-made SSE text without parsing it. Bodies are read and checked
by ``router/limits.py`` (size, then one walk over the JSON, then the request model); a large body
is parsed in a worker process so that it never stalls the other requests on this event loop.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.deployments.await_census import Census
from serve_app.deployments.gc_heap import freeze_startup_heap
from serve_app.deployments.latency import LatencyWindow
from serve_app.deployments.log_flush import LogFlusher
from serve_app.deployments.loop_health import LoopHealth
from serve_app.deployments.loop_profile import MAX_SECONDS, LoopProfiler
from serve_app.deployments.openai_format import DONE
from serve_app.deployments.requests import InferenceRequest
from serve_app.errors import ModelNotFoundError, ModelUnavailableError, ServeAppError, unwrap
from serve_app.registry.models import AuthSpec, RouterSpec
from serve_app.router.auth import ApiKey, ApiKeyAuth, ApiKeys, KeyStore, check_model_allowed
from serve_app.router.errors import (
    error_response,
    http_error_response,
    replica_gone,
    sse_error,
    validation_error_response,
)
from serve_app.router.fleet import Fleet, ModelApp, ServedModel
from serve_app.router.health import fleet_readiness, model_readiness
from serve_app.router.limits import (
    INLINE_PARSE_BYTES,
    BodyLimits,
    RequestLimits,
    parse_request,
)
from serve_app.router.metrics import CONTENT_TYPE, ClusterMetrics, RequestMetrics
from serve_app.router.overload import ModelLoad
from serve_app.router.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    tokenize_job,
    tokenize_model,
)
from serve_app.workers import WorkerPool

logger = logging.getLogger("ray.serve")
READY_TIMEOUT_S = 5.0
CENSUS_TIMEOUT_S = 30.0  # /stats?waiting=1, asked mid-load: run 6 had requests queued 4.5 s there
PARSE_WORKERS = 2  # processes per router replica that parse bodies over INLINE_PARSE_BYTES
REQUEST_MODELS = (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeCompletionRequest,
    TokenizeChatRequest,
    DetokenizeRequest,
)

api = FastAPI(title="modelopt-serve", description="OpenAI-compatible router for ModelOpt FP8 models")


def _limits() -> RequestLimits:
    """This replica's limits (the Router instance holds the registry's values)."""
    try:
        return serve.get_replica_context().servable_object.limits
    except Exception:  # outside a replica, or before the Router is constructed
        return RequestLimits.from_spec(RouterSpec())


api.add_middleware(BodyLimits, limits=_limits)


def _api_keys() -> ApiKeys | None:
    """This replica's API keys (None: auth off, or outside a replica)."""
    try:
        return serve.get_replica_context().servable_object.key_store.current()
    except Exception:  # outside a replica, or before the Router is constructed
        return None


# Outermost last: the request counter sees every answer, the key check's 401s included.
api.add_middleware(ApiKeyAuth, keys=_api_keys)
api.add_middleware(RequestMetrics, routes=lambda: api.routes)


def _body_schema(*models: type) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: its models' schemas by reference."""
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _openapi() -> dict[str, Any]:
    """FastAPI's document plus the request models' schemas (the routes no longer declare them)."""
    if api.openapi_schema is None:
        document = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        served = _served_ids()
        for model in REQUEST_MODELS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            if served:  # the ids this router serves: what `model` may be (and what fuzzers try)
                schema["properties"]["model"]["enum"] = served
            schemas[model.__name__] = schema
        api.openapi_schema = document
    return api.openapi_schema


def _served_ids() -> list[str]:
    """The model ids (names and aliases) this replica's Router last saw; [] outside a replica."""
    try:
        return sorted(serve.get_replica_context().servable_object.fleet.routes)
    except Exception:
        return []


api.openapi = _openapi  # type: ignore[method-assign]


@api.exception_handler(RequestValidationError)
async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error_response(exc)


@api.exception_handler(StarletteHTTPException)
async def _on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return http_error_response(exc)


@api.exception_handler(ServeAppError)
async def _on_app_error(_: Request, exc: ServeAppError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(Exception)
async def _on_unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


def _key(request: Request) -> ApiKey | None:
    """The API key the request authenticated with (router/auth.py); None when keys are off."""
    return getattr(request.state, "api_key", None)


def _refused(error: BaseException) -> bool:
    """The model's queue refused the request (Serve's BackPressureError): overload."""
    return isinstance(unwrap(error), BackPressureError)


def _overload_response(error: BaseException, load: ModelLoad) -> JSONResponse:
    """``error_response``, with ``Retry-After`` estimated from the queue for overload (router/overload.py)."""
    cause = unwrap(error)
    if isinstance(cause, BackPressureError):
        queued = cause.args[0] if cause.args and isinstance(cause.args[0], int) else 1
        return error_response(cause, retry_after_s=load.retry_after_s(queued))
    return error_response(error)


# Module functions the routes use are defined above the class: serve.ingress rebuilds it.
@serve.ingress(api)
class Router:
    """Routes by the request's ``model`` to that model's application (router/fleet.py)."""

    def __init__(
        self,
        limits: RequestLimits | None = None,
        model_app_prefix: str = "",
        auth: AuthSpec | None = None,
    ) -> None:
        """``auth``: the registry's API-key settings (router/auth.py); None: keys off."""
        self.created = int(time.time())
        self.limits = limits or RequestLimits.from_spec(RouterSpec())
        self.parsers = WorkerPool(PARSE_WORKERS)
        self.max_model_lens: dict[str, int] = {}
        self.fleet = Fleet(model_app_prefix)
        self.key_store = KeyStore(auth or AuthSpec())
        self.cluster_metrics = ClusterMetrics()
        self.load: dict[str, ModelLoad] = {}
        # The router's own share of router_to_replica: from the route handler's start (body not
        # yet read) until the request is handed to Ray - body read, parsed, checked, routed. The
        # rest is Ray's routing and the hop to the model replica's loop.
        self.dispatch = LatencyWindow()
        self.loop_health = LoopHealth()
        self.log_flusher = LogFlusher()  # started with loop_health, from the first request on
        self.census = Census()  # /stats?waiting=1
        self.loop_profiler = LoopProfiler()  # /stats?profile=S
        self._stats_gathering: dict[tuple[bool, bool], asyncio.Future[dict[str, Any]]] = {}
        freeze_startup_heap("router")

    def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica: write out the buffered log lines."""
        flusher = getattr(self, "log_flusher", None)  # None when __init__ failed before it
        if flusher is not None:
            flusher.close()

    async def _route(self, model: str) -> ModelApp:
        """The application serving ``model``; 404 naming the served ids, or why it is not served."""
        found = await self.fleet.lookup(model)
        if found is not None and found.status == "DELETING":  # being removed: answer now, not later
            raise ModelUnavailableError(f"model {found.name!r} is being removed; it takes no new requests")
        if found is not None and found.available:
            return found
        if found is not None:  # configured, but its application failed: 503, the reason in short
            reason = (found.reason or "").strip().splitlines()[0][:200] if found.reason else ""
            raise ModelUnavailableError(
                f"model {found.name!r} is not being served: {reason or 'its application failed'} "
                "(the operator's `serve status` has the whole report)"
            )
        names = ", ".join(sorted(self.fleet.routes))
        raise ModelNotFoundError(
            f"model {model[:200]!r} does not exist; served models: {names}", param="model"
        )

    async def _route_for(self, request: Request, model: str) -> ModelApp:
        """``_route`` for a request: 403 when its API key may not use the model; names the
        served model for the request counter (router/metrics.py)."""
        app = await self._route(model)
        check_model_allowed(_key(request), model, app.ids)
        request.state.model_name = app.name
        return app

    async def _served(self, request: Request, model: str) -> tuple[ModelApp, ServedModel]:
        app = await self._route_for(request, model)
        return app, await self.fleet.served(app)

    async def _first(self, app: ModelApp, stream: DeploymentResponseGenerator) -> Any:
        """The first item of a streamed handle call (``_when_placed``). On any failure (no
        replica in time, the client gone, the model refusing it) the call is cancelled: a request
        still queued for a replica would otherwise run for nobody. Raises what the call raised,
        StopAsyncIteration for an empty stream."""
        try:
            return await self._when_placed(app, stream.__anext__())
        except BaseException:
            stream.cancel()
            raise

    async def _when_placed(self, app: ModelApp, call: Any) -> Any:
        """Await ``call`` (a request's first result). When the model has no RUNNING replica (scaled
        to zero, starting, being replaced), Serve queues the request and starts one; past the
        model's ``cold_start_timeout_s`` with still none running, the request is cancelled and
        answered 503 with Retry-After. Once a replica runs, the wait is the request's own."""
        task = asyncio.ensure_future(call)
        if self.fleet.running(app.app) > 0:
            return await task
        loop = asyncio.get_running_loop()
        deadline = loop.time() + app.cold_start_timeout_s
        while True:
            remaining = deadline - loop.time()
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(1.0, remaining)))
            if done or self.fleet.running(app.app) > 0:
                return await task
            if remaining <= 0:
                task.cancel()
                raise ModelUnavailableError(
                    f"model {app.name!r} has no replica running and none started within "
                    f"{app.cold_start_timeout_s:g} s (cold_start_timeout_s); retry later"
                )

    async def _parse(self, request: Request, model: Any) -> Any:
        """The body as ``model`` (a request model, or a function of the parsed body choosing one,
        as ``tokenize_model``); 413/400 from ``router/limits.py``, 400 from validation."""
        raw = await request.body()
        if len(raw) <= INLINE_PARSE_BYTES:
            body, problems = parse_request(raw, model, self.limits)
        else:
            function = "serve_app.router.limits:parse_request"
            body, problems = await self.parsers.call(function, (raw, model, self.limits))
        if body is None:
            raise RequestValidationError(problems)
        return body

    # --- OpenAI API ---------------------------------------------------------------------------
    @api.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        await self.fleet.ensure_started()
        key = _key(request)
        routes = {
            i: app
            for i, app in self.fleet.routes.items()
            if app.available and (key is None or key.models is None or any(x in key.models for x in app.ids))
        }
        data = [await self._model_card(model_id, app) for model_id, app in routes.items()]
        return {"object": "list", "data": data}

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str, request: Request) -> dict[str, Any]:
        return await self._model_card(model_id, await self._route_for(request, model_id))

    async def _model_card(self, model_id: str, app: ModelApp) -> dict[str, Any]:
        """OpenAI's Model object plus vLLM's extensions: ``root``, ``parent``, ``max_model_len``.

        ``parent`` is the served name an alias points to (None for a name)."""
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "modelopt-serve",
            "root": app.name,
            "parent": app.name if model_id != app.name else None,
            "max_model_len": await self._max_model_len(app),
        }

    async def _max_model_len(self, app: ModelApp) -> int | None:
        """The registry's value, else what a running replica reports (asked once per application
        and remembered). None while the model has no replica running: a model card never wakes a
        model scaled to zero."""
        known = app.max_model_len or self.max_model_lens.get(app.app)
        if known is None and self.fleet.running(app.app) > 0 and app.target_replicas != 0:
            served = await self.fleet.served(app)
            try:
                info = await asyncio.wait_for(served.handle.info.remote(), READY_TIMEOUT_S)
            except Exception as exc:
                logger.warning("model card of %s lacks max_model_len: %s", app.name, exc)
                return None
            known = self.max_model_lens[app.app] = info["max_model_len"]
        return known

    @api.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(self, request: Request) -> Any:
        received = time.time()  # before the body is read: router_to_replica starts here
        body = await self._parse(request, ChatCompletionRequest)
        return await self._serve(request, body.model, body.to_inference(received_at=received))

    @api.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(self, request: Request) -> Any:
        received = time.time()
        body = await self._parse(request, CompletionRequest)
        return await self._serve(request, body.model, body.to_inference(received_at=received))

    # --- vLLM's tokenizer endpoints -----------------------------------------------------------
    @api.post("/tokenize", openapi_extra=_body_schema(TokenizeCompletionRequest, TokenizeChatRequest))
    async def tokenize(self, request: Request) -> Any:
        body = await self._parse(request, tokenize_model)  # vLLM's two shapes: messages or prompt
        app, served = await self._served(request, body.model)
        try:
            job = tokenize_job(body)
            # The model server's ready JSON, as a stream of pieces (one message could not carry
            # it): serialising millions of ids here would stall the router.
            pieces = served.stream_handle.tokenize.remote(job)
            first = await self._first(app, pieces)
        except Exception as exc:
            return error_response(exc)

        async def answer() -> AsyncIterator[bytes]:
            finished = False
            try:
                yield first
                async for piece in pieces:
                    yield piece
                finished = True
            finally:
                if not finished:  # the client went away, or the replica did: the JSON is cut
                    pieces.cancel()

        return StreamingResponse(answer(), media_type="application/json")

    # The body is read by _parse, as on every other route: a body FastAPI reads itself turns the
    # 408 and 413 of router/limits.py into its own 400 and keeps the connection open.
    @api.post("/detokenize", openapi_extra=_body_schema(DetokenizeRequest))
    async def detokenize(self, request: Request) -> Any:
        body = await self._parse(request, DetokenizeRequest)
        app, served = await self._served(request, body.model)
        try:
            return JSONResponse(await self._when_placed(app, served.handle.detokenize.remote(body.tokens)))
        except Exception as exc:
            return error_response(exc)

    async def _serve(self, http: Request, model: str, request: InferenceRequest) -> Any:
        self.loop_health.start()
        self.log_flusher.start()
        app, served = await self._served(http, model)
        if request.received_at:
            self.dispatch.add(time.time() - request.received_at)
        load = self.load.get(app.name)
        if load is None:
            load = self.load[app.name] = ModelLoad()
        started = load.started()
        try:
            if not request.stream:
                try:
                    answer = await self._complete(app, served, request)
                except BaseException as exc:
                    load.ended(started, admitted=not _refused(exc))
                    raise
                load.ended(started)
                return JSONResponse(answer)
            stream = served.stream_handle.stream.remote(request)
            # Await the first chunk before answering so that a bad request still gets a 4xx status.
            first = await self._first(app, stream)
        except StopAsyncIteration:
            load.ended(started)
            return error_response(RuntimeError("the model server ended the stream without output"))
        except Exception as exc:
            if request.stream:
                load.ended(started, admitted=not _refused(exc))
            return _overload_response(exc, load)
        relay = self._relay(first, stream, lambda: load.ended(started))
        return StreamingResponse(relay, media_type="text/event-stream")

    async def _complete(self, app: ModelApp, served: ServedModel, request: InferenceRequest) -> Any:
        """A non-streamed request. Its replica dying (or its engine) loses nothing the client saw,
        so it is sent once more when another replica was running; otherwise, and when the second
        try fails too, the error answers it (503 with Retry-After, router/errors.py)."""
        others = self.fleet.running(app.app) - 1
        try:
            return await self._when_placed(app, served.handle.complete.remote(request))
        except Exception as exc:
            if not replica_gone(exc) or others < 1:
                raise
            logger.warning("replica of %s failed a request (%s); trying another once", app.name, exc)
        return await self._when_placed(app, served.handle.complete.remote(request))

    # --- health ---------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self, request: Request, model: str | None = None) -> JSONResponse:
        """200 when every model has a RUNNING replica (the Serve controller's view through the
        fleet, router/health.py; nothing goes through a model's queue, a model at zero stays at
        zero), else 503 with each model's reason. ``?model=``: that model (a name or alias) alone."""
        await self.fleet.ensure_started()
        self.log_flusher.start()  # make serve's runner polls this from the start
        if model is not None:
            app = await self._route_for(request, model)
            body = {"model": app.name, **model_readiness(app)}
            return JSONResponse(body, status_code=200 if body["ready"] else 503)
        ready, models = fleet_readiness(list(self.fleet.apps.values()))
        body = {"status": "ready" if ready else "not_ready", "models": models}
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get("/health")
    async def health(self) -> Response:
        """vLLM's ``/health``: 200 with an empty body when ready (as ``/readyz``), else 503."""
        await self.fleet.ensure_started()
        ready, _ = fleet_readiness(list(self.fleet.apps.values()))
        return Response(status_code=200 if ready else 503)

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Every replica's series, gathered from the cluster's metrics agents (router/metrics.py)."""
        return Response(await self.cluster_metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/stats")
    async def stats(
        self,
        request: Request,
        waiting: bool = False,
        profile: float = Query(default=0.0, ge=0.0, le=MAX_SECONDS),
    ) -> JSONResponse:
        """One replica's details per running model (engine counters, latency stages, engine
        start), asked through the model's queue like a request: diagnostics, not a health check
        (a busy model answers late). A model with no replica running is not asked (nor woken).
        ``/metrics`` has every replica's. ``router``: this router replica's ``dispatch`` (request
        received -> handed to Ray, ms), ``loop_lag`` and ``gc_pause`` (deployments/loop_health.py).
        ``?waiting=1`` adds, for this router replica and each model's, where the process's
        coroutines wait (deployments/await_census.py; it holds each loop for a moment).
        ``?profile=S`` (0-10 s; at least MIN_SECONDS) adds what each of those processes'
        event-loop threads spent S seconds on (deployments/loop_profile.py; it slows each loop
        meanwhile, and is taken at most once every 30 s per process). The router's starts at once,
        each model's when the call for it comes out of that model's queue: under load, seconds
        later. Callers that ask while an answer of the same kind (census or not, profile or not)
        is being gathered share it, whatever their S. A key limited to some models sees only
        those models."""
        await self.fleet.ensure_started()
        self.loop_health.start()
        self.log_flusher.start()
        # One gathering at a time per kind: each asks every model through its queue, and 200
        # clients asking at once must not put 200 calls in each queue (they share the answer).
        # Four kinds at most: a key per distinct S would keep every answer (and defeat sharing).
        kind = (waiting, profile > 0)
        gathering = self._stats_gathering.get(kind)
        if gathering is None or gathering.done():
            gathering = asyncio.ensure_future(self._gather_stats(waiting, profile))
            self._stats_gathering[kind] = gathering
        answer = await asyncio.shield(gathering)
        key = _key(request)
        if key is not None and key.models is not None:
            allowed = {app.name for app in self.fleet.apps.values() if any(i in key.models for i in app.ids)}
            models = {name: body for name, body in answer["models"].items() if name in allowed}
            answer = {**answer, "models": models}
        return JSONResponse(answer)

    async def _gather_stats(self, waiting: bool, profile_s: float = 0.0) -> dict[str, Any]:
        apps = list(self.fleet.apps.values())
        # The router's own profile starts now; a model's when the call reaches it (under load,
        # after the model's queue).
        own_profile = asyncio.ensure_future(self.loop_profiler.take(profile_s)) if profile_s > 0 else None
        results = await asyncio.gather(*(self._model_status(app, waiting, profile_s) for app in apps))
        router = {"dispatch": self.dispatch.summary(), **self.loop_health.summary()}
        if waiting:
            router["waiting"] = self.census.take()
        if own_profile is not None:
            router["profile"] = await own_profile
        return {"router": router, "models": {app.name: r for app, r in zip(apps, results, strict=True)}}

    async def _model_status(
        self, app: ModelApp, waiting: bool = False, profile_s: float = 0.0
    ) -> dict[str, Any]:
        body = model_readiness(app)
        if not body["ready"]:
            return body
        try:
            served = await self.fleet.served(app)
            # The census and the profile are asked for under load, where the call waits in the
            # model's queue too; the profile answers after its seconds.
            limit = (CENSUS_TIMEOUT_S if waiting or profile_s > 0 else READY_TIMEOUT_S) + profile_s
            asked = served.handle.info.remote(waiting=waiting, profile_s=profile_s)
            info = await asyncio.wait_for(asked, limit)
        except Exception as exc:
            return {**body, "ready": False, "reason": f"{type(exc).__name__}: {exc}"[:500]}
        return {**body, **info}

    @staticmethod
    async def _relay(first: str, stream: DeploymentResponseGenerator, done: Any = None) -> AsyncIterator[str]:
        # A static method, not a module function: serve.ingress rebuilds the class, and module
        # globals defined after it are not visible from the rebuilt methods.
        finished = False
        try:
            yield first
            if not first.endswith(DONE):
                async for chunk in stream:
                    yield chunk
                    if chunk.endswith(DONE):
                        # End the HTTP response now: the Ray stream's own end travels back
                        # separately and, under load, late; a client waits for the response to end.
                        break
            finished = True
        except Exception as exc:  # the status line is gone; report in-band, as OpenAI does
            logger.warning("stream failed after it began: %s", exc)
            finished = True
            yield sse_error(exc)
        finally:
            if not finished:  # client went away: cancel, which aborts the request in the engine
                stream.cancel()
            if done is not None:
                done()
