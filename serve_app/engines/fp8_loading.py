"""Load a ModelOpt FP8 checkpoint into a plain transformers model with dequantized weights.

A ModelOpt FP8 checkpoint stores each quantized linear as ``<name>.weight`` (float8_e4m3fn) plus
``<name>.weight_scale`` (and ``<name>.input_scale``, and for an FP8 KV cache ``k_scale``/``v_scale``
or ``<k|v>_proj.output_scale``). Loading it with transformers alone silently ignores the scales
and gives wrong weights, so this module builds the model from ``config.json`` (any architecture
transformers can build, with ``quantization_config`` removed), dequantizes every FP8 weight as
``weight.float() * weight_scale`` cast to the model dtype, drops the activation and KV-cache
scales, and loads the result strictly: a missing or unexpected tensor is an error that names it.
It reads the files vLLM's loader would (engines/weight_files.py) and, like vLLM's model classes,
ignores a stored ``lm_head`` when ``tie_word_embeddings`` is set (``ties_word_embeddings``).

A config with a ``vision_config`` (Qwen2.5-VL) is built as transformers' image-text-to-text model
(``AutoModelForImageTextToText``). Its checkpoint keeps the tensor names vLLM reads
(``model.layers.*``, ``visual.*``), which transformers 5 renames on load (``model.language_model.*``,
``model.visual.*``); the same renaming is applied here (``checkpoint_key_renamer``).

Used by the CPU reference engine; needs torch, safetensors and transformers but not vLLM or Ray.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from serve_app.engines.weight_files import weight_files
from serve_app.errors import CheckpointLoadError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# Tensors that only matter to an FP8 kernel: activation scales and KV-cache scales. They are
# dropped unless the model itself has a tensor of that name.
SCALE_SUFFIXES = (
    ".input_scale",
    ".weight_scale",
    ".output_scale",  # ModelOpt's KV-cache scales: <layer>.self_attn.{k,v}_proj.output_scale
    ".k_scale",
    ".v_scale",
    ".q_scale",
    ".prob_scale",
)

# What vLLM's model classes skip when tie_word_embeddings is set (see ties_word_embeddings).
TIED_SKIP_PREFIXES = ("lm_head.",)
MAX_NAMES_IN_MESSAGE = 10


def load_dequantized_model(
    checkpoint: Path,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Build the checkpoint's model with transformers and load its dequantized weights.

    ``dtype`` overrides the config's dtype (``"float32"`` or ``torch.float32`` for an exact
    reference); ``None`` or ``"auto"`` keeps the config's (bfloat16 for ModelOpt exports).
    Returns the model in eval mode with gradients off. Raises CheckpointLoadError naming the
    missing, unexpected or mis-shaped tensors.
    """
    checkpoint = Path(checkpoint)
    config = _load_config(checkpoint, trust_remote_code)
    model = _build_empty_model(config, _resolve_dtype(dtype), trust_remote_code)
    expected = model.state_dict()
    tied = _tied_groups(model)
    skip = TIED_SKIP_PREFIXES if ties_word_embeddings(config) else ()
    state_dict = _read_dequantized(checkpoint, expected, skip, checkpoint_key_renamer(model))
    _check_keys(checkpoint, state_dict, expected, tied)
    model.load_state_dict(state_dict, strict=False, assign=True)
    _retie(model, tied, state_dict.keys())
    model.eval()
    model.requires_grad_(False)
    return model


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight.float() * scale`` cast to ``dtype``.

    ``scale`` is per tensor (one element), per output channel (``[out]`` or ``[out, 1]``) or per
    block (``[ceil(out / b), ceil(in / b)]``).
    """
    scale = scale.to(torch.float32)
    if scale.numel() > 1 and weight.dim() == 2:
        scale = _broadcastable_scale(weight.shape, scale)
    result = weight.to(torch.float32).mul_(scale)
    return result.to(dtype)


def _broadcastable_scale(shape: torch.Size, scale: torch.Tensor) -> torch.Tensor:
    out_features, in_features = shape
    if scale.dim() == 1 or (scale.dim() == 2 and scale.shape[1] == 1):
        if scale.shape[0] != out_features:
            raise CheckpointLoadError(f"per-channel scale {tuple(scale.shape)} for weight {tuple(shape)}")
        return scale.reshape(out_features, 1)
    if scale.dim() == 2:
        block_rows = -(-out_features // scale.shape[0])
        block_cols = -(-in_features // scale.shape[1])
        expanded = scale.repeat_interleave(block_rows, dim=0).repeat_interleave(block_cols, dim=1)
        return expanded[:out_features, :in_features]
    raise CheckpointLoadError(f"scale of shape {tuple(scale.shape)} for weight {tuple(shape)}")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'bfloat16', 'float16' or 'float32'")
    return resolved


def _load_config(checkpoint: Path, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    if not (checkpoint / "config.json").is_file():
        raise CheckpointLoadError(f"{checkpoint}: no config.json")
    config = AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=trust_remote_code)
    quant = _pop_quantization_config(config)
    if quant is not None:
        algo = quant.get("quant_algo") if isinstance(quant, dict) else getattr(quant, "quant_algo", None)
        if algo is not None and not str(algo).upper().startswith("FP8"):
            raise CheckpointLoadError(
                f"{checkpoint}: quant_algo {algo!r} is not supported; only ModelOpt FP8 checkpoints"
            )
    return config


def _pop_quantization_config(config: Any) -> Any:
    """Remove quantization_config from the config and its sub-configs; return the top-level one."""
    found = None
    configs = [config] + [getattr(config, key, None) for key in getattr(config, "sub_configs", {}) or {}]
    for item in configs:
        if item is not None and hasattr(item, "quantization_config"):
            value = item.quantization_config
            delattr(item, "quantization_config")
            found = found if found is not None else value
    return found


def is_vision_language(config: Any) -> bool:
    """True for a config with a vision tower (``vision_config``), e.g. Qwen2.5-VL."""
    return getattr(config, "vision_config", None) is not None


def _build_empty_model(config: Any, dtype: torch.dtype | None, trust_remote_code: bool) -> Any:
    """The model with allocated but uninitialised weights (random init is skipped: we overwrite it)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    auto = AutoModelForImageTextToText if is_vision_language(config) else AutoModelForCausalLM
    with _no_init_weights():
        model = auto.from_config(config, **kwargs)
    model.tie_weights()  # skipping init skips the tying too; _tied_groups needs it
    return model


