"""VLLMEngine on a real GPU with a tiny ModelOpt FP8 checkpoint (skipped without CUDA and vLLM).

One engine (enforce_eager, 8% of the GPU, a fixed 1 GiB KV cache, 512-token context) serves every
test in this module. Small and fixed so that it can run beside another GPU job (serve_check.sh):
vLLM sizes its KV cache by profiling free memory, which another process's start would skew.
The offline reference runs ``vllm.LLM.generate`` in a subprocess (scripts/gpu/offline_generate.py),
so no process ever holds two engines.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.engines.protocol import EngineConfig, GenerationRequest, SamplingOptions
from serve_app.errors import ContextLengthError, EngineDeadError, RegistryError

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if importlib.util.find_spec("vllm") is None:
    pytest.skip("needs vLLM (pip install -e .[gpu])", allow_module_level=True)

from serve_app.engines.vllm_engine import VLLMEngine  # noqa: E402
from serve_app.engines.vllm_mapping import engine_arg_fields, engine_kwargs  # noqa: E402

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Ray Serve scales replicas across a cluster;",
]


@pytest.fixture(scope="module")
def checkpoint(checkpoint_factory) -> Path:
    # head_dim 64 (hidden 256 / 4 heads): every vLLM attention backend supports it; 16 is not.
    return checkpoint_factory("qwen2", "tiny", hidden_size=256, intermediate_size=512)


@pytest.fixture(scope="module")
def config(checkpoint, tmp_path_factory) -> EngineConfig:
    return EngineConfig(
        model_name="qwen2-tiny",
        checkpoint=checkpoint,
        max_model_len=512,
        gpu_memory_utilization=0.08,
        enforce_eager=True,
        compile_cache_dir=tmp_path_factory.mktemp("compile-cache"),
        engine_args={"kv_cache_memory_bytes": 1 << 30},
    )


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(config, loop):
    engine = VLLMEngine(config)
    loop.run_until_complete(engine.start())
    yield engine
    loop.run_until_complete(engine.shutdown())
    loop.run_until_complete(engine.shutdown())  # idempotent
    loop.run_until_complete(asyncio.sleep(0.2))  # let vLLM's cancelled output handler finish


@pytest.fixture(scope="module")
def prompt_ids(checkpoint) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return [tokenizer.encode(text) for text in PROMPTS]


def collect(loop, stream):
    async def run():
        return [delta async for delta in stream]

    return loop.run_until_complete(run())


def greedy(
    request_id: str, ids: list[int], max_tokens: int = 32, ignore_eos: bool = True
) -> GenerationRequest:
    options = SamplingOptions(max_tokens=max_tokens, temperature=0, ignore_eos=ignore_eos)
    return GenerationRequest(request_id=request_id, prompt_token_ids=ids, sampling=options)


def test_start_reports_context_and_start_info(engine, config, loop):
    assert engine.max_model_len == 512
    info = engine.start_info
    assert info is not None and info.seconds > 0
    assert info.compile_cache_dir == str(config.compile_cache_dir)
    assert info.compile_cache_warm is False
    assert info.enforce_eager is True
    loop.run_until_complete(engine.check_health())


def test_deltas_concatenate_to_the_final_text(engine, loop, prompt_ids):
    before = engine.stats()
    deltas = collect(loop, engine.generate(greedy("stream-1", prompt_ids[0], max_tokens=48)))
    assert len(deltas) > 1
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "length"
    token_ids = [token for d in deltas for token in d.token_ids]
    assert len(token_ids) == deltas[-1].completion_tokens == 48
    assert all(d.prompt_tokens == len(prompt_ids[0]) for d in deltas)
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts)

    # The whole text, as one non-streamed request sees it: same ids, same decode.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(engine.config.checkpoint))
    text = "".join(d.text for d in deltas)
    assert text == tokenizer.decode(token_ids, skip_special_tokens=True).rstrip("\ufffd")

    after = engine.stats()
    assert after.finished_total == before.finished_total + 1
    assert after.generated_tokens_total == before.generated_tokens_total + 48
    assert after.prompt_tokens_total == before.prompt_tokens_total + len(prompt_ids[0])
    assert after.running == 0


def test_greedy_output_equals_offline_llm_generate(engine, loop, config, prompt_ids, tmp_path):
    served = []
    for index, ids in enumerate(prompt_ids):  # one at a time, as the offline reference runs them
        deltas = collect(loop, engine.generate(greedy(f"greedy-{index}", ids)))
        served.append(
            {
                "token_ids": [token for d in deltas for token in d.token_ids],
                "text": "".join(d.text for d in deltas),
                "finish_reason": deltas[-1].finish_reason,
            }
        )

    kwargs = engine_kwargs(config, _vllm_arg_fields())
    kwargs["gpu_memory_utilization"] = 0.08  # beside the module's engine, which holds as much
    request = {"engine": kwargs, "prompts": prompt_ids, "max_tokens": 32, "ignore_eos": True}
    (tmp_path / "request.json").write_text(json.dumps(request))
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu" / "offline_generate.py"),
            "--request",
            str(tmp_path / "request.json"),
            "--out",
            str(tmp_path / "offline.json"),
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        timeout=600,
    )
    offline = json.loads((tmp_path / "offline.json").read_text())["outputs"]
    for index, (ours, reference) in enumerate(zip(served, offline, strict=True)):
        assert ours["token_ids"] == reference["token_ids"], f"prompt {index}: token ids differ"
        assert ours["text"] == reference["text"], f"prompt {index}: text differs"
        assert ours["finish_reason"] == reference["finish_reason"] == "length"


def test_abort_ends_the_stream_with_abort(engine, loop, prompt_ids):
    before = engine.stats()

    async def run():
        deltas = []
        async for delta in engine.generate(greedy("abort-1", prompt_ids[1], max_tokens=400)):
            deltas.append(delta)
            if len(deltas) == 1:
                await engine.abort("abort-1")
        return deltas

    deltas = loop.run_until_complete(run())
    assert deltas[-1].finish_reason == "abort"
    assert deltas[-1].completion_tokens < 400
    after = engine.stats()
    assert after.aborted_total == before.aborted_total + 1
    assert after.running == 0
    loop.run_until_complete(engine.abort("no-such-request"))  # ignored


def test_closing_the_stream_aborts_the_request(engine, loop, prompt_ids):
    before = engine.stats()

    async def run():
        stream = engine.generate(greedy("close-1", prompt_ids[2], max_tokens=400))
        first = await anext(stream)
        await stream.aclose()
        return first

    first = loop.run_until_complete(run())
    assert first.finish_reason is None
    after = engine.stats()
    assert after.aborted_total == before.aborted_total + 1
    assert after.running == 0
    # The engine is fine and the id is free again.
    deltas = collect(loop, engine.generate(greedy("close-1", prompt_ids[2], max_tokens=4)))
    assert deltas[-1].finish_reason == "length"
    loop.run_until_complete(engine.check_health())


def test_a_prompt_that_fills_the_context_is_refused(engine):
    with pytest.raises(ContextLengthError, match="the prompt has 512 tokens; this model's context is 512"):
        engine.generate(greedy("long-1", [5] * 512))


def test_unknown_engine_args_fail_at_load_with_the_valid_names(checkpoint, loop):
    bad = VLLMEngine(
        EngineConfig(model_name="bad", checkpoint=checkpoint, engine_args={"max_num_batched_token": 64})
    )
    with pytest.raises(
        RegistryError, match=r"unknown engine_args key\(s\) \['max_num_batched_token'\]"
    ) as info:
        loop.run_until_complete(bad.start())
    assert "did you mean 'max_num_batched_tokens'?" in str(info.value)
    assert "enable_prefix_caching" in str(info.value)  # the list of valid names
    assert bad.start_info is None


def test_calls_after_shutdown_say_the_engine_is_gone(checkpoint, loop):
    engine = VLLMEngine(EngineConfig(model_name="never-started", checkpoint=checkpoint))
    loop.run_until_complete(engine.shutdown())
    with pytest.raises(EngineDeadError, match="was shut down"):
        engine.generate(greedy("x", [1, 2]))


def _vllm_arg_fields() -> set[str]:
    from vllm import AsyncEngineArgs

    return engine_arg_fields(AsyncEngineArgs)
