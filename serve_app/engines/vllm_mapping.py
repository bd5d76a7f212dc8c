"""Plain translations between our engine protocol and vLLM's public API (vLLM 0.24).

Nothing here imports vLLM: the functions take vLLM's field names and duck-typed outputs, so CI
tests them without a GPU.

- ``engine_kwargs``: an ``EngineConfig`` -> keyword arguments of ``vllm.AsyncEngineArgs``,
  checked against that dataclass's own fields (as Ray Serve LLM's ``VLLMEngineConfig`` does).
- ``sampling_kwargs``: ``SamplingOptions`` -> keyword arguments of ``vllm.SamplingParams``
  (``structured_outputs_kwargs``: those of ``StructuredOutputsParams``).
- ``finish_reason`` and ``to_delta``: a ``vllm.RequestOutput`` (delta mode) -> a
  ``GenerationDelta``, logprobs included (``sample_logprobs``, ``prompt_logprobs``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from serve_app.engines.context_length import effective_max_model_len
from serve_app.engines.protocol import (
    EngineConfig,
    FinishReason,
    GenerationDelta,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from serve_app.errors import EngineGenerateError, InvalidRequestError, RegistryError

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
    "limit_mm_per_prompt",  # the registry's media.limit_per_prompt
)
# AsyncEngineArgs fields this app sets itself: the checkpoint is the model, always ModelOpt.
RESERVED_FIELDS = ("model", "quantization", "served_model_name")

# vLLM's _SAMPLING_EPS (vllm/sampling_params.py): below this temperature vLLM samples greedily.
SAMPLING_EPS = 1e-5

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


def engine_kwargs(
    config: EngineConfig,
    valid_fields: Iterable[str],
    text_config: Mapping[str, Any] | None = None,
    allow_long: bool | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncEngineArgs`` from the registry's options for one model.

    Raises RegistryError (param ``engine_args``) naming any key vLLM does not know, with the
    sorted list of valid names, or any key that repeats a registry field. With ``text_config``
    (config.json's language-model part), a ``max_model_len`` past the checkpoint's limit raises
    MaxModelLenError by vLLM's own rule (engines/context_length.py) before vLLM starts;
    ``allow_long`` as there (None: VLLM_ALLOW_LONG_MAX_MODEL_LEN from the environment).
    """
    valid = set(valid_fields)
    kwargs: dict[str, Any] = {
        "model": str(config.checkpoint),
        # vLLM's metrics label every series with it (model_name): the registry's name, not the path
        "served_model_name": config.model_name,
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
    if config.limit_images_per_prompt is not None:
        # This app sends no video: 0 skips vLLM's start-up profiling of it (examples/gpu.yaml
        # passed {image: 1, video: 0} to vLLM 0.24 on an H200 before this field existed).
        kwargs["limit_mm_per_prompt"] = {"image": config.limit_images_per_prompt, "video": 0}

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
    if text_config is not None and config.max_model_len is not None:
        effective_max_model_len(
            text_config,
            config.max_model_len,
            disable_sliding_window=bool(kwargs.get("disable_sliding_window", False)),
            allow_long=allow_long,
        )
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
            f"with quantization={QUANTIZATION!r} and serves it as the model's `name`",
            param="engine_args",
        )


