"""The preflight command: tables, JSON, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve_app.preflight.cli import main
from serve_app.preflight.runner import CHECK_NAMES
from serve_app.registry.layout import serve_config
from tests.preflight.conftest import edit_tensors

ROOT = Path(__file__).resolve().parents[2]


def registry(tmp_path: Path, models: list[dict]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(serve_config(models)))
    return path


@pytest.fixture
def broken(qwen2_checkpoint, copy_checkpoint) -> Path:
    ckpt = copy_checkpoint(qwen2_checkpoint, "broken")
    edit_tensors(ckpt, lambda t: t.pop("model.layers.1.self_attn.o_proj.input_scale"))
    return ckpt


def test_clean_checkpoint_exits_0_with_a_table(qwen2_checkpoint, capsys):
    assert main(["--checkpoint", str(qwen2_checkpoint)]) == 0
    out = capsys.readouterr().out
    for name in ("check", "status", "detail", "fix", "quantized_tensors", "cluster_fit"):
        assert name in out
    assert "1 model(s), 0 failed" in out and "exit 0" in out


def test_failed_check_exits_1(broken, capsys):
    assert main(["--checkpoint", str(broken)]) == 1
    assert "1 model(s), 1 failed: broken (quantized_tensors)" in capsys.readouterr().out


def test_json_report(qwen2_checkpoint, broken, tmp_path, capsys):
    path = registry(
        tmp_path,
        [
            {"name": "good", "checkpoint": str(qwen2_checkpoint)},
            {"name": "bad", "checkpoint": str(broken), "on_preflight_failure": "skip"},
        ],
    )
    assert main([str(path), "--json", "--no-data"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in report["models"]] == ["good", "bad"]
    assert [m["ok"] for m in report["models"]] == [True, False]
    assert report["exit_code"] == 1 and report["models"][1]["on_preflight_failure"] == "skip"
    checks = report["models"][1]["checks"]
    assert [c["check"] for c in checks] + [c["check"] for c in report["cluster"]] == list(CHECK_NAMES)
    failed = [c for c in checks if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["quantized_tensors"]
    assert failed[0]["detail"] == "model.layers.1.self_attn.o_proj.input_scale is missing"
    assert set(failed[0]) >= {"check", "status", "detail", "fix"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give a registry file or --checkpoint DIR (one of them)"),
        (["x.yaml", "--checkpoint", "."], "give a registry file or --checkpoint DIR (one of them)"),
        (["--checkpoint", "/nonexistent/dir"], "--checkpoint /nonexistent/dir: no such directory"),
        (["--checkpoint", ".", "--gpu-memory-gib", "0"], "--gpu-memory-gib must be above 0 and at most"),
        (["--checkpoint", ".", "--gpu-memory-gib", "nan"], "--gpu-memory-gib must be above 0 and at most"),
        (["--checkpoint", ".", "--gpu-memory-gib", "1e300"], "--gpu-memory-gib must be above 0 and at most"),
        (["--checkpoint", ".", "--cluster-cpus", "-1"], "--cluster-cpus must be a number >= 0"),
        (["--checkpoint", ".", "--cluster-gpus", "nan"], "--cluster-gpus must be a number >= 0"),
        (["/nonexistent/models.yaml"], "/nonexistent/models.yaml: no such file"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_fleet_without_the_cpus_for_its_replicas_exits_1(qwen2_checkpoint, tmp_path, capsys):
    """The router application's replicas count too: models.yaml is the whole fleet."""
    models = [
        {"name": f"m{i}", "checkpoint": str(qwen2_checkpoint), "engine": "cpu", "resources": {"num_cpus": 1}}
        for i in range(2)
    ]
    path = registry(tmp_path, models)
    assert main([str(path), "--no-data", "--json", "--cluster-cpus", "2"]) == 1
    (fit, _) = json.loads(capsys.readouterr().out)["cluster"]
    assert fit["status"] == "fail"
    assert fit["detail"] == (
        "min_replicas need 2.25 CPUs (replicas x CPUs: m0: 1 x 1, m1: 1 x 1, router: 1 x 0.25) "
        "but the cluster has 2; "
        "replicas beyond that wait for a CPU forever"
    )
    assert main([str(path), "--no-data", "--json", "--cluster-cpus", "3"]) == 0


def test_yaml_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "models.yaml"
    bad.write_text("applications: [\n")
    assert main([str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    typo = registry(tmp_path, [{"name": "m", "checkpoint": str(tmp_path), "max_model_lenn": 5}])
    assert main([str(typo)]) == 2
    assert "field 'max_model_lenn': unknown field" in capsys.readouterr().err


def test_runnable_as_a_module(qwen2_checkpoint):
    for module in ("serve_app.preflight.cli", "serve_app.preflight"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--checkpoint", str(qwen2_checkpoint), "--json"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ok"] is True
