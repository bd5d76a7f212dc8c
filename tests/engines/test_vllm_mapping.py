"""The vLLM mapping and VLLMEngine without vLLM: a fake AsyncEngineArgs dataclass, fake
RequestOutputs, and a fake ``vllm`` whose AsyncLLM behaves like vLLM 0.24's in delta mode."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest

from serve_app.engines.protocol import (
    EngineConfig,
    GenerationDelta,
    GenerationRequest,
    SamplingOptions,
    StructuredOutput,
    TokenLogprob,
)
from serve_app.engines.vllm_mapping import (
    StreamCounters,
    engine_arg_fields,
    engine_kwargs,
    finish_reason,
    sampling_kwargs,
    structured_outputs_kwargs,
    to_delta,
    token_logprob,
)
from serve_app.errors import (
    EngineDeadError,
    EngineGenerateError,
    InvalidRequestError,
    MaxModelLenError,
    RegistryError,
)
from tests.busy_loop import hold_loop


@dataclass
class FakeEngineArgs:
    """Stands in for vllm.AsyncEngineArgs: a dataclass with some of its real field names."""

    model: str = "facebook/opt-125m"
    served_model_name: str | None = None
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
    enable_log_requests: bool = False
    disable_log_stats: bool = False
    _api_process_count: int = 1
    derived: int = field(default=0, init=False)

    def create_engine_config(self, usage_context=None):
        """A stand-in VllmConfig that remembers the arguments and the usage context."""
        if self.max_model_len == 13:
            raise RuntimeError("Engine core initialization failed. See root cause above.")
        return SimpleNamespace(args=self, usage_context=usage_context)


VALID = engine_arg_fields(FakeEngineArgs)


@dataclass
class FakeStructuredOutputsParams:
    """vllm.sampling_params.StructuredOutputsParams (0.24): exactly one constraint, as its
    ``__post_init__`` checks."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    structural_tag: str | None = None

    def __post_init__(self):
        count = sum(
            value is not None
            for value in (
                self.json,
                self.regex,
                self.choice,
                self.grammar,
                self.json_object,
                self.structural_tag,
            )
        )
        if count != 1:
            raise ValueError(f"You must use one kind of structured outputs constraint, got {count}")


