"""scripts/bench_results.py: issue 13's pass/fail checks, router vs bare."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_results.py"
spec = importlib.util.spec_from_file_location("bench_results", SCRIPT)
bench_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_results)


def run(throughput, median_ttft, p99_ttft, itl=2.5):
    return {
        "output_throughput": throughput,
        "median_ttft_ms": median_ttft,
        "p99_ttft_ms": p99_ttft,
        "median_itl_ms": itl,
    }


def test_checks_apply_the_issue_limits_at_each_concurrency():
    runs = {
        "bare": {1: run(374, 22.6, 42.0, itl=2.55), 256: run(9213, 621, 3195)},
        # c=1: TTFT within bare + 5 ms, ITL within 10%; c=256: faster but far later to start
        "router": {1: run(399, 27.5, 46.0, itl=2.80), 256: run(13020, 3337, 5455)},
    }
    checks = bench_results.checks(runs)
    assert {metric: check["pass"] for metric, check in checks["1"].items()} == {
        "output_throughput": True,
        "median_ttft_ms": True,  # 27.5 <= max(22.6 + 5, 1.05 x 22.6)
        "p99_ttft_ms": True,  # 46.0 <= 1.1 x 42.0
        "median_itl_ms": True,  # 2.80 <= 1.1 x 2.55
    }
    assert {metric: check["pass"] for metric, check in checks["256"].items()} == {
        "output_throughput": True,
        "median_ttft_ms": False,
        "p99_ttft_ms": False,
    }
    assert checks["256"]["median_ttft_ms"]["limit"] == "<= 652.05"
    table = bench_results.checks_markdown({"checks": checks})
    assert "| 256 | median_ttft_ms | 3,337 | <= 652.05 | FAIL |" in table


def test_a_slower_router_fails_throughput_and_itl():
    runs = {"bare": {1: run(374, 22.6, 42.0, itl=2.5)}, "router": {1: run(370, 22.0, 40.0, itl=2.8)}}
    checks = bench_results.checks(runs)["1"]
    assert not checks["output_throughput"]["pass"]
    assert not checks["median_itl_ms"]["pass"]  # 2.8 > 2.75


def test_serve_gauges_say_where_requests_wait(tmp_path):
    """Ray's export format, as bench_serve.sh saves it mid-traffic (only the serve_ lines)."""
    (tmp_path / "router-c256-serve-metrics.txt").write_text(
        'ray_serve_deployment_queued_queries{application="m",deployment="ModelServer",handle="h1"} 180.0\n'
        'ray_serve_deployment_queued_queries{application="router",deployment="Router",handle="h2"} 0.0\n'
        'ray_serve_replica_processing_queries{application="m",deployment="ModelServer",replica="r1"} 70.0\n'
        'ray_serve_num_scheduling_tasks_in_backoff{application="m",deployment="ModelServer"} 2.0\n'
        'ray_serve_request_router_queue_len{application="m",deployment="ModelServer",handle="a"} 70.0\n'
        'ray_serve_request_router_queue_len{application="m",deployment="ModelServer",handle="b"} 68.0\n'
        'ray_serve_deployment_processing_latency_ms_count{deployment="ModelServer"} 5.0\n'
        'vllm:num_requests_running{model_name="m",ReplicaId="r1"} 66.0\n'
        'vllm:num_requests_waiting{model_name="m",ReplicaId="r1"} 0.0\n'
    )
    (tmp_path / "notes-serve-metrics.txt").write_text("ray_serve_deployment_queued_queries 1.0\n")
    gauges = bench_results.serve_gauges(tmp_path)
    assert gauges == {
        "router": {
            "256": {
                "serve_deployment_queued_queries": {"m/ModelServer": 180.0, "router/Router": 0.0},
                "serve_replica_processing_queries": {"m/ModelServer": 70.0},
                "serve_num_scheduling_tasks_in_backoff": {"m/ModelServer": 2.0},
                # two router replicas' handles see the same replica: not 138
                "serve_request_router_queue_len": {"m/ModelServer": 70.0},
                "vllm:num_requests_running": {"m/engine": 66.0},
                "vllm:num_requests_waiting": {"m/engine": 0.0},
            }
        }
    }
    table = bench_results.gauges_markdown({"serve_gauges": gauges})
    row = "| router | 256 | serve_deployment_queued_queries | m/ModelServer: 180, router/Router: 0 |"
    assert row in table


def test_each_router_phase_that_ran_beside_bare_gets_its_own_checks(tmp_path, capsys):
    """Run 8 (H200): router_split passed at 256 where the router failed; both verdicts are kept,
    from the run's own vllm bench files."""
    run8 = Path(__file__).resolve().parents[1] / "docs/bench/2026-11-30-nvidia-h200-run8"
    out = tmp_path / "results.json"
    bench_results.main([str(run8), "--main-concurrency", "256", "--out", str(out)])
    doc = json.loads(out.read_text())
    verdicts = {
        key: {m: c["pass"] for m, c in doc[key]["256"].items()} for key in ("checks", "checks_router_split")
    }
    assert verdicts == {
        "checks": {"output_throughput": True, "median_ttft_ms": False, "p99_ttft_ms": False},
        "checks_router_split": {"output_throughput": True, "median_ttft_ms": True, "p99_ttft_ms": True},
    }
    printed = capsys.readouterr().out
    assert "Issue 13's targets 1 and 2 (router_split vs bare)" in printed
    assert "| 256 | median_ttft_ms | 248 | <= 485.85 | PASS |" in printed
