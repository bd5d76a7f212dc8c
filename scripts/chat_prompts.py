#!/usr/bin/env python3
"""Send a set of prompts to an OpenAI-compatible server and keep the answers.

Works against this project's router and against a bare ``vllm serve``. For each model it writes
``<out>/<model>/NNN.json`` (one prompt with its answer, usage and timings) and
``<out>/<model>/index.json`` (all of them plus a summary), then prints a summary table.

    python scripts/chat_prompts.py                                  # every model in /v1/models
    python scripts/chat_prompts.py --model qwen2.5-3b-fp8 --api completions --max-tokens 64
    python scripts/chat_prompts.py --base-url http://127.0.0.1:8001/v1 --prompts my_prompts.txt

A prompts file holds one prompt a line, or a JSON list of strings.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = [
    "Hello! Who are you?",
    "Write a haiku about GPUs.",
    "What is the capital of France?",
    "Explain FP8 quantization in one sentence.",
    "List three prime numbers.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Finish this sentence: The quick brown fox",
]


def load_prompts(path: Path | None) -> list[str]:
    if path is None:
        return list(DEFAULT_PROMPTS)
    text = path.read_text()
    if text.lstrip().startswith("["):
        prompts = json.loads(text)
        if not all(isinstance(p, str) for p in prompts):
            raise SystemExit(f"{path}: expected a JSON list of strings")
        return prompts
    return [line for line in text.splitlines() if line.strip()]


def safe_name(model: str) -> str:
    """A folder name for a model id (bare `vllm serve` names models by their path)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"


def ask(client: Any, model: str, prompt: str, args: argparse.Namespace) -> dict[str, Any]:
    """One streamed request; returns the text, finish reason, usage and timings."""
    common = dict(
        model=model,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        stream=True,
        stream_options={"include_usage": True},
    )
    if args.seed is not None:
        common["seed"] = args.seed
    started = time.perf_counter()
    if args.api == "chat":
        stream = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        stream = client.completions.create(prompt=prompt, **common)
    parts: list[str] = []
    first: float | None = None
    finish, usage, response_id = None, None, None
    for chunk in stream:
        response_id = chunk.id
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            piece = choice.delta.content if args.api == "chat" else choice.text
            if piece:
                first = first if first is not None else time.perf_counter()
                parts.append(piece)
            finish = choice.finish_reason or finish
    ended = time.perf_counter()
    return {
        "id": response_id,
        "text": "".join(parts),
        "finish_reason": finish,
        "usage": usage,
        "ttft_s": None if first is None else round(first - started, 4),
        "latency_s": round(ended - started, 4),
        "chunks": len(parts),
    }


def run_model(client: Any, model: str, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    folder = args.out / safe_name(model)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, prompt in enumerate(prompts):
        record: dict[str, Any] = {"index": index, "model": model, "api": args.api, "prompt": prompt}
        try:
            record["response"] = ask(client, model, prompt, args)
        except Exception as error:  # keep going: the summary reports it
            record["error"] = f"{type(error).__name__}: {error}"
        (folder / f"{index:03d}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        entries.append(record)
    answered = [e["response"] for e in entries if "response" in e]
    summary = {
        "model": model,
        "base_url": args.base_url,
        "api": args.api,
        "prompts": len(entries),
        "answered": len(answered),
        "errors": len(entries) - len(answered),
        "completion_tokens": sum((r["usage"] or {}).get("completion_tokens", 0) for r in answered),
        "median_ttft_s": _median([r["ttft_s"] for r in answered]),
        "median_latency_s": _median([r["latency_s"] for r in answered]),
    }
    (folder / "index.json").write_text(
        json.dumps({"summary": summary, "entries": entries}, indent=2, ensure_ascii=False) + "\n"
    )
    return summary


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", action="append", help="model id (repeatable); default: all in /v1/models")
    parser.add_argument("--prompts", type=Path, help="prompts file (default: a built-in list)")
    parser.add_argument("--api", choices=["chat", "completions"], default="chat")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, default=Path("tmp"), help="output folder (default: tmp)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    args = parser.parse_args(argv)

    from openai import OpenAI

    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=args.timeout, max_retries=0)
    models = args.model or [m.id for m in client.models.list().data]
    prompts = load_prompts(args.prompts)
    print(f"{args.base_url}: {len(prompts)} prompts x {len(models)} model(s) via {args.api}")
    failed = False
    print(f"{'model':40} {'answered':>9} {'errors':>6} {'tokens':>7} {'ttft p50':>9} {'latency p50':>12}")
    for model in models:
        s = run_model(client, model, prompts, args)
        failed |= s["errors"] > 0
        ttft = "-" if s["median_ttft_s"] is None else f"{s['median_ttft_s'] * 1000:.0f} ms"
        latency = "-" if s["median_latency_s"] is None else f"{s['median_latency_s'] * 1000:.0f} ms"
        print(
            f"{model[:40]:40} {s['answered']:>9} {s['errors']:>6} {s['completion_tokens']:>7} "
            f"{ttft:>9} {latency:>12}   -> {args.out / safe_name(model)}/index.json"
        )
        first = json.loads((args.out / safe_name(model) / "000.json").read_text())
        shown = first.get("response", {}).get("text") or first.get("error", "")
        print(f"    e.g. {first['prompt']!r} -> {shown[:100]!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
