"""Every SamplingOptions field on the CPU reference engine, with vLLM's meaning (engines/cpu_sampling.py).

Engine scenarios run the tiny random-weight checkpoint in float32 (tests/engines/cpu_helpers.py says
why); what they assert is what a user would see in the output.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from serve_app.engines.cpu_sampling import (
    LogitsPipeline,
    apply_presence_frequency,
    prompt_logprobs,
    random_sample,
    validate_sampling,
)
from serve_app.engines.fp8_loading import load_dequantized_model
from serve_app.engines.protocol import SamplingOptions
from serve_app.errors import InvalidRequestError
from tests.engines.cpu_helpers import PROMPT, collect, generate, request, run, text, tokens

ENDOFTEXT = 0  # <|endoftext|>: a special token that is not EOS (<|im_end|> is 2)


@pytest.fixture(scope="module")
def greedy(qwen2_checkpoint) -> list[int]:
    """The plain greedy output (24 tokens, EOS ignored) of the float32 model: it loops."""
    return tokens(generate(qwen2_checkpoint, request())[0])


def _decode(checkpoint, ids: list[int], skip_special_tokens: bool = True) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)


def _max_repeats(ids: list[int]) -> int:
    return max(Counter(ids).values())


# -------------------------------------------------------------------------- logits processing


def test_logit_bias_makes_every_greedy_token_that_token(qwen2_checkpoint, greedy):
    target = next(token for token in range(10, 400) if token not in greedy)
    (deltas,) = generate(qwen2_checkpoint, request(logit_bias=((target, 100.0),)))
    assert tokens(deltas) == [target] * 24


def test_allowed_token_ids_restrict_sampled_output(qwen2_checkpoint):
    allowed = (5, 17, 300, 301)
    runs = generate(
        qwen2_checkpoint,
        *(request(f"s{seed}", temperature=1.0, seed=seed, allowed_token_ids=allowed) for seed in range(3)),
    )
    assert all(set(tokens(deltas)) <= set(allowed) for deltas in runs)
    assert len({token for deltas in runs for token in tokens(deltas)}) > 1  # sampled, not one token


def test_allowed_token_ids_beat_logit_bias(qwen2_checkpoint, greedy):
    blocked = next(token for token in range(10, 400) if token not in greedy)
    (deltas,) = generate(qwen2_checkpoint, request(allowed_token_ids=(7, 8), logit_bias=((blocked, 100.0),)))
    assert set(tokens(deltas)) <= {7, 8}


def test_stop_token_ids_stop_even_with_ignore_eos(qwen2_checkpoint, greedy):
    index = next(
        i for i in range(2, 24) if greedy[i] not in greedy[:i] and _decode(qwen2_checkpoint, [greedy[i]])
    )
    stop = greedy[index]
    plain, shown = generate(
        qwen2_checkpoint,
        request(stop_token_ids=(stop,)),
        request("shown", stop_token_ids=(stop,), include_stop_str_in_output=True),
    )
    assert tokens(plain) == greedy[: index + 1]  # the stop token is in token_ids ...
    assert plain[-1].finish_reason == "stop"
    assert text(plain) == _decode(qwen2_checkpoint, greedy[:index])  # ... but not in the text
    assert text(shown) == _decode(qwen2_checkpoint, greedy[: index + 1])


def test_min_tokens_delays_stop_token_ids(qwen2_checkpoint, greedy):
    stop = greedy[1]
    early, delayed = generate(
        qwen2_checkpoint,
        request(stop_token_ids=(stop,)),
        request("late", stop_token_ids=(stop,), min_tokens=8),
    )
    assert tokens(early) == greedy[:2]
    assert len(tokens(delayed)) >= 8
    assert stop not in tokens(delayed)[:8]


def test_min_tokens_delays_eos(qwen2_checkpoint, copy_checkpoint, greedy):
    eos = greedy[1]
    checkpoint = copy_checkpoint(qwen2_checkpoint)
    path = checkpoint / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": [2, eos]}))
    early, delayed, ignored = generate(
        checkpoint,
        request(ignore_eos=False),
        request("late", ignore_eos=False, min_tokens=6),
        request("ignored", min_tokens=6),
    )
    assert tokens(early) == greedy[:2]
    assert early[-1].finish_reason == "stop"
    assert len(tokens(delayed)) >= 6
    assert eos not in tokens(delayed)[:6]
    assert eos not in tokens(ignored)[:6]  # min_tokens masks EOS whatever ignore_eos says (vLLM)


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 1e-9},  # below vLLM's _SAMPLING_EPS: greedy, and no NaN from dividing by it
        {"temperature": 1.0, "top_k": 1},
        {"temperature": 1.0, "top_p": 5e-324},  # keeps the most likely token, never an empty set
        {"temperature": 1.0, "min_p": 1.0},
        {"temperature": 0.0, "top_k": 3, "top_p": 0.5, "min_p": 0.5},  # ignored when greedy
    ],
)
def test_settings_that_leave_one_token_act_greedy(qwen2_checkpoint, greedy, options):
    (deltas,) = generate(qwen2_checkpoint, request(seed=3, **options))
    assert tokens(deltas) == greedy


def test_seeds_reproduce_with_every_sampling_option(qwen2_checkpoint):
    options = {
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.9,
        "min_p": 0.02,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.3,
        "repetition_penalty": 1.2,
        "logit_bias": ((5, 2.0),),
    }
    first, again, other = generate(
        qwen2_checkpoint,
        request("a", seed=11, **options),
        request("b", seed=11, **options),
        request("c", seed=12, **options),
    )
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)


@pytest.mark.parametrize(
    ("option", "value", "fewer_repeats"),
    [
        ("frequency_penalty", 2.0, True),
        ("presence_penalty", 2.0, True),
        ("repetition_penalty", 2.0, True),
        ("frequency_penalty", -2.0, False),
        ("presence_penalty", -2.0, False),
        ("repetition_penalty", 0.5, False),
    ],
)
def test_penalties_change_a_greedy_loop_in_their_direction(
    qwen2_checkpoint, greedy, option, value, fewer_repeats
):
    (deltas,) = generate(qwen2_checkpoint, request(**{option: value}))
    penalised = tokens(deltas)
    if fewer_repeats:
        assert _max_repeats(penalised) < _max_repeats(greedy)
    else:
        assert _max_repeats(penalised) > _max_repeats(greedy)


def test_skip_special_tokens_false_shows_special_tokens(qwen2_checkpoint):
    forced = {"logit_bias": ((ENDOFTEXT, 100.0),), "max_tokens": 3}
    hidden, shown = generate(
        qwen2_checkpoint, request(**forced), request("s", skip_special_tokens=False, **forced)
    )
    assert tokens(hidden) == tokens(shown) == [ENDOFTEXT] * 3
    assert text(hidden) == ""
    assert text(shown) == "<|endoftext|>" * 3


def test_include_stop_str_in_output_keeps_the_stop_string(qwen2_checkpoint):
    (full,) = generate(qwen2_checkpoint, request())
    whole = text(full)
    start = next(i for i in range(2, len(whole) - 3) if "\ufffd" not in whole[i : i + 3])
    stop = whole[start : start + 3]
    cut, kept = generate(
        qwen2_checkpoint,
        request(stop=(stop,)),
        request("kept", stop=(stop,), include_stop_str_in_output=True),
    )
    assert text(cut) == whole[: whole.index(stop)]
    assert text(kept) == whole[: whole.index(stop) + len(stop)]
    assert kept[-1].finish_reason == "stop"


def test_no_token_left_fails_the_request_with_a_clear_error(qwen2_checkpoint):
    async def scenario(engine):
        with pytest.raises(InvalidRequestError, match="no token can be sampled") as info:
            await collect(engine, request(allowed_token_ids=(2,), min_tokens=2, ignore_eos=False))
        assert info.value.param == "allowed_token_ids"  # the client's constraints: a 400, not a 500
        return await collect(engine, request("after"))  # the engine is still fine

    assert run(qwen2_checkpoint, scenario)[-1].finish_reason == "length"


# ---------------------------------------------------------------------------------- logprobs


def _reference_logits(checkpoint, prompt: list[int], max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    """transformers' own greedy generation: the tokens and each step's raw logits, [steps, vocab]."""
    model = load_dequantized_model(checkpoint)
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt]),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=[],
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return output.sequences[0, len(prompt) :].tolist(), torch.cat(output.logits).float()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_logprobs_equal_transformers_log_softmax(checkpoint_factory, arch):
    checkpoint = checkpoint_factory(arch, "tiny")
    (deltas,) = generate(checkpoint, request(max_tokens=8, logprobs=5), dtype=None)
    expected_tokens, logits = _reference_logits(checkpoint, PROMPT, 8)
    reference = torch.log_softmax(logits, dim=-1)

    entries = [entry for delta in deltas for entry in delta.logprobs]
    assert tokens(deltas) == expected_tokens
    assert [entry.token_id for entry in entries] == expected_tokens
    for step, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(float(reference[step, entry.token_id]), abs=1e-4)
        assert len(entry.top) == 5
        values = [value for _, value in entry.top]
        assert values == sorted(values, reverse=True)
        assert values == pytest.approx(torch.topk(reference[step], 5).values.tolist(), abs=1e-4)
        assert all(
            value == pytest.approx(float(reference[step, token]), abs=1e-4) for token, value in entry.top
        )
        assert entry.logprob == pytest.approx(values[0], abs=1e-4)  # greedy picked the most likely


def test_logprobs_are_raw_whatever_the_processing(qwen2_checkpoint):
    """The logprobs are the model's, before bias, penalties and temperature (raw_logprobs)."""
    plain, processed = generate(
        qwen2_checkpoint,
        request(max_tokens=1, logprobs=3),
        request("p", max_tokens=1, logprobs=3, temperature=0.5, seed=1, logit_bias=((9, 5.0),), top_k=2),
    )
    assert processed[0].logprobs[0].top == plain[0].logprobs[0].top


