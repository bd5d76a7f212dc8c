"""One model's Ray Serve replica: an engine plus the tokenizer, producing OpenAI bodies.

The engine class is given to the constructor (no lookup by string). The server renders the
prompt, runs the engine, and returns either a finished response dict or a stream of ready SSE
text batches that the router relays untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

from serve_app.deployments import client_errors
from serve_app.deployments.await_census import Census
from serve_app.deployments.choices import Choice, plan_choices
from serve_app.deployments.fan_in import fan_in
from serve_app.deployments.gc_heap import freeze_startup_heap
from serve_app.deployments.latency import StageLatencies
from serve_app.deployments.log_flush import LogFlusher
from serve_app.deployments.logprobs import Position, TokenStrings, output_positions
from serve_app.deployments.loop_health import LoopHealth, process_age_s
from serve_app.deployments.loop_profile import LoopProfiler
from serve_app.deployments.media import ImagePolicy, load_images
from serve_app.deployments.metrics import engine_stat_loggers, record_engine_start
from serve_app.deployments.node_check import CheckpointManifest, verify_on_this_node
from serve_app.deployments.openai_format import DONE, ChoiceResult, ResponseFormatter
from serve_app.deployments.pacing import StreamPace, paced
from serve_app.deployments.prompts import PromptRenderer, TemplatePolicy
from serve_app.deployments.requests import InferenceRequest
from serve_app.deployments.tool_parsers import call_stream, parse_choice, stream_finish_reason
from serve_app.deployments.vision import ImagePrompts
from serve_app.engines.deadlines import HEALTH_WALL_CAP_S, answered_within
from serve_app.engines.protocol import Engine, EngineConfig, GenerationDelta, GenerationRequest
from serve_app.engines.selection import node_label
from serve_app.errors import EngineDeadError, InvalidRequestError
from serve_app.registry.tool_call_parsers import default_parser
from serve_app.registry.vision_models import vision_model

logger = logging.getLogger("ray.serve")

DEFAULT_STREAM_INTERVAL_S = 0.05
DEFAULT_STREAM_ITEMS_PER_S = 2560.0  # 128 streams at 50 ms: the pace measured as fast on an H200
# An engine's check_health that has not answered within this much loop time is hung
# (docs/operations.md, "Health"). Loop time, not wall time: under full load on an H200 this loop
# was held up to 2.2 s at a time (run 6), which is no sign of a hung engine (engines/deadlines.py).
ENGINE_HEALTH_TIMEOUT_S = 1.0
# However busy the loop, the wait ends after this share of the deployment's health_check_timeout_s
# (and never after deadlines.HEALTH_WALL_CAP_S): the rest is margin for the loop's holds around
# the check, so the replica logs which engine and why before Ray Serve gives up on it.
ENGINE_HEALTH_WALL_SHARE = 0.6


JSON_SLICE = 16_384  # list items serialised per json.dumps call: about a millisecond each
# Per message of /tokenize's answer stream: under Ray's default 4 MiB gRPC message limit (a
# deployment may run without make serve's 64 MiB), with room for the message's own framing.
TOKENIZE_PIECE_BYTES = 1024 * 1024


def tokenize_json(max_model_len: int, tokens: list[int], token_strs: list[str] | None) -> list[bytes]:
    """vLLM's TokenizeResponse (vllm/entrypoints/serve/tokenize/protocol.py) as compact JSON, in
    consecutive byte strings whose concatenation is the document.

    Serialised and encoded a slice of ``JSON_SLICE`` items at a time, never as one string: one
    json.dumps (or one join, or one encode) of the 2.4 million ids of a 4 MiB prompt holds the
    GIL, and so this replica's event loop and its streams, for most of a second; between slices
    the interpreter can switch threads. The router sends the bytes on as they are instead of
    serialising them on its own event loop."""

    def array(items: list[Any]) -> Iterator[bytes]:
        yield b"["
        for i in range(0, len(items), JSON_SLICE):
            text = json.dumps(items[i : i + JSON_SLICE], ensure_ascii=False, separators=(",", ":"))
            yield (("," if i else "") + text[1:-1]).encode()
        yield b"]"

    head = f'{{"count":{len(tokens)},"max_model_len":{max_model_len},"tokens":'.encode()
    strs = [b"null"] if token_strs is None else list(array(token_strs))
    return [head, *array(tokens), b',"token_strs":', *strs, b"}"]


def pieces_of(parts: list[bytes], size: int) -> Iterator[bytes]:
    """``parts`` regrouped into byte strings of at most ``size`` bytes, in order."""
    piece = bytearray()
    for part in parts:
        for start in range(0, len(part), size):
            chunk = part[start : start + size]
            if len(piece) + len(chunk) > size:
                yield bytes(piece)
                piece.clear()
            piece += chunk
    if piece:
        yield bytes(piece)


def _consume_result(future: asyncio.Future[None]) -> None:
    """Reads a late engine check's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()


