#!/usr/bin/env python3
"""Where a vLLM engine's start goes, outside Ray: this project's VLLMEngine, one fresh process per
start, from the process's own start to its first token (issue 13, target 4).

    python3 scripts/gpu/start_time.py --checkpoint /tmp/ck/qwen2.5-3b --out /tmp/start.json \\
        [--variants imports,default,fastsafetensors,fixed_kv] [--cache ~/.cache/vllm] [--repeat 1] \\
        [--pyspy]   # py-spy of each start: summarise with scripts/pyspy_summary.py --rate 50

Each variant starts the engine as the benchmark's router phase does (``gpu_memory_utilization``
0.9, vLLM's defaults, the compile cache ``--cache``; start it warm by running the benchmark
first), with the variant's ``engine_args`` on top:

- ``default``: nothing more;
- ``fastsafetensors``: ``load_format: fastsafetensors`` (vLLM's loader that reads the shards
  straight to the GPU; the wheel set has fastsafetensors 0.5.0);
- ``fixed_kv``: ``kv_cache_memory_bytes`` 20 GiB, which skips vLLM's memory profiling of the
  KV cache size (``gpu_worker.determine_available_memory``; it still runs one profile pass);
- ``imports`` (not in the default list; no engine): ``python -X importtime`` of the replica's
  ``from vllm import AsyncEngineArgs, AsyncLLMEngine``, the slowest modules by cumulative time
  (run 5: 23 s in the replica, and again in the engine-core process it spawns).

Per start it prints and saves: seconds from the process start to ``main`` (interpreter and this
script's imports), the engine's own phases (``import``, ``config``, ``engine_core``:
``VLLMEngine.start_info``), the first token of a one-token request, and vLLM's phase lines from
the engine-core log (weights, Dynamo, compiled-graph load, ``torch.compile`` total, CUDA-graph
capture, ``init engine``), with their wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

VARIANTS: dict[str, dict] = {
    "default": {},
    "fastsafetensors": {"load_format": "fastsafetensors"},
    "fixed_kv": {"kv_cache_memory_bytes": 20 * 2**30},
}
# vLLM 0.24's engine-core lines that split its start (vllm/v1/worker, vllm/compilation, core.py).
PHASE_LINES = re.compile(
    r"(Loading weights took|Model loading took|Dynamo bytecode transform time|Directly load the compiled"
    r"|Compiling a graph for compile range|torch.compile took|Initial profiling/warmup run took"
    r"|Profiling CUDA graph memory|Available KV cache memory|Graph capturing finished"
    r"|init engine \(profile, create kv cache, warmup model\) took|Initializing a V1 LLM engine"
    r"|Starting to load model)"
)


def one(args: argparse.Namespace) -> None:
    """In a fresh process: start the engine, send one request, print a JSON line."""
    from serve_app.deployments.loop_health import process_age_s

    to_main = process_age_s()
    import asyncio

    from serve_app.engines.protocol import EngineConfig, GenerationRequest, SamplingOptions
    from serve_app.engines.vllm_engine import VLLMEngine

    config = EngineConfig(
        model_name="start-time",
        checkpoint=Path(args.checkpoint),
        gpu_memory_utilization=0.9,
        compile_cache_dir=Path(args.cache).expanduser(),
        engine_args=VARIANTS[args.one],
    )

    async def run() -> dict:
        engine = VLLMEngine(config)
        started = time.monotonic()
        await engine.start()
        ready = time.monotonic() - started
        request = GenerationRequest("r0", [1, 2, 3, 4], SamplingOptions(max_tokens=1, temperature=0))
        async for _ in engine.generate(request):
            break
        first = time.monotonic() - started
        await engine.shutdown()
        timings = {"engine_ready_s": round(ready, 2), "first_token_s": round(first, 2)}
        return {**timings, **engine.start_info.as_dict()}

    result = asyncio.run(run())
    print("RESULT " + json.dumps({"variant": args.one, "process_to_main_s": to_main, **result}), flush=True)


def import_times(top: int = 25) -> dict:
    """``python -X importtime`` of vLLM's engine imports in a fresh process: total seconds and the
    ``top`` modules by cumulative microseconds (stderr lines "import time: self | cumulative | name")."""
    code = "from vllm import AsyncEngineArgs, AsyncLLMEngine"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    wall = time.monotonic() - started
    rows = []
    for line in done.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].strip()))
    rows.sort(reverse=True)
    result = {
        "variant": "imports",
        "wall_s": round(wall, 2),
        "slowest_cumulative_s": [(name, round(us / 1e6, 2)) for us, name in rows[:top]],
    }
    if done.returncode:
        result["error"] = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/tmp/ck/qwen2.5-3b")
    parser.add_argument("--cache", default=os.environ.get("VLLM_CACHE_ROOT", "~/.cache/vllm"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="also: imports")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", default="/tmp/start-time.json")
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument(
        "--pyspy",
        action="store_true",
        help="record each start with py-spy (engine-core subprocess included, 50 Hz, raw) beside its log",
    )
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return 0
    results = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(",") * args.repeat:
        if variant == "imports":
            results.append(import_times())
            print(json.dumps(results[-1], indent=1), flush=True)
            continue
        log_path = Path(args.out).with_name(f"{Path(args.out).stem}-{variant}-{len(results)}.log")
        command = [sys.executable, __file__, "--one", variant]
        command += ["--checkpoint", args.checkpoint, "--cache", args.cache]
        if args.pyspy and shutil.which("py-spy"):
            # From the interpreter's first instruction: imports, config, spawn, load, compile, capture.
            spy = ["py-spy", "record", "--subprocesses", "--rate", "50", "--format", "raw"]
            command = [*spy, "--output", str(log_path.with_suffix(".pyspy")), "--", *command]
        wall = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as error:
            output, code = f"{error.stdout or ''}{error.stderr or ''}\nTIMEOUT after {args.timeout} s", -1
        log_path.write_text(output if isinstance(output, str) else output.decode(errors="replace"))
        text = log_path.read_text()
        found = [line for line in text.splitlines() if line.startswith("RESULT ")]
        result = json.loads(found[-1][7:]) if found else {"variant": variant, "error": f"exit {code}"}
        result["wall_s"] = round(time.monotonic() - wall, 2)
        result["vllm_lines"] = [line[-220:] for line in text.splitlines() if PHASE_LINES.search(line)]
        results.append(result)
        summary = {key: value for key, value in result.items() if key != "vllm_lines"}
        print(f"== {variant}: {json.dumps(summary)}", flush=True)
        for line in result["vllm_lines"]:
            print("   " + line, flush=True)
        if not found:
            print("\n".join(text.splitlines()[-25:]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in result for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