def _no_init_weights() -> Any:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


def ties_word_embeddings(config: Any) -> bool:
    """tie_word_embeddings of the language model's config (its text config, else the top level).

    vLLM 0.24's LlamaForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM then use the input
    embedding as lm_head and skip every stored ``lm_head.*`` tensor
    (``AutoWeightsLoader(self, skip_prefixes=["lm_head."] if self.config.tie_word_embeddings)``
    in vllm/model_executor/models/{llama,qwen2,qwen3}.py); this loader does the same.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tied = getattr(text, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(config, "tie_word_embeddings", False)
    return bool(tied)


def _tied_groups(model: Any) -> list[list[str]]:
    """Names that share one parameter (tied embeddings), as groups of two or more."""
    by_id: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(param), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


def _shard_files(checkpoint: Path) -> list[Path]:
    """The files vLLM loads (engines/weight_files.py); a shard the index names must exist."""
    found = weight_files(checkpoint)
    if found.missing:
        raise CheckpointLoadError(f"{checkpoint}: missing weight shards: {', '.join(found.missing)}")
    return list(found.files)


def _iter_tensors(checkpoint: Path, skip_prefixes: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in _shard_files(checkpoint):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                if not key.startswith(skip_prefixes):
                    yield key, handle.get_tensor(key)


def checkpoint_key_renamer(model: Any) -> Callable[[str], str]:
    """checkpoint tensor name -> the model's name, as transformers' own loader renames it.

    transformers 5: the model's conversion mapping (``conversion_mapping.get_model_conversion_mapping``
    and ``core_model_loading.rename_source_key``, what ``from_pretrained`` applies); for
    Qwen2.5-VL ``^visual`` -> ``model.visual`` and ``^model`` -> ``model.language_model``.
    transformers 4: the model's ``_checkpoint_conversion_mapping`` (regex -> replacement).
    Identity for models without either (Llama, Qwen2)."""
    legacy = getattr(model, "_checkpoint_conversion_mapping", None)
    if legacy:
        rules = [(re.compile(source), target) for source, target in legacy.items()]

        def rename_legacy(key: str) -> str:
            for pattern, target in rules:
                key, count = pattern.subn(target, key)
                if count:
                    break
            return key

        return rename_legacy
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:
        return lambda key: key
    transforms = get_model_conversion_mapping(model)
    if not transforms:
        return lambda key: key
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)
    return lambda key: rename_source_key(key, renamings, converters, prefix, meta)[0]


def _read_dequantized(
    checkpoint: Path,
    expected: dict[str, torch.Tensor],
    skip_prefixes: tuple[str, ...] = (),
    rename: Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with FP8 weights dequantized and scales dropped, under the model's
    names (``rename``: checkpoint name -> model name; default unchanged).

    Tensors whose names start with ``skip_prefixes`` are not read. Each tensor takes the dtype of
    the model's tensor of that name; unknown names are kept as they are so that the key check can
    report them.
    """
    rename = rename or (lambda key: key)
    weights: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, tensor in _iter_tensors(checkpoint, skip_prefixes):
        if rename(key) not in expected and key.endswith(SCALE_SUFFIXES):
            scales[key] = tensor
        else:
            weights[key] = tensor
    loaded: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        name = rename(key)
        target = expected[name].dtype if name in expected else None
        if tensor.dtype in FP8_DTYPES:
            scale_key = key.removesuffix("weight") + "weight_scale"
            if scale_key not in scales:
                raise CheckpointLoadError(f"{checkpoint}: FP8 tensor {key} has no {scale_key}")
            tensor = dequantize_fp8(tensor, scales[scale_key], target or torch.float32)
        elif target is not None and tensor.dtype != target:
            tensor = tensor.to(target)
        loaded[name] = tensor
    return loaded


