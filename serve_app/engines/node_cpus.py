"""The CPUs a Ray node started on this machine offers, counted as Ray 2.60 counts them.

Preflight must not import Ray (it runs before any cluster exists, and fast), so this follows
``ray/_private/utils.py`` ``get_num_cpus`` and ``_get_docker_cpus`` rule for rule: the machine's
``multiprocessing.cpu_count()``, unless a container limit says otherwise. The limit is the CPU
quota (cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, else cgroup v2 ``cpu.max``; a
quota of 0 counts as 1, a negative one or ``max`` as none) or the cpuset (cgroup v1
``cpuset.cpus``), the smaller where both are set, truncated to a whole number as Ray does.
``RAY_USE_MULTIPROCESSING_CPU_COUNT`` set to anything makes Ray, and this, ignore the limit.
Under a container CPU quota the machine count is what Ray would not place: preflight once passed
fleets there that then waited forever for a CPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CgroupFiles:
    """Where the container limits are read (Ray 2.60's defaults)."""

    quota: Path = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
    period: Path = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
    cpuset: Path = Path("/sys/fs/cgroup/cpuset/cpuset.cpus")
    cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")


def node_cpus(files: CgroupFiles = CgroupFiles(), environ: Mapping[str, str] = os.environ) -> float:
    """CPUs, as a whole number: the container limit where there is one, else the machine's."""
    count = multiprocessing.cpu_count()
    if environ.get("RAY_USE_MULTIPROCESSING_CPU_COUNT"):
        return float(count)
    limit = container_cpus(files)
    return float(int(limit)) if limit is not None and limit != count else float(count)


def container_cpus(files: CgroupFiles = CgroupFiles()) -> float | None:
    """The container's CPU limit (fractional for a quota such as 1.5), or None without one.
    Unreadable or malformed files count as no limit, as in Ray."""
    quota = _quota(files)
    cpuset = _cpuset_size(files.cpuset)
    if quota and cpuset:
        return min(quota, cpuset)
    return quota or cpuset


def _quota(files: CgroupFiles) -> float | None:
    quota: float | None = None
    try:
        if files.quota.exists() and files.period.exists():
            quota = float(files.quota.read_text()) / float(files.period.read_text())
        elif files.cpu_max.exists():
            value, period = files.cpu_max.read_text().split()
            quota = float(value) / float(period) if value.isnumeric() and period.isnumeric() else None
    except (OSError, ValueError, ZeroDivisionError):
        return None
    if quota is not None and quota < 0:
        return None
    return 1.0 if quota == 0 else quota


def _cpuset_size(path: Path) -> int | None:
    try:
        if not path.exists():
            return None
        ids: set[int] = set()
        for part in path.read_text().strip().split(","):
            first, _, last = part.partition("-")
            ids.update(range(int(first), int(last or first) + 1))
        return len(ids) or None
    except (OSError, ValueError):
        return None
