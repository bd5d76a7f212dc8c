"""The software environment vLLM will run in, and checks 11 (vLLM/torch/CUDA) and 12 (extras).

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
from typing import TYPE_CHECKING

from packaging.requirements import InvalidRequirement, Requirement

from serve_app.preflight import rules
from serve_app.preflight.elf import ElfError, cuda_major, needed_libraries
from serve_app.preflight.report import CheckResult, failed, passed, skipped

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext

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


# --- checks -----------------------------------------------------------------------------------


def check_vllm_environment(ctx: ModelContext) -> CheckResult:
    name = "vllm_environment"
    engine, why = ctx.engine()
    if engine == "cpu":
        return skipped(name, why)
    env = ctx.env
    if env is None or env.vllm_version is None:
        return skipped(name, f"vLLM not installed here; the GPU host needs vllm=={rules.PINNED_VLLM}")
    problems: list[tuple[str, str]] = []
    rule = rules.platform_rule(env.vllm_version)
    if rule is None:
        problems.append(
            (
                f"vLLM {env.vllm_version} is outside the supported range "
                f"({', '.join(rules.supported_vllm())})",
                f"pip install vllm=={rules.PINNED_VLLM}",
            )
        )
    requirement = env.vllm_torch_requirement or (f"=={rule.torch}" if rule and rule.torch else None)
    problems += _torch_problems(env, requirement)
    detail = (
        f"vLLM {env.vllm_version}, torch {env.torch_version} "
        f"(vLLM requires torch{requirement or ' (unknown)'}), "
        f"torch CUDA {env.torch_cuda}, vLLM kernels link "
        f"{_cudart(env) or 'no libcudart (CUDA major not checked)'}"
    )
    if problems:
        return failed(name, "; ".join(p for p, _ in problems), "; ".join(f for _, f in problems))
    return passed(name, detail)


def _cudart(env: EnvInfo) -> str | None:
    return next((lib for lib in env.vllm_cuda_libs if lib.startswith("libcudart")), None) or (
        f"libcudart.so.{env.vllm_cuda_major}" if env.vllm_cuda_major else None
    )


def _torch_problems(env: EnvInfo, requirement: str | None) -> list[tuple[str, str]]:
    if env.torch_version is None:
        return [("torch is not installed", f"pip install 'torch{requirement or ''}'")]
    problems = []
    if requirement and not rules.version_in(env.torch_version, requirement):
        problems.append(
            (
                f"torch {env.torch_version} is installed but vLLM {env.vllm_version} "
                f"requires torch{requirement}",
                f"pip install 'torch{requirement}' (the build for vLLM's CUDA)",
            )
        )
    torch_major = cuda_major_of(env.torch_cuda)
    if torch_major is None:
        problems.append((f"torch {env.torch_version} is a CPU-only build", "install the CUDA build of torch"))
    elif env.vllm_cuda_major is not None and torch_major != env.vllm_cuda_major:
        problems.append(
            (
                f"torch is built for CUDA {env.torch_cuda} but vLLM's kernels (vllm/_C*.so) link "
                f"{_cudart(env)}: CUDA {torch_major} vs {env.vllm_cuda_major} segfaults in the first kernel",
                f"install torch and vLLM wheels built for the same CUDA major ({env.vllm_cuda_major})",
            )
        )
    return problems


def check_arch_extras(ctx: ModelContext) -> CheckResult:
    name = "arch_extras"
    engine, why = ctx.engine()
    if engine == "cpu":
        return skipped(name, why)
    arch = ctx.architecture
    env = ctx.env
    if env is None or env.vllm_version is None:
        wanted = rules.extras(arch, rules.PINNED_VLLM)
        needs = ", ".join(pkg for pkg, _ in wanted) or "no extra packages"
        return skipped(name, f"vLLM not installed here; with vLLM {rules.PINNED_VLLM} {arch} needs {needs}")
    wanted = rules.extras(arch, env.vllm_version)
    missing = [(pkg, rule) for pkg, rule in wanted if not env.packages.get(pkg)]
    if missing:
        return failed(
            name,
            "; ".join(
                f"{arch} with vLLM {env.vllm_version} needs {pkg}: {r.reason} (source: {r.source})"
                for pkg, r in missing
            ),
            f"pip install {' '.join(pkg for pkg, _ in missing)} (the versions pyproject's gpu extra pins)",
        )
    if not wanted:
        return passed(name, f"{arch} needs no extra packages with vLLM {env.vllm_version}")
    return passed(
        name, ", ".join(f"{pkg} {env.packages.get(pkg)} installed ({r.reason})" for pkg, r in wanted)
    )
