"""The DT_NEEDED entries of an ELF shared object, read with pyelftools.

Used to learn which CUDA runtime (``libcudart.so.N``) vLLM's compiled extensions link against
without importing vLLM (which would initialise CUDA and take seconds). pyelftools reads the
dynamic segment and its string table lazily, so the cost does not grow with the file's size.
"""

from __future__ import annotations

import re
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile

CUDART = re.compile(r"^libcudart\.so\.(\d+)")


class ElfError(ValueError):
    """Not an ELF file, or one whose dynamic segment cannot be read; the message names the file."""


def needed_libraries(path: Path) -> list[str]:
    """The DT_NEEDED names in the order the dynamic loader sees them; [] when statically linked.

    Raises OSError when the file cannot be opened and ElfError when it is not a readable ELF file.
    """
    with path.open("rb") as handle:
        try:
            elf = ELFFile(handle)
            dynamic = next((s for s in elf.iter_segments() if isinstance(s, DynamicSegment)), None)
            if dynamic is None:
                return []
            return [tag.needed for tag in dynamic.iter_tags("DT_NEEDED")]
        except ELFError as exc:
            message = "not an ELF file" if "Magic number" in str(exc) else str(exc)
            raise ElfError(f"{path.name}: {message}") from None


def cuda_major(libraries: list[str]) -> int | None:
    """N of the first libcudart.so.N among the needed libraries."""
    for lib in libraries:
        match = CUDART.match(lib)
        if match:
            return int(match.group(1))
    return None
