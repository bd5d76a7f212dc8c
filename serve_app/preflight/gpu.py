"""What GPU this machine has: name, compute capability, memory, count.

``probe_gpu`` asks ``nvidia-smi`` first: it reads NVML without creating a CUDA context, so the
process that runs preflight (build_app's) holds no GPU memory that vLLM later misses. When there
is no nvidia-smi, a short-lived subprocess asks torch.cuda, again so that this process never
initialises CUDA. Tests and the CLI pass a GpuInfo (or None) instead of probing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from serve_app.preflight.environment import torch_build

GIB = 1024**3
SMI_QUERY = "index,uuid,name,compute_cap,memory.total"
TORCH_PROBE = """
import json, torch
if not torch.cuda.is_available():
    print("null")
else:
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"name": p.name, "capability": [p.major, p.minor],
                      "total_memory": p.total_memory, "count": torch.cuda.device_count()}))
"""


@dataclass(frozen=True)
class GpuInfo:
    """The GPUs of this node; with several, the first one's facts (nodes are homogeneous)."""

    name: str
    capability: tuple[int, int] | None
    total_memory: int  # bytes per GPU
    count: int = 1

    @property
    def memory_gib(self) -> float:
        return self.total_memory / GIB

    def describe(self) -> str:
        cc = (
            f"compute capability {self.capability[0]}.{self.capability[1]}"
            if self.capability
            else "capability unknown"
        )
        return f"{self.count}x {self.name} ({cc}, {self.memory_gib:.0f} GiB)"


def probe_gpu() -> GpuInfo | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        return _from_nvidia_smi(smi, visible)
    return _from_torch()


def _from_nvidia_smi(smi: str, visible: str | None) -> GpuInfo | None:
    try:
        done = subprocess.run(
            [smi, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_nvidia_smi(done.stdout, visible) if done.returncode == 0 else None


def parse_nvidia_smi(text: str, visible: str | None = None) -> GpuInfo | None:
    """Parse ``index, uuid, name, compute_cap, memory.total [MiB]`` lines, honouring CUDA_VISIBLE_DEVICES."""
    rows = [[part.strip() for part in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    rows = [row for row in rows if len(row) == 5]
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        rows = [
            row for row in rows if any(w == row[0] or (len(w) > 3 and row[1].startswith(w)) for w in wanted)
        ]
    if not rows:
        return None
    _, _, name, cap, memory = rows[0]
    try:
        major, minor = (int(x) for x in cap.split("."))
        capability: tuple[int, int] | None = (major, minor)
    except ValueError:
        capability = None
    try:
        total = int(float(memory) * 1024**2)
    except ValueError:
        return None
    return GpuInfo(name=name, capability=capability, total_memory=total, count=len(rows))


def _from_torch() -> GpuInfo | None:
    if torch_build()[1] is None:
        return None  # no torch, or a CPU-only build: nothing to ask (and no 1 s import to pay)
    try:
        done = subprocess.run(
            [sys.executable, "-c", TORCH_PROBE], capture_output=True, text=True, timeout=120, check=False
        )
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    if not info:
        return None
    return GpuInfo(info["name"], tuple(info["capability"]), int(info["total_memory"]), int(info["count"]))