def test_logprobs_zero_gives_the_chosen_token_only_and_none_gives_nothing(qwen2_checkpoint):
    zero, none = generate(qwen2_checkpoint, request(max_tokens=4, logprobs=0), request("n", max_tokens=4))
    entries = [entry for delta in zero for entry in delta.logprobs]
    assert [entry.token_id for entry in entries] == tokens(zero)
    assert all(entry.top == () and entry.logprob <= 0 for entry in entries)
    assert all(delta.logprobs is None and delta.prompt_logprobs is None for delta in none)


def test_prompt_logprobs_equal_transformers_log_softmax(qwen2_checkpoint, greedy):
    (deltas,) = generate(qwen2_checkpoint, request(prompt_logprobs=4), dtype=None)
    model = load_dequantized_model(qwen2_checkpoint)
    with torch.inference_mode():
        reference = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0].float(), dim=-1)

    entries = deltas[0].prompt_logprobs
    assert all(delta.prompt_logprobs is None for delta in deltas[1:])
    assert len(entries) == len(PROMPT)
    assert entries[0] is None
    for position, entry in enumerate(entries[1:], start=1):
        assert entry.token_id == PROMPT[position]
        assert entry.logprob == pytest.approx(float(reference[position - 1, PROMPT[position]]), abs=1e-4)
        assert [token for token, _ in entry.top] == torch.topk(reference[position - 1], 4).indices.tolist()
        assert [value for _, value in entry.top] == pytest.approx(
            torch.topk(reference[position - 1], 4).values.tolist(), abs=1e-4
        )


def test_prompt_logprobs_do_not_change_the_output(qwen2_checkpoint, greedy):
    (deltas,) = generate(qwen2_checkpoint, request(prompt_logprobs=0))
    assert tokens(deltas) == greedy
    assert all(entry is None or entry.top == () for entry in deltas[0].prompt_logprobs)


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("changes", "param", "message"),
    [
        ({"top_k": -2}, "top_k", r"top_k must be 0 or -1 \(disabled\), or at least 1, got -2"),
        ({"min_p": 1.5}, "min_p", r"min_p must be in \[0, 1\], got 1.5"),
        ({"presence_penalty": 2.5}, "presence_penalty", r"presence_penalty must be in \[-2, 2\], got 2.5"),
        ({"frequency_penalty": -3.0}, "frequency_penalty", r"frequency_penalty must be in \[-2, 2\]"),
        ({"repetition_penalty": 0.0}, "repetition_penalty", "repetition_penalty must be greater than 0"),
        ({"temperature": math.nan}, "temperature", "temperature must be a finite number, got nan"),
        ({"min_tokens": -1}, "min_tokens", "min_tokens must be >= 0, got -1"),
        ({"min_tokens": 30}, "min_tokens", "min_tokens must be <= max_tokens=24, got 30"),
        ({"logprobs": -1}, "logprobs", r"logprobs must be in \[0, 20\], got -1"),
        ({"prompt_logprobs": 21}, "prompt_logprobs", r"prompt_logprobs must be in \[0, 20\], got 21"),
        ({"stop_token_ids": (3, 466)}, "stop_token_ids", r"outside the vocabulary \[0, 466\): \[466\]"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias", r"logit_bias has token ids outside the vocabulary"),
        ({"logit_bias": ((1, math.inf),)}, "logit_bias", "logit_bias values must be finite numbers"),
        ({"allowed_token_ids": ()}, "allowed_token_ids", "allowed_token_ids must not be empty"),
        (
            {"allowed_token_ids": (1, 9999)},
            "allowed_token_ids",
            r"outside the vocabulary \[0, 466\): \[9999\]",
        ),
    ],
)
def test_out_of_range_options_are_refused_naming_the_field(qwen2_checkpoint, changes, param, message):
    async def scenario(engine):
        with pytest.raises(InvalidRequestError, match=message) as caught:
            engine.generate(request(**changes))
        return caught.value.param

    assert run(qwen2_checkpoint, scenario) == param


def test_vllm_edge_values_are_accepted():
    validate_sampling(
        SamplingOptions(max_tokens=4, top_k=-1, min_p=1.0, presence_penalty=-2.0, min_tokens=4), 10
    )
    validate_sampling(
        SamplingOptions(max_tokens=4, logprobs=0, prompt_logprobs=20, allowed_token_ids=(9,)), 10
    )


# ------------------------------------------------------------------------------ the pipeline


def test_pipeline_applies_vllm_penalty_formulas():
    options = SamplingOptions(
        max_tokens=4, repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25
    )
    pipeline = LogitsPipeline(options, prompt_token_ids=[0, 1], vocab_size=5, eos_token_ids=frozenset())
    logits = torch.tensor([4.0, -4.0, 4.0, -4.0, 1.0])
    processed = pipeline.process(logits, output_token_ids=[2, 2, 3])
    # 0, 1 only in the prompt: repetition only (divide positive, multiply negative);
    # 2 twice and 3 once in the output: repetition, then frequency * count + presence.
    assert processed.tolist() == pytest.approx([2.0, -8.0, 2.0 - 0.5 - 0.5, -8.0 - 0.25 - 0.5, 1.0])


def test_presence_and_frequency_count_only_output_tokens():
    scores = torch.zeros(1, 4)
    assert apply_presence_frequency(scores, [], 2.0, 2.0) is scores
    assert apply_presence_frequency(scores, [1, 1, 3], 1.0, 0.5)[0].tolist() == [0.0, -2.0, 0.0, -1.5]


def test_min_tokens_and_allowed_ids_mask_before_bias_adds():
    options = SamplingOptions(
        max_tokens=4, min_tokens=2, allowed_token_ids=(0, 1, 2), logit_bias=((3, 50.0), (1, 1.0))
    )
    pipeline = LogitsPipeline(options, prompt_token_ids=[0], vocab_size=4, eos_token_ids=frozenset({2}))
    early = pipeline.process(torch.zeros(4), output_token_ids=[0])
    late = pipeline.process(torch.zeros(4), output_token_ids=[0, 1])
    assert early.tolist() == [0.0, 1.0, -math.inf, -math.inf]
    assert late.tolist() == [0.0, 1.0, 0.0, -math.inf]


def test_random_sample_draws_only_allowed_tokens_and_follows_the_distribution():
    generator = torch.Generator().manual_seed(0)
    masked = torch.tensor([-math.inf, 0.0, -math.inf, math.log(3.0)])
    draws = Counter(random_sample(masked, generator) for _ in range(2000))
    assert set(draws) == {1, 3}
    assert 0.70 < draws[3] / 2000 < 0.80  # probabilities 1/4 and 3/4
    assert random_sample(torch.tensor([-math.inf, 5.0]), generator) == 1


def test_prompt_logprobs_need_one_row_per_prompt_token():
    with pytest.raises(ValueError, match="2 rows of logits for a prompt of 3 tokens"):
        prompt_logprobs(torch.zeros(2, 5), [1, 2, 3], 1)
