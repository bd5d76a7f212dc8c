"""Print the parts of ``/stats?waiting=1`` and ``/stats?profile=S`` answers that decide issue 13's
next step, short enough to read in a device call's output tail (12,000 characters).

    python3 scripts/gpu/show_stats.py RESULTS/router-c256-waiting.json RESULTS/router-c256-profile.json

For each process (the router, then each model): its event-loop lag, the census's ``grpc_calls``
and its most common waits (``native`` and ``top``), and the profile's ``busy_share``,
``by_package``, ``top_self`` and ``top_total``. A file that is missing or not JSON is named and
skipped (a device call must still reach its ``tar``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = 8


def _rows(title: str, rows: list[Any] | None, limit: int = ROWS) -> None:
    if not rows:
        return
    print(f"    {title}:")
    for row in rows[:limit]:
        *place, value = row if isinstance(row, list) else [row, ""]
        print(f"      {value!s:>8}  {' '.join(str(p) for p in place)[:150]}")


def show_process(name: str, stats: dict[str, Any]) -> None:
    """One process's lines: ``stats`` is the router's block or one model's block of ``/stats``."""
    print(f"  {name}:")
    lag = (stats.get("loop") or stats).get("loop_lag")
    if lag:
        print(f"    loop_lag p50/p90/p99/max ms: {lag.get('p50_ms')}/{lag.get('p90_ms')}"
              f"/{lag.get('p99_ms')}/{lag.get('max_ms')}")  # fmt: skip
    waiting = stats.get("waiting")
    if isinstance(waiting, dict):
        print(f"    grpc_calls: {waiting.get('grpc_calls')}  suspended: {waiting.get('suspended')}"
              f"  not_started: {waiting.get('not_started')}")  # fmt: skip
        _rows("native", waiting.get("native"), 5)
        _rows("top waits", waiting.get("top"), 6)
    profile = stats.get("profile")
    if isinstance(profile, dict):
        keys = ("seconds", "busy_share", "loop_or_idle_s", "unattributed_busy_s")
        print("    profile: " + "  ".join(f"{k}={profile.get(k)}" for k in keys))
        _rows("by_package", profile.get("by_package"), 10)
        _rows("top_self", profile.get("top_self"), 12)
        _rows("top_total", profile.get("top_total"), 16)


def show(path: Path) -> None:
    """Every process in one ``/stats`` answer saved at ``path``."""
    print(f"== {path}")
    try:
        answer = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        print(f"  unreadable: {error}")
        return
    if not isinstance(answer, dict):
        print(f"  not a /stats answer: {str(answer)[:200]}")
        return
    if isinstance(answer.get("router"), dict):
        show_process("router", answer["router"])
    for model, stats in (answer.get("models") or {}).items():
        if isinstance(stats, dict):
            show_process(f"model {model}", stats)


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        show(Path(argument))
