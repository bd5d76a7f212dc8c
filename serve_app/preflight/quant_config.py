"""The ModelOpt quantization settings of a checkpoint, read the way vLLM reads them.

Two places can hold them: ``config.json``'s ``quantization_config`` (ModelOpt >= 0.31,
compressed-tensors style: ``quant_algo``, ``ignore``, ``kv_cache_scheme``) and the older
``hf_quant_config.json`` (``{"producer", "quantization": {"quant_algo", "exclude_modules",
"kv_cache_quant_algo"}}``). vLLM takes config.json's when it has one and only then falls back to
hf_quant_config.json (vllm/transformers_utils/config.py, get_config: "ModelOpt 0.29.0 and before
saves the quantization config in a separate hf_quant_config.json"), and parses either with
ModelOptQuantConfigBase.from_config (vllm/model_executor/layers/quantization/modelopt.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CONFIG_JSON = "config.json"
HF_QUANT_JSON = "hf_quant_config.json"


@dataclass(frozen=True)
class QuantSettings:
    source: str
    method: str | None  # "modelopt" for ModelOpt exports (from quant_method or the producer name)
    algo: str | None  # upper-cased, e.g. "FP8", "NVFP4"
    exclude: tuple[str, ...]
    kv_algo: str | None  # "FP8" when the KV cache is declared FP8
    producer_version: str | None = None

    @property
    def is_modelopt(self) -> bool:
        return (self.method or "").lower().startswith("modelopt")


def from_config_json(config: dict[str, Any]) -> QuantSettings | None:
    """config.json's quantization_config (or its text_config's, as vLLM's get_quant_config allows)."""
    section = config.get("quantization_config")
    if section is None and isinstance(config.get("text_config"), dict):
        section = config["text_config"].get("quantization_config")
    return parse(section, CONFIG_JSON) if isinstance(section, dict) else None


def parse(section: dict[str, Any], source: str) -> QuantSettings:
    producer = section.get("producer") if isinstance(section.get("producer"), dict) else {}
    method = section.get("quant_method") or producer.get("name")
    nested = section.get("quantization")
    if isinstance(nested, dict):  # legacy ModelOpt layout
        algo = nested.get("quant_algo")
        kv = nested.get("kv_cache_quant_algo")
        exclude = nested.get("exclude_modules")
    else:  # compressed-tensors style, as ModelOpt writes into config.json
        algo = section.get("quant_algo")
        kv = _kv_from_scheme(section.get("kv_cache_scheme", section.get("kv_cache_quant_algo")))
        exclude = section.get("ignore")
    return QuantSettings(
        source=source,
        method=str(method) if method else None,
        algo=str(algo).upper() if algo else None,
        exclude=tuple(str(e) for e in exclude) if isinstance(exclude, list) else (),
        kv_algo=str(kv).upper() if kv else None,
        producer_version=str(producer.get("version")) if producer.get("version") else None,
    )


def _kv_from_scheme(scheme: Any) -> str | None:
    if isinstance(scheme, dict):
        return "FP8" if scheme.get("type") == "float" and scheme.get("num_bits") == 8 else None
    return str(scheme) if scheme else None


def effective(config_json: QuantSettings | None, hf_quant: QuantSettings | None) -> QuantSettings | None:
    """What vLLM uses: config.json's settings when present, else hf_quant_config.json's."""
    return config_json if config_json is not None else hf_quant
