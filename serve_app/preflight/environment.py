"""The software environment vLLM will run in, probed (checks 11 and 12 are environment_checks.py).

Probed without importing vLLM or torch: versions come from package metadata, torch's CUDA from
its ``torch/version.py`` file, and the CUDA runtime vLLM's kernels need from the DT_NEEDED entries
(``libcudart.so.N``) of ``vllm/_C*.so``. A torch built for CUDA 12 under kernels linked against
CUDA 13 is the classic mismatch that segfaults inside the first kernel.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from serve_app.preflight import rules
from serve_app.preflight.elf import ElfError, cuda_major, needed_libraries

TORCH_CUDA_LINE = re.compile(r"^cuda\s*(?::[^=]*)?=\s*(?:(['\"])(?P<v>[^'\"]*)\1|None)", re.MULTILINE)


@dataclass(frozen=True)
class EnvInfo:
    vllm_version: str | None = None
    vllm_torch_requirement: str | None = None  # e.g. "==2.11.0", from vLLM's wheel metadata
    vllm_cuda_major: int | None = None  # N of libcudart.so.N that vllm/_C*.so need
    vllm_cuda_libs: tuple[str, ...] = ()
    torch_version: str | None = None
    torch_cuda: str | None = None  # torch.version.cuda, e.g. "13.0"; None for a CPU build
    packages: Mapping[str, str | None] = field(default_factory=dict)  # extras -> installed version


def probe_environment() -> EnvInfo:
    vllm_version = _version("vllm")
    cuda, libs = _vllm_cuda() if vllm_version else (None, ())
    torch_version, torch_cuda = torch_build()
    extras = sorted({pkg for rule in rules.RULES for pkg in rule.extras})
    return EnvInfo(
        vllm_version=vllm_version,
        vllm_torch_requirement=_torch_requirement() if vllm_version else None,
        vllm_cuda_major=cuda,
        vllm_cuda_libs=libs,
        torch_version=torch_version,
        torch_cuda=torch_cuda,
        packages={pkg: _version(pkg) for pkg in extras},
    )


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_build() -> tuple[str | None, str | None]:
    """(torch version, torch.version.cuda) read from the installed files, without importing torch."""
    version = _version("torch")
    spec = importlib.util.find_spec("torch") if version else None
    if spec is None or not spec.submodule_search_locations:
        return version, None
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return version, None
    match = TORCH_CUDA_LINE.search(text)
    return version, (match.group("v") or None) if match else None


def _torch_requirement() -> str | None:
    for line in importlib.metadata.requires("vllm") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name == "torch" and (req.marker is None or req.marker.evaluate({"extra": ""})):
            return str(req.specifier) or None
    return None


def _vllm_cuda() -> tuple[int | None, tuple[str, ...]]:
    spec = importlib.util.find_spec("vllm")  # a top-level find_spec does not import the package
    if spec is None or not spec.submodule_search_locations:
        return None, ()
    root = Path(next(iter(spec.submodule_search_locations)))
    libs: list[str] = []
    for path in sorted(root.glob("_C*.so")):
        try:
            libs += [lib for lib in needed_libraries(path) if lib not in libs]
        except (OSError, ElfError):
            continue
    return cuda_major(libs), tuple(libs)


def cuda_major_of(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0]) if version else None
    except ValueError:
        return None
