"""Read safetensors headers without torch, and the shard index of a sharded checkpoint.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then the
data; offsets are relative to the end of the header. Reading the header costs one small read per
file, whatever the checkpoint's size.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serve_app.engines.weight_files import INDEX_NAME, weight_files
from serve_app.errors import CheckpointLoadError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces

DTYPE_BYTES: dict[str, float] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "F4": 0.5,
}  # fmt: skip


class SafetensorsError(ValueError):
    """A safetensors file or index is unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie: ``offset`` is absolute in ``file``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_scalar(self) -> bool:
        return self.shape in ((), (1,))


@dataclass(frozen=True)
class SafetensorsFile:
    path: Path
    data_start: int
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_header(path: Path) -> SafetensorsFile:
    """Parse one file's header and check every tensor's bytes lie inside the file."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path.name}: {size} bytes, too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise SafetensorsError(
                    f"{path.name}: header length {length} is impossible for a {size}-byte file"
                )
            raw = handle.read(length)
    except OSError as exc:
        raise SafetensorsError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path.name}: header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name}: header is not a JSON object")
    data_start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _tensor_info(path, name, entry, data_start, size) for name, entry in header.items()}
    return SafetensorsFile(path, data_start, size, tensors, metadata)


def _tensor_info(path: Path, name: str, entry: Any, data_start: int, size: int) -> TensorInfo:
    try:
        dtype = str(entry["dtype"])
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(v) for v in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path.name}: tensor {name!r} has a malformed header entry") from None
    if data_start + end > size:
        raise SafetensorsError(
            f"{path.name}: tensor {name!r} ends at byte {data_start + end} but the file has {size} "
            "bytes (truncated download or copy)"
        )
    width = DTYPE_BYTES.get(dtype)
    if width is not None and end - begin != math.ceil(math.prod(shape) * width):
        raise SafetensorsError(
            f"{path.name}: tensor {name!r} ({dtype} {list(shape)}) spans {end - begin} bytes, "
            f"expected {math.ceil(math.prod(shape) * width)}"
        )
    return TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)


@dataclass
class TensorIndex:
    """Every tensor of a checkpoint, across shards, and what is wrong with the shard layout."""

    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    index_path: Path | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def load_index(directory: Path) -> TensorIndex:
    """Read every header of the files vLLM would load (engines/weight_files.py decides which)."""
    try:
        found = weight_files(directory)
    except CheckpointLoadError as exc:
        return TensorIndex(problems=[str(exc)])
    result = TensorIndex(files=list(found.files), index_path=found.index_path)
    if found.weight_map is None:
        for path in found.files:
            _merge(result, path, listed=None)
        return result
    by_shard: dict[str, set[str]] = {}
    for name, shard in found.weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    for shard in found.missing:
        result.problems.append(
            f"shard {shard} is listed in {INDEX_NAME} ({len(by_shard[shard])} tensors) but missing"
        )
    for path in found.files:
        _merge(result, path, listed=by_shard[path.name])
    if found.unlisted:
        unlisted = ", ".join(p.name for p in found.unlisted)
        result.notes.append(f"{unlisted} not in {INDEX_NAME}; vLLM ignores them")
    return result


def _merge(result: TensorIndex, path: Path, listed: set[str] | None) -> None:
    try:
        shard = read_header(path)
    except SafetensorsError as exc:
        result.problems.append(str(exc))
        return
    for name, info in shard.tensors.items():
        if name in result.tensors:
            result.problems.append(
                f"tensor {name!r} is in both {result.tensors[name].file.name} and {path.name}"
            )
        result.tensors[name] = info
    if listed is None:
        return
    missing = sorted(listed - shard.tensors.keys())
    extra = sorted(shard.tensors.keys() - listed)
    if missing:
        result.problems.append(f"{INDEX_NAME} maps {_few(missing)} to {path.name}, which lacks them")
    if extra:
        result.problems.append(f"{path.name} holds {_few(extra)}, which {INDEX_NAME} does not list")


def _few(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
