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
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.deployments.builder import deployment_name
from serve_app.deployments.gc_heap import freeze_startup_heap
from serve_app.deployments.openai_format import DONE
from serve_app.deployments.requests import InferenceRequest
from serve_app.errors import ModelNotFoundError, ServeAppError, unwrap
from serve_app.registry.models import AuthSpec, RouterSpec
from serve_app.router.auth import ApiKey, ApiKeyAuth, ApiKeys, check_model_allowed
from serve_app.router.errors import error_response, http_error_response, sse_error, validation_error_response
from serve_app.router.health import ModelTarget, Readiness, RouterOps
from serve_app.router.limits import (
    INLINE_PARSE_BYTES,
    BodySizeLimit,
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
PARSE_WORKERS = 2  # processes per router replica that parse bodies over INLINE_PARSE_BYTES
REQUEST_MODELS = (ChatCompletionRequest, CompletionRequest, TokenizeCompletionRequest, TokenizeChatRequest)

api = FastAPI(title="modelopt-serve", description="OpenAI-compatible router for ModelOpt FP8 models")


def _body_limit() -> int:
    """This replica's ``max_request_body_bytes`` (the Router instance holds the registry's value)."""
    try:
        return serve.get_replica_context().servable_object.limits.max_request_body_bytes
    except Exception:  # outside a replica, or before the Router is constructed
        return RequestLimits.from_spec(RouterSpec()).max_request_body_bytes


api.add_middleware(BodySizeLimit, limit_bytes=_body_limit)


def _api_keys() -> ApiKeys | None:
    """This replica's API keys (None: auth off, or outside a replica)."""
    try:
        return serve.get_replica_context().servable_object.api_keys
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
    """The model ids (names and aliases) of this replica's Router; [] outside a replica."""
    try:
        return sorted(serve.get_replica_context().servable_object.routes)
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


@dataclass(frozen=True)
class ServedModel:
    name: str
    handle: DeploymentHandle
    stream_handle: DeploymentHandle


def _key(request: Request) -> ApiKey | None:
    """The API key the request authenticated with (router/auth.py); None when keys are off."""
    return getattr(request.state, "api_key", None)


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
    def __init__(
        self,
        models: dict[str, DeploymentHandle],
        aliases: dict[str, str] | None = None,
        unavailable: dict[str, str] | None = None,
        limits: RequestLimits | None = None,
        ops: RouterOps | None = None,
    ) -> None:
        """``ops``: where each model's replicas run (readiness) and the API-key settings."""
        self.created = int(time.time())
        self.limits = limits or RequestLimits.from_spec(RouterSpec())
        self.parsers = WorkerPool(PARSE_WORKERS)
        self.unavailable = dict(unavailable or {})
        self.max_model_lens: dict[str, int] = {}
        self.models: dict[str, ServedModel] = {}
        for name, handle in models.items():
            self.models[name] = ServedModel(name, handle, handle.options(stream=True))
        self.routes: dict[str, ServedModel] = dict(self.models)
        for alias, name in (aliases or {}).items():
            self.routes[alias] = self.models[name]
        ops = ops or RouterOps(tuple(ModelTarget(name, deployment_name(name)) for name in self.models))
        self.api_keys = ApiKeys.load(ops.auth or AuthSpec())
        self.readiness = Readiness(list(ops.targets), serve.get_replica_context().app_name)
        self.cluster_metrics = ClusterMetrics()
        self.load = {name: ModelLoad() for name in self.models}
        freeze_startup_heap("router")

    def _route(self, model: str) -> ServedModel:
        served = self.routes.get(model)
        if served is not None:
            return served
        if model in self.unavailable:
            raise ModelNotFoundError(
                f"model {model!r} is not being served: {self.unavailable[model]}", param="model"
            )
        names = ", ".join(sorted(self.routes))
        raise ModelNotFoundError(
            f"model {model[:200]!r} does not exist; served models: {names}", param="model"
        )

    def _route_for(self, request: Request, model: str) -> ServedModel:
        """``_route`` for a request: 403 when its API key may not use the model; names the
        served model for the request counter (router/metrics.py)."""
        check_model_allowed(_key(request), model)
        served = self._route(model)
        request.state.model_name = served.name
        return served

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
        key = _key(request)
        allowed = [m for m in self.routes if key is None or key.models is None or m in key.models]
        data = [await self._model_card(model_id) for model_id in allowed]
        return {"object": "list", "data": data}

    @api.get("/v1/models/{model_id:path}")
    async def retrieve_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._route_for(request, model_id)
        return await self._model_card(model_id)

    async def _model_card(self, model_id: str) -> dict[str, Any]:
        """OpenAI's Model object plus vLLM's extensions: ``root``, ``parent``, ``max_model_len``.

        ``parent`` is the served name an alias points to (None for a name)."""
        served = self.routes[model_id]
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "modelopt-serve",
            "root": served.name,
            "parent": served.name if model_id != served.name else None,
            "max_model_len": await self._max_model_len(served),
        }

    async def _max_model_len(self, served: ServedModel) -> int | None:
        # Fixed for a deployment's life: asked once, then remembered.
        known = self.max_model_lens.get(served.name)
        if known is None:
            try:
                info = await asyncio.wait_for(served.handle.info.remote(), READY_TIMEOUT_S)
            except Exception as exc:
                logger.warning("model card of %s lacks max_model_len: %s", served.name, exc)
                return None
            known = self.max_model_lens[served.name] = info["max_model_len"]
        return known

    @api.post("/v1/chat/completions", openapi_extra=_body_schema(ChatCompletionRequest))
    async def chat_completions(self, request: Request) -> Any:
        body = await self._parse(request, ChatCompletionRequest)
        return await self._serve(self._route_for(request, body.model), body.to_inference())

    @api.post("/v1/completions", openapi_extra=_body_schema(CompletionRequest))
    async def completions(self, request: Request) -> Any:
        body = await self._parse(request, CompletionRequest)
        return await self._serve(self._route_for(request, body.model), body.to_inference())

    # --- vLLM's tokenizer endpoints -----------------------------------------------------------
    @api.post("/tokenize", openapi_extra=_body_schema(TokenizeCompletionRequest, TokenizeChatRequest))
    async def tokenize(self, request: Request) -> Any:
        body = await self._parse(request, tokenize_model)  # vLLM's two shapes: messages or prompt
        served = self._route_for(request, body.model)
        try:
            return JSONResponse(await served.handle.tokenize.remote(tokenize_job(body)))
        except Exception as exc:
            return error_response(exc)

    @api.post("/detokenize")
    async def detokenize(self, body: DetokenizeRequest, request: Request) -> Any:
        served = self._route_for(request, body.model)
        try:
            return JSONResponse(await served.handle.detokenize.remote(body.tokens))
        except Exception as exc:
            return error_response(exc)

    async def _serve(self, served: ServedModel, request: InferenceRequest) -> Any:
        load = self.load[served.name]
        started = load.started()
        try:
            if not request.stream:
                try:
                    return JSONResponse(await served.handle.complete.remote(request))
                finally:
                    load.ended(started)
            stream = served.stream_handle.stream.remote(request)
            # Await the first chunk before answering so that a bad request still gets a 4xx status.
            first = await stream.__anext__()
        except StopAsyncIteration:
            load.ended(started)
            return error_response(RuntimeError("the model server ended the stream without output"))
        except Exception as exc:
            if request.stream:
                load.ended(started)
            return _overload_response(exc, load)
        relay = self._relay(first, stream, lambda: load.ended(started))
        return StreamingResponse(relay, media_type="text/event-stream")

    # --- health ---------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self, model: str | None = None) -> JSONResponse:
        """200 when every model has a RUNNING replica (the Serve controller's view, router/health.py;
        nothing goes through a model's queue), else 503 with each model's reason. ``?model=``:
        that model (a name or alias) alone."""
        if model is not None:
            served = self._route(model)
            body = {"model": served.name, **await self.readiness.model(served.name)}
            return JSONResponse(body, status_code=200 if body["ready"] else 503)
        ready, models = await self.readiness.all()
        for name, reason in self.unavailable.items():
            models[name] = {"ready": False, "available": False, "reason": reason}
        body = {"status": "ready" if ready else "not_ready", "models": models}
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get("/health")
    async def health(self) -> Response:
        """vLLM's ``/health``: 200 with an empty body when ready (as ``/readyz``), else 503."""
        ready, _ = await self.readiness.all()
        return Response(status_code=200 if ready else 503)

    @api.get("/metrics")
    async def metrics(self) -> Response:
        """Every replica's series, gathered from the cluster's metrics agents (router/metrics.py)."""
        return Response(await self.cluster_metrics.render(), media_type=CONTENT_TYPE)

    @api.get("/stats")
    async def stats(self) -> JSONResponse:
        """One replica's details per model (engine counters, latency stages, engine start), asked
        through the model's queue like a request: diagnostics, not a health check (a busy model
        answers late, a model scaled to zero is woken). ``/metrics`` has every replica's."""
        names = list(self.models)
        results = await asyncio.gather(*(self._model_status(n) for n in names))
        return JSONResponse({"models": dict(zip(names, results, strict=True))})

    async def _model_status(self, name: str) -> dict[str, Any]:
        try:
            info = await asyncio.wait_for(self.models[name].handle.info.remote(), READY_TIMEOUT_S)
        except Exception as exc:
            return {"ready": False, "available": True, "reason": f"{type(exc).__name__}: {exc}"[:500]}
        return {"ready": True, "available": True, **info}

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
