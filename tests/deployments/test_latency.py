"""Per-stage latency summaries for /readyz."""

from __future__ import annotations

from serve_app.deployments.latency import LatencyWindow, StageLatencies


def test_summary_percentiles_cover_the_recent_window_and_count_everything():
    window = LatencyWindow(size=100)
    for ms in range(1, 201):  # only 101..200 stay in the window
        window.add(ms / 1000)
    summary = window.summary()
    assert summary["count"] == 200 and summary["window"] == 100
    assert summary["p50_ms"] == 151.0 and summary["p99_ms"] == 200.0 and summary["max_ms"] == 200.0


def test_an_empty_stage_reports_only_its_count():
    stages = StageLatencies()
    stages.add("tokenize", -0.001)  # clock steps never make a negative duration
    summary = stages.summary()
    assert summary["router_to_replica"] == {"count": 0}
    assert summary["tokenize"]["max_ms"] == 0.0
