#!/usr/bin/env python3
"""Greedy reference outputs from vLLM's offline ``LLM.generate``, one prompt at a time.

Run it in its own process (the GPU test and compare_offline.py do), so its engine never shares a
process with another one. Input JSON:

    {"engine": {AsyncEngineArgs kwargs, e.g. from serve_app.engines.vllm_mapping.engine_kwargs},
     "prompts": [[token ids], ...], "max_tokens": 32, "ignore_eos": false}

Output JSON: {"outputs": [{"token_ids", "text", "finish_reason"}, ...], "seconds": {...}}.
Each prompt runs alone (batch size 1), as the served requests it is compared with do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def generate(request: dict) -> dict:
    from vllm import LLM, SamplingParams, TokensPrompt

    started = time.perf_counter()
    llm = LLM(**request["engine"])
    ready = time.perf_counter()
    params = SamplingParams(
        temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=request.get("ignore_eos", False)
    )
    outputs = []
    for ids in request["prompts"]:
        (result,) = llm.generate([TokensPrompt(prompt_token_ids=list(ids))], params, use_tqdm=False)
        completion = result.outputs[0]
        outputs.append(
            {
                "token_ids": list(completion.token_ids),
                "text": completion.text,
                "finish_reason": completion.finish_reason,
            }
        )
    done = time.perf_counter()
    return {"outputs": outputs, "seconds": {"start": ready - started, "generate": done - ready}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--request", type=Path, required=True, help="input JSON (see above)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the outputs JSON")
    args = parser.parse_args(argv)
    result = generate(json.loads(args.request.read_text()))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"offline LLM.generate: {len(result['outputs'])} prompts; start {result['seconds']['start']:.1f} s, "
        f"generate {result['seconds']['generate']:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
