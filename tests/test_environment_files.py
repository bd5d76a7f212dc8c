"""pixi.toml and pyproject.toml describe the same environment; no file names a package registry."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pins(requirements: list[str]) -> dict[str, str]:
    result = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+?)(==.+|>=.+)?", requirement.replace(" ", ""))
        assert match, requirement
        result[re.sub(r"\[.*\]", "", match.group(1)).lower()] = match.group(2) or "*"
    return result


def pixi_feature(pixi: dict, feature: str) -> dict[str, str]:
    return {k.lower(): v for k, v in pixi["feature"][feature]["pypi-dependencies"].items()}


def test_pixi_pins_agree_with_pyproject_extras():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    extras = {name: pins(reqs) for name, reqs in pyproject["project"]["optional-dependencies"].items()}
    assert pixi_feature(pixi, "gpu") == extras["gpu"]
    assert pixi_feature(pixi, "cpu") == extras["cpu"]
    assert pixi["pypi-dependencies"]["nvidia-modelopt"] == extras["quantize"]["nvidia-modelopt"]
    assert pixi["dependencies"]["python"] == "3.12.*"
    assert pixi["feature"]["gpu"]["system-requirements"]["cuda"].startswith("13")


def test_vllm_and_torch_pins_are_the_pair_vllm_needs():
    extras = pins(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    )
    assert extras["vllm"] == "==0.24.0"
    assert extras["torch"] == "==2.11.0"


def test_pixi_has_the_readme_tasks():
    tasks = tomllib.loads((ROOT / "pixi.toml").read_text())["tasks"]
    assert {"serve", "test", "preflight"} <= set(tasks)


def test_no_file_names_a_package_registry_host():
    hosts = [
        "pypi" + ".org",
        "pythonhosted" + ".org",
        "download.pytorch" + ".org",
        "pypi.nvidia" + ".com",
        "conda.anaconda" + ".org",
    ]
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    offenders = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        offenders += [f"{name}: {host}" for host in hosts if host in text]
    assert offenders == []


def test_pixi_make_and_the_gpu_scripts_start_the_fast_ingress():
    from serve_app.app import FAST_INGRESS_ENV

    pixi = tomllib.loads((ROOT / "pixi.toml").read_text())
    assert pixi["tasks"]["serve"]["env"] == FAST_INGRESS_ENV
    makefile = (ROOT / "Makefile").read_text()
    assert "INGRESS ?= haproxy" in makefile
    as_shell = " ".join(f"{k}={v}" for k, v in FAST_INGRESS_ENV.items())
    assert f"SERVE_ENV_haproxy := {as_shell}" in makefile
    # The GPU scripts (bench_serve.sh, serve_check.sh) take it from lib.sh.
    assert f'FAST_INGRESS_ENV="{as_shell}"' in (ROOT / "scripts" / "gpu" / "lib.sh").read_text()
