"""``python -m serve_app``: the same commands and exit codes as before it used argparse."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "{preflight,validate,run}" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert "validate" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["serve"], ["validate"], ["validate", "a.yaml", "b.yaml"]])
def test_unknown_command_or_wrong_arguments_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage: python -m serve_app" in capsys.readouterr().err


def test_validate_lists_the_models(tmp_path, qwen2_checkpoint, capsys):
    path = tmp_path / "models.yaml"
    path.write_text(
        "applications:\n  - name: m\n    import_path: serve_app.app:build_model\n    args:\n"
        f"      name: m\n      checkpoint: {qwen2_checkpoint}\n"
    )
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"m: {qwen2_checkpoint} (engine auto)\n"


def test_validate_reports_a_bad_file_with_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_preflight_passes_its_arguments_through(capsys):
    assert main(["preflight", "--help"]) == 0
    assert "--checkpoint DIR" in capsys.readouterr().out
    assert main(["preflight"]) == 2
    assert "give a registry file or --checkpoint DIR" in capsys.readouterr().err


def test_run_refuses_an_invalid_registry_before_starting_anything(tmp_path, capsys):
    (tmp_path / "models.yaml").write_text("applications: 3\n")
    assert main(["run", str(tmp_path / "models.yaml")]) == 2
    assert "expected a Ray Serve config file with an 'applications:' list" in capsys.readouterr().err


def test_validate_checks_the_api_key_sources(tmp_path, qwen2_checkpoint, capsys, monkeypatch):
    """The router would refuse to start; validate (and preflight, which make serve runs first) say so."""
    from serve_app.registry.layout import serve_config

    monkeypatch.delenv("NO_SUCH_KEYS", raising=False)
    document = serve_config(
        [{"name": "m", "checkpoint": str(qwen2_checkpoint), "engine": "cpu"}],
        {"auth": {"api_keys_env": "NO_SUCH_KEYS"}},
    )
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(document))
    assert main(["validate", str(tmp_path / "models.yaml")]) == 2
    assert "router.auth.api_keys_env names NO_SUCH_KEYS, which is unset or empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("http_options", "url"),
    [
        ({}, "http://127.0.0.1:8000/readyz"),
        ({"host": "0.0.0.0", "port": 9001}, "http://127.0.0.1:9001/readyz"),
        ({"host": "::1", "port": 9002}, "http://[::1]:9002/readyz"),
        ({"host": "10.0.0.5"}, "http://10.0.0.5:8000/readyz"),
    ],
)
def test_run_asks_readyz_where_the_config_file_serves(tmp_path, http_options, url):
    """`serve_app run` prints its "ready" line once this URL answers 200."""
    from serve_app.run import ready_url

    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"http_options": http_options, "applications": []}))
    assert ready_url(path) == url


def test_the_ready_line_names_what_readyz_says_is_served():
    import json

    from serve_app.run import ready_summary

    body = {
        "status": "ready",
        "models": {
            "qwen": {"ready": True, "available": True},
            "llama": {"ready": False, "available": False, "reason": "preflight failed:\nshards: missing"},
        },
    }
    assert ready_summary(json.dumps(body).encode(), ["qwen", "llama"]) == (
        "serves qwen; not serving llama (preflight failed:)"
    )
    assert ready_summary(b"not json", ["qwen", "llama"]) == "serves qwen, llama"
