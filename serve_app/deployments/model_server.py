"""One model's Ray Serve replica: an engine plus the tokenizer, producing OpenAI bodies.

The engine class is given to the constructor (no lookup by string). The server renders the
prompt, runs the engine, and returns either a finished response dict or a stream of ready SSE
text batches that the router relays untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from serve_app.deployments.latency import StageLatencies
from serve_app.deployments.openai_format import DONE, ResponseFormatter
from serve_app.deployments.pacing import paced
from serve_app.deployments.prompts import PromptRenderer, TemplatePolicy
from serve_app.deployments.requests import InferenceRequest
from serve_app.engines.protocol import Engine, EngineConfig, GenerationDelta, GenerationRequest
from serve_app.errors import EngineDeadError

logger = logging.getLogger("ray.serve")

DEFAULT_STREAM_INTERVAL_S = 0.05


class ModelServer:
    """Serves one model. Ray Serve wraps it with ``serve.deployment`` in the builder."""

    async def __init__(
        self,
        engine_cls: type[Engine],
        config: EngineConfig,
        stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
        template_policy: TemplatePolicy | None = None,
    ) -> None:
        started = time.perf_counter()
        self.config = config
        self.stream_interval_s = stream_interval_s
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.latencies = StageLatencies()
        self.engine: Engine = engine_cls(config)
        await self.engine.start()
        tokenizer = await asyncio.to_thread(_load_tokenizer, config)
        self.prompts = PromptRenderer(
            tokenizer, config.model_name, self.engine.max_model_len, template_policy
        )
        if self.prompts.request_templates is not None:
            await self.prompts.request_templates.pool.start()
        self.start_seconds = time.perf_counter() - started
        logger.info("model %s ready in %.1f s", config.model_name, self.start_seconds)

    # --- requests -------------------------------------------------------------------------
    async def complete(self, request: InferenceRequest) -> dict[str, Any]:
        """A whole (non-streamed) chat.completion or text_completion body."""
        formatter, generation = await self._prepare(request)
        parts: list[str] = []
        last: GenerationDelta | None = None
        async for delta in self._generate(generation):
            parts.append(delta.text)
            last = delta
        text = "".join(parts)
        if request.echo and request.kind == "completion" and isinstance(request.prompt, str):
            text = request.prompt + text
        return formatter.full_response(
            text, last.finish_reason if last else "stop", last.completion_tokens if last else 0
        )

    async def stream(self, request: InferenceRequest) -> AsyncIterator[str]:
        """SSE text for the whole response, ending in ``data: [DONE]``.

        Validation happens before the first yield, so the router can still answer 4xx.
        """
        formatter, generation = await self._prepare(request)
        max_tokens = generation.sampling.max_tokens
        deltas = paced(self._generate(generation), self.stream_interval_s, max_tokens)
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                out = formatter.chunk(delta.text, delta.finish_reason)
                if delta.finish_reason is not None:
                    if request.include_usage:
                        out += formatter.usage_chunk(delta.completion_tokens)
                    out += DONE
                yield out

    async def _generate(self, generation: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """The engine's stream, timing its first output (``engine_first_output`` in /readyz).

        Closing this stream closes the engine's (which aborts the request)."""
        submitted: float | None = time.perf_counter()
        deltas = self.engine.generate(generation)
        async with contextlib.aclosing(deltas):  # type: ignore[type-var]
            async for delta in deltas:
                if submitted is not None:
                    self.latencies.add("engine_first_output", time.perf_counter() - submitted)
                    submitted = None
                yield delta

    async def _prepare(self, request: InferenceRequest) -> tuple[ResponseFormatter, GenerationRequest]:
        # Tokenizing a long prompt takes milliseconds; on this event loop it would hold up every
        # other stream's output (vLLM's output handler runs here). One thread: a Hugging Face fast
        # tokenizer is not safe to call from several threads at once ("Already borrowed").
        if request.received_at:
            self.latencies.add("router_to_replica", time.time() - request.received_at)
        started = time.perf_counter()
        rendered = await self.prompts.render_request_template(request)  # in a worker process
        loop = asyncio.get_running_loop()
        prompt_ids = await loop.run_in_executor(
            self._tokenizer_thread, self.prompts.token_ids, request, rendered
        )
        self.latencies.add("tokenize", time.perf_counter() - started)
        sampling = request.sampling
        if not request.max_tokens_given:
            sampling = replace(sampling, max_tokens=self.prompts.room_for_completion(len(prompt_ids)))
        formatter = ResponseFormatter(request, len(prompt_ids))
        return formatter, GenerationRequest(request.request_id, prompt_ids, sampling)

    # --- health and introspection -----------------------------------------------------------
    async def check_health(self) -> None:
        """Called by Ray Serve; raising marks the replica unhealthy so Serve replaces it."""
        try:
            await self.engine.check_health()
        except EngineDeadError:
            logger.error(
                "engine of %s is dead; asking Ray Serve to replace this replica", self.config.model_name
            )
            raise

    async def info(self) -> dict[str, Any]:
        """Readiness details for /readyz and the model card for /v1/models."""
        return {
            "model": self.config.model_name,
            "max_model_len": self.engine.max_model_len,
            "chat_template": self.prompts.has_chat_template,
            "start_seconds": round(self.start_seconds, 2),
            "stats": self.engine.stats().as_dict(),
            "latency": self.latencies.summary(),
            "engine_start": _start_info(self.engine),
        }

    async def __del__(self) -> None:
        await self.engine.shutdown()
        self._tokenizer_thread.shutdown(wait=False)
        if self.prompts.request_templates is not None:
            self.prompts.request_templates.pool.close()


def _start_info(engine: Engine) -> dict[str, Any] | None:
    """Cold/warm start facts an engine reports (the vLLM engine's compile cache), if any."""
    info = getattr(engine, "start_info", None)
    return info.as_dict() if info is not None else None


def _load_tokenizer(config: EngineConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(config.checkpoint), trust_remote_code=config.trust_remote_code)
