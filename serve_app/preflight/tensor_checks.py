"""Checks 5-8: quantized linears, excluded modules, KV-cache scales, names and shapes.

Dtypes, shapes and presence come from the headers. With ``read_data`` the scale values and the
FP8 weight bytes are read too (values.py); without it those value checks are left out and the
detail says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from serve_app.preflight import layouts, rules
from serve_app.preflight.checkpoint import KV_SCALE_PARAMS, SCALE_PARAMS
from serve_app.preflight.gpu import GIB
from serve_app.preflight.report import CheckResult, failed, passed, skipped, warned
from serve_app.preflight.safetensors_index import TensorInfo
from serve_app.preflight.values import DataReader, bad_scale

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext

FP8 = "F8_E4M3"
NO_DATA = "values not read (--no-data)"
LAYER = re.compile(r"layers\.(\d+)\.")

QUANTIZED_FIXES = {
    "dtype": "a module vLLM quantizes must hold F8_E4M3 weights: re-export, or exclude the module if it "
    "was meant to stay BF16",
    "missing": "re-export with calibration (mtq.FP8_DEFAULT_CFG writes weight_scale and input_scale); vLLM "
    "loads a checkpoint with a missing scale without a word and generates garbage",
    "shape": "this deployment serves per-tensor FP8: re-export with mtq.FP8_DEFAULT_CFG (scalar F32 scales)",
    "value": "recalibrate and re-export: a zero, negative, NaN or infinite scale makes the layer's "
    "output garbage",
    "nan": "re-export: the FP8 weight bytes are corrupt (0x7F/0xFF is NaN in float8_e4m3fn)",
}


@contextmanager
def _reader(ctx: ModelContext) -> Iterator[DataReader | None]:
    if not ctx.read_data:
        yield None
        return
    with DataReader() as reader:
        yield reader


def _scale_problem(
    module: str, param: str, info: TensorInfo | None, reader: DataReader | None
) -> tuple[str, str] | None:
    if info is None:
        return "missing", f"{module}.{param} is missing"
    if info.dtype != "F32" or not info.is_scalar:
        return (
            "shape",
            f"{module}.{param} is {info.dtype} {list(info.shape)}, expected a scalar F32 ([] or [1])",
        )
    why = bad_scale(reader.scalar(info)) if reader else None
    return ("value", f"{module}.{param} is {why}") if why else None


def check_quantized_tensors(ctx: ModelContext) -> CheckResult:
    name = "quantized_tensors"
    modules = ctx.ckpt.modules()
    quantized = ctx.quantized_modules()
    if not quantized:
        return failed(name, "no linear module is quantized", QUANTIZED_FIXES["dtype"])
    problems: list[tuple[str, str]] = []
    scanned = 0
    with _reader(ctx) as reader:
        for module in quantized:
            params = modules[module]
            weight = params["weight"]
            if weight.dtype != FP8:
                problems.append(("dtype", f"{module}.weight is {weight.dtype}, where FP8 ({FP8}) belongs"))
            for param in ("weight_scale", "input_scale"):
                problem = _scale_problem(module, param, params.get(param), reader)
                if problem:
                    problems.append(problem)
            if reader is not None and weight.dtype == FP8:
                scanned += weight.nbytes
                at = reader.first_fp8_nan(weight)
                if at is not None:
                    problems.append(("nan", f"{module}.weight has a NaN byte (0x7F/0xFF) at element {at}"))
    if problems:
        return _fail(name, problems, QUANTIZED_FIXES)
    values = (
        f"scales finite and > 0, no NaN bytes in {scanned / GIB:.2f} GiB of FP8" if ctx.read_data else NO_DATA
    )
    return passed(
        name,
        f"{len(quantized)} quantized linears: {FP8} weight, scalar F32 weight_scale and input_scale; "
        f"{values}",
        fp8_bytes_scanned=scanned,
    )


def check_excluded_tensors(ctx: ModelContext) -> CheckResult:
    name = "excluded_tensors"
    modules = ctx.ckpt.modules()
    dtype = ctx.geometry.dtype
    kept = ctx.unquantized_modules()
    problems: list[tuple[str, str]] = []
    for module in kept:
        params = modules[module]
        weight = params.get("weight")
        if weight is not None and weight.dtype != dtype:
            problems.append(
                (
                    "dtype",
                    f"{module}.weight is {weight.dtype}; unquantized modules stay in the model dtype {dtype}",
                )
            )
        stray = sorted(p for p in params if p in SCALE_PARAMS and p not in KV_SCALE_PARAMS)
        if stray:
            problems.append(("scale", f"{module} is unquantized in vLLM but carries {', '.join(stray)}"))
    fixes = {
        "dtype": f"re-export: excluded modules and embeddings must be {dtype} (vLLM reads them as {dtype})",
        "scale": "remove the scale tensors of excluded modules, or re-export; their presence means the "
        "exporter quantized a module the exclude list says is unquantized",
    }
    if problems:
        return _fail(name, problems, fixes)
    return passed(
        name,
        f"{len(kept)} unquantized modules ({', '.join(kept[:3])}{' ...' if len(kept) > 3 else ''}) "
        f"in {dtype}, no scales",
    )


def _kv_scales(ctx: ModelContext) -> dict[str, TensorInfo]:
    out = {}
    for tensor, info in ctx.ckpt.tensors.items():
        module, _, param = tensor.rpartition(".")
        if param in ("k_scale", "v_scale") or (
            param == "output_scale" and module.endswith(("k_proj", "v_proj"))
        ):
            out[tensor] = info
    return out


def _kv_kind(tensor: str) -> str:
    module, _, param = tensor.rpartition(".")
    return "k" if param == "k_scale" or module.endswith("k_proj") else "v"


def check_kv_cache_scales(ctx: ModelContext) -> CheckResult:
    name = "kv_cache_scales"
    scales = _kv_scales(ctx)
    if not ctx.kv_is_fp8:
        extra = f"; {len(scales)} KV scales present, unused" if scales else "; no scales needed"
        return passed(
            name, f"KV cache in {ctx.geometry.dtype} (kv_cache_dtype {ctx.spec.kv_cache_dtype}){extra}"
        )
    why = (
        "kv_cache_dtype " + ctx.spec.kv_cache_dtype
        if ctx.spec.kv_cache_dtype != "auto"
        else "the checkpoint declares it"
    )
    if not scales:
        return warned(
            name,
            f"KV cache is FP8 ({why}) but the checkpoint has no k_scale/v_scale; vLLM then uses 1.0, "
            "which can clip keys and values",
            "re-export with mtq.FP8_KV_CFG added to the quantization config, or set kv_cache_dtype: bfloat16",
        )
    have = {(int(m.group(1)), _kv_kind(t)) for t in scales if (m := LAYER.search(t))}
    missing = [
        f"{layer}{kind}" for layer in range(ctx.geometry.layers) for kind in "kv" if (layer, kind) not in have
    ]
    problems: list[tuple[str, str]] = []
    if missing:
        problems.append(
            (
                "missing",
                f"layers without a KV scale: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}",
            )
        )
    with _reader(ctx) as reader:
        for tensor, info in sorted(scales.items()):
            if not info.is_scalar:
                problems.append(("shape", f"{tensor} is {info.dtype} {list(info.shape)}, expected a scalar"))
            elif reader is not None and info.dtype in ("F32", "F16", "BF16"):
                why_bad = bad_scale(reader.scalar(info))
                if why_bad:
                    problems.append(("value", f"{tensor} is {why_bad}"))
    fixes = {
        "missing": "re-export with mtq.FP8_KV_CFG so every layer gets k_scale and v_scale",
        "shape": "re-export: vLLM's FP8 KV cache takes one scale per layer for K and one for V",
        "value": "recalibrate the KV cache: a zero, NaN or infinite scale corrupts every cached key or value",
    }
    if problems:
        return _fail(name, problems, fixes)
    values = "values finite and > 0" if ctx.read_data else NO_DATA
    return passed(
        name,
        f"FP8 KV cache ({why}): {len(scales)} scalar k/v scales for {ctx.geometry.layers} layers; {values}",
    )


def check_tensor_shapes(ctx: ModelContext) -> CheckResult:
    name = "tensor_shapes"
    arch = ctx.architecture
    layout = rules.layout(arch)
    if layout is None:
        return skipped(name, f"the rules table has no tensor layout for {arch}")
    tensors = ctx.ckpt.tensors
    g = ctx.geometry
    expected = layouts.expected_tensors(layout, g, set(tensors), ctx.ckpt.text_config, ctx.ckpt.is_tied(g))
    modules = ctx.ckpt.modules()
    side = rules.side_prefixes(arch)
    problems: list[tuple[str, str]] = []
    for tensor, shape in expected.shapes.items():
        if tensor not in tensors:
            if tensor not in expected.optional:
                problems.append(("missing", f"{tensor} is missing"))
        elif tensors[tensor].shape != shape:
            problems.append(
                ("shape", f"{tensor} is {list(tensors[tensor].shape)}; config.json implies {list(shape)}")
            )
    for tensor in sorted(tensors):
        module, _, param = tensor.rpartition(".")
        scale_ok = param in SCALE_PARAMS and (param in KV_SCALE_PARAMS or "weight" in modules.get(module, {}))
        if (
            tensor in expected.shapes
            or scale_ok
            or tensor.startswith(side)
            or tensor.endswith("rotary_emb.inv_freq")
        ):
            continue
        problems.append(("unexpected", f"unexpected tensor {tensor}"))
    geometry = (
        f"vocab {g.vocab}, hidden {g.hidden}, {g.heads} heads, {g.kv_heads} KV heads, head_dim {g.head_dim}, "
        f"intermediate {g.intermediate}, {g.layers} layers"
    )
    fixes = {
        "missing": "re-export; the checkpoint lacks tensors the architecture needs",
        "shape": f"config.json ({geometry}) and the weights disagree: re-export, "
        "or restore the original config.json",
        "unexpected": "re-export, or remove tensors that do not belong to this architecture",
    }
    if problems:
        return _fail(name, problems, fixes)
    return passed(name, f"{len(expected.shapes)} tensors match config.json ({geometry})")


def _fail(name: str, problems: list[tuple[str, str]], fixes: dict[str, str], limit: int = 4) -> CheckResult:
    messages = [message for _, message in problems]
    more = f" (+{len(messages) - limit} more)" if len(messages) > limit else ""
    kinds = list(dict.fromkeys(kind for kind, _ in problems))
    return failed(
        name, "; ".join(messages[:limit]) + more, "; ".join(fixes[k] for k in kinds), problems=messages
    )
