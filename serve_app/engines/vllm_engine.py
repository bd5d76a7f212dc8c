"""The vLLM engine: the engine protocol over vLLM 0.24's public async API.

Uses only what ``vllm`` exports at its top level (``AsyncEngineArgs``, ``AsyncLLMEngine`` - an alias
of ``vllm.v1.engine.async_llm.AsyncLLM`` -, ``SamplingParams``, ``TokensPrompt``) plus
``RequestOutputKind``, ``StructuredOutputsParams``, ``UsageContext`` and vLLM's two engine
exceptions. vLLM is imported inside
the methods, so this module imports anywhere.

The engine starts with ``UsageContext.OPENAI_API_SERVER``, the context ``vllm serve`` uses, so
defaults that vLLM picks by usage context match the bare server's (on an H100: max_num_seqs 1024,
max_num_batched_tokens 8192). Requests stream in ``RequestOutputKind.DELTA`` mode, in which vLLM
merges outputs a slow consumer has not read yet instead of queueing one per token.

torch.compile's cache goes to one persistent folder per model (``compile_cache_dir``, by default
``~/.cache/modelopt-serve/compile/<model>``), given to vLLM as ``VLLM_CACHE_ROOT`` before the
engine starts. vLLM keys its compiled graphs under ``<root>/torch_compile_cache/<hash>`` and points
Inductor's and Triton's caches inside it, so a restarted replica with the same settings skips
compilation. ``start_info`` records how long the start took and whether that cache was warm.

Images (vision-language checkpoints) go in through the public prompt dict, as vLLM's own chat
server passes them: ``TokensPrompt(prompt_token_ids=<the chat template's ids, one placeholder per
image>, multi_modal_data={"image": [PIL images]})``. vLLM's multimodal processor (the checkpoint's
own Hugging Face image processor) sizes the images and expands each placeholder; its
``RequestOutput.prompt_token_ids`` is then the expanded prompt, which the model server has
computed by the same rule (deployments/vision.py) for usage and the context check.

Metrics are vLLM's own: the ``stat_loggers`` given to the constructor (in a Ray Serve replica,
``vllm.v1.metrics.ray_wrappers.RayPrometheusStatLogger``, as Ray Serve LLM uses) go to
``AsyncLLM.from_engine_args(..., stat_loggers=...)``, vLLM's public hook; vLLM records every
``vllm:*`` series through them, labelled with ``model_name`` (``served_model_name``, set to the
registry's name) and ``ReplicaId``.

``check_health`` asks the engine-core process a question (``AsyncLLM.is_sleeping``, which goes
through the core's input queue between two steps), so a core that hangs (a stuck kernel or
collective) fails the check within ``HEALTH_PROBE_TIMEOUT_S`` of loop time (engines/deadlines.py:
the answer comes back through the output handler on this loop, which under full load was held
for up to 2.2 s at a time) instead of passing it because the front end's ``errored`` flag is
still False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serve_app.engines.context_length import read_text_config
from serve_app.engines.deadlines import HEALTH_WALL_CAP_S, answered_within
from serve_app.engines.protocol import (
    EngineConfig,
    EngineStats,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
)
from serve_app.engines.vllm_mapping import (
    StreamCounters,
    engine_arg_fields,
    engine_kwargs,
    sampling_kwargs,
    to_delta,
)
from serve_app.errors import (
    CheckpointLoadError,
    ContextLengthError,
    EngineDeadError,
    EngineError,
    EngineGenerateError,
    EngineNotStartedError,
    InvalidRequestError,
    RegistryError,
)

logger = logging.getLogger(__name__)

DEFAULT_COMPILE_CACHE_ROOT = Path("~/.cache/modelopt-serve/compile")
# The engine core answers a utility call between two steps; one step under full load takes tens to
# a few hundred ms on an H100/H200 (chunked prefill bounds it by max_num_batched_tokens).
HEALTH_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class StartInfo:
    """How one ``start()`` went: seconds to ready and whether the compile cache was already filled.

    ``phases``: where those seconds went, in seconds: ``import`` (importing vLLM's engine API; in
    a Ray replica the stat loggers imported most of vLLM before, so this is the rest), ``config``
    (``AsyncEngineArgs.create_engine_config``: Hugging Face config, tokenizer and platform checks)
    and ``engine_core`` (``AsyncLLM.from_vllm_config``: spawning the engine-core process, which
    loads the weights, compiles or loads the compiled graphs, profiles memory, allocates the KV
    cache and captures CUDA graphs; its own log lines split that further)."""

    seconds: float
    compile_cache_dir: str
    compile_cache_warm: bool
    enforce_eager: bool
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compile_cache_root(config: EngineConfig) -> Path:
    """The per-model folder given to vLLM as VLLM_CACHE_ROOT."""
    root = config.compile_cache_dir or DEFAULT_COMPILE_CACHE_ROOT / config.model_name
    return Path(root).expanduser()


def compile_cache_is_warm(root: Path) -> bool:
    """True when an earlier start left compiled graphs under ``root``."""
    graphs = root / "torch_compile_cache"
    return graphs.is_dir() and any(graphs.iterdir())


class VLLMEngine:
    """One vLLM ``AsyncLLM`` serving one ModelOpt FP8 checkpoint.

    ``start()`` raises RegistryError for engine_args vLLM does not accept and EngineError when vLLM
    fails to load the model. ``generate`` raises InvalidRequestError for a request vLLM rejects,
    EngineGenerateError when one request fails and EngineDeadError when the engine is gone.
    """

    needs_image_tensors = False  # vLLM runs the checkpoint's image processor itself

    def __init__(self, config: EngineConfig, stat_loggers: list[Any] | tuple[Any, ...] = ()) -> None:
        """``stat_loggers``: vLLM ``StatLoggerFactory`` objects (e.g. ``RayPrometheusStatLogger``)
        passed to ``AsyncLLM.from_engine_args``."""
        self.config = config
        self.stat_loggers = list(stat_loggers)
        self.start_info: StartInfo | None = None
        self._llm: Any = None
        self._closed = False
        self._max_model_len: int | None = None
        self._stats = EngineStats()
        self._in_flight: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def _text_config(self) -> dict[str, Any] | None:
        """config.json's language-model part, to check max_model_len by vLLM's rule before vLLM
        starts; None without a max_model_len or a readable config.json (vLLM reports that itself)."""
        if self.config.max_model_len is None:
            return None
        try:
            return read_text_config(Path(self.config.checkpoint))
        except CheckpointLoadError:
            return None

    async def start(self) -> None:
        if self._llm is not None:
            return
        if self._closed:
            raise EngineDeadError(f"the vLLM engine of {self.config.model_name!r} was shut down")
        started = time.monotonic()
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm.usage.usage_lib import UsageContext

        phases = {"import": time.monotonic() - started}
        kwargs = engine_kwargs(self.config, engine_arg_fields(AsyncEngineArgs), self._text_config())
        cache_root = compile_cache_root(self.config)
        warm = compile_cache_is_warm(cache_root)
        cache_root.mkdir(parents=True, exist_ok=True)
        # Read lazily by vLLM and inherited by the engine-core process it spawns below.
        os.environ["VLLM_CACHE_ROOT"] = str(cache_root)
        try:
            args = AsyncEngineArgs(**kwargs)
            # AsyncLLM.from_engine_args in two timed steps, with the same arguments
            # (vllm/v1/engine/async_llm.py): the config, then the engine. The second blocks this
            # event loop until the engine core has loaded, compiled and profiled, as in
            # `vllm serve`; AsyncLLM starts its output handler on the running loop.
            step = time.monotonic()
            vllm_config = args.create_engine_config(UsageContext.OPENAI_API_SERVER)
            phases["config"] = time.monotonic() - step
            step = time.monotonic()
            llm = AsyncLLMEngine.from_vllm_config(
                vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=self.stat_loggers or None,
                enable_log_requests=args.enable_log_requests,
                disable_log_stats=args.disable_log_stats,
            )
            phases["engine_core"] = time.monotonic() - step
        except (TypeError, ValueError) as error:
            raise RegistryError(
                f"model {self.config.model_name!r}: vLLM rejected the engine arguments: {error}",
                param="engine_args",
            ) from error
        except Exception as error:
            raise EngineError(
                f"vLLM failed to start model {self.config.model_name!r} from {self.config.checkpoint}: "
                f"{type(error).__name__}: {error}"
            ) from error
        self._llm = llm
        self._max_model_len = int(llm.model_config.max_model_len)
        self.start_info = StartInfo(
            seconds=round(time.monotonic() - started, 3),
            compile_cache_dir=str(cache_root),
            compile_cache_warm=warm,
            enforce_eager=self.config.enforce_eager,
            phases={name: round(seconds, 3) for name, seconds in phases.items()},
        )
        logger.info(
            "vLLM engine for %s ready in %.1f s (import %.1f s, config %.1f s, engine core %.1f s; "
            "max_model_len %d, compile cache %s, %s)",
            self.config.model_name,
            self.start_info.seconds,
            phases["import"],
            phases["config"],
            phases["engine_core"],
            self._max_model_len,
            cache_root,
            "warm" if warm else "cold",
        )

    async def shutdown(self) -> None:
        """Stop the engine-core process and free the GPU; safe to call twice."""
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown()

    # -- requests ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationDelta]:
        """Check the request and return its stream; closing the stream aborts the request in vLLM."""
        llm = self._require_started()
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        prompt_ids = list(request.prompt_token_ids)
        if request.request_id in self._in_flight:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running")
        if not prompt_ids:
            raise InvalidRequestError("the prompt has no tokens", param="prompt")
        if len(prompt_ids) >= self._max_model_len:
            raise ContextLengthError(
                f"the prompt has {len(prompt_ids)} tokens; this model's context is {self._max_model_len} "
                "tokens including at least one generated token",
                param="prompt",
            )
        try:
            kwargs = sampling_kwargs(request.sampling, StructuredOutputsParams)
        except ValueError as error:  # StructuredOutputsParams' checks (one constraint, its types)
            raise InvalidRequestError(str(error), param="response_format") from error
        try:
            params = SamplingParams(**kwargs, output_kind=RequestOutputKind.DELTA)
        except ValueError as error:  # vLLM's own range checks (VLLMValidationError names some fields)
            raise InvalidRequestError(str(error), param=getattr(error, "parameter", None)) from error
        if request.media is None:
            prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        elif self.config.limit_images_per_prompt is None:
            raise InvalidRequestError(
                f"model {self.config.model_name!r} does not take images", param="messages"
            )
        else:
            prompt = TokensPrompt(
                prompt_token_ids=list(request.media.prompt_token_ids),
                multi_modal_data={"image": list(request.media.images)},
            )
        return self._stream(llm, request.request_id, prompt, params, request.sampling, len(prompt_ids))

    async def _stream(
        self,
        llm: Any,
        request_id: str,
        prompt: Any,
        params: Any,
        sampling: SamplingOptions,
        prompt_tokens: int,
    ) -> AsyncIterator[GenerationDelta]:
        """``prompt_tokens``: the prompt's length as the model sees it (images expanded)."""
        if request_id in self._in_flight:  # two streams made for one id before either started
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        counters = StreamCounters(
            prompt_tokens=prompt_tokens,
            num_logprobs=sampling.logprobs,
            num_prompt_logprobs=sampling.prompt_logprobs,
        )
        self._in_flight.add(request_id)
        self._stats.prompt_tokens_total += counters.prompt_tokens
        finished: str | None = None
        try:
            # aclosing: when our consumer stops early (client gone, stream cancelled), vLLM's
            # generator is closed at once, and its GeneratorExit handler aborts the request.
            async with contextlib.aclosing(llm.generate(prompt, params, request_id)) as stream:
                with self._vllm_errors(structured=sampling.structured is not None):
                    async for output in stream:
                        delta = to_delta(output, counters)
                        self._stats.generated_tokens_total += len(delta.token_ids)
                        finished = delta.finish_reason
                        yield delta
        finally:
            self._in_flight.discard(request_id)
            if finished in ("stop", "length"):
                self._stats.finished_total += 1
            else:  # aborted by abort(), by the consumer going away, or failed
                self._stats.aborted_total += 1

    @contextlib.contextmanager
    def _vllm_errors(self, structured: bool = False) -> Iterator[None]:
        """Turn vLLM's exceptions into ours (our consumer's GeneratorExit passes through).

        vLLM validates a request when ``generate`` first runs (``InputProcessor`` ->
        ``SamplingParams.verify``) and re-raises the ValueError from the stream's first
        iteration, before any output. Its ``VLLMValidationError`` names the field (logprobs,
        logit_bias, allowed_token_ids, ...); the structured-output checks (invalid schema, regex
        or grammar, features the backend lacks) raise plain ValueErrors, which name
        ``response_format`` when the request has a constraint.
        """
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError
        from vllm.v1.engine.exceptions import EngineGenerateError as VLLMEngineGenerateError

        try:
            yield
        except VLLMEngineDeadError as error:
            raise EngineDeadError(f"the vLLM engine of {self.config.model_name!r} died: {error}") from error
        except VLLMEngineGenerateError as error:
            cause = error.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(error)
            raise EngineGenerateError(f"vLLM failed the request: {detail}") from error
        except ValueError as error:  # vLLM's request validation (e.g. prompt longer than the context)
            param = getattr(error, "parameter", None) or ("response_format" if structured else None)
            raise InvalidRequestError(str(error), param=param) from error

    async def abort(self, request_id: str) -> None:
        llm = self._require_started()
        await llm.abort(request_id)

    async def check_health(self) -> None:
        """Raise EngineDeadError if the engine core died or does not answer a utility call
        (``is_sleeping``) within HEALTH_PROBE_TIMEOUT_S of loop time (HEALTH_WALL_CAP_S of
        wall time at most); an unanswered probe is cancelled, also when this check is."""
        llm = self._require_started()
        from vllm.v1.engine.exceptions import EngineDeadError as VLLMEngineDeadError

        probe: asyncio.Future[Any] | None = None
        try:
            await llm.check_health()
            probe = asyncio.ensure_future(llm.is_sleeping())
            answered = await answered_within(probe, HEALTH_PROBE_TIMEOUT_S, HEALTH_WALL_CAP_S)
            if answered:
                probe.result()
        except VLLMEngineDeadError as error:
            raise EngineDeadError(f"the vLLM engine of {self.config.model_name!r} died: {error}") from error
        finally:
            if probe is not None and not probe.done():
                probe.cancel()
        if not answered:
            raise EngineDeadError(
                f"the vLLM engine core of {self.config.model_name!r} did not answer within "
                f"{HEALTH_PROBE_TIMEOUT_S:g} s with {len(self._in_flight)} request(s) in flight: it hangs"
            )

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Counters as the CPU engine keeps them; ``running`` counts open streams (vLLM's scheduler
        queue is not exposed, so ``waiting`` stays 0)."""
        if self._llm is None and not self._closed:
            self._require_started()
        self._stats.running = len(self._in_flight)
        return EngineStats(**self._stats.as_dict())

    @property
    def max_model_len(self) -> int:
        self._require_started()
        return self._max_model_len

    def _require_started(self) -> Any:
        if self._llm is not None:
            return self._llm
        if self._closed:
            raise EngineDeadError(f"the vLLM engine of {self.config.model_name!r} was shut down")
        raise EngineNotStartedError(f"the vLLM engine of {self.config.model_name!r} has not started")
