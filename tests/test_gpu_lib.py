"""scripts/gpu/lib.sh, the helpers every GPU script sources: what run 9 lost a device call to.

The helpers run in a real bash with a stand-in ``nvidia-smi`` on PATH that lists the pids in a
file, as the real one lists the GPU's compute processes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import running

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "scripts" / "gpu" / "lib.sh"
RUN9_LOG = (
    ROOT / "docs" / "bench" / "2026-11-30-nvidia-h200-run9" / "call2-failed" / "router_split-server.log"
)


def _bash(script: str, tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {LIB}; {script}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BG_PIDS": str(tmp_path / "bg.pids"), **(env or {})},
    )


@pytest.fixture
def fake_gpu(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A ``nvidia-smi`` that lists the pids in ``gpu-pids`` that are still running (a process that
    has exited frees its GPU memory, even while it waits to be reaped)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids_file = tmp_path / "gpu-pids"
    pids_file.write_text("")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/bash\n"
        f'while read -r p; do grep -qsv "^[0-9]* (.*) Z" /proc/$p/stat && echo "$p"; done < {pids_file}\n'
    )
    smi.chmod(0o755)
    return pids_file, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _orphan() -> int:
    """The pid of a process in its own session whose parent has gone, as vLLM's EngineCore is once
    ``ray stop --force`` killed its Ray worker (so init, not this test, reaps it)."""
    started = subprocess.run(
        [
            "bash",
            "-c",
            f"setsid {sys.executable} -c 'import time; time.sleep(120)' >/dev/null 2>&1 & echo $!",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(started.stdout)


def _end(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_end_gpu_leftovers_ends_processes_holding_the_gpu(tmp_path: Path, fake_gpu) -> None:
    pids_file, env = fake_gpu
    orphans = [_orphan(), _orphan()]
    pids_file.write_text("".join(f"{pid}\n" for pid in orphans))
    try:
        done = _bash("end_gpu_leftovers 10; echo left:[$(gpu_pids)]", tmp_path, env)
        assert done.returncode == 0, done.stderr
        assert f"ending processes still holding the GPU: {orphans[0]} {orphans[1]}" in done.stdout
        assert "left:[]" in done.stdout
        assert not [pid for pid in orphans if running(pid)]
    finally:
        for pid in orphans:
            _end(pid)


def test_end_gpu_leftovers_is_quiet_on_a_free_gpu_and_without_nvidia_smi(tmp_path: Path, fake_gpu) -> None:
    _, env = fake_gpu
    started = time.monotonic()
    done = _bash("end_gpu_leftovers; echo ok", tmp_path, env)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr
    assert time.monotonic() - started < 10
    # CPU machines have no nvidia-smi: nothing to end, and no error under `set -euo pipefail`.
    bare_path = {"PATH": "/usr/bin:/bin"}
    assert _bash("end_gpu_leftovers; echo ok", tmp_path, bare_path).stdout.strip() == "ok"


def test_fail_pattern_stops_the_wait_on_run_9s_engine_start_failure(tmp_path: Path) -> None:
    """Run 9's second call waited its whole 480 s on this log: no line matched the old pattern."""
    pattern = _bash('printf %s "$FAIL_PATTERN"', tmp_path).stdout
    lines = RUN9_LOG.read_text(errors="replace").splitlines()
    matched = [line for line in lines if re.search(pattern, line)]
    assert any("EngineCore failed to start." in line for line in matched)
    assert any("less than desired GPU memory utilization (0.45, 62.91 GiB)" in line for line in matched)
    # Serve's ordinary start lines do not stop the wait.
    assert not [line for line in lines[:10] if re.search(pattern, line)]


def test_wait_http_gives_up_at_the_first_failure_line(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("(EngineCore pid=1) ERROR [core.py:1231] EngineCore failed to start.\n")
    server = _orphan()
    try:
        started = time.monotonic()
        done = _bash(f"wait_http 'serve run' http://127.0.0.1:9/readyz {server} {log} 300", tmp_path)
        assert done.returncode == 1
        assert "serve run failed to start" in done.stdout
        assert time.monotonic() - started < 30
    finally:
        _end(server)