@dataclass
class Logprob:
    """vllm.logprobs.Logprob."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FlatLogprobs:
    """vllm.logprobs.FlatLogprobs (0.24): flat lists, a dict per position when indexed, a
    FlatLogprobs when sliced. Built with the same ``append`` as vLLM's."""

    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    decoded_tokens: list[str | None] = field(default_factory=list)

    def append(self, position):
        self.start_indices.append(len(self.logprobs))
        for token_id, entry in (position or {}).items():
            self.token_ids.append(token_id)
            self.logprobs.append(entry.logprob)
            self.ranks.append(entry.rank)
            self.decoded_tokens.append(entry.decoded_token)
        self.end_indices.append(len(self.logprobs))

    def __len__(self):
        return len(self.start_indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            flat = FlatLogprobs()
            for position in range(*index.indices(len(self))):
                flat.append(self[position])
            return flat
        return {
            self.token_ids[i]: Logprob(self.logprobs[i], self.ranks[i], self.decoded_tokens[i])
            for i in range(self.start_indices[index], self.end_indices[index])
        }

    def __iter__(self):
        for position in range(len(self)):
            yield self[position]


def vllm_position(chosen, chosen_logprob, chosen_rank, top):
    """One position as vLLM 0.24's append_logprobs_for_next_position builds it: the chosen token
    first with its vocabulary rank, then the top k with ranks 1..k (a dict keeps a token once)."""
    ids = [chosen, *(token_id for token_id, _ in top)]
    logprobs = [chosen_logprob, *(logprob for _, logprob in top)]
    ranks = [chosen_rank, *range(1, len(top) + 1)]
    return {
        token_id: Logprob(lp, rank, f"<{token_id}>")
        for token_id, lp, rank in zip(ids, logprobs, ranks, strict=True)
    }


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
        "served_model_name": "qwen-3b",
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


def test_engine_kwargs_refuse_a_max_model_len_past_the_checkpoint_by_vllms_rule():
    text_config = {"max_position_embeddings": 2048, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}
    assert engine_kwargs(make_config(max_model_len=4096), VALID, text_config)["max_model_len"] == 4096
    with pytest.raises(MaxModelLenError) as caught:
        engine_kwargs(make_config(max_model_len=4097), VALID, text_config, allow_long=False)
    assert str(caught.value) == (
        "max_model_len 4097 is greater than the 4096 tokens this checkpoint supports "
        "(max_position_embeddings x RoPE factor 2 in config.json); vLLM refuses to start; set max_model_len "
        "to 4096 or less, or set VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 where the replicas run (RoPE positions past "
        "4096 give NaN; learned positions fail out of bounds)"
    )
    allowed = engine_kwargs(make_config(max_model_len=4097), VALID, text_config, allow_long=True)
    assert allowed["max_model_len"] == 4097  # vLLM warns and runs it
    assert "max_model_len" not in engine_kwargs(make_config(), VALID, text_config)  # vLLM derives it


def test_engine_kwargs_passes_engine_args_through():
    config = make_config(engine_args={"max_num_batched_tokens": 8192, "enable_prefix_caching": False})
    kwargs = engine_kwargs(config, VALID)
    assert kwargs["max_num_batched_tokens"] == 8192
    assert kwargs["enable_prefix_caching"] is False


def test_the_image_limit_becomes_limit_mm_per_prompt_for_vision_models_only():
    vision = engine_kwargs(make_config(limit_images_per_prompt=3), VALID)
    assert vision["limit_mm_per_prompt"] == {"image": 3, "video": 0}
    assert "limit_mm_per_prompt" not in engine_kwargs(make_config(), VALID)
    with pytest.raises(RegistryError, match=r"engine_args repeat\(s\) \['limit_mm_per_prompt'\]"):
        engine_kwargs(make_config(engine_args={"limit_mm_per_prompt": {"image": 1}}), VALID)


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
        "min_tokens": 0,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "min_p": 0.0,
        "seed": 5,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "logit_bias": None,
        "allowed_token_ids": None,
        "stop": ["\n", "END"],
        "stop_token_ids": None,
        "include_stop_str_in_output": False,
        "ignore_eos": False,
        "skip_special_tokens": True,
        "logprobs": None,
        "prompt_logprobs": None,
        "structured_outputs": None,
    }


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("top_k", 40, 40),
        ("min_p", 0.05, 0.05),
        ("presence_penalty", 1.5, 1.5),
        ("frequency_penalty", -0.5, -0.5),
        ("repetition_penalty", 1.3, 1.3),
        ("min_tokens", 4, 4),
        ("logit_bias", ((50, 100.0), (7, -100.0)), {50: 100.0, 7: -100.0}),
        ("stop_token_ids", (2, 32000), [2, 32000]),
        ("allowed_token_ids", (5, 6, 7), [5, 6, 7]),
        ("allowed_token_ids", (), []),  # vLLM itself refuses an empty list
        ("include_stop_str_in_output", True, True),
        ("skip_special_tokens", False, False),
        ("logprobs", 0, 0),
        ("logprobs", 5, 5),
        ("prompt_logprobs", 3, 3),
    ],
)
def test_each_sampling_option_maps_to_vllms_name(field, value, expected):
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=8, temperature=0.8, **{field: value}))
    assert kwargs[field] == expected
    assert type(kwargs[field]) is type(expected)


@pytest.mark.parametrize("temperature", [0, 0.0, 1e-9, 9.9e-6])
def test_temperature_below_vllms_sampling_eps_is_greedy(temperature):
    options = SamplingOptions(
        max_tokens=8, temperature=temperature, top_p=0.5, top_k=5, min_p=0.2, seed=3, ignore_eos=True
    )
    kwargs = sampling_kwargs(options)
    # vLLM 0.24 would raise 1e-9 to 0.01 and sample; 0.0 is greedy, which it resets these for.
    assert kwargs["temperature"] == 0.0
    assert (kwargs["top_p"], kwargs["top_k"], kwargs["min_p"], kwargs["seed"]) == (1.0, 0, 0.0, None)
    assert kwargs["stop"] is None
    assert kwargs["ignore_eos"] is True


def test_greedy_keeps_penalties_logit_bias_and_logprobs():
    options = SamplingOptions(
        max_tokens=8, temperature=0, repetition_penalty=1.2, logit_bias=((3, 5.0),), logprobs=2, min_tokens=2
    )
    kwargs = sampling_kwargs(options)
    assert (kwargs["repetition_penalty"], kwargs["logit_bias"], kwargs["logprobs"]) == (1.2, {3: 5.0}, 2)
    assert kwargs["min_tokens"] == 2


@pytest.mark.parametrize("temperature", [1e-5, 0.005, 0.7])
def test_temperature_from_vllms_sampling_eps_up_samples(temperature):
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=8, temperature=temperature, top_p=0.5, seed=3))
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["seed"]) == (temperature, 0.5, 3)


@pytest.mark.parametrize(
    ("structured", "expected"),
    [
        (StructuredOutput("json_object"), {"json_object": True}),
        (
            StructuredOutput("json", '{"type": "object", "properties": {"a": {"type": "integer"}}}'),
            {"json": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        ),
        # strict changes nothing: vLLM's OpenAI server accepts json_schema.strict and ignores it
        (StructuredOutput("json", '{"type": "string"}', strict=True), {"json": {"type": "string"}}),
        (StructuredOutput("json", "true"), {"json": "true"}),  # a boolean schema stays text
        (StructuredOutput("regex", r"\d{3}"), {"regex": r"\d{3}"}),
        (StructuredOutput("choice", ("yes", "no")), {"choice": ["yes", "no"]}),
        (StructuredOutput("grammar", 'root ::= "a" | "b"'), {"grammar": 'root ::= "a" | "b"'}),
    ],
)
def test_structured_outputs_map_to_structured_outputs_params(structured, expected):
    assert structured_outputs_kwargs(structured) == expected
    kwargs = sampling_kwargs(SamplingOptions(max_tokens=8, structured=structured))
    assert kwargs["structured_outputs"] == expected
    made = sampling_kwargs(SamplingOptions(max_tokens=8, structured=structured), FakeStructuredOutputsParams)
    assert isinstance(made["structured_outputs"], FakeStructuredOutputsParams)
    assert made["structured_outputs"] == FakeStructuredOutputsParams(**expected)


def test_a_json_schema_that_is_not_json_names_response_format():
    options = SamplingOptions(max_tokens=8, structured=StructuredOutput("json", "{'type': 'object'}"))
    with pytest.raises(
        InvalidRequestError, match="the JSON schema is not valid JSON: Expecting property"
    ) as info:
        sampling_kwargs(options)
    assert info.value.param == "response_format"


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


# --- logprobs: vLLM's dict-per-position layout, as lists and as FlatLogprobs --------------------

TOP3 = [(11, -0.2), (12, -1.9), (13, -2.5)]


def test_chosen_token_outside_the_top_k_gives_k_plus_one_entries():
    entries = vllm_position(99, -4.0, 17, TOP3)
    assert len(entries) == 4
    assert token_logprob(entries, 99, 3) == TokenLogprob(99, -4.0, ((11, -0.2), (12, -1.9), (13, -2.5)))
    assert token_logprob(entries, 99, 3).rank == 17


def test_chosen_token_inside_the_top_k_gives_k_entries_and_stays_in_top():
    entries = vllm_position(12, -1.9, 2, TOP3)
    assert len(entries) == 3
    assert list(entries) == [12, 11, 13]  # chosen first: dict order is not rank order
    assert token_logprob(entries, 12, 3) == TokenLogprob(12, -1.9, ((11, -0.2), (12, -1.9), (13, -2.5)))


def test_top_follows_rank_not_dict_order():
    entries = {
        99: Logprob(-4.0, 9),
        13: Logprob(-2.5, 3),
        11: Logprob(-0.2, 1),
        12: Logprob(-1.9, 2),
    }
    assert token_logprob(entries, 99, 3).top == ((11, -0.2), (12, -1.9), (13, -2.5))


def test_k_zero_has_only_the_chosen_token():
    assert token_logprob(vllm_position(42, -0.7, 1, []), 42, 0) == TokenLogprob(42, -0.7, ())


def test_a_tie_that_gives_the_chosen_token_a_top_rank_keeps_it_out_of_top():
    # vLLM's rank counts strictly larger logprobs: a token tied with the 2nd is rank 2 too.
    entries = vllm_position(77, -1.9, 2, TOP3)
    assert len(entries) == 4
    assert token_logprob(entries, 77, 3).top == ((11, -0.2), (12, -1.9), (13, -2.5))


def test_k_is_inferred_when_the_counters_do_not_say():
    assert token_logprob(vllm_position(99, -4.0, 17, TOP3), 99, None).top == tuple(TOP3)
    assert token_logprob(vllm_position(11, -0.2, 1, TOP3), 11, None).top == tuple(TOP3)


def logprob_output(token_ids, positions, prompt_logprobs=None, reason=None, prompt=(1, 2, 3)):
    output = fake_output("x" * len(token_ids), token_ids, reason, prompt)
    output.outputs[0].logprobs = positions
    output.prompt_logprobs = prompt_logprobs
    return output


@pytest.mark.parametrize("container", [list, FlatLogprobs])
def test_to_delta_converts_sample_logprobs_per_new_token(container):
    positions = container()
    positions.append(vllm_position(12, -1.9, 2, TOP3))
    positions.append(vllm_position(99, -4.0, 17, TOP3))
    counters = StreamCounters(num_logprobs=3)
    delta = to_delta(logprob_output([12, 99], positions), counters)
    assert delta.logprobs == [
        TokenLogprob(12, -1.9, tuple(TOP3)),
        TokenLogprob(99, -4.0, tuple(TOP3)),
    ]
    assert delta.prompt_logprobs is None


@pytest.mark.parametrize("container", [list, FlatLogprobs])
def test_to_delta_reads_only_the_last_positions(container):
    # vLLM slices logprobs[-len(token_ids):]; for an abort without tokens that is every position.
    positions = container()
    for chosen in (11, 12, 13):
        positions.append(vllm_position(chosen, -1.0, 1, [(chosen, -1.0)]))
    counters = StreamCounters(num_logprobs=1)
    assert to_delta(logprob_output([], positions, reason="abort"), counters).logprobs == []
    assert to_delta(logprob_output([13], positions), counters).logprobs == [
        TokenLogprob(13, -1.0, ((13, -1.0),))
    ]


def test_fewer_logprob_positions_than_tokens_fails_the_request():
    with pytest.raises(EngineGenerateError, match="logprobs for 1 positions and 2 new tokens"):
        to_delta(logprob_output([1, 2], [vllm_position(1, -1.0, 1, [])]), StreamCounters(num_logprobs=0))


def test_no_logprobs_requested_gives_none():
    delta = to_delta(logprob_output([5], None), StreamCounters())
    assert (delta.logprobs, delta.prompt_logprobs) == (None, None)


@pytest.mark.parametrize("container", [list, FlatLogprobs])
def test_prompt_logprobs_come_per_prompt_token_with_none_first(container):
    prompt = (101, 102, 103)
    positions = container()
    positions.append(None)  # vLLM's create_prompt_logprobs; FlatLogprobs keeps an empty position
    positions.append(vllm_position(102, -3.0, 5, [(7, -0.5), (8, -0.9)]))
    positions.append(vllm_position(103, -0.1, 1, [(103, -0.1), (9, -2.0)]))
    counters = StreamCounters(num_logprobs=None, num_prompt_logprobs=2)
    first = to_delta(logprob_output([5], None, positions, prompt=prompt), counters)
    assert first.prompt_logprobs == [
        None,
        TokenLogprob(102, -3.0, ((7, -0.5), (8, -0.9))),
        TokenLogprob(103, -0.1, ((103, -0.1), (9, -2.0))),
    ]
    # After the first output, vLLM's pop_prompt_logprobs leaves an empty list.
    assert to_delta(logprob_output([6], None, [], prompt=prompt), counters).prompt_logprobs is None


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

    def __init__(self, args, usage_context, stat_loggers=None):
        self.args, self.usage_context, self.stat_loggers = args, usage_context, stat_loggers
        self.core_hangs = False
        self.probe_seconds = 0.0  # how long the core takes to answer is_sleeping
        self.probes_cancelled = 0
        self.model_config = SimpleNamespace(max_model_len=args.max_model_len or 2048)
        self.aborted: list[str] = []
        self.abort_requested: set[str] = set()
        self.dead = False
        self.shutdowns = 0
        self.fail_with: Exception | None = None
        FakeAsyncLLM.instances.append(self)

    @classmethod
    def from_vllm_config(
        cls,
        vllm_config,
        usage_context=None,
        stat_loggers=None,
        enable_log_requests=False,
        disable_log_stats=False,
    ):
        assert usage_context is vllm_config.usage_context  # the same context for config and engine
        assert (enable_log_requests, disable_log_stats) == (
            vllm_config.args.enable_log_requests,
            vllm_config.args.disable_log_stats,
        )
        return cls(vllm_config.args, usage_context, stat_loggers)

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
                output = fake_output(
                    f"t{index} ", [100 + index], "length" if last else None, prompt["prompt_token_ids"]
                )
                if params.logprobs is not None:  # the sampled token at rank 2 behind token 7
                    output.outputs[0].logprobs = [
                        vllm_position(100 + index, -1.5, 2, [(7, -0.3), (100 + index, -1.5)])
                    ]
                yield output
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise

    async def abort(self, request_id):
        self.abort_requested.add(request_id)

    async def check_health(self):
        if self.dead:
            raise FakeVLLMEngineDead("EngineCore encountered an issue.")

    async def is_sleeping(self):  # a utility call answered by the engine-core process
        try:
            if self.core_hangs:
                await asyncio.Event().wait()
            await asyncio.sleep(self.probe_seconds)
        except asyncio.CancelledError:
            self.probes_cancelled += 1
            raise
        return False

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
    sampling_params.StructuredOutputsParams = FakeStructuredOutputsParams
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
    # where the start went, for the start-time breakdown (docs/benchmarks.md)
    assert set(engine.start_info.phases) == {"import", "config", "engine_core"}
    assert all(seconds >= 0 for seconds in engine.start_info.phases.values())


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


def test_stat_loggers_go_to_vllm_and_a_core_that_does_not_answer_fails_the_health_check(fake_vllm, tmp_path):
    from serve_app.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        make_config(compile_cache_dir=tmp_path / "c", max_model_len=64), stat_loggers=[FakeAsyncLLM]
    )
    asyncio.run(engine.start())
    llm = FakeAsyncLLM.instances[-1]
    assert llm.stat_loggers == [FakeAsyncLLM]
    assert llm.args.served_model_name == "qwen-3b"
    asyncio.run(engine.check_health())
    llm.core_hangs = True

    async def hung_check() -> int:
        with pytest.raises(
            EngineDeadError, match=r"engine core of 'qwen-3b' did not answer within 1 s .* it hangs"
        ):
            await engine.check_health()
        await asyncio.sleep(0)  # a cancelled probe runs its except block on the next turn
        return llm.probes_cancelled

    assert asyncio.run(hung_check()) == 1  # the unanswered utility call is not left behind


def test_a_core_answering_while_the_loop_is_busy_passes_the_health_check(fake_vllm, tmp_path):
    """The probe's 1 s is loop time: the front end's loop held 0.2 s at a time (as vLLM's output
    handler holds it under load) and an answer after 1.3 s of wall time is no hung core."""
    from serve_app.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine(make_config(compile_cache_dir=tmp_path / "c", max_model_len=64))
    asyncio.run(engine.start())
    llm = FakeAsyncLLM.instances[-1]
    llm.probe_seconds = 1.3

    async def busy_check():
        hog = asyncio.ensure_future(hold_loop(0.2))
        try:
            started = time.monotonic()
            await engine.check_health()
            return time.monotonic() - started
        finally:
            hog.cancel()

    assert asyncio.run(busy_check()) >= 1.3
    assert llm.probes_cancelled == 0


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


class FakeVLLMValidationError(ValueError):
    """vllm.exceptions.VLLMValidationError: a ValueError naming the field."""

    def __init__(self, message, parameter=None):
        super().__init__(message)
        self.parameter = parameter


def test_engine_builds_structured_outputs_params_and_streams_logprobs(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)
    seen = []
    fake_vllm["vllm"].SamplingParams = lambda **kwargs: seen.append(kwargs) or SimpleNamespace(**kwargs)
    sampling = SamplingOptions(
        max_tokens=2, temperature=0, logprobs=2, structured=StructuredOutput("json", '{"type": "object"}')
    )

    async def run():
        return [d async for d in engine.generate(GenerationRequest("r1", [1, 2], sampling))]

    deltas = asyncio.run(run())
    assert seen[0]["structured_outputs"] == FakeStructuredOutputsParams(json={"type": "object"})
    assert seen[0]["output_kind"].name == "DELTA"
    assert deltas[0].logprobs == [TokenLogprob(100, -1.5, ((7, -0.3), (100, -1.5)))]
    assert deltas[1].logprobs == [TokenLogprob(101, -1.5, ((7, -0.3), (101, -1.5)))]