def _check_keys(
    checkpoint: Path,
    state_dict: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    tied: list[list[str]],
) -> None:
    loaded = set(state_dict)
    tied_elsewhere = {name for group in tied if loaded.intersection(group) for name in group}
    missing = sorted(set(expected) - loaded - tied_elsewhere)
    unexpected = sorted(loaded - set(expected))
    mis_shaped = sorted(
        f"{key} {tuple(state_dict[key].shape)} (model: {tuple(expected[key].shape)})"
        for key in loaded & set(expected)
        if state_dict[key].shape != expected[key].shape
    )
    problems = [
        _name_list("missing tensors", missing),
        _name_list("unexpected tensors", unexpected),
        _name_list("tensors with the wrong shape", mis_shaped),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise CheckpointLoadError(f"{checkpoint} does not match its config.json: {'; '.join(problems)}")


def _name_list(label: str, names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{label} ({len(names)}): {shown}" + (f" and {more} more" if more > 0 else "")


def _retie(model: Any, tied: list[list[str]], loaded: Any) -> None:
    """Point tied names that the checkpoint lacks at the loaded parameter (load with assign=True unties)."""
    loaded = set(loaded)
    for group in tied:
        sources = [name for name in group if name in loaded]
        if not sources:
            continue
        source = model.get_parameter(sources[0])
        for name in group:
            if name not in loaded:
                parent_name, _, attr = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                setattr(parent, attr, source)
