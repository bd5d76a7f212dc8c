"""The GPU examples under examples/ pass preflight on one H200, with this machine's small
checkpoints standing in for the 3B exports they name (the placement and memory arithmetic is
what is checked: the replicas' shares of the GPU, vLLM's memory share, the fixed KV cache)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _preflight(path: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "serve_app.preflight", str(path), "--gpu-memory-gib", "141",
         "--cluster-gpus", "1", "--cluster-cpus", "16", *flags],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip


def _with_checkpoints(example: str, tmp_path: Path, checkpoints: dict[str, Path]) -> tuple[Path, dict]:
    doc = yaml.safe_load((ROOT / "examples" / example).read_text())
    for app in doc["applications"]:
        if app["import_path"].endswith(":build_model"):
            app["args"]["checkpoint"] = str(checkpoints[app["args"]["checkpoint"]])
            # the stand-ins hold 2,048 positions where the 3B exports hold 32,768
            app["args"].pop("max_model_len", None)
    path = tmp_path / example
    path.write_text(yaml.safe_dump(doc))
    return path, doc


@pytest.fixture
def stand_ins(qwen2_checkpoint, vl_checkpoint) -> dict[str, Path]:
    return {"/tmp/ck/qwen2.5-3b": qwen2_checkpoint, "/tmp/ck/qwen2.5-vl-3b": vl_checkpoint}


@pytest.mark.parametrize("example", ["gpu.yaml", "gpu-two-replicas.yaml"])
def test_each_gpu_example_passes_preflight_on_one_h200(tmp_path, stand_ins, example):
    path, _ = _with_checkpoints(example, tmp_path, stand_ins)
    report = _preflight(path)
    assert report.returncode == 0, report.stdout + report.stderr
    assert " 0 failed" in report.stdout
    # no warning either: each replica's fixed KV cache fits its share of the GPU (a share without
    # one would warn about vLLM's memory profiling)
    answer = json.loads(_preflight(path, "--json").stdout)
    memory = {
        m["model"]: next(c for c in m["checks"] if c["check"] == "memory_fit") for m in answer["models"]
    }
    assert {model: check["status"] for model, check in memory.items()} == dict.fromkeys(memory, "pass")
    assert all("(engine_args.kv_cache_memory_bytes)" in check["detail"] for check in memory.values())


def test_a_third_replica_of_the_split_model_does_not_fit_the_gpu(tmp_path, stand_ins):
    """Two replicas at 0.45 of the GPU leave no room for a third: preflight says so before Ray
    would leave it pending."""
    path, doc = _with_checkpoints("gpu-two-replicas.yaml", tmp_path, stand_ins)
    model = next(app for app in doc["applications"] if app["name"] == "qwen2.5-3b-fp8")
    model["deployments"][0]["autoscaling_config"].update(min_replicas=3, max_replicas=3)
    path.write_text(yaml.safe_dump(doc))
    report = _preflight(path)
    assert report.returncode != 0
    assert "min_replicas need 1.35 GPUs (qwen2.5-3b-fp8: 3 x 0.45)" in report.stdout
    assert "cluster_fit failed" in report.stdout