def sampling_kwargs(
    options: SamplingOptions, structured_outputs_cls: Callable[..., Any] = dict
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.SamplingParams`` (the engine adds ``output_kind=DELTA``).

    Every ``SamplingOptions`` field, under vLLM's name. ``structured_outputs`` is
    ``structured_outputs_cls(**structured_outputs_kwargs(...))``: the engine passes
    ``vllm.sampling_params.StructuredOutputsParams``, tests the default ``dict``.

    Greedy below temperature 1e-5 (vLLM's ``_SAMPLING_EPS``): temperature 0.0, and top_p, top_k
    and min_p reset as ``SamplingParams.__post_init__`` resets them; the seed is dropped, which
    greedy sampling ignores. A temperature in (0, 1e-5) must become 0.0 here: vLLM 0.24 raises
    any temperature in (0, 0.01) to 0.01 (``_MAX_TEMP``) before its greedy check, so it would
    sample, not decode greedily.
    """
    greedy = options.temperature < SAMPLING_EPS
    structured = structured_outputs_kwargs(options.structured)
    return {
        "n": 1,
        "max_tokens": options.max_tokens,
        "min_tokens": options.min_tokens,
        "temperature": 0.0 if greedy else options.temperature,
        "top_p": 1.0 if greedy else options.top_p,
        "top_k": 0 if greedy else options.top_k,
        "min_p": 0.0 if greedy else options.min_p,
        "seed": None if greedy else options.seed,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "repetition_penalty": options.repetition_penalty,
        "logit_bias": dict(options.logit_bias) or None,
        "allowed_token_ids": None if options.allowed_token_ids is None else list(options.allowed_token_ids),
        "stop": list(options.stop) or None,
        "stop_token_ids": list(options.stop_token_ids) or None,
        "include_stop_str_in_output": options.include_stop_str_in_output,
        "ignore_eos": options.ignore_eos,
        "skip_special_tokens": options.skip_special_tokens,
        "logprobs": options.logprobs,
        "prompt_logprobs": options.prompt_logprobs,
        "structured_outputs": None if structured is None else structured_outputs_cls(**structured),
    }


def structured_outputs_kwargs(structured: StructuredOutput | None) -> dict[str, Any] | None:
    """Keyword arguments for ``vllm.sampling_params.StructuredOutputsParams``, or None.

    ``json`` gets the schema parsed into a dict, as vLLM's OpenAI server passes
    ``response_format.json_schema.schema`` (a schema that is not valid JSON is refused here with
    ``param="response_format"``). OpenAI's ``strict`` changes nothing, as in vLLM's server: it
    accepts ``json_schema.strict`` and never reads it, and 0.24 reads the request-level
    ``disable_additional_properties`` in no backend (only the engine-level option, for
    ``guidance``).
    """
    if structured is None:
        return None
    if structured.kind == "json_object":
        return {"json_object": True}
    if structured.kind == "choice":
        return {"choice": list(structured.value or ())}
    if structured.kind == "json":
        return {"json": _json_schema(structured.value)}
    return {structured.kind: structured.value}  # regex, grammar: the text as given


def _json_schema(value: Any) -> dict[str, Any] | str:
    if not isinstance(value, str):
        raise InvalidRequestError("the JSON schema must be a JSON string", param="response_format")
    try:
        schema = json.loads(value)
    except json.JSONDecodeError as error:
        raise InvalidRequestError(
            f"the JSON schema is not valid JSON: {error}", param="response_format"
        ) from error
    # A boolean schema (`true`) stays a string: StructuredOutputsParams.json is str | dict.
    return schema if isinstance(schema, dict) else value


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
    """Running totals of one request's stream, updated by ``to_delta``, and the request's
    ``logprobs`` / ``prompt_logprobs`` counts (k), which ``to_delta`` needs to tell the chosen
    token from the top k."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    num_logprobs: int | None = None
    num_prompt_logprobs: int | None = None


def to_delta(output: Any, counters: StreamCounters) -> GenerationDelta:
    """A ``GenerationDelta`` from one delta-mode ``RequestOutput`` of a request with n=1.

    Duck-typed: reads ``.outputs[0].text``, ``.outputs[0].token_ids``, ``.outputs[0].finish_reason``,
    ``.outputs[0].logprobs``, ``.prompt_token_ids``, ``.prompt_logprobs`` and ``.finished``. In
    delta mode vLLM merges outputs the consumer has not read yet, so one delta can carry several
    tokens.
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
        logprobs=sample_logprobs(getattr(completion, "logprobs", None), token_ids, counters.num_logprobs),
        prompt_logprobs=prompt_logprobs(
            getattr(output, "prompt_logprobs", None), output.prompt_token_ids, counters.num_prompt_logprobs
        ),
    )


def sample_logprobs(positions: Any, token_ids: list[int], k: int | None) -> list[TokenLogprob] | None:
    """``CompletionOutput.logprobs`` (delta mode) -> one ``TokenLogprob`` per new token.

    ``positions`` is a list of ``dict[int, Logprob]`` or a ``vllm.logprobs.FlatLogprobs``; both
    give a dict per position when indexed. Only the last ``len(token_ids)`` positions are read:
    vLLM 0.24 slices ``logprobs[-len(token_ids):]``, which for an output without tokens (an abort)
    is the whole list.
    """
    if positions is None:
        return None
    if not token_ids:
        return []
    first = len(positions) - len(token_ids)
    if first < 0:
        raise EngineGenerateError(
            f"vLLM returned logprobs for {len(positions)} positions and {len(token_ids)} new tokens"
        )
    return [token_logprob(positions[first + i], token_id, k) for i, token_id in enumerate(token_ids)]


def prompt_logprobs(
    positions: Any, prompt_token_ids: list[int] | None, k: int | None
) -> list[TokenLogprob | None] | None:
    """``RequestOutput.prompt_logprobs`` -> one entry per prompt token, None for the first.

    In delta mode vLLM 0.24 sends them all on the first output (``pop_prompt_logprobs``) and an
    empty container after it: empty gives None. Position 0 is None in a list and an empty dict
    in a ``FlatLogprobs``.
    """
    if positions is None or len(positions) == 0 or prompt_token_ids is None:
        return None
    converted: list[TokenLogprob | None] = []
    for index, entries in enumerate(positions):
        converted.append(token_logprob(entries, prompt_token_ids[index], k) if entries else None)
    return converted


def token_logprob(entries: Any, chosen: int, k: int | None) -> TokenLogprob:
    """One position's ``dict[int, Logprob]`` -> a ``TokenLogprob``, ``top`` ordered by rank.

    vLLM 0.24 (``vllm/logprobs.py append_logprobs_for_next_position``) puts the chosen token
    first with its vocabulary rank, then the top k with ranks 1..k. A dict holds a token once,
    so a position has k entries when the chosen token is among the top k and k + 1 when not.
    """
    items = [(token_id, entry.logprob, entry.rank) for token_id, entry in entries.items()]
    by_id = {token_id: logprob for token_id, logprob, _ in items}
    ranks = {token_id: rank for token_id, _, rank in items}
    if chosen not in by_id:  # not vLLM's layout: the first entry is the chosen token
        chosen = items[0][0]
    if k is None:
        k = _infer_k(items, chosen)
    candidates = items if len(items) <= k else [item for item in items if item[0] != chosen]
    ranked = sorted(candidates, key=lambda item: math.inf if item[2] is None else item[2])
    return TokenLogprob(
        token_id=chosen,
        logprob=by_id[chosen],
        top=tuple((token_id, logprob) for token_id, logprob, _ in ranked[:k]),
        rank=ranks[chosen],
    )


def _infer_k(items: list[tuple[int, float, int | None]], chosen: int) -> int:
    """k when the caller did not say: the entries other than the chosen one are top-k entries;
    the chosen one counts too when its rank falls within theirs."""
    others = [rank for token_id, _, rank in items if token_id != chosen and rank is not None]
    chosen_rank = next(rank for token_id, _, rank in items if token_id == chosen)
    inside = bool(others) and chosen_rank is not None and chosen_rank not in others
    return len(others) + (1 if inside and chosen_rank <= max(others) else 0)
