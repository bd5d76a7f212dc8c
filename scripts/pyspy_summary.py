#!/usr/bin/env python3
"""Summarise ``py-spy record --threads --format raw`` files (``scripts/bench_serve.sh PROFILE=1``).

Each line of a raw file is ``thread (0x..);frame;frame;... COUNT``, root first, on-CPU samples
only. For each file and thread: samples, the share of the recording the thread was on a CPU
(``samples / (rate * duration)``; near 100% means a saturated thread, such as an event loop
that cannot keep up), and the functions with the most samples, inclusive and self.

    python3 scripts/pyspy_summary.py /tmp/bench-x/*.pyspy [--rate 100 --duration 12 --top 15]
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def summarise(path: Path, rate: float, duration: float, top: int) -> str:
    threads: dict[str, int] = collections.Counter()
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in path.read_text().splitlines():
        match = LINE.match(line.strip())
        if not match:
            continue
        frames = match["stack"].split(";")
        count = int(match["count"])
        thread, calls = frames[0], frames[1:]
        threads[thread] += count
        for frame in set(calls):
            inclusive[thread][frame] += count
        if calls:
            own[thread][calls[-1]] += count
    out = [f"== {path.name}"]
    for thread, samples in sorted(threads.items(), key=lambda item: -item[1]):
        busy = samples / (rate * duration)
        out.append(f"-- {thread}: {samples} samples, on CPU {busy:.0%} of the recording")
        if busy < 0.05:
            continue
        out.append("   inclusive:")
        out += [f"   {n:6d} {n / samples:5.0%}  {f}" for f, n in inclusive[thread].most_common(top)]
        out.append("   self:")
        out += [f"   {n:6d} {n / samples:5.0%}  {f}" for f, n in own[thread].most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rate", type=float, default=100.0, help="py-spy's --rate (Hz)")
    parser.add_argument("--duration", type=float, default=12.0, help="py-spy's --duration (s)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        print(summarise(path, args.rate, args.duration, args.top))


if __name__ == "__main__":
    main()
