"""Plain translations between our engine protocol and vLLM's public API (vLLM 0.24).

Nothing here imports vLLM: the functions take vLLM's field names and duck-typed outputs, so CI
tests them without a GPU.

- ``engine_kwargs``: an ``EngineConfig`` -> keyword arguments of ``vllm.AsyncEngineArgs``,
  checked against that dataclass's own fields (as Ray Serve LLM's ``VLLMEngineConfig`` does).
- ``sampling_kwargs``: ``SamplingOptions`` -> keyword arguments of ``vllm.SamplingParams``.
- ``finish_reason`` and ``to_delta``: a ``vllm.RequestOutput`` (delta mode) -> a
  ``GenerationDelta``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from serve_app.engines.protocol import EngineConfig, FinishReason, GenerationDelta, SamplingOptions
from serve_app.errors import EngineGenerateError, RegistryError

# Every ModelOpt FP8 checkpoint is loaded with vLLM's ModelOpt quantization method.
QUANTIZATION = "modelopt"

# Registry fields that become AsyncEngineArgs fields of the same name. engine_args may not repeat
# them: one value per setting, in the place the registry documents.
FIRST_CLASS_FIELDS = (
    "max_model_len",
    "max_num_seqs",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "enforce_eager",
    "kv_cache_dtype",
    "trust_remote_code",
)
# AsyncEngineArgs fields this app sets itself: the checkpoint is the model, always ModelOpt.
RESERVED_FIELDS = ("model", "quantization")

# vLLM's finish reasons (vllm/v1/engine/__init__.py FINISH_REASON_STRINGS) -> ours.
# "repetition" is vLLM's repetition detector stopping a request: a stop, as the client sees it.
# "error" is a retryable per-request failure that vLLM's own server turns into a 500.
FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}


def engine_arg_fields(args_cls: type) -> set[str]:
    """The keyword names a dataclass such as ``vllm.AsyncEngineArgs`` accepts (private ones left out)."""
    return {f.name for f in dataclasses.fields(args_cls) if f.init and not f.name.startswith("_")}


def engine_kwargs(config: EngineConfig, valid_fields: Iterable[str]) -> dict[str, Any]:
    """Keyword arguments for ``AsyncEngineArgs`` from the registry's options for one model.

    Raises RegistryError (param ``engine_args``) naming any key vLLM does not know, with the
    sorted list of valid names, or any key that repeats a registry field.
    """
    valid = set(valid_fields)
    kwargs: dict[str, Any] = {
        "model": str(config.checkpoint),
        "quantization": QUANTIZATION,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enforce_eager": config.enforce_eager,
        "kv_cache_dtype": config.kv_cache_dtype,
        "trust_remote_code": config.trust_remote_code,
    }
    # None means "vLLM's default": the checkpoint's context, the usage context's batch size.
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if config.max_num_seqs is not None:
        kwargs["max_num_seqs"] = config.max_num_seqs

    _check_known(config.model_name, config.engine_args, valid)
    _check_no_conflicts(config.model_name, config.engine_args)
    missing = sorted(set(kwargs) - valid)
    if missing:
        raise RegistryError(
            f"model {config.model_name!r}: this vLLM's AsyncEngineArgs has no field(s) {missing}, "
            "which this app sets; the installed vLLM is not the version the app supports (0.24)",
            param="engine_args",
        )
    kwargs.update(config.engine_args)
    return kwargs


def _check_known(model_name: str, engine_args: dict[str, Any], valid: set[str]) -> None:
    unknown = sorted(key for key in engine_args if key not in valid)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        if close:
            hints.append(f"{key!r}: did you mean {close[0]!r}?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise RegistryError(
        f"model {model_name!r}: unknown engine_args key(s) {unknown}{hint}. "
        f"Valid vLLM AsyncEngineArgs names: {', '.join(sorted(valid))}",
        param="engine_args",
    )


def _check_no_conflicts(model_name: str, engine_args: dict[str, Any]) -> None:
    repeated = sorted(key for key in engine_args if key in FIRST_CLASS_FIELDS)
    if repeated:
        raise RegistryError(
            f"model {model_name!r}: engine_args repeat(s) {repeated}, which are fields of the model "
            "itself; set them there (e.g. `max_model_len: 4096` next to `checkpoint:`), not in engine_args",
            param="engine_args",
        )
    reserved = sorted(key for key in engine_args if key in RESERVED_FIELDS)
    if reserved:
        raise RegistryError(
            f"model {model_name!r}: engine_args may not set {reserved}: the app loads `checkpoint` "
            f"with quantization={QUANTIZATION!r}",
            param="engine_args",
        )


def sampling_kwargs(options: SamplingOptions) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` (the engine adds ``output_kind=DELTA``).

    Temperature 0 is greedy: vLLM samples greedily below 1e-5 and ignores top_p and the seed.
    """
    greedy = options.temperature <= 0
    return {
        "n": 1,
        "max_tokens": options.max_tokens,
        "temperature": 0.0 if greedy else options.temperature,
        "top_p": 1.0 if greedy else options.top_p,
        "seed": None if greedy else options.seed,
        "stop": list(options.stop) or None,
        "ignore_eos": options.ignore_eos,
    }


def finish_reason(value: str | None) -> FinishReason | None:
    """Our finish reason for vLLM's ``CompletionOutput.finish_reason`` string."""
    if value is None:
        return None
    if value == "error":
        raise EngineGenerateError("vLLM reported an internal error for this request (finish_reason 'error')")
    # A reason newer than vLLM 0.24 ends the request as a stop rather than failing it.
    return FINISH_REASONS.get(value, "stop")


@dataclass
class StreamCounters:
    """Running totals of one request's stream, updated by ``to_delta``."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


def to_delta(output: Any, counters: StreamCounters) -> GenerationDelta:
    """A ``GenerationDelta`` from one delta-mode ``RequestOutput`` of a request with n=1.

    Duck-typed: reads ``.outputs[0].text``, ``.outputs[0].token_ids``, ``.outputs[0].finish_reason``,
    ``.prompt_token_ids`` and ``.finished``. In delta mode vLLM merges outputs the consumer has
    not read yet, so one delta can carry several tokens.
    """
    completion = output.outputs[0]
    token_ids = list(completion.token_ids)
    if output.prompt_token_ids is not None:
        counters.prompt_tokens = len(output.prompt_token_ids)
    counters.completion_tokens += len(token_ids)
    reason = finish_reason(completion.finish_reason)
    if output.finished and reason is None:
        reason = "stop"
    return GenerationDelta(
        text=completion.text,
        token_ids=token_ids,
        completion_tokens=counters.completion_tokens,
        prompt_tokens=counters.prompt_tokens,
        finish_reason=reason,
    )
