"""The effective ``max_model_len`` of a checkpoint plus a registry entry, by vLLM 0.24's rule.

One function, ``effective_max_model_len``, used by preflight (check ``max_model_len``), the CPU
engine (its context window) and the vLLM mapping (a registry value past the limit is refused
before vLLM spends a minute starting). Source of the rule, vLLM 0.24.0:

- ``vllm/transformers_utils/model_arch_config_convertor.py``
  ``ModelArchConfigConvertorBase.derive_max_model_len_and_key``: the smallest of
  ``max_position_embeddings``, ``n_positions``, ``max_seq_len``, ``seq_length``,
  ``model_max_length``, ``max_target_positions``, ``max_sequence_length``, ``max_seq_length``,
  ``seq_len``; a truthy ``model_max_length`` then overrides them all.
- ``vllm/config/model.py`` ``_get_and_verify_max_len``: with ``disable_sliding_window`` a smaller
  ``sliding_window`` caps it; no key at all -> the requested value, else 2048; RoPE scaling
  multiplies by ``factor`` except for ``su``/``longrope``/``llama3`` (already in
  ``max_position_embeddings``) and for ``gemma3`` models; ``yarn`` multiplies its
  ``original_max_position_embeddings`` instead; ``dynamic`` and ``linear`` multiply too. Without a
  requested value, ``longrope`` defaults to the top-level ``original_max_position_embeddings``.
  A requested value above the derived one is refused unless it is at most ``model_max_length``
  or ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` is ``1``/``true`` (``vllm/envs.py``).
- ``vllm/config/model.py`` ``ModelConfig.__post_init__``: ``sliding_window: 0`` means none.
- ``vllm/transformers_utils/config.py`` ``patch_legacy_rope_type`` (``type`` -> ``rope_type``,
  ``su`` -> ``longrope``, ``mrope`` -> ``default``) and transformers 5's
  ``standardize_rope_params`` (``rope_scaling``, when set, replaces ``rope_parameters``; a yarn
  entry without ``original_max_position_embeddings`` takes the config's ``max_position_embeddings``).

Input is config.json's language-model part as a plain mapping (``text_config(config)``), read
without transformers, so preflight stays fast. Left out: the tokenizer's ``model_max_length``
(vLLM reads it only for pooling models) and sentence-transformers' ``max_seq_length`` (encoders).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import CheckpointLoadError, MaxModelLenError

ALLOW_LONG_ENV = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"
DEFAULT_MAX_LEN = 2048  # vLLM's assumption when config.json names no length
# derive_max_model_len_and_key's keys, in vLLM's order.
LENGTH_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
UNSCALED_ROPE_TYPES = ("su", "longrope", "llama3")  # their max_position_embeddings is already extended
# transformers 5's configuration_utils.ALLOWED_LAYER_TYPES: keys of rope_parameters nested per layer type.
LAYER_TYPES = frozenset(
    (
        "full_attention", "sliding_attention", "chunked_attention", "window_attention",
        "indexed_attention", "compressed_sparse_attention", "heavily_compressed_attention",
        "minimax_m3_sparse", "conv", "moe", "hybrid", "hybrid_sliding", "reference_sliding_attention",
        "linear_attention", "sparse", "dense",
    )
)  # fmt: skip
# transformers' Qwen2/Qwen3 configs set sliding_window to None unless use_sliding_window.
SLIDING_WINDOW_SWITCH = "use_sliding_window"


@dataclass(frozen=True)
class ContextLength:
    """The context window (prompt + completion, in tokens) vLLM would run a model with.

    ``value`` is the effective max_model_len. ``derived`` is the checkpoint's own limit (None
    when config.json names none), from ``key`` (e.g. ``"max_position_embeddings"``) times
    ``scaling`` (the RoPE factor). ``beyond_limit`` is True when ``value`` exceeds ``derived``
    because VLLM_ALLOW_LONG_MAX_MODEL_LEN allowed it.
    """

    value: int
    derived: int | None
    key: str | None
    scaling: float = 1.0
    beyond_limit: bool = False

    def describe(self) -> str:
        if self.derived is None:
            return f"max_model_len {self.value} (config.json names no length, so vLLM takes it as given)"
        source = _source(self.key, self.scaling)
        text = f"max_model_len {self.value}; the checkpoint allows {self.derived} ({source})"
        if self.beyond_limit:
            text += f", exceeded because {ALLOW_LONG_ENV}=1"
        return text


def allow_long_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """VLLM_ALLOW_LONG_MAX_MODEL_LEN as vllm/envs.py reads it: ``1`` or ``true``, any case."""
    environ = os.environ if environ is None else environ
    return environ.get(ALLOW_LONG_ENV, "0").strip().lower() in ("1", "true")


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's part of config.json: its ``text_config`` when it has one, else itself."""
    text = config.get("text_config")
    return dict(text) if isinstance(text, Mapping) else dict(config)


