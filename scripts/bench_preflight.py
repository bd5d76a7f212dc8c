#!/usr/bin/env python3
"""Time preflight on a registry of 10 models with multi-GB checkpoints.

Makes 10 ModelOpt-FP8-shaped checkpoints with realistic 3B and 8B geometry (Qwen2.5-3B and
Llama-3-8B; vocab cut to 16384 like scripts/make_checkpoint.py) without writing gigabytes: the
safetensors files are written as header + scales and then extended with ``truncate``, so the
weight bytes are sparse zeros (zero is a valid FP8 value). Then it times

  1. header-only preflight (``read_data=False``) of all 10 models, with this machine's probes;
  2. full preflight (scale values and every FP8 weight byte scanned for NaN);
  3. a plain read of the same FP8 byte ranges (``cat``-style 16 MiB reads), the disk-speed baseline.

    python scripts/bench_preflight.py --out /tmp/preflight-bench
    python scripts/bench_preflight.py --out /tmp/preflight-bench --dense-gib 4   # also real bytes

Sparse files are read from the page cache's zero page, so (2) and (3) measure the checks' own
cost against the best case a disk can deliver; ``--dense-gib`` adds a model of real random FP8
bytes (never NaN) of that size, read after dropping it from the page cache where the OS allows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 1024**3
DTYPE_BYTES = {"F8_E4M3": 1, "BF16": 2, "F32": 4}
GEOMETRY = {
    "3b": dict(
        arch="Qwen2ForCausalLM", hidden=2048, inter=11008, layers=36, heads=16, kv=2, vocab=16384, pos=32768
    ),
    "8b": dict(
        arch="LlamaForCausalLM", hidden=4096, inter=14336, layers=32, heads=32, kv=8, vocab=16384, pos=8192
    ),
}
ONE_F32 = struct.pack("<f", 0.0123)
FP8_SCHEME = {"dynamic": False, "num_bits": 8, "type": "float"}
Entry = tuple[str, str, tuple[int, ...], bytes | None]  # name, dtype, shape, data (None: sparse zeros)


def write_safetensors(path: Path, entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> int:
    """Write a safetensors file; entries without data become sparse zeros. Returns the file size."""
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, dtype, shape, _ in entries:
        size = DTYPE_BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        start = handle.tell()
        for name, _, _, data in entries:
            if data is not None:
                handle.seek(start + header[name]["data_offsets"][0])  # type: ignore[index]
                handle.write(data)
        handle.truncate(start + offset)
    return start + offset


def model_entries(g: dict, dense_fp8: bool = False) -> list[Entry]:
    """Tensors of a ModelOpt FP8 export of geometry g: scales first (real bytes), then weights."""
    head_dim = g["hidden"] // g["heads"]
    q, kv, hidden, inter = g["heads"] * head_dim, g["kv"] * head_dim, g["hidden"], g["inter"]
    linears = {
        "self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, q), "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }  # fmt: skip
    scales: list[Entry] = []
    weights: list[Entry] = []
    for layer in range(g["layers"]):
        p = f"model.layers.{layer}."
        for module, shape in linears.items():
            scales += [
                (f"{p}{module}.weight_scale", "F32", (), ONE_F32),
                (f"{p}{module}.input_scale", "F32", (), ONE_F32),
            ]
            data = os.urandom(shape[0] * shape[1]).translate(_NO_NAN) if dense_fp8 else None
            weights.append((f"{p}{module}.weight", "F8_E4M3", shape, data))
        weights += [(f"{p}input_layernorm.weight", "BF16", (hidden,), None)]
        weights += [(f"{p}post_attention_layernorm.weight", "BF16", (hidden,), None)]
        if g["arch"] == "Qwen2ForCausalLM":
            weights += [
                (f"{p}self_attn.{x}_proj.bias", "BF16", (n,), None)
                for x, n in (("q", q), ("k", kv), ("v", kv))
            ]
    weights += [("model.embed_tokens.weight", "BF16", (g["vocab"], hidden), None)]
    weights += [
        ("model.norm.weight", "BF16", (hidden,), None),
        ("lm_head.weight", "BF16", (g["vocab"], hidden), None),
    ]
    return scales + weights


_NO_NAN = bytes(b if b not in (0x7F, 0xFF) else 0x7E for b in range(256))


def make_sparse_checkpoint(out: Path, size: str, tokenizer_from: Path | None, dense: bool = False) -> Path:
    g = GEOMETRY[size]
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors", model_entries(g, dense))
    quant = {
        "quant_algo": "FP8",
        "kv_cache_quant_algo": None,
        "exclude_modules": ["lm_head", "model.embed_tokens"],
    }
    config = {
        "architectures": [g["arch"]], "model_type": "qwen2" if g["arch"].startswith("Qwen2") else "llama",
        "hidden_size": g["hidden"], "intermediate_size": g["inter"], "num_hidden_layers": g["layers"],
        "num_attention_heads": g["heads"], "num_key_value_heads": g["kv"], "vocab_size": g["vocab"],
        "max_position_embeddings": g["pos"], "tie_word_embeddings": False, "dtype": "bfloat16",
        "quantization_config": {
            "quant_algo": "FP8", "ignore": quant["exclude_modules"], "quant_method": "modelopt",
            "producer": {"name": "modelopt", "version": "0.47.0"},
            "config_groups": {"group_0": {"input_activations": FP8_SCHEME, "weights": FP8_SCHEME,
                                          "targets": ["Linear"]}},
        },
    }  # fmt: skip
    (out / "config.json").write_text(json.dumps(config, indent=2))
    hf_quant = {"producer": {"name": "modelopt", "version": "0.47.0"}, "quantization": quant}
    (out / "hf_quant_config.json").write_text(json.dumps(hf_quant, indent=2))
    if tokenizer_from is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (tokenizer_from / name).exists():
                shutil.copy(tokenizer_from / name, out / name)
    return out


def fp8_ranges(directory: Path) -> list[tuple[Path, int, int]]:
    from serve_app.preflight.safetensors_index import load_index

    return [
        (t.file, t.offset, t.nbytes) for t in load_index(directory).tensors.values() if t.dtype == "F8_E4M3"
    ]


def plain_read(ranges: list[tuple[Path, int, int]], chunk: int = 16 * 1024 * 1024) -> int:
    """Read the byte ranges with 16 MiB reads, like cat: the disk-speed baseline."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    total = 0
    handles: dict[Path, object] = {}
    for path, offset, size in sorted(ranges, key=lambda r: (str(r[0]), r[1])):
        handle = handles.setdefault(path, path.open("rb", buffering=0))
        handle.seek(offset)  # type: ignore[attr-defined]
        left = size
        while left:
            got = handle.readinto(view[: min(chunk, left)])  # type: ignore[attr-defined]
            if not got:
                break
            left -= got
            total += got
    for handle in handles.values():
        handle.close()  # type: ignore[attr-defined]
    return total


