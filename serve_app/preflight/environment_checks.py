"""Checks 11 (vLLM / torch / CUDA agree) and 12 (architecture extras) on the probed EnvInfo."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.preflight import rules
from serve_app.preflight.environment import EnvInfo, cuda_major_of
from serve_app.preflight.report import CheckResult, failed, passed, skipped

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext


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
