"""What build_app uses: which models stop the app, which are left out and listed in /readyz."""

from __future__ import annotations

import pickle

import pytest

from serve_app.errors import PreflightFailed
from serve_app.preflight import run_preflight, spec_for_checkpoint
from serve_app.preflight.render import raise_for_failures, render_text
from tests.preflight.conftest import GOOD_ENV, H100, edit_tensors

MISSING = "model.layers.0.mlp.gate_proj.weight_scale"


@pytest.fixture
def models(qwen2_checkpoint, copy_checkpoint):
    broken = copy_checkpoint(qwen2_checkpoint, "broken")
    edit_tensors(broken, lambda t: t.pop(MISSING))

    def make(policy: str):
        return [
            spec_for_checkpoint(qwen2_checkpoint, name="good"),
            spec_for_checkpoint(broken, name="bad", on_preflight_failure=policy),
        ]

    return make


def test_skip_policy_leaves_the_model_out_with_its_reason(models):
    report = run_preflight(models("skip"), gpu=H100, env=GOOD_ENV)
    assert report.exit_code == 1 and report.blocking() == []
    assert report.unavailable() == {
        "bad": f"preflight check 'quantized_tensors' failed: {MISSING} is missing"
    }
    assert [m.model for m in report.models if m.ok] == ["good"]
    raise_for_failures(report)  # nothing blocks


def test_fail_policy_stops_the_app_with_the_report(models):
    report = run_preflight(models("fail"), gpu=H100, env=GOOD_ENV)
    assert report.unavailable() == {}
    assert report.blocking() == [
        f"model 'bad': preflight check 'quantized_tensors' failed: {MISSING} is missing"
    ]
    with pytest.raises(PreflightFailed) as caught:
        raise_for_failures(report)
    message = str(caught.value)
    assert message.startswith("preflight failed:\n")
    assert "bad: FAILED (on_preflight_failure: fail)" in message and "quantized_tensors" in message
    assert str(pickle.loads(pickle.dumps(caught.value))) == message  # crosses Ray process boundaries


def test_text_rendering_has_one_table_per_model(models):
    text = render_text(run_preflight(models("skip"), gpu=H100, env=GOOD_ENV))
    assert "good: ok" in text and "bad: FAILED (on_preflight_failure: skip)" in text and "cluster" in text
    assert "2 model(s), 1 failed: bad (quantized_tensors)" in text


def test_a_crashing_check_fails_only_itself(qwen2_checkpoint, monkeypatch):
    from serve_app.preflight import runner

    def boom(ctx):
        raise RuntimeError("kaboom")

    checks = tuple((n, boom if n == "tokenizer" else f, d) for n, f, d in runner.CHECKS)
    monkeypatch.setattr(runner, "CHECKS", checks)
    report = run_preflight(spec_for_checkpoint(qwen2_checkpoint), gpu=H100, env=GOOD_ENV)
    (failed,) = report.models[0].failed_checks()
    assert (failed.name, failed.detail) == ("tokenizer", "check crashed: RuntimeError: kaboom")