def read_text_config(checkpoint: Path) -> dict[str, Any]:
    """``text_config`` of ``checkpoint/config.json``. Raises CheckpointLoadError naming the file."""
    path = Path(checkpoint) / "config.json"
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointLoadError(f"{path}: unreadable: {exc}") from None
    if not isinstance(document, dict):
        raise CheckpointLoadError(f"{path}: not a JSON object")
    return text_config(document)


def effective_max_model_len(
    text: Mapping[str, Any],
    requested: int | None,
    *,
    disable_sliding_window: bool = False,
    allow_long: bool | None = None,
) -> ContextLength:
    """vLLM 0.24's max_model_len for this config and requested value (None: the checkpoint's).

    ``text``: config.json's language-model part (``text_config``). ``allow_long``: None reads
    VLLM_ALLOW_LONG_MAX_MODEL_LEN from this process's environment. Raises MaxModelLenError
    (param ``max_model_len``) with both numbers when vLLM would refuse ``requested``.
    """
    derived, key = _derived_and_key(text, disable_sliding_window)
    if derived is None:
        if requested is not None:
            return ContextLength(requested, None, None)
        derived = DEFAULT_MAX_LEN  # vLLM logs a warning and goes on with it, RoPE scaling included
    rope = _rope_entries(text)
    scaling = 1.0
    if rope and "gemma3" not in str(text.get("model_type", "")):
        derived, scaling = _scaled(text, rope, derived)
    if requested is None:
        value = derived
        if any(rp.get("rope_type") == "longrope" for rp in rope):
            value = int(text.get("original_max_position_embeddings") or derived)
        return ContextLength(int(value), int(derived), key, scaling)
    if requested <= derived:
        return ContextLength(requested, int(derived), key, scaling)
    model_max_length = text.get("model_max_length")
    if model_max_length is not None and requested <= model_max_length:
        return ContextLength(requested, int(derived), key, scaling)
    allowed = allow_long_from_env() if allow_long is None else allow_long
    if allowed:
        return ContextLength(requested, int(derived), key, scaling, beyond_limit=True)
    raise _too_long(requested, int(derived), key, scaling)


def _too_long(requested: int, derived: int, key: str | None, scaling: float) -> MaxModelLenError:
    return MaxModelLenError(
        f"max_model_len {requested} is greater than the {derived} tokens this checkpoint supports "
        f"({_source(key, scaling)} in config.json); vLLM refuses to start",
        fix=f"set max_model_len to {derived} or less, or set {ALLOW_LONG_ENV}=1 where the replicas run "
        f"(RoPE positions past {derived} give NaN; learned positions fail out of bounds)",
    )


def _source(key: str | None, scaling: float) -> str:
    """Where a limit comes from, e.g. ``max_position_embeddings x RoPE factor 4``."""
    where = key or f"vLLM's default {DEFAULT_MAX_LEN}"
    return where + (f" x RoPE factor {scaling:g}" if scaling != 1.0 else "")


def _derived_and_key(
    text: Mapping[str, Any], disable_sliding_window: bool
) -> tuple[float | None, str | None]:
    derived: float | None = None
    key: str | None = None
    for name in LENGTH_KEYS:
        value = text.get(name)
        if value is not None and (derived is None or value < derived):
            derived, key = value, name
    if text.get("model_max_length"):
        derived, key = text["model_max_length"], "model_max_length"
    window = _sliding_window(text)
    if disable_sliding_window and window is not None and (derived is None or window < derived):
        derived, key = window, "sliding_window"
    return derived, key


def _sliding_window(text: Mapping[str, Any]) -> int | None:
    if text.get(SLIDING_WINDOW_SWITCH) is False:
        return None
    window = text.get("sliding_window")
    return int(window) if isinstance(window, int) and window > 0 else None


def _rope_entries(text: Mapping[str, Any]) -> list[dict[str, Any]]:
    """rope_parameters as a list of per-layer-type entries; a truthy rope_scaling (the older name)
    wins, as in transformers 5's ``RotaryEmbeddingConfigMixin.convert_rope_params_to_dict``."""
    params = text.get("rope_scaling") or text.get("rope_parameters")
    if not isinstance(params, Mapping):
        return []
    nested = set(params) <= LAYER_TYPES
    entries = [dict(v) for v in params.values() if isinstance(v, Mapping)] if nested else [dict(params)]
    for entry in entries:
        rope_type = entry.get("rope_type", entry.get("type", "default"))
        entry["rope_type"] = {"su": "longrope", "mrope": "default"}.get(rope_type, rope_type)
    return entries


def _scaled(text: Mapping[str, Any], rope: list[dict[str, Any]], derived: float) -> tuple[float, float]:
    scaling: float | None = 1.0
    for entry in rope:
        if entry["rope_type"] in UNSCALED_ROPE_TYPES:
            continue
        scaling = entry.get("factor", scaling)
        if entry["rope_type"] == "yarn":
            derived = (
                entry.get("original_max_position_embeddings")
                or text.get("original_max_position_embeddings")
                or text.get("max_position_embeddings")
                or derived
            )
    scaling = 1.0 if scaling is None else float(scaling)  # vLLM: a null factor falls back to 1.0
    return derived * scaling, scaling
