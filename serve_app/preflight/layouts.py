"""Tensor names and shapes a layout expects, from config.json's geometry alone.

A layout names a family of architectures with the same weight naming (rules.py maps each
architecture to one). Vision towers and projectors are outside the layout; rules.py lists their
prefixes so they are not reported as unexpected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve_app.preflight.checkpoint import Geometry

LAYOUTS = ("llama", "qwen2", "qwen3")
TEXT_PREFIXES = ("model.", "model.language_model.", "language_model.model.")
LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")


@dataclass
class Expected:
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)


def text_prefix(names: set[str] | dict[str, Any]) -> str:
    """Where the language model's tensors live in this checkpoint (default 'model.')."""
    for prefix in TEXT_PREFIXES:
        if f"{prefix}embed_tokens.weight" in names or f"{prefix}layers.0.input_layernorm.weight" in names:
            return prefix
    return TEXT_PREFIXES[0]


def expected_tensors(layout: str, g: Geometry, names: set[str], text: dict[str, Any], tied: bool) -> Expected:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; layouts.py knows {', '.join(LAYOUTS)}")
    prefix = text_prefix(names)
    out = Expected()
    out.shapes[f"{prefix}embed_tokens.weight"] = (g.vocab, g.hidden)
    out.shapes[f"{prefix}norm.weight"] = (g.hidden,)
    lm_head = next((n for n in LM_HEADS if n in names), LM_HEADS[0] if prefix == "model." else LM_HEADS[1])
    out.shapes[lm_head] = (g.vocab, g.hidden)
    if tied:
        out.optional.add(lm_head)  # vLLM skips lm_head.weight when embeddings are tied
    for layer in range(g.layers):
        _layer(out, f"{prefix}layers.{layer}.", layout, g, text)
    return out


def _layer(out: Expected, p: str, layout: str, g: Geometry, text: dict[str, Any]) -> None:
    q, kv = g.heads * g.head_dim, g.kv_heads * g.head_dim
    shapes = out.shapes
    shapes[f"{p}input_layernorm.weight"] = (g.hidden,)
    shapes[f"{p}post_attention_layernorm.weight"] = (g.hidden,)
    shapes[f"{p}self_attn.q_proj.weight"] = (q, g.hidden)
    shapes[f"{p}self_attn.k_proj.weight"] = (kv, g.hidden)
    shapes[f"{p}self_attn.v_proj.weight"] = (kv, g.hidden)
    shapes[f"{p}self_attn.o_proj.weight"] = (g.hidden, q)
    if g.intermediate is not None:
        shapes[f"{p}mlp.gate_proj.weight"] = (g.intermediate, g.hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (g.intermediate, g.hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (g.hidden, g.intermediate)
    if layout == "qwen2" or text.get("attention_bias"):
        shapes[f"{p}self_attn.q_proj.bias"] = (q,)
        shapes[f"{p}self_attn.k_proj.bias"] = (kv,)
        shapes[f"{p}self_attn.v_proj.bias"] = (kv,)
    if layout == "llama" and text.get("attention_bias"):
        shapes[f"{p}self_attn.o_proj.bias"] = (g.hidden,)
    if layout == "qwen3":
        shapes[f"{p}self_attn.q_norm.weight"] = (g.head_dim,)
        shapes[f"{p}self_attn.k_norm.weight"] = (g.head_dim,)
    if text.get("mlp_bias") and g.intermediate is not None:
        shapes[f"{p}mlp.gate_proj.bias"] = (g.intermediate,)
        shapes[f"{p}mlp.up_proj.bias"] = (g.intermediate,)
        shapes[f"{p}mlp.down_proj.bias"] = (g.hidden,)
