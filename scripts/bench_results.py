#!/usr/bin/env python3
"""Combine one run of scripts/bench_serve.sh into docs/bench/<date>-<device>.json and a table.

Reads RESULTS/meta.json and RESULTS/<target>-c<N>.json for each target in TARGETS
(``vllm bench serve --save-result`` files) and writes

    {"device", "date", "versions", "workload", "checkpoint", "model",
     "main_concurrency": 128,
     "bare":   {<the c=128 metrics>, "by_concurrency": {"1": {...}, "128": {...}, "256": {...}}},
     "router": {...same...},
     "ratios": {"128": {"output_throughput": router/bare, ...}, ...},
     "itl": {"bare": {"1": {"median_itl_ms", "p99_itl_ms", ...}, ...}, "router": {...}},
     "checks": {"128": {"output_throughput": {"router", "bare", "limit", "pass"}, ...}, ...},
     "checks_<target>": {...},   # the same for each other router phase that ran (router_split)
     "shared": {...}}   # only when the shared phases ran: see shared_block()

with the metric names ``vllm bench serve`` saves (output_throughput, request_throughput,
median_ttft_ms, p99_ttft_ms, median_tpot_ms, p99_tpot_ms, ...). Prints a markdown table.

    python3 scripts/bench_results.py /tmp/bench-results            # -> docs/bench/<date>-<device>.json
    python3 scripts/bench_results.py /tmp/bench-results --out $OUT/bench.json --device 'NVIDIA H100'
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Each phase of scripts/bench_serve.sh, in table order. "router" is what `make serve` runs.
TARGETS = {
    "bare": "bare `vllm serve`, same checkpoint and engine arguments",
    "router": "this project, as `make serve` runs it: HAProxy ingress, Ray Serve throughput mode",
    "router_proxy": "this project behind Ray Serve's own HTTP proxy (`make serve INGRESS=proxy`)",
    "router_fast": "throughput mode without HAProxy (requests still enter through Ray's proxy)",
    "router2": "as router, with two router replicas behind HAProxy",
    "router_interval": "as router, the stream pace budget held above 128 streams (stream_interval_ms 200)",
    "router_actor": "as router, router -> model replica by Ray actor calls instead of gRPC",
    "router_pace": "as router, with a larger stream pace budget (PACE_ITEMS_PER_S)",
    "router_thread": "as router, the model replica's code on an event loop apart from Serve's",
    "router_split": "as router, the model's streams over MODEL_REPLICAS replicas sharing the GPU",
}
ROUTER_PHASES = [target for target in TARGETS if target != "bare"]  # each compared with bare
METRICS = [
    "completed",
    "failed",
    "duration",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
    "median_e2el_ms",
    "p99_e2el_ms",
]
# (metric, label) for the table and the ratios
TABLE = [
    ("output_throughput", "output tok/s"),
    ("request_throughput", "requests/s"),
    ("median_ttft_ms", "median TTFT ms"),
    ("p99_ttft_ms", "p99 TTFT ms"),
    ("median_tpot_ms", "median TPOT ms"),
    ("p99_tpot_ms", "p99 TPOT ms"),
    ("median_itl_ms", "median ITL ms"),
]
ITL = ("mean_itl_ms", "median_itl_ms", "p99_itl_ms")
# bench_serve.sh's shared phases: <target>-m<i>-c<N>.json, one file per model and concurrency.
SHARED_TARGETS = ("bare_shared", "router_shared")
SHARED_NAME = re.compile(rf"^({'|'.join(SHARED_TARGETS)})-m(\d+)-c(\d+)\.json$")
RESULT_NAME = re.compile(rf"^({'|'.join(TARGETS)})-c(\d+)\.json$")
# Ray Serve's queue gauges, read mid-traffic by bench_serve.sh (serve_metrics): where requests
# wait between the router and the model replica (issue 13, target 1). Ray's names, less "ray_".
SERVE_GAUGES = {
    "serve_deployment_queued_queries": "queued in the handle, not yet given to a replica",
    "serve_num_ongoing_requests_at_replicas": "given to replicas, as the handle counts",
    "serve_replica_processing_queries": "running in the replica",
    "serve_num_scheduling_tasks": "the handle's routing tasks",
    "serve_num_scheduling_tasks_in_backoff": "routing tasks backing off",
    "serve_request_router_queue_len": "the handle's cached queue length of each replica",
    # vLLM's own (RayPrometheusStatLogger, labelled by model_name): where the engine has them.
    "vllm:num_requests_running": "in the engine's running batch",
    "vllm:num_requests_waiting": "waiting in the engine's scheduler",
}
SERVE_METRICS_NAME = re.compile(rf"^({'|'.join(TARGETS)})-c(\d+)-serve-metrics\.txt$")


def load_runs(results: Path) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {target: {} for target in TARGETS}
    for path in sorted(results.glob("*.json")):
        match = RESULT_NAME.match(path.name)
        if not match:
            continue
        data = json.loads(path.read_text())
        runs[match.group(1)][int(match.group(2))] = {m: data[m] for m in METRICS if m in data}
    return runs


def combine(results: Path, device: str | None, main_concurrency: int) -> dict[str, Any]:
    meta_path = results / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    runs = load_runs(results)
    shared = shared_block(results)
    if not any(runs.values()) and not shared:
        raise SystemExit(f"{results}: no bare-c<N>.json or router-c<N>.json result files")
    doc: dict[str, Any] = {
        "device": device or meta.get("device", "unknown"),
        "date": datetime.date.today().isoformat(),
        "versions": meta.get("versions", {}),
        "workload": meta.get("workload", {}),
        "checkpoint": meta.get("checkpoint"),
        "model": meta.get("model"),
        "main_concurrency": main_concurrency,
        "targets": {target: TARGETS[target] for target in TARGETS if runs[target]},
    }
    if meta.get("notes"):
        doc["notes"] = meta["notes"]
    for target in TARGETS:
        by_c = runs[target]
        entry: dict[str, Any] = dict(by_c.get(main_concurrency, {}))
        entry["by_concurrency"] = {str(c): by_c[c] for c in sorted(by_c)}
        ready = results / f"{target}-ready-seconds"
        if ready.exists():
            entry["ready_seconds"] = int(ready.read_text().strip())
        doc[target] = entry
    for target in ROUTER_PHASES:
        doc[ratio_key(target)] = ratios(runs, target)
    # Inter-token latency as clients see it (chunk to chunk), per target and concurrency.
    doc["itl"] = {
        target: {str(c): {m: run[m] for m in ITL if m in run} for c, run in sorted(runs[target].items())}
        for target in TARGETS
        if runs[target]
    }
    for target in ROUTER_PHASES:
        if runs["bare"] and runs[target]:
            doc[check_key(target)] = checks(runs, target)
    if shared:
        doc["shared"] = shared
    gauges = serve_gauges(results)
    if gauges:
        doc["serve_gauges"] = gauges
    return doc


# Gauges that are one handle's view of a replica: several handles (router2) see the same replica,
# so their largest value is kept instead of their sum.
PER_HANDLE_VIEWS = frozenset({"serve_request_router_queue_len"})


def serve_gauges(results: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{target: {concurrency: {gauge: {"<application>/<deployment>": value}}}}`` from each
    ``<target>-c<N>-serve-metrics.txt``, summed over replicas and handles (the largest, for
    PER_HANDLE_VIEWS); gauges named in SERVE_GAUGES only (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for path in sorted(results.glob("*-serve-metrics.txt")):
        match = SERVE_METRICS_NAME.match(path.name)
        if not match:
            continue
        target, concurrency = match.group(1), match.group(2)
        per_gauge: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(path.read_text()):
            for sample in family.samples:
                name = sample.name.removeprefix("ray_")
                if name not in SERVE_GAUGES:
                    continue
                labels = sample.labels
                if "model_name" in labels:  # vLLM's series carry the model, not the deployment
                    where = f"{labels['model_name']}/engine"
                else:
                    where = f"{labels.get('application', '-')}/{labels.get('deployment', '-')}"
                values = per_gauge.setdefault(name, {})
                if name in PER_HANDLE_VIEWS:
                    values[where] = max(values.get(where, sample.value), sample.value)
                else:
                    values[where] = values.get(where, 0.0) + sample.value
        if per_gauge:
            found.setdefault(target, {})[concurrency] = per_gauge
    return found


def gauges_markdown(doc: dict[str, Any]) -> str:
    """``doc["serve_gauges"]`` as a markdown table, a row per target, concurrency and gauge."""
    rows = ["| target | c | gauge | by deployment |", "| --- | ---: | --- | --- |"]
    for target, by_c in doc.get("serve_gauges", {}).items():
        for c, per_gauge in sorted(by_c.items(), key=lambda item: int(item[0])):
            for name in SERVE_GAUGES:
                if name in per_gauge:
                    values = ", ".join(f"{d}: {v:g}" for d, v in sorted(per_gauge[name].items()))
                    rows.append(f"| {target} | {c} | {name} | {values} |")
    return "\n".join(rows)


def shared_block(results: Path) -> dict[str, Any]:
    """The shared phases: per target and concurrency, each model's metrics and the aggregate;
    ``ratios``: router_shared / bare_shared for the aggregate throughput and each model's TTFT.

    ``{"bare_shared": {"64": {"models": {"m1": {...}, ...}, "output_throughput": sum}}, ...,
    "ratios": {"64": {"output_throughput": x, "m1": {"median_ttft_ms": x, "p99_ttft_ms": x}}}}``
    """
    block: dict[str, Any] = {}
    for path in sorted(results.glob("*.json")):
        match = SHARED_NAME.match(path.name)
        if not match:
            continue
        target, model, c = match.group(1), f"m{match.group(2)}", match.group(3)
        data = json.loads(path.read_text())
        entry = block.setdefault(target, {}).setdefault(c, {"models": {}})
        entry["models"][model] = {m: data[m] for m in METRICS if m in data}
    for by_c in block.values():
        for entry in by_c.values():
            entry["output_throughput"] = sum(m.get("output_throughput", 0) for m in entry["models"].values())
    if set(SHARED_TARGETS) <= set(block):
        bare, router = block["bare_shared"], block["router_shared"]
        block["ratios"] = {}
        for c in sorted(set(bare) & set(router), key=int):
            row: dict[str, Any] = {
                "output_throughput": round(router[c]["output_throughput"] / bare[c]["output_throughput"], 4)
            }
            for model in sorted(set(bare[c]["models"]) & set(router[c]["models"])):
                b, r = bare[c]["models"][model], router[c]["models"][model]
                row[model] = {m: round(r[m] / b[m], 4) for m in ("median_ttft_ms", "p99_ttft_ms") if b.get(m)}
            block["ratios"][c] = row
    return block


def check_key(target: str) -> str:
    """'checks' for the router (as `make serve` runs it), 'checks_<target>' for the variants."""
    return _keyed("checks", target)


def _keyed(name: str, target: str) -> str:
    """``name`` for the router (the issue's names), ``name_<target>`` for the other phases."""
    return name if target == "router" else f"{name}_{target}"


def checks(
    runs: dict[str, dict[int, dict[str, Any]]], target: str = "router"
) -> dict[str, dict[str, dict[str, Any]]]:
    """Issue 13's targets 1 and 2, ``target`` (a router phase) vs bare, at each concurrency both
    ran: output throughput at least bare's; median TTFT at most max(bare + 5 ms, 1.05 x bare);
    p99 TTFT at most 1.1 x bare; at concurrency 1, median inter-token latency within 10% of
    bare's. Each check's ``"router"`` is the target's value."""
    rules = {
        "output_throughput": lambda bare: (bare, ">="),
        "median_ttft_ms": lambda bare: (max(bare + 5, 1.05 * bare), "<="),
        "p99_ttft_ms": lambda bare: (1.1 * bare, "<="),
    }
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for c in sorted(set(runs.get("bare", {})) & set(runs.get(target, {}))):
        bare, router = runs["bare"][c], runs[target][c]
        rules_here = dict(rules)
        if c == 1:
            rules_here["median_itl_ms"] = lambda bare: (1.1 * bare, "<=")
        for metric, rule in rules_here.items():
            if bare.get(metric) is None or router.get(metric) is None:
                continue
            limit, sense = rule(bare[metric])
            ok = router[metric] >= limit if sense == ">=" else router[metric] <= limit
            out.setdefault(str(c), {})[metric] = {
                "router": router[metric],
                "bare": bare[metric],
                "limit": f"{sense} {round(limit, 2)}",
                "pass": ok,
            }
    return out


def checks_markdown(doc: dict[str, Any], target: str = "router") -> str:
    """One line per concurrency: each of ``target``'s checks as PASS/FAIL with its value and limit."""
    lines = [f"| concurrency | check | {target} | limit | |", "| ---: | --- | ---: | ---: | --- |"]
    for c, by_metric in sorted(doc.get(check_key(target), {}).items(), key=lambda item: int(item[0])):
        for metric, check in by_metric.items():
            verdict = "PASS" if check["pass"] else "FAIL"
            lines.append(f"| {c} | {metric} | {_fmt(check['router'])} | {check['limit']} | {verdict} |")
    return "\n".join(lines)


def ratio_key(target: str) -> str:
    """'ratios' for the router (the issue's name), 'ratios_<target>' for the other variants."""
    return _keyed("ratios", target)


def ratios(runs: dict[str, dict[int, dict[str, Any]]], target: str) -> dict[str, dict[str, float]]:
    """target/bare for each table metric, at each concurrency both ran."""
    return {
        str(c): {
            metric: round(runs[target][c][metric] / runs["bare"][c][metric], 4)
            for metric, _ in TABLE
            if runs["bare"][c].get(metric) and runs[target][c].get(metric) is not None
        }
        for c in sorted(set(runs["bare"]) & set(runs[target]))
    }


def markdown(doc: dict[str, Any]) -> str:
    """One row per concurrency and metric; a value and a ratio column per target that ran."""
    ran = [t for t in ROUTER_PHASES if doc[t]["by_concurrency"]]
    if not doc["bare"]["by_concurrency"] and not ran:
        return shared_markdown(doc)
    header = "| concurrency | metric | bare vllm serve | " + " | ".join(f"{t} | {t}/bare" for t in ran) + " |"
    lines = [
        f"{doc['device']}, vLLM {doc['versions'].get('vllm', '?')}, Ray {doc['versions'].get('ray', '?')}: "
        f"{doc.get('model')} ({doc.get('checkpoint')})",
        "",
        header,
        "| ---: | --- | ---: | " + " | ".join("---: | ---:" for _ in ran) + " |",
    ]
    concurrencies = sorted(
        {int(c) for target in TARGETS for c in doc[target]["by_concurrency"]},
        key=lambda c: (c != doc["main_concurrency"], c),
    )
    for c in concurrencies:
        bare = doc["bare"]["by_concurrency"].get(str(c), {})
        for metric, label in TABLE:
            cells = [f"| {c} | {label} | {_fmt(bare.get(metric))} |"]
            for target in ran:
                value = doc[target]["by_concurrency"].get(str(c), {}).get(metric)
                ratio = doc[ratio_key(target)].get(str(c), {}).get(metric)
                cells.append(f" {_fmt(value)} | {_ratio(ratio)} |")
            lines.append("".join(cells))
        failed = [f"{t} {d['by_concurrency'][str(c)].get('failed')}" for t, d in _targets(doc, c)]
        if any(not entry.endswith(" 0") for entry in failed):
            lines.append(f"| {c} | failed requests | {' / '.join(failed)} |")
    return "\n".join(lines) + ("\n\n" + shared_markdown(doc) if doc.get("shared") else "")


def shared_markdown(doc: dict[str, Any]) -> str:
    """Several models on one GPU: aggregate throughput, and each model's TTFT, bare vs router."""
    shared = doc.get("shared", {})
    lines = [
        "| concurrency (each model) | model | metric | bare | router | router/bare |",
        "| ---: | --- | --- | ---: | ---: | ---: |",
    ]
    bare, router = shared.get("bare_shared", {}), shared.get("router_shared", {})
    for c in sorted(set(bare) | set(router), key=int):
        b, r = bare.get(c, {}), router.get(c, {})
        ratio = shared.get("ratios", {}).get(c, {})
        lines.append(
            f"| {c} | all | output tok/s | {_fmt(b.get('output_throughput'))} | "
            f"{_fmt(r.get('output_throughput'))} | {_ratio(ratio.get('output_throughput'))} |"
        )
        for model in sorted(set(b.get("models", {})) | set(r.get("models", {}))):
            for metric, label in (("median_ttft_ms", "median TTFT ms"), ("p99_ttft_ms", "p99 TTFT ms")):
                bv = b.get("models", {}).get(model, {}).get(metric)
                rv = r.get("models", {}).get(model, {}).get(metric)
                rr = ratio.get(model, {}).get(metric)
                lines.append(f"| {c} | {model} | {label} | {_fmt(bv)} | {_fmt(rv)} | {_ratio(rr)} |")
    return "\n".join(lines)


def _targets(doc: dict[str, Any], c: int) -> list[tuple[str, dict[str, Any]]]:
    return [(t, doc[t]) for t in TARGETS if str(c) in doc[t]["by_concurrency"]]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.strip().lower()).strip("-") or "unknown"


def default_out(doc: dict[str, Any]) -> Path:
    """docs/bench/<date>-<device>.json; a later run of the same day and device gets -run2, -run3..."""
    stem = f"{doc['date']}-{_slug(doc['device'])}"
    out, run = ROOT / "docs" / "bench" / f"{stem}.json", 1
    while out.exists():
        run += 1
        out = out.with_name(f"{stem}-run{run}.json")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="the RESULTS folder of scripts/bench_serve.sh")
    parser.add_argument("--device", help="device name (default: meta.json's, from torch)")
    parser.add_argument("--out", type=Path, help="output JSON (default: docs/bench/<date>-<device>.json)")
    parser.add_argument("--main-concurrency", type=int, default=128)
    args = parser.parse_args(argv)
    doc = combine(args.results, args.device, args.main_concurrency)
    out = args.out or default_out(doc)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    for target in ROUTER_PHASES:
        if doc.get(check_key(target)):
            print(f"\nIssue 13's targets 1 and 2 ({target} vs bare):\n\n" + checks_markdown(doc, target))
    if doc.get("serve_gauges"):
        print("\nRay Serve's queue gauges, mid-traffic:\n\n" + gauges_markdown(doc))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