def structured_request(kind="regex", value="[a-z]+"):
    return GenerationRequest(
        "r1", [1, 2, 3], SamplingOptions(max_tokens=4, structured=StructuredOutput(kind, value))
    )


def test_an_invalid_structured_output_from_vllms_first_iteration_names_response_format(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)
    llm = FakeAsyncLLM.instances[-1]

    async def first():
        return await anext(engine.generate(structured_request()))

    llm.fail_with = ValueError("Failed to transform regex into a grammar: unbalanced parenthesis")
    with pytest.raises(InvalidRequestError, match="Failed to transform regex") as info:
        asyncio.run(first())
    assert info.value.param == "response_format"
    # A field vLLM names keeps its name, constraint or not.
    llm.fail_with = FakeVLLMValidationError("Requested sample logprobs of 30 > 20", parameter="logprobs")
    with pytest.raises(InvalidRequestError, match="Requested sample logprobs") as info:
        asyncio.run(first())
    assert info.value.param == "logprobs"
    assert engine.stats().running == 0


def test_a_plain_value_error_without_a_constraint_names_no_field(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)
    FakeAsyncLLM.instances[-1].fail_with = ValueError("Token id 99999 is out of vocabulary")

    async def first():
        return await anext(engine.generate(greedy_request()))

    with pytest.raises(InvalidRequestError, match="out of vocabulary") as info:
        asyncio.run(first())
    assert info.value.param is None


def test_value_errors_at_construction_become_invalid_request(fake_vllm, tmp_path):
    engine = started_engine(tmp_path)

    def refuse(**kwargs):
        raise FakeVLLMValidationError("top_p must be in (0, 1], got 0.0.", parameter="top_p")

    fake_vllm["vllm"].SamplingParams = refuse
    with pytest.raises(InvalidRequestError, match=r"top_p must be in \(0, 1\]") as info:
        engine.generate(greedy_request())
    assert info.value.param == "top_p"

    fake_vllm["vllm.sampling_params"].StructuredOutputsParams = lambda **kwargs: FakeStructuredOutputsParams()
    with pytest.raises(InvalidRequestError, match="You must use one kind of structured outputs") as info:
        engine.generate(structured_request())
    assert info.value.param == "response_format"
