"""The merge of metrics agents' Prometheus text into ``/metrics``' one document (the renames,
dropped labels and zero-filled counters are router/metrics.py's docstring).

A module of its own, importing only ``prometheus_client`` and the series table, because the
router runs ``merge`` in a helper process (``serve_app.workers``): parsing is pure Python, about
0.3 s a MB, and its garbage collections hold the GIL, which in the router's own process stalls
the event loop that relays every stream (``ClusterMetrics``).
"""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from serve_app.deployments.metrics import VLLM_SERIES

RENAMES = (("ray_vllm_", "vllm:"), ("ray_modelopt_serve_", "modelopt_serve_"), ("ray_serve_", "ray_serve_"))
DROPPED_LABELS = frozenset(
    {"SessionName", "Version", "Component", "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"}
)
ZERO_UNTIL_FIRST = tuple(VLLM_SERIES[key] for key in ("preemptions", "prompt_tokens", "generation_tokens"))
REPLICA_GAUGE = VLLM_SERIES["running"].name  # every engine replica sets it; its label sets name them


def _rename(name: str) -> str | None:
    for prefix, replacement in RENAMES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return None


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge(documents: list[str]) -> bytes:
    """Several metrics agents' Prometheus text -> one document of our families (module docstring)."""
    families: dict[str, Metric] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for document in documents:
        for family in text_string_to_metric_families(document):
            name = _rename(family.name)
            if name is None:
                continue
            merged = families.get(name)
            if merged is None:
                merged = families[name] = Metric(name, family.documentation, family.type)
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k not in DROPPED_LABELS}
                sample_name = _rename(sample.name) or sample.name
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in seen:  # the same series from two scrapes of one node: keep one
                    seen.add(key)
                    merged.samples.append(Sample(sample_name, labels, sample.value))
    _zero_fill(families)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))  # type: ignore[arg-type]
    return generate_latest(registry)


def _zero_fill(families: dict[str, Metric]) -> None:
    """A 0 sample of each ZERO_UNTIL_FIRST counter for every engine replica that lacks one."""
    replicas = families.get(REPLICA_GAUGE)
    if replicas is None:
        return
    for series in ZERO_UNTIL_FIRST:
        family = families.setdefault(series.name, Metric(series.name, series.help, "counter"))
        present = {tuple(sorted(s.labels.items())) for s in family.samples}
        for sample in replicas.samples:
            if tuple(sorted(sample.labels.items())) not in present:
                family.samples.append(Sample(f"{series.name}_total", dict(sample.labels), 0.0))
