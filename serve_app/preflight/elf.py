"""The DT_NEEDED entries of an ELF shared object, read the way the dynamic loader finds them.

Used to learn which CUDA runtime (``libcudart.so.N``) vLLM's compiled extensions link against
without importing vLLM (which would initialise CUDA and take seconds). Reads only the ELF header,
the program headers, the dynamic segment and the needed strings, whatever the file's size.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import BinaryIO

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
CUDART = re.compile(r"^libcudart\.so\.(\d+)")


class ElfError(ValueError):
    """Not an ELF file, or one whose dynamic section cannot be read."""


def needed_libraries(path: Path) -> list[str]:
    with path.open("rb") as handle:
        return _needed(handle, path.name)


def cuda_major(libraries: list[str]) -> int | None:
    """N of the first libcudart.so.N among the needed libraries."""
    for lib in libraries:
        match = CUDART.match(lib)
        if match:
            return int(match.group(1))
    return None


def _needed(handle: BinaryIO, name: str) -> list[str]:
    ident = handle.read(16)
    if len(ident) < 16 or ident[:4] != b"\x7fELF" or ident[4] not in (1, 2) or ident[5] not in (1, 2):
        raise ElfError(f"{name}: not an ELF file")
    wide = ident[4] == 2
    order = "<" if ident[5] == 1 else ">"
    # e_phoff, then (after e_shoff, e_flags, e_ehsize) e_phentsize and e_phnum; offsets from byte 16
    header = handle.read(48 if wide else 36)
    (phoff,) = struct.unpack_from(order + ("Q" if wide else "I"), header, 16 if wide else 12)
    phentsize, phnum = struct.unpack_from(order + "HH", header, 38 if wide else 26)
    loads, dynamic = [], None
    for index in range(phnum):
        handle.seek(phoff + index * phentsize)
        raw = handle.read(phentsize)
        if wide:
            p_type, _, offset, vaddr, _, filesz = struct.unpack_from(order + "IIQQQQ", raw)
        else:
            p_type, offset, vaddr, _, filesz = struct.unpack_from(order + "IIIII", raw)
        if p_type == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return []  # statically linked
    needed, strtab = _dynamic_entries(handle, dynamic, wide, order)
    if strtab is None:
        raise ElfError(f"{name}: dynamic section has no DT_STRTAB")
    base = _file_offset(strtab, loads, name)
    return [_string(handle, base + offset) for offset in needed]


def _dynamic_entries(
    handle: BinaryIO, dynamic: tuple[int, int], wide: bool, order: str
) -> tuple[list[int], int | None]:
    offset, size = dynamic
    handle.seek(offset)
    raw = handle.read(size)
    fmt = order + ("qQ" if wide else "iI")
    needed, strtab = [], None
    for tag, value in struct.iter_unpack(fmt, raw[: len(raw) - len(raw) % struct.calcsize(fmt)]):
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed.append(value)
        elif tag == DT_STRTAB:
            strtab = value
    return needed, strtab


def _file_offset(vaddr: int, loads: list[tuple[int, int, int]], name: str) -> int:
    for start, offset, size in loads:
        if start <= vaddr < start + size:
            return vaddr - start + offset
    raise ElfError(f"{name}: DT_STRTAB address {vaddr:#x} lies in no loadable segment")


def _string(handle: BinaryIO, offset: int, limit: int = 4096) -> str:
    handle.seek(offset)
    raw = handle.read(limit)
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
