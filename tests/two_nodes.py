"""Two Ray nodes on this machine, started with `ray start` as an operator starts a cluster.

Each node gets its own ports (GCS, node manager, object manager, worker range, dashboard agent,
metrics, runtime-env agent, Ray client), so nothing collides with other Ray instances on the
machine; each node's ``--temp-dir`` (per node since Ray 2.x: "Can be specified per node") is a
fresh folder of ours, so the sessions, sockets and ``ray_current_cluster`` file are ours alone,
and a plain ``ray.init()`` elsewhere on the machine never finds this cluster. Every process
`ray start` spawns inherits ``CLUSTER_MARK_ENV=<uuid>``; ``stop`` ends exactly the processes
whose environment holds that mark (SIGTERM, then SIGKILL after a grace period), never
`ray stop`, which ends every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.serve_fixtures import free_port

CLUSTER_MARK_ENV = "MODELOPT_SERVE_TEST_CLUSTER"
RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parent.parent


def _worker_ports() -> tuple[int, int]:
    """A range of 40 worker ports above Ray's default range (10002-19999) that others use."""
    low = random.randrange(30000, 59000, 50)
    return low, low + 39


@dataclass
class TwoNodeCluster:
    """``root``/node_a and ``root``/node_b are the nodes' working directories (their workers'
    cwd); ``gcs`` is the head's address, ``dashboard`` its dashboard URL (state API, serve status)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp")))
    mark: str = field(default_factory=lambda: uuid.uuid4().hex)
    gcs: str = ""
    dashboard: str = ""
    http_port: int = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env[CLUSTER_MARK_ENV] = self.mark
        # Ray 2.60 turns token authentication on by itself when ~/.ray/auth_token exists and
        # RAY_AUTH_MODE is unset, and a joining `ray start` then failed with InvalidAuthToken.
        # This cluster listens on 127.0.0.1 only and lives for one test module.
        env["RAY_AUTH_MODE"] = "disabled"
        env["PYTHONPATH"] = str(REPO)
        return env

    def _node_args(self, name: str) -> list[str]:
        low, high = _worker_ports()
        return [
            "--node-ip-address=127.0.0.1",
            "--num-cpus=4",
            f"--resources={json.dumps({name: 1})}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            "--object-store-memory=100000000",
            "--disable-usage-stats",
            f"--temp-dir={self.root / 'ray' / name}",
        ]

    def start(self) -> None:
        port, dashboard_port = free_port(), free_port()
        self.gcs = f"127.0.0.1:{port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.http_port = free_port()
        head = [
            "--head",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={free_port()}",
        ]
        self._ray_start("node_a", head)
        self._ray_start("node_b", [f"--address={self.gcs}"])

    def _ray_start(self, name: str, extra: list[str]) -> None:
        cwd = self.root / name
        (cwd / "models").mkdir(parents=True, exist_ok=True)
        command = [RAY, "start", *extra, *self._node_args(name)]
        done = subprocess.run(
            command, cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start for {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")

    def marked_pids(self) -> list[int]:
        """Processes whose environment holds this cluster's mark (ours alone)."""
        needle = f"{CLUSTER_MARK_ENV}={self.mark}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def stop(self, grace_s: float = 10) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.marked_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while self.marked_pids() and time.monotonic() < deadline:
                time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

    def deploy(self, yaml_path: Path, cwd: Path, timeout_s: float = 240) -> subprocess.CompletedProcess:
        """Build the app described by ``yaml_path`` in a driver process started in ``cwd`` (so it
        sees that node's files) and hand it to Serve; the driver exits, the app stays."""
        script = (
            "import ray; from pathlib import Path; from ray import serve\n"
            f"ray.init(address={self.gcs!r}, log_to_driver=False)\n"
            "serve.start(proxy_location='HeadOnly', "
            f"http_options={{'host': '127.0.0.1', 'port': {self.http_port}}})\n"
            "from tests.serve_fixtures import start_app_from_yaml, wait_deployed\n"
            f"start_app_from_yaml(Path({str(yaml_path)!r}))\n"
            "wait_deployed()\n"
        )
        for _attempt in range(2):
            done = subprocess.run(
                [sys.executable, "-c", script],
                cwd=cwd,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            # Killed by a signal: once in a CI run the driver died of SIGSEGV inside Ray's own
            # OpenTelemetry metrics export, before our code ran; deploying again is idempotent.
            # An error our code raises exits non-zero, not by a signal, and is returned as is.
            if done.returncode >= 0:
                break
        return done

    def serve_status(self) -> str:
        """`serve status` as a user runs it against this cluster's dashboard."""
        serve = str(Path(sys.executable).with_name("serve"))
        done = subprocess.run(
            [serve, "status", "-a", self.dashboard],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout
