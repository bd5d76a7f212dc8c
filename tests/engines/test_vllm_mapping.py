"""The vLLM mapping and VLLMEngine without vLLM: a fake AsyncEngineArgs dataclass, fake
RequestOutputs, and a fake ``vllm`` whose AsyncLLM behaves like vLLM 0.24's in delta mode."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest

from serve_app.engines.protocol import EngineConfig, GenerationDelta, GenerationRequest, SamplingOptions
from serve_app.engines.vllm_mapping import (
    StreamCounters,
    engine_arg_fields,
    engine_kwargs,
    finish_reason,
    sampling_kwargs,
    to_delta,
)
from serve_app.errors import EngineGenerateError, RegistryError


@dataclass
class FakeEngineArgs:
    """Stands in for vllm.AsyncEngineArgs: a dataclass with some of its real field names."""

    model: str = "facebook/opt-125m"
    quantization: str | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    kv_cache_dtype: str = "auto"
    trust_remote_code: bool = False
    enable_prefix_caching: bool | None = None
    limit_mm_per_prompt: dict = field(default_factory=dict)
    _api_process_count: int = 1
    derived: int = field(default=0, init=False)


VALID = engine_arg_fields(FakeEngineArgs)


def make_config(**overrides) -> EngineConfig:
    return EngineConfig(model_name="qwen-3b", checkpoint=Path("/ck/qwen"), **overrides)


def test_engine_arg_fields_leaves_out_private_and_non_init_fields():
    assert "model" in VALID and "limit_mm_per_prompt" in VALID
    assert "_api_process_count" not in VALID
    assert "derived" not in VALID


def test_engine_kwargs_maps_first_class_fields():
    config = make_config(
        max_model_len=4096,
        max_num_seqs=64,
        gpu_memory_utilization=0.4,
        enforce_eager=True,
        kv_cache_dtype="fp8",
    )
    assert engine_kwargs(config, VALID) == {
        "model": "/ck/qwen",
        "quantization": "modelopt",
        "max_model_len": 4096,
        "max_num_seqs": 64,
        "gpu_memory_utilization": 0.4,
        "tensor_parallel_size": 1,
        "enforce_eager": True,
        "kv_cache_dtype": "fp8",
        "trust_remote_code": False,
    }


def test_engine_kwargs_leaves_unset_limits_to_vllm():
    kwargs = engine_kwargs(make_config(), VALID)
    assert "max_model_len" not in kwargs
    assert "max_num_seqs" not in kwargs  # vLLM picks it by usage context and GPU


def test_engine_kwargs_passes_engine_args_through():
    config = make_config(engine_args={"max_num_batched_tokens": 8192, "limit_mm_per_prompt": {"image": 1}})
    kwargs = engine_kwargs(config, VALID)
    assert kwargs["max_num_batched_tokens"] == 8192
    assert kwargs["limit_mm_per_prompt"] == {"image": 1}


def test_the_kwargs_construct_the_args_dataclass():
    config = make_config(max_model_len=512, engine_args={"enable_prefix_caching": False})
    args = FakeEngineArgs(**engine_kwargs(config, VALID))
    assert args.quantization == "modelopt"
    assert args.enable_prefix_caching is False


def test_unknown_engine_args_name_the_keys_and_list_valid_names_sorted():
    config = make_config(engine_args={"max_num_batched_token": 1, "zzz": 2})
    with pytest.raises(
        RegistryError, match=r"unknown engine_args key\(s\) \['max_num_batched_token', 'zzz'\]"
    ) as info:
        engine_kwargs(config, VALID)
    message = str(info.value)
    assert "model 'qwen-3b'" in message
    assert "did you mean 'max_num_batched_tokens'?" in message
    listed = message.split("Valid vLLM AsyncEngineArgs names: ")[1].split(", ")
    assert listed == sorted(VALID)
    assert info.value.param == "engine_args"


def test_private_fields_are_not_accepted():
    with pytest.raises(RegistryError, match=r"unknown engine_args key\(s\) \['_api_process_count'\]"):
        engine_kwargs(make_config(engine_args={"_api_process_count": 2}), VALID)


@pytest.mark.parametrize("key", ["max_model_len", "max_num_seqs", "gpu_memory_utilization", "enforce_eager"])
def test_engine_args_may_not_repeat_a_registry_field(key):
    with pytest.raises(
        RegistryError, match=rf"engine_args repeat\(s\) \['{key}'\], which are fields of the model"
    ):
        engine_kwargs(make_config(engine_args={key: 1}), VALID)


@pytest.mark.parametrize("key", ["model", "quantization"])
def test_engine_args_may_not_set_model_or_quantization(key):
    with pytest.raises(RegistryError, match=rf"engine_args may not set \['{key}'\]"):
        engine_kwargs(make_config(engine_args={key: "x"}), VALID)


def test_a_vllm_without_a_field_we_set_is_reported():
    valid = VALID - {"kv_cache_dtype"}
    with pytest.raises(RegistryError, match=r"has no field\(s\) \['kv_cache_dtype'\]"):
        engine_kwargs(make_config(), valid)


def test_sampling_kwargs_copies_the_options():
    options = SamplingOptions(max_tokens=32, temperature=0.7, top_p=0.9, seed=5, stop=("\n", "END"))
    assert sampling_kwargs(options) == {
        "n": 1,
        "max_tokens": 32,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 5,
        "stop": ["\n", "END"],
        "ignore_eos": False,
    }


def test_temperature_zero_is_greedy():
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=8, temperature=0, top_p=0.5, seed=3, ignore_eos=True))
    assert kwargs["temperature"] == 0.0
    assert kwargs["top_p"] == 1.0
    assert kwargs["seed"] is None
    assert kwargs["stop"] is None
    assert kwargs["ignore_eos"] is True


@pytest.mark.parametrize(
    ("vllm_reason", "ours"),
    [(None, None), ("stop", "stop"), ("length", "length"), ("abort", "abort"), ("repetition", "stop")],
)
def test_finish_reasons(vllm_reason, ours):
    assert finish_reason(vllm_reason) == ours


def test_finish_reason_error_fails_the_request():
    with pytest.raises(EngineGenerateError, match="finish_reason 'error'"):
        finish_reason("error")


def fake_output(text, token_ids, reason=None, prompt=(1, 2, 3)):
    completion = SimpleNamespace(text=text, token_ids=tuple(token_ids), finish_reason=reason)
    return SimpleNamespace(outputs=[completion], prompt_token_ids=list(prompt), finished=reason is not None)


def test_to_delta_accumulates_completion_tokens():
    counters = StreamCounters()
    first = to_delta(fake_output("Hel", [10, 11]), counters)
    merged = to_delta(fake_output("lo w", [12, 13, 14]), counters)  # vLLM merged two outputs
    last = to_delta(fake_output("orld", [15], "length"), counters)
    assert first == GenerationDelta("Hel", [10, 11], 2, 3, None)
    assert merged == GenerationDelta("lo w", [12, 13, 14], 5, 3, None)
    assert last == GenerationDelta("orld", [15], 6, 3, "length")
    assert "".join(d.text for d in (first, merged, last)) == "Hello world"


def test_abort_output_has_no_tokens():
    counters = StreamCounters(prompt_tokens=3, completion_tokens=4)
    assert to_delta(fake_output("", [], "abort"), counters) == GenerationDelta("", [], 4, 3, "abort")


def test_a_finished_output_without_reason_counts_as_stop():
    output = fake_output("x", [7])
    output.finished = True
    assert to_delta(output, StreamCounters()).finish_reason == "stop"


def test_mapping_modules_do_not_import_vllm(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # any `import vllm` now fails
    for name in ("serve_app.engines.vllm_mapping", "serve_app.engines.vllm_engine"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        importlib.import_module(name)


def test_vllm_engine_refuses_calls_before_start():
    from serve_app.engines.vllm_engine import VLLMEngine
    from serve_app.errors import EngineNotStartedError

    engine = VLLMEngine(make_config())
    with pytest.raises(EngineNotStartedError, match="has not started"):
        engine.stats()
    with pytest.raises(EngineNotStartedError):
        _ = engine.max_model_len
    assert engine.start_info is None


def test_compile_cache_root_defaults_per_model(tmp_path):
    from serve_app.engines.vllm_engine import compile_cache_is_warm, compile_cache_root

    assert compile_cache_root(make_config()) == Path("~/.cache/modelopt-serve/compile/qwen-3b").expanduser()
    assert compile_cache_root(make_config(compile_cache_dir=tmp_path)) == tmp_path
    assert not compile_cache_is_warm(tmp_path)
    (tmp_path / "torch_compile_cache").mkdir()
    assert not compile_cache_is_warm(tmp_path)
    (tmp_path / "torch_compile_cache" / "abc123").mkdir()
    assert compile_cache_is_warm(tmp_path)


# --- VLLMEngine against a fake `vllm` (the real one runs in test_vllm_engine_gpu.py) -------------


class FakeVLLMEngineDead(Exception):
    pass


class FakeVLLMGenerateError(Exception):
    pass


class FakeAsyncLLM:
    """Mimics AsyncLLM.generate in delta mode: one token per output, aborts, errors."""

    instances: ClassVar[list[FakeAsyncLLM]] = []

    def __init__(self, args, usage_context):
        self.args, self.usage_context = args, usage_context
        self.model_config = SimpleNamespace(max_model_len=args.max_model_len or 2048)
        self.aborted: list[str] = []
        self.abort_requested: set[str] = set()
        self.dead = False
        self.shutdowns = 0
        self.fail_with: Exception | None = None
        FakeAsyncLLM.instances.append(self)

    @classmethod
    def from_engine_args(cls, args, usage_context=None):
        if args.max_model_len == 13:
            raise RuntimeError("Engine core initialization failed. See root cause above.")
        return cls(args, usage_context)

    async def generate(self, prompt, params, request_id):
        try:
            if self.dead:
                raise FakeVLLMEngineDead("EngineCore encountered an issue.")
            for index in range(params.max_tokens):
                await asyncio.sleep(0)
                if self.fail_with is not None:
                    raise self.fail_with
                if request_id in self.abort_requested:
                    yield fake_output("", [], "abort", prompt["prompt_token_ids"])
                    return
                last = index == params.max_tokens - 1
                yield fake_output(
                    f"t{index} ", [100 + index], "length" if last else None, prompt["prompt_token_ids"]
                )
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    async def abort(self, request_id):
        self.abort_requested.add(request_id)

    async def check_health(self):
        if self.dead:
            raise FakeVLLMEngineDead("EngineCore encountered an issue.")

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install a fake `vllm` with the names VLLMEngine imports."""
    from enum import Enum

    vllm = ModuleType("vllm")
    vllm.AsyncEngineArgs = FakeEngineArgs
    vllm.AsyncLLMEngine = FakeAsyncLLM
    vllm.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    vllm.TokensPrompt = dict
    usage_lib = ModuleType("vllm.usage.usage_lib")
    usage_lib.UsageContext = Enum("UsageContext", ["LLM_CLASS", "OPENAI_API_SERVER"])
    sampling_params = ModuleType("vllm.sampling_params")
    sampling_params.RequestOutputKind = Enum("RequestOutputKind", ["CUMULATIVE", "DELTA", "FINAL_ONLY"])
    exceptions = ModuleType("vllm.v1.engine.exceptions")
    exceptions.EngineDeadError = FakeVLLMEngineDead
    exceptions.EngineGenerateError = FakeVLLMGenerateError
    modules = {
        "vllm": vllm,
        "vllm.usage": ModuleType("vllm.usage"),
        "vllm.usage.usage_lib": usage_lib,
        "vllm.sampling_params": sampling_params,
        "vllm.v1": ModuleType("vllm.v1"),
        "vllm.v1.engine": ModuleType("vllm.v1.engine"),
        "vllm.v1.engine.exceptions": exceptions,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    FakeAsyncLLM.instances.clear()
    return modules


def started_engine(tmp_path, **overrides):
    from serve_app.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(make_config(compile_cache_dir=tmp_path / "cache", max_model_len=64, **overrides))
    asyncio.run(engine.start())
    return engine


def greedy_request(request_id="r1", ids=(1, 2, 3), max_tokens=4):
    return GenerationRequest(request_id, list(ids), SamplingOptions(max_tokens=max_tokens, temperature=0))


def test_engine_start_passes_mapped_args_and_the_openai_usage_context(fake_vllm, tmp_path):
    engine = started_engine(tmp_path, engine_args={"max_num_batched_tokens": 8192})
    llm = FakeAsyncLLM.instances[-1]
    assert llm.args.quantization == "modelopt"
    assert llm.args.max_num_batched_tokens == 8192
    assert llm.usage_context.name == "OPENAI_API_SERVER"
    assert engine.max_model_len == 64
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "cache")
    assert engine.start_info.compile_cache_warm is False
    assert engine.start_info.compile_cache_dir == str(tmp_path / "cache")


def test_engine_streams_deltas_and_counts(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)

    async def run():
        return [delta async for delta in engine.generate(greedy_request(max_tokens=3))]

    deltas = asyncio.run(run())
    assert [d.text for d in deltas] == ["t0 ", "t1 ", "t2 "]
    assert [d.completion_tokens for d in deltas] == [1, 2, 3]
    assert deltas[-1].finish_reason == "length"
    stats = engine.stats()
    assert (stats.running, stats.finished_total, stats.aborted_total) == (0, 1, 0)
    assert (stats.prompt_tokens_total, stats.generated_tokens_total) == (3, 3)


def test_engine_abort_ends_the_stream_with_abort(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)

    async def run():
        deltas = []
        async for delta in engine.generate(greedy_request(max_tokens=50)):
            deltas.append(delta)
            if len(deltas) == 2:
                await engine.abort("r1")
        return deltas

    deltas = asyncio.run(run())
    assert deltas[-1].finish_reason == "abort"
    assert deltas[-1].completion_tokens == 2
    assert engine.stats().aborted_total == 1


def test_closing_the_stream_closes_vllms_generator_at_once(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)
    llm = FakeAsyncLLM.instances[-1]

    async def run():
        stream = engine.generate(greedy_request(max_tokens=50))
        await anext(stream)
        assert engine.stats().running == 1
        await stream.aclose()
        return llm.aborted[:]

    assert asyncio.run(run()) == ["r1"]  # before the event loop ends, not at garbage collection
    stats = engine.stats()
    assert (stats.running, stats.aborted_total) == (0, 1)


def test_cancelling_the_consumer_aborts_the_request(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)
    llm = FakeAsyncLLM.instances[-1]

    async def consume():
        async for _ in engine.generate(greedy_request(max_tokens=10_000)):
            await asyncio.sleep(0)

    async def run():
        task = asyncio.create_task(consume())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert llm.aborted == ["r1"]
    assert engine.stats().running == 0


def test_engine_refuses_bad_requests_at_the_call(fake_vllm, tmp_path):
    from serve_app.errors import ContextLengthError, InvalidRequestError

    engine = started_engine(tmp_path)
    with pytest.raises(ContextLengthError, match="the prompt has 64 tokens; this model's context is 64"):
        engine.generate(greedy_request(ids=[1] * 64))
    with pytest.raises(InvalidRequestError, match="the prompt has no tokens"):
        engine.generate(greedy_request(ids=[]))

    async def duplicate():
        stream = engine.generate(greedy_request(max_tokens=10))
        await anext(stream)
        try:
            engine.generate(greedy_request(max_tokens=10))
        finally:
            await stream.aclose()

    with pytest.raises(InvalidRequestError, match="request id 'r1' is already running"):
        asyncio.run(duplicate())


def test_vllm_errors_become_ours(fake_vllm, tmp_path):
    from serve_app.errors import EngineDeadError, EngineGenerateError, InvalidRequestError

    engine = started_engine(tmp_path)
    llm = FakeAsyncLLM.instances[-1]

    async def drain():
        return [d async for d in engine.generate(greedy_request())]

    llm.fail_with = ValueError("Token id 99999 is out of vocabulary")
    with pytest.raises(InvalidRequestError, match="out of vocabulary"):
        asyncio.run(drain())
    cause = RuntimeError("CUDA error")
    error = FakeVLLMGenerateError()
    error.__cause__ = cause
    llm.fail_with = error
    with pytest.raises(EngineGenerateError, match="vLLM failed the request: RuntimeError: CUDA error"):
        asyncio.run(drain())
    llm.fail_with, llm.dead = None, True
    with pytest.raises(EngineDeadError, match="died"):
        asyncio.run(drain())
    with pytest.raises(EngineDeadError, match="died"):
        asyncio.run(engine.check_health())
    assert engine.stats().running == 0


