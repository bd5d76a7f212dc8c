#!/usr/bin/env python3
"""Check that served greedy output equals vLLM's offline ``LLM.generate``, token for token.

Two phases, because the served models hold the GPU while they run:

    # 1. while `serve run examples/gpu.yaml` runs: ask the router, save the answers
    python scripts/gpu/compare_offline.py query --config examples/gpu.yaml --out tmp/compare
    # 2. after stopping it: run offline LLM.generate per model (in a subprocess) and compare
    python scripts/gpu/compare_offline.py offline --config examples/gpu.yaml --out tmp/compare

``query`` tokenizes each prompt with the checkpoint's tokenizer and sends the token ids as the
completions ``prompt`` (temperature 0, ``ignore_eos``, one request at a time), so both sides see
the same ids and batch size 1. ``offline`` gives ``LLM`` the same engine arguments the served
engine gets (``serve_app.engines.vllm_mapping.engine_kwargs``) and the same prompt ids, then
compares the text, the number of completion tokens and the finish reason (the completions API
returns no token ids; equal text of equal length from greedy decoding is the same tokens in
practice, and the offline token ids are saved for inspection). Exit status 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "Hello! Who are you?",
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve scales replicas across a cluster; vLLM batches requests continuously.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
    "ModelOpt quantizes large language models to FP8 for fast inference on GPUs.",
]


def _models(config: Path, names: list[str] | None) -> list[Any]:
    from serve_app.registry.loader import load_registry

    registry = load_registry(config)
    chosen = [m for m in registry.models if not names or m.name in names]
    if not chosen:
        raise SystemExit(f"{config}: no model named {names}")
    return chosen


def query(args: argparse.Namespace) -> int:
    from openai import OpenAI
    from transformers import AutoTokenizer

    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=120, max_retries=0)
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in _models(args.config, args.model):
        tokenizer = AutoTokenizer.from_pretrained(
            str(spec.checkpoint), trust_remote_code=spec.trust_remote_code
        )
        entries = []
        for prompt in PROMPTS:
            ids = tokenizer.encode(prompt, add_special_tokens=True)
            started = time.perf_counter()
            reply = client.completions.create(
                model=spec.name,
                prompt=ids,
                max_tokens=args.max_tokens,
                temperature=0,
                extra_body={"ignore_eos": True},
            )
            choice = reply.choices[0]
            entries.append(
                {
                    "prompt": prompt,
                    "prompt_token_ids": ids,
                    "text": choice.text,
                    "finish_reason": choice.finish_reason,
                    "prompt_tokens": reply.usage.prompt_tokens,
                    "completion_tokens": reply.usage.completion_tokens,
                    "latency_s": round(time.perf_counter() - started, 4),
                }
            )
        path = args.out / f"{spec.name}.served.json"
        path.write_text(
            json.dumps({"model": spec.name, "max_tokens": args.max_tokens, "entries": entries}, indent=1)
        )
        print(f"{spec.name}: {len(entries)} served answers -> {path}")
    return 0


def offline(args: argparse.Namespace) -> int:
    from vllm import AsyncEngineArgs  # the same field check the served engine makes

    from serve_app.engines.selection import engine_config
    from serve_app.engines.vllm_engine import compile_cache_root
    from serve_app.engines.vllm_mapping import engine_arg_fields, engine_kwargs

    failed = False
    for spec in _models(args.config, args.model):
        served = json.loads((args.out / f"{spec.name}.served.json").read_text())
        config = engine_config(spec)
        kwargs = engine_kwargs(config, engine_arg_fields(AsyncEngineArgs))
        if args.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
        request = {
            "engine": kwargs,
            "prompts": [entry["prompt_token_ids"] for entry in served["entries"]],
            "max_tokens": served["max_tokens"],
            "ignore_eos": True,
        }
        request_path = args.out / f"{spec.name}.offline-request.json"
        result_path = args.out / f"{spec.name}.offline.json"
        request_path.write_text(json.dumps(request))
        # The served engine's compile cache, so a compiled model need not compile again.
        env = {**os.environ, "VLLM_CACHE_ROOT": str(compile_cache_root(config))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "gpu" / "offline_generate.py"),
                "--request",
                str(request_path),
                "--out",
                str(result_path),
            ],
            check=True,
            env=env,
        )
        reference = json.loads(result_path.read_text())["outputs"]
        failed |= not report(spec.name, served["entries"], reference)
    return 1 if failed else 0


def report(model: str, served: list[dict], reference: list[dict]) -> bool:
    same = 0
    for index, (ours, ref) in enumerate(zip(served, reference, strict=True)):
        checks = {
            "text": ours["text"] == ref["text"],
            "completion_tokens": ours["completion_tokens"] == len(ref["token_ids"]),
            "finish_reason": ours["finish_reason"] == ref["finish_reason"],
            "prompt_tokens": ours["prompt_tokens"] == len(ours["prompt_token_ids"]),
        }
        if all(checks.values()):
            same += 1
            continue
        bad = [name for name, ok in checks.items() if not ok]
        prefix = _common_prefix(ours["text"], ref["text"])
        print(f"  {model} prompt {index}: differs in {bad}; texts agree for {prefix} characters")
        print(
            f"    served : {ours['text'][:100]!r} ({ours['completion_tokens']} tok, {ours['finish_reason']})"
        )
        print(f"    offline: {ref['text'][:100]!r} ({len(ref['token_ids'])} tok, {ref['finish_reason']})")
    verdict = "MATCH" if same == len(served) else "MISMATCH"
    print(f"{model}: {same}/{len(served)} prompts identical to offline LLM.generate (greedy) -> {verdict}")
    return same == len(served)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("phase", choices=["query", "offline"])
    parser.add_argument(
        "--config", type=Path, default=ROOT / "examples" / "gpu.yaml", help="the served registry"
    )
    parser.add_argument("--model", action="append", help="only these models (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("tmp/compare"))
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--gpu-memory-utilization", type=float, help="offline phase: override the registry's value"
    )
    args = parser.parse_args(argv)
    return query(args) if args.phase == "query" else offline(args)


if __name__ == "__main__":
    sys.exit(main())