def drop_cache(paths: Iterable[Path]) -> bool:
    """Ask the kernel to forget the cached pages of these files (flushed first; best effort)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in set(paths):
        with path.open("rb+") as handle:
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def timed(label: str, fn, gib: float | None = None):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    rate = f"  {gib / elapsed:6.2f} GiB/s" if gib else ""
    print(f"{label:<58} {elapsed:7.3f} s{rate}")
    return result, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/preflight-bench"))
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--tokenizer-from", type=Path, help="copy tokenizer files from this checkpoint")
    parser.add_argument(
        "--dense-gib", type=float, default=0, help="also bench one 8B model of real FP8 bytes"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    from serve_app.preflight import run_preflight, spec_for_checkpoint

    sizes = ["3b" if i % 2 == 0 else "8b" for i in range(args.models)]
    tokenizer = args.tokenizer_from or _tokenizer(args.out / "tokenizer")
    dirs, _ = timed(
        f"make {args.models} sparse checkpoints",
        lambda: [make_sparse_checkpoint(args.out / f"m{i}-{s}", s, tokenizer) for i, s in enumerate(sizes)],
    )
    specs = [spec_for_checkpoint(d, engine="vllm") for d in dirs]
    total = sum(p.stat().st_size for d in dirs for p in d.glob("*.safetensors"))
    ranges = [r for d in dirs for r in fp8_ranges(d)]
    fp8 = sum(size for _, _, size in ranges) / GIB
    print(f"{args.models} checkpoints ({sizes.count('3b')} x 3B, {sizes.count('8b')} x 8B): "
          f"{total / GIB:.1f} GiB of safetensors, {fp8:.1f} GiB of FP8 weights")  # fmt: skip
    for attempt in range(args.repeat):
        report, _ = timed(
            f"[{attempt + 1}] preflight --no-data (headers only, probes incl.)",
            lambda: run_preflight(specs, read_data=False),
        )
    print(f"    exit {report.exit_code}; statuses of model 0: {report.models[0].statuses()}")
    files = sorted({path for path, _, _ in ranges})
    for attempt in range(args.repeat):
        n = attempt + 1
        cache = "cold" if drop_cache(files) else "warm"
        timed(f"[{n}] cat-style reads of the FP8 bytes, {cache} cache", lambda: plain_read(ranges), fp8)
        cache = "cold" if drop_cache(files) else "warm"
        report, _ = timed(f"[{n}] preflight with data, {cache} cache", lambda: run_preflight(specs), fp8)
        timed(f"[{n}] cat-style reads of the FP8 bytes, warm cache", lambda: plain_read(ranges), fp8)
        report, _ = timed(f"[{n}] preflight with data, warm cache", lambda: run_preflight(specs), fp8)
    print(f"    exit {report.exit_code}; failed: {[m.reason for m in report.failed_models()] or 'nothing'}")
    if args.dense_gib:
        _bench_dense(args.out / "dense", args.dense_gib)
    return 0


def _tokenizer(out: Path) -> Path:
    """The byte-level BPE tokenizer with chat template that scripts/make_checkpoint.py makes."""
    if not (out / "tokenizer.json").exists():
        sys.path.insert(0, str(ROOT / "scripts"))
        from make_checkpoint import build_tokenizer

        build_tokenizer(16384).save_pretrained(str(out))
    return out


def _bench_dense(out: Path, gib: float) -> None:
    from serve_app.preflight import run_preflight, spec_for_checkpoint

    g = dict(GEOMETRY["8b"])
    head_dim = g["hidden"] // g["heads"]
    per_layer = 2 * (g["heads"] + g["kv"]) * head_dim * g["hidden"] + 3 * g["inter"] * g["hidden"]
    g["layers"] = max(1, int(gib * GIB // per_layer))
    GEOMETRY["dense"] = g
    directory, _ = timed(
        f"make a dense {g['layers']}-layer 8B-geometry checkpoint",
        lambda: make_sparse_checkpoint(out, "dense", None, True),
    )
    ranges = fp8_ranges(directory)
    size = sum(s for _, _, s in ranges) / GIB
    spec = spec_for_checkpoint(directory, engine="vllm")
    cold = drop_cache(p for p, _, _ in ranges)
    timed(
        f"dense {size:.1f} GiB: preflight with data ({'cold' if cold else 'warm'} cache)",
        lambda: run_preflight(spec),
        size,
    )
    drop_cache(p for p, _, _ in ranges)
    timed(
        f"dense {size:.1f} GiB: plain reads (cat) ({'cold' if cold else 'warm'} cache)",
        lambda: plain_read(ranges),
        size,
    )
    timed(f"dense {size:.1f} GiB: preflight with data (warm cache)", lambda: run_preflight(spec), size)
    timed(f"dense {size:.1f} GiB: plain reads (warm cache)", lambda: plain_read(ranges), size)


if __name__ == "__main__":
    sys.exit(main())