def test_engine_start_failures(fake_vllm, tmp_path):
    from serve_app.engines.vllm_engine import VLLMEngine
    from serve_app.errors import EngineError

    with pytest.raises(RegistryError, match=r"unknown engine_args key\(s\) \['nope'\]"):
        started_engine(tmp_path, engine_args={"nope": 1})
    broken = VLLMEngine(make_config(max_model_len=13))
    with pytest.raises(
        EngineError, match=r"vLLM failed to start model 'qwen-3b'.*Engine core initialization failed"
    ):
        asyncio.run(broken.start())
    assert broken.start_info is None


def test_engine_shutdown_is_idempotent_and_final(fake_vllm, tmp_path):
    from serve_app.errors import EngineDeadError

    engine = started_engine(tmp_path)
    llm = FakeAsyncLLM.instances[-1]
    asyncio.run(engine.shutdown())
    asyncio.run(engine.shutdown())
    assert llm.shutdowns == 1
    with pytest.raises(EngineDeadError, match="was shut down"):
        engine.generate(greedy_request())
    assert engine.stats().finished_total == 0  # counters stay readable


def test_a_warm_compile_cache_is_reported(fake_vllm, tmp_path):
    (tmp_path / "cache" / "torch_compile_cache" / "1a2b3c").mkdir(parents=True)
    assert started_engine(tmp_path).start_info.compile_cache_warm is True
