"""Processes as Linux's /proc shows them, for tests that check what a change leaves running.

A zombie (exited, not yet reaped by its parent) counts as gone: it holds no memory, GPU or pipe,
and a test cannot tell when its parent will reap it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

PROC = Path("/proc")


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # the state follows the command's ")"


def running_with(cmdline: bytes, environ: bytes = b"") -> Iterator[tuple[int, bytes]]:
    """``(pid, command line)`` of every running process whose command line contains ``cmdline``
    and whose environment contains ``environ`` (NUL-separated ``NAME=value`` entries, as read)."""
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            if cmdline not in command or (environ and environ not in (entry / "environ").read_bytes()):
                continue
        except OSError:  # gone meanwhile, or another user's
            continue
        if running(int(entry.name)):
            yield int(entry.name), command
