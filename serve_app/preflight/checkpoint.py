"""A checkpoint directory as preflight sees it: config, quantization settings, tensor headers.

Loading reads config.json, hf_quant_config.json and every safetensors header; no tensor data.
Problems are recorded, not raised, so every check can report on what it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.engines.context_length import text_config
from serve_app.preflight import quant_config
from serve_app.preflight.quant_config import QuantSettings
from serve_app.preflight.safetensors_index import TensorIndex, TensorInfo, load_index

TORCH_TO_SAFETENSORS = {"bfloat16": "BF16", "float16": "F16", "half": "F16", "float32": "F32", "float": "F32"}

# Parameters that belong to a quantized kernel rather than to the model.
SCALE_PARAMS = (
    "weight_scale",
    "input_scale",
    "weight_scale_2",
    "pre_quant_scale",
    "k_scale",
    "v_scale",
    "q_scale",
    "prob_scale",
    "output_scale",
)
KV_SCALE_PARAMS = ("k_scale", "v_scale", "output_scale")
# What vLLM skips with tie_word_embeddings: AutoWeightsLoader(skip_prefixes=["lm_head."]) in
# vllm/model_executor/models/{llama,qwen2,qwen3}.py; a VL checkpoint's language_model.lm_head.
# reaches the inner model as lm_head. (hf_to_vllm_mapper in qwen2_5_vl.py).
TIED_SKIP_PREFIXES = ("lm_head.", "language_model.lm_head.")


@dataclass(frozen=True)
class Geometry:
    """The shape facts of the language model that tensors, KV cache and TP depend on."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    layers: int
    vocab: int
    intermediate: int | None
    tied: bool | None
    dtype: str  # safetensors dtype name of unquantized weights, e.g. "BF16"


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any] | None = None
    config_error: str | None = None
    hf_quant_error: str | None = None
    quant_config_json: QuantSettings | None = None
    quant_hf: QuantSettings | None = None
    index: TensorIndex = field(default_factory=TensorIndex)

    @property
    def quant(self) -> QuantSettings | None:
        return quant_config.effective(self.quant_config_json, self.quant_hf)

    @property
    def tensors(self) -> dict[str, TensorInfo]:
        return self.index.tensors

    @property
    def architecture(self) -> str | None:
        archs = (self.config or {}).get("architectures")
        return str(archs[0]) if isinstance(archs, list) and archs else None

    @property
    def text_config(self) -> dict[str, Any]:
        return text_config(self.config or {})

    def geometry(self) -> Geometry:
        """Raises KeyError/TypeError/ValueError naming the missing field when config.json lacks one."""
        text, config = self.text_config, self.config or {}
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        head_dim = text.get("head_dim") or hidden // heads
        tied = text.get("tie_word_embeddings", config.get("tie_word_embeddings"))
        dtype = str(text.get("dtype") or text.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return Geometry(
            hidden=hidden,
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            layers=int(text["num_hidden_layers"]),
            vocab=int(text["vocab_size"]),
            intermediate=int(text["intermediate_size"]) if text.get("intermediate_size") else None,
            tied=bool(tied) if tied is not None else None,
            dtype=TORCH_TO_SAFETENSORS.get(dtype.removeprefix("torch."), dtype.upper()),
        )

    def is_tied(self, geometry: Geometry) -> bool:
        """tie_word_embeddings as vLLM reads it: config.json's value, else the config class's default,
        which is False for every architecture in the rules table (transformers 5's LlamaConfig,
        Qwen2Config, Qwen3Config, MistralConfig, Qwen2_5_VLConfig, LlavaConfig)."""
        return bool(geometry.tied)

    def stored_lm_head(self) -> list[str]:
        """Stored tensors that vLLM's model classes skip when embeddings are tied (TIED_SKIP_PREFIXES)."""
        return sorted(name for name in self.tensors if name.startswith(TIED_SKIP_PREFIXES))

    def modules(self) -> dict[str, dict[str, TensorInfo]]:
        """module name -> {parameter name: tensor}, e.g. 'model.layers.0.mlp.up_proj' -> {'weight': ...}."""
        out: dict[str, dict[str, TensorInfo]] = {}
        for name, info in self.tensors.items():
            module, _, param = name.rpartition(".")
            out.setdefault(module, {})[param] = info
        return out

    def linear_modules(self) -> list[str]:
        """Modules with a 2-D weight that are not embeddings: what vLLM builds as linear layers."""
        return sorted(
            module
            for module, params in self.modules().items()
            if "weight" in params and len(params["weight"].shape) == 2 and not is_embedding(module)
        )


def is_embedding(module: str) -> bool:
    return "embed" in module.rpartition(".")[2]


def load_checkpoint(path: Path) -> Checkpoint:
    ckpt = Checkpoint(path=path)
    if not path.is_dir():
        ckpt.config_error = f"checkpoint directory {path} does not exist"
        return ckpt
    ckpt.config, ckpt.config_error = _read_json(path / quant_config.CONFIG_JSON)
    if ckpt.config is not None:
        ckpt.quant_config_json = quant_config.from_config_json(ckpt.config)
    hf_path = path / quant_config.HF_QUANT_JSON
    if hf_path.exists():
        hf_doc, ckpt.hf_quant_error = _read_json(hf_path)
        if hf_doc is not None:
            ckpt.quant_hf = quant_config.parse(hf_doc, quant_config.HF_QUANT_JSON)
    ckpt.index = load_index(path)
    return ckpt


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{path.name} is unreadable: {exc}"
    except json.JSONDecodeError as exc:
        return None, f"{path.name} is not valid JSON: {exc}"
    if not isinstance(document, dict):
        return None, f"{path.name} is not a JSON object"
    return document, None