class ModelServer:
    """Serves one model. Ray Serve wraps it with ``serve.deployment`` in the builder."""

    async def __init__(
        self,
        engine_cls: type[Engine],
        config: EngineConfig,
        stream_interval_s: float = DEFAULT_STREAM_INTERVAL_S,
        template_policy: TemplatePolicy | None = None,
        tool_call_parser: str | None = None,
        checkpoint_manifest: CheckpointManifest | None = None,
        image_policy: ImagePolicy | None = None,
        stream_items_per_s: float = DEFAULT_STREAM_ITEMS_PER_S,
        health_check_timeout_s: float = 10.0,
    ) -> None:
        """``checkpoint_manifest``: what preflight saw of the checkpoint; when given, this node's
        copy is compared with it first (``CheckpointLoadError`` naming the node on a difference).
        ``image_policy``: the registry's ``media`` rules (vision-language checkpoints).
        ``stream_interval_s`` and ``stream_items_per_s``: the streams' pace (``StreamPace``).
        ``health_check_timeout_s``: the deployment's, which bounds the engine check's wall time."""
        started = time.perf_counter()
        phases = {"process_to_init": process_age_s()}
        client_errors.install()
        if checkpoint_manifest is not None:
            import ray

            verify_on_this_node(config.model_name, checkpoint_manifest, node_label(ray))
        self.config = config
        self.pace = StreamPace(stream_interval_s, stream_items_per_s)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self._endpoint_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize-endpoint")
        self.latencies = StageLatencies()
        self.loop_health = LoopHealth()
        self.log_flusher = LogFlusher()
        self.census = Census()
        self.loop_profiler = LoopProfiler()
        self._health_wall_cap_s = max(
            ENGINE_HEALTH_TIMEOUT_S,
            min(HEALTH_WALL_CAP_S, ENGINE_HEALTH_WALL_SHARE * health_check_timeout_s),
        )
        self._failed_engine_check: asyncio.Future[None] | None = None
        self._failed_engine_check_since = 0.0
        self.engine: Engine = engine_cls(
            config, stat_loggers=engine_stat_loggers(engine_cls, config.model_name)
        )
        step = phases["before_engine"] = time.perf_counter() - started
        await self.engine.start()
        phases["engine"] = time.perf_counter() - started - step
        start_info = getattr(self.engine, "start_info", None)
        record_engine_start(
            config.model_name,
            phases["engine"],
            start_info.compile_cache_warm if start_info is not None else None,
        )
        step = time.perf_counter()
        tokenizer = await asyncio.to_thread(_load_tokenizer, config)
        self.prompts = PromptRenderer(
            tokenizer, config.model_name, self.engine.max_model_len, template_policy
        )
        if self.prompts.request_templates is not None:
            await self.prompts.request_templates.pool.start()
        # /tokenize and /detokenize take input of any length, as vLLM's do (no max_model_len
        # there), and 10 MB of text takes about 10 s to tokenize: they get a thread and a copy of
        # the tokenizer of their own (a fast tokenizer is not safe to share between threads), so
        # they never hold up the tokenizing of generation requests.
        self.endpoint_prompts = PromptRenderer(
            copy.deepcopy(tokenizer), config.model_name, self.engine.max_model_len
        )
        self.image_policy = image_policy or ImagePolicy()
        self.image_prompts: ImagePrompts | None = None
        if vision_model(config.checkpoint) is not None:
            self.image_prompts = await asyncio.to_thread(
                ImagePrompts, config.checkpoint, tokenizer, config.trust_remote_code
            )
        # models.yaml's tool_call_parser, else the architecture's row (registry/tool_call_parsers.py)
        self.tool_call_parser = tool_call_parser or default_parser(_checkpoint_config(config))
        phases["tokenizer"] = time.perf_counter() - step
        step = time.perf_counter()
        freeze_startup_heap(f"model {config.model_name}")
        self.loop_health.start()
        self.log_flusher.start()
        phases["gc_freeze"] = time.perf_counter() - step
        self.start_seconds = time.perf_counter() - started
        self.start_phases = {name: round(value, 3) for name, value in phases.items() if value is not None}
        engine_phases = getattr(start_info, "phases", None) or {}
        logger.info(
            "model %s ready in %.1f s (%s)",
            config.model_name,
            self.start_seconds,
            ", ".join(
                [f"{name} {value:.1f} s" for name, value in self.start_phases.items()]
                + [f"engine.{name} {value:.1f} s" for name, value in engine_phases.items()]
            ),
        )

    # --- requests -------------------------------------------------------------------------
    async def complete(self, request: InferenceRequest) -> dict[str, Any]:
        """A whole (non-streamed) chat.completion or text_completion body, with every choice."""
        formatter, choices = await self._prepare(request)
        tasks = [asyncio.ensure_future(self._collect(choice, request)) for choice in choices]
        try:
            results = await asyncio.gather(*tasks)
        finally:  # one choice failed, or the caller went away: stop the others
            for task in tasks:
                task.cancel()
        completion_tokens = sum(tokens for _, tokens in results)
        choice_results = [result for result, _ in results]
        if request.tool_choice != "none":
            for result in choice_results:
                text, reason = result.text or "", result.finish_reason or "stop"
                result.text, result.tool_calls, result.finish_reason = parse_choice(
                    text, reason, request, self.tool_call_parser
                )
        return formatter.full_response(choice_results, completion_tokens)

    async def _collect(self, choice: Choice, request: InferenceRequest) -> tuple[ChoiceResult, int]:
        """Run one choice to its end: (its result, its completion tokens)."""
        parts: list[str] = []
        positions: list[Position] | None = [] if choice.wants_logprobs else None
        finish_reason, tokens = "stop", 0
        async for delta in self._generate(choice.generation):
            choice.observe(delta)
            parts.append(delta.text)
            if positions is not None:
                positions.extend(output_positions(delta.token_ids, delta.logprobs))
            finish_reason, tokens = delta.finish_reason or finish_reason, delta.completion_tokens
        text = "".join(parts)
        if request.echo_only:  # the engine ran one token to score the prompt; it is not output
            text, tokens, finish_reason = "", 0, "length"
            positions = [] if positions is not None else None
        if request.echo:
            text = choice.echo_text + text
            if positions is not None:
                positions = choice.echo_positions() + positions
        result = ChoiceResult(
            choice.index, text, finish_reason, positions, prompt_logprobs=choice.prompt_logprobs
        )
        return result, tokens

    async def stream(self, request: InferenceRequest) -> AsyncIterator[str]:
        """SSE text for the whole response, ending in ``data: [DONE]``.

        Validation happens before the first yield, so the router can still answer 4xx.
        """
        formatter, choices = await self._prepare(request)
        streams = [
            paced(self._generate(c.generation), self.pace.interval_s, c.generation.sampling.max_tokens)
            for c in choices
        ]
        tokens = [0] * len(choices)
        unfinished = len(choices)
        tools = request.tool_choice != "none"
        calls = [call_stream(request, self.tool_call_parser) for _ in choices] if tools else None
        merged = fan_in(streams) if len(streams) > 1 else _single(streams[0])
        with self.pace.streaming(len(choices)):
            async with contextlib.aclosing(merged):
                async for index, delta in merged:
                    choice = choices[index]
                    choice.observe(delta)
                    finish = delta.finish_reason
                    if request.echo_only and finish is None:
                        continue  # wait for the scoring token's end; nothing of it is output
                    text, shown_finish, positions = choice.chunk_parts(delta, request)
                    if calls is None:  # the plain hot path
                        out = formatter.chunk(text, shown_finish, choice.index, positions)
                    else:
                        content, pieces = calls[index].feed(text, final=finish is not None)
                        if shown_finish is not None:
                            shown_finish = stream_finish_reason(calls[index], request, shown_finish)
                        out = formatter.tool_chunk(content, pieces, shown_finish, choice.index, positions)
                    if finish is not None:
                        tokens[index] = 0 if request.echo_only else delta.completion_tokens
                        unfinished -= 1
                        if not unfinished:
                            if request.include_usage:
                                out += formatter.usage_chunk(sum(tokens))
                            out += DONE
                    if out:
                        yield out

    async def _generate(self, generation: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """The engine's stream, timing its first output (``engine_first_output`` in /readyz).

        Closing this stream closes the engine's (which aborts the request). Engines name
        ``response_format`` in a constraint's errors; a constraint sent as vLLM's
        ``structured_outputs`` gets its errors under that name."""
        submitted: float | None = time.perf_counter()
        try:
            deltas = self.engine.generate(generation)
            async with contextlib.aclosing(deltas):  # type: ignore[type-var]
                async for delta in deltas:
                    if submitted is not None:
                        self.latencies.add("engine_first_output", time.perf_counter() - submitted)
                        submitted = None
                    yield delta
        except InvalidRequestError as error:
            structured = generation.sampling.structured
            if structured is None or error.param != "response_format" or structured.param == error.param:
                raise
            raise InvalidRequestError(error.message, param=structured.param) from error

    async def _prepare(self, request: InferenceRequest) -> tuple[ResponseFormatter, list[Choice]]:
        # Tokenizing a long prompt takes milliseconds; on this event loop it would hold up every
        # other stream's output (vLLM's output handler runs here). One thread: a Hugging Face fast
        # tokenizer is not safe to call from several threads at once ("Already borrowed").
        # A template without tool support is the first thing to fix (prompts.chat_ids says so).
        if request.tool_choice == "auto" and self.tool_call_parser is None and self.prompts.supports_tools:
            raise InvalidRequestError(
                f"model {self.config.model_name!r} has no tool-call parser for its architecture, so "
                'tool_choice "auto" cannot find calls in its output; set tool_call_parser in its '
                'models.yaml entry, or use tool_choice "required" or a named function',
                param="tool_choice",
            )
        if request.received_at:
            self.latencies.add("router_to_replica", time.time() - request.received_at)
        images = await self._load_images(request)
        started = time.perf_counter()
        rendered = await self.prompts.render_request_template(request)  # in a worker process
        loop = asyncio.get_running_loop()
        plan = (self._plan, request, rendered, images)
        prompts, choices = await loop.run_in_executor(self._tokenizer_thread, *plan)
        self.latencies.add("tokenize", time.perf_counter() - started)
        strings = None
        if (
            request.sampling.logprobs is not None
            or request.sampling.prompt_logprobs is not None
            or request.echo
        ):
            strings = TokenStrings(self.prompts.tokenizer, request.return_tokens_as_token_ids)
        formatter = ResponseFormatter(request, sum(len(ids) for ids in prompts), strings)
        return formatter, choices

    async def _load_images(self, request: InferenceRequest) -> list[Any]:
        """The request's images, fetched and decoded (deployments/media.py); 400 for a model
        that takes none, past the model's limit, or for an image that cannot be had."""
        if not request.images:
            return []
        if self.image_prompts is None:
            raise InvalidRequestError(
                f"model {self.config.model_name!r} is a text-only model and does not take images; "
                "send image_url parts to a vision-language model",
                param="messages",
            )
        return await load_images(list(request.images), self.image_policy, self.config.model_name)

    def _plan(
        self, request: InferenceRequest, rendered: str | None, images: list[Any]
    ) -> tuple[list[list[int]], list[Choice]]:
        """Prompt ids and choices, in one trip to the tokenizer thread."""
        if not images:
            prompts = self.prompts.prompt_ids(request, rendered)
            return prompts, plan_choices(request, prompts, self.prompts)
        tensors = bool(getattr(self.engine, "needs_image_tensors", True))
        ids, media = self.prompts.image_prompt(request, rendered, images, self.image_prompts, tensors)
        return [ids], plan_choices(request, [ids], self.prompts, media)

    # --- tokenizer endpoints (vLLM's /tokenize and /detokenize) ---------------------------------
    async def tokenize(self, job: dict[str, Any]) -> AsyncIterator[bytes]:
        """vLLM's TokenizeResponse for a prompt or chat messages, as JSON bytes in pieces of at
        most ``TOKENIZE_PIECE_BYTES``: ``{"count", "max_model_len", "tokens", "token_strs"}``
        (``tokenize_json``). The answer to a 16 MiB body can pass 140 MB, more than one message
        between deployments carries (64 MiB under make serve, 4 MiB by Ray's default), so it
        crosses as a stream.
        Raises (before the first piece) what tokenizing raises."""
        loop = asyncio.get_running_loop()
        parts = await loop.run_in_executor(self._endpoint_thread, self._tokenize, job)
        for piece in pieces_of(parts, TOKENIZE_PIECE_BYTES):
            yield piece

    def _tokenize(self, job: dict[str, Any]) -> list[bytes]:
        prompts = self.endpoint_prompts
        if "messages" in job:
            options = SimpleNamespace(
                add_generation_prompt=job["add_generation_prompt"],
                continue_final_message=job["continue_final_message"],
                add_special_tokens=job["add_special_tokens"],
                chat_template_kwargs=job["chat_template_kwargs"],
                tools=job.get("tools"),
            )
            tokens = prompts.chat_ids(job["messages"], options)
        else:
            tokens = prompts.completion_ids(job["prompt"], job["add_special_tokens"])
        strs = prompts.tokenizer.convert_ids_to_tokens(tokens) if job["return_token_strs"] else None
        return tokenize_json(prompts.max_model_len, tokens, strs)

    async def detokenize(self, tokens: list[int]) -> dict[str, str]:
        """``{"prompt": text}`` for token ids; ids outside the vocabulary are a 400."""
        loop = asyncio.get_running_loop()
        return {"prompt": await loop.run_in_executor(self._endpoint_thread, self._detokenize, tokens)}

    def _detokenize(self, tokens: list[int]) -> str:
        self.endpoint_prompts.check_vocab(tokens, param="tokens")  # millions of ids: off the loop
        return self.endpoint_prompts.tokenizer.decode(tokens)

    # --- health and introspection -----------------------------------------------------------
    async def check_health(self) -> None:
        """Called by Ray Serve every ``health_check_period_s``; raising marks the replica unhealthy
        (after three failures in a row) so Serve stops routing to it and replaces it. An engine
        whose own check does not answer within ENGINE_HEALTH_TIMEOUT_S of loop time (while the
        loop is busy with other work, at most ENGINE_HEALTH_WALL_SHARE of health_check_timeout_s
        of wall time, and never more than HEALTH_WALL_CAP_S) is hung.

        After such a failure the next checks do not wait out the limit again. While that engine
        check is still unanswered they fail at once. If it ended in a failure of its own (the vLLM
        engine's probe has its own 1 s limit), the next check asks the engine again in the
        background and fails at once; the check after it reads that answer. So a hung engine
        leaves routing after about one limit plus two periods, and one that answers again passes
        the next check. Raises EngineDeadError."""
        previous = self._failed_engine_check
        if previous is not None:
            waited = time.monotonic() - self._failed_engine_check_since
            if not previous.done():
                self._log_unhealthy("has still not answered the health check sent %.1f s ago", waited)
                raise EngineDeadError(
                    f"the engine of {self.config.model_name!r} has not answered a health check sent "
                    f"{waited:.1f} s ago"
                )
            self._failed_engine_check = None
            failure = None if previous.cancelled() else previous.exception()
            if failure is not None:
                self._keep_failed_check(asyncio.ensure_future(self.engine.check_health()), time.monotonic())
                self._log_unhealthy("failed the health check sent %.1f s ago: %s", waited, failure)
                raise EngineDeadError(
                    f"the engine of {self.config.model_name!r} failed its last health check: {failure}"
                )
        asked = time.monotonic()
        check = asyncio.ensure_future(self.engine.check_health())
        if not await answered_within(check, ENGINE_HEALTH_TIMEOUT_S, self._health_wall_cap_s):
            self._keep_failed_check(check, asked)
            self._log_unhealthy("did not answer its health check within %g s", ENGINE_HEALTH_TIMEOUT_S)
            raise EngineDeadError(
                f"the engine of {self.config.model_name!r} did not answer its health check within "
                f"{ENGINE_HEALTH_TIMEOUT_S:g} s"
            )
        try:
            check.result()
        except EngineDeadError:
            self._log_unhealthy("is dead")
            raise

    def _keep_failed_check(self, check: asyncio.Future[None], since: float) -> None:
        self._failed_engine_check, self._failed_engine_check_since = check, since
        check.add_done_callback(_consume_result)

    def _log_unhealthy(self, what: str, *args: Any) -> None:
        logger.error(
            "engine of %s " + what + "; asking Ray Serve to replace this replica",
            self.config.model_name,
            *args,
        )

    async def info(self, waiting: bool = False, profile_s: float = 0.0) -> dict[str, Any]:
        """Readiness details for /readyz and the model card for /v1/models; with ``waiting``
        (``/stats?waiting=1``) also where this process's coroutines wait (``await_census``), with
        ``profile_s`` > 0 (``/stats?profile=S``) what its event-loop thread spent those seconds on
        (``loop_profile``; the answer comes after them)."""
        census = {"waiting": self.census.take()} if waiting else {}
        if profile_s > 0:
            census["profile"] = await self.loop_profiler.take(profile_s)
        return {
            "model": self.config.model_name,
            "max_model_len": self.engine.max_model_len,
            "chat_template": self.prompts.has_chat_template,
            "images": self.image_prompts is not None,
            "start_seconds": round(self.start_seconds, 2),
            "start_phases": self.start_phases,
            "loop": self.loop_health.summary(),
            "stats": self.engine.stats().as_dict(),
            "latency": self.latencies.summary(),
            "engine_start": _start_info(self.engine),
            **census,
        }

    async def __del__(self) -> None:
        """Ray Serve calls this when it stops the replica (after the drain)."""
        try:
            if self._failed_engine_check is not None:
                self._failed_engine_check.cancel()
            await self.engine.shutdown()
            self.loop_health.close()
            self._tokenizer_thread.shutdown(wait=False)
            self._endpoint_thread.shutdown(wait=False)
            if self.prompts.request_templates is not None:
                self.prompts.request_templates.pool.close()
            logger.info("model %s stopped", self.config.model_name)
        finally:
            self.log_flusher.close()


async def _single(stream: AsyncIterator[GenerationDelta]) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """One choice's stream in ``fan_in``'s shape, without its tasks (the common, n=1 hot path)."""
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for delta in stream:
            yield 0, delta


def _start_info(engine: Engine) -> dict[str, Any] | None:
    """Cold/warm start facts an engine reports (the vLLM engine's compile cache), if any."""
    info = getattr(engine, "start_info", None)
    return info.as_dict() if info is not None else None


def _checkpoint_config(config: EngineConfig) -> dict[str, Any]:
    """The checkpoint's config.json (architectures, model_type); {} when it has none."""
    path = config.checkpoint / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_tokenizer(config: EngineConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(config.checkpoint), trust_remote_code=config.trust_remote_code)
