"""scripts/bench_registry.py: every registry bench_serve.sh serves passes preflight on one H200.

Run 7 (issue 13) spent 8 of its 30 device minutes waiting for a ``router_split`` registry that
preflight refused (``gpu_memory_utilization`` 0.45 above ``resources.num_gpus`` 0.44).
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_registry.py"
spec = importlib.util.spec_from_file_location("bench_registry", SCRIPT)
bench_registry = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_registry)

H200_GIB = "141"


def _preflight(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.preflight", str(path), "--gpu-memory-gib", H200_GIB,
         "--cluster-gpus", "1", "--cluster-cpus", "16"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["single", "{ckpt}", "qwen2.5-3b-fp8", "8000", "{cache}", "", "", "", "1"],  # router
        ["single", "{ckpt}", "qwen2.5-3b-fp8", "8000", "{cache}", "", "", "", "1", "200"],  # router_interval
        ["single", "{ckpt}", "qwen2.5-3b-fp8", "8000", "{cache}", "2", "", "10240", "1"],  # router2, pace
        ["single", "{ckpt}", "qwen2.5-3b-fp8", "8000", "{cache}", "", "", "", "2"],  # router_split
        ["single", "{ckpt}", "qwen2.5-3b-fp8", "8000", "{cache}", "", "", "", "4"],
        ["shared", "{ckpt}", "8000", "{cache}", "2", ""],  # router_shared (target 3)
        ["shared", "{ckpt}", "8000", "{cache}", "4", ""],  # four small models
    ],
    ids=["router", "router_interval", "router2_pace", "split2", "split4", "shared2", "shared4"],
)
def test_each_benchmark_registry_passes_preflight_on_one_h200(tmp_path, qwen2_checkpoint, args):
    path = tmp_path / "models.yaml"
    kind, *rest = args
    argv = [kind, str(path)] + [a.format(ckpt=qwen2_checkpoint, cache=tmp_path / "cache") for a in rest]
    done = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = _preflight(path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert " 0 failed" in report.stdout


def _models(doc: dict) -> list[dict]:
    return [app["args"] for app in doc["applications"] if app["import_path"].endswith(":build_model")]


def test_engines_sharing_the_gpu_get_the_memory_ray_gives_them():
    models = _models(bench_registry.shared("/ck", 8000, "/cache", 2))
    assert [model["name"] for model in models] == ["m1", "m2"]
    for model in models:
        assert model["gpu_memory_utilization"] == model["resources"]["num_gpus"] == 0.45
        assert model["engine_args"]["kv_cache_memory_bytes"] == 20 * 2**30
    assert bench_registry.kv_bytes_of(2, 12) == 12 * 2**30


def test_a_registry_over_its_gpu_share_is_what_preflight_refuses(tmp_path, qwen2_checkpoint):
    """The check the tests above rely on: run 7's router_split registry fails memory_fit."""
    doc = bench_registry.single(str(qwen2_checkpoint), "m", 8000, str(tmp_path), model_replicas=2)
    (spec,) = _models(doc)
    spec["resources"]["num_gpus"] = round(spec["gpu_memory_utilization"] - 0.01, 3)  # run 7's
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    report = _preflight(path)
    assert report.returncode == 1
    assert "gpu_memory_utilization 0.45 but a replica gets 0.44 of a GPU" in report.stdout
