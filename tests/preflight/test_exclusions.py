"""Exclusion patterns resolved as vLLM's ModelOpt config resolves them."""

from __future__ import annotations

import pytest

from serve_app.preflight import rules
from serve_app.preflight.exclusions import Match, Resolver, analyse, expand_patterns
from tests.preflight.conftest import check, edit_json, edit_quant, edit_tensors, failures

FUSED = rules.fused_groups("LlamaForCausalLM")


def linears(layers: int) -> list[str]:
    names = ["lm_head"]
    for i in range(layers):
        p = f"model.layers.{i}."
        names += [f"{p}self_attn.{x}_proj" for x in "qkvo"] + [
            f"{p}mlp.{x}_proj" for x in ("gate", "up", "down")
        ]
    return names


def test_name_star_also_means_name_and_name_dot_star():
    assert expand_patterns(["model.layers.1*", "lm_head", "model.visual.*"]) == {
        "model.layers.1": "model.layers.1*",
        "model.layers.1.*": "model.layers.1*",
        "lm_head": "lm_head",
        "model.visual.*": "model.visual.*",
    }


@pytest.mark.parametrize(
    ("patterns", "prefix", "expected"),
    [
        (["lm_head"], "lm_head", Match(True, "exact", "lm_head")),
        (["self_attn"], "model.layers.0.self_attn.o_proj", Match(True, "substring", "self_attn")),
        (
            ["mlp.down_proj"],
            "language_model.model.layers.0.mlp.down_proj",
            Match(True, "substring", "mlp.down_proj"),
        ),
        (
            ["*.layers.[0-1].mlp.*"],
            "model.layers.1.mlp.down_proj",
            Match(True, "fnmatch", "*.layers.[0-1].mlp.*"),
        ),
        (
            ["model.layers.0.mlp*"],
            "model.layers.0.mlp.down_proj",
            Match(True, "substring", "model.layers.0.mlp*"),
        ),
        (["lm_head"], "model.layers.0.mlp.down_proj", Match(False)),
        ([], "visual.blocks.0.attn.qkv", Match(True, "vision")),
    ],
)
def test_vllm_decision_order(patterns, prefix, expected):
    assert Resolver(patterns, FUSED).vllm_decision(prefix)[0] == expected


def test_fused_pack_is_excluded_only_when_every_shard_is_listed():
    p = "model.layers.0.self_attn."
    both = Resolver([f"{p}q_proj", f"{p}k_proj", f"{p}v_proj"], FUSED)
    assert both.vllm_decision(f"{p}qkv_proj") == (Match(True, "exact", f"{p}q_proj"), False)
    partial = Resolver([f"{p}q_proj"], FUSED)
    assert partial.vllm_decision(f"{p}qkv_proj") == (Match(False), True)  # vLLM raises here


def test_partial_pack_fails_and_whole_pack_passes():
    partial = analyse(Resolver(["model.layers.0.mlp.gate_proj"], FUSED), linears(2), linears(2), [])
    assert partial.problems == [
        "model.layers.0.mlp: gate_proj excluded but up_proj quantized; vLLM fuses gate_proj/up_proj into one "
        "gate_up_proj with one precision (it stops with 'Detected some but not all shards ... are quantized' "
        "or loads garbage)"
    ]
    whole = analyse(Resolver(["model.layers.0.mlp*"], FUSED), linears(2), linears(2), [])
    assert whole.problems == [] and whole.excluded("model.layers.0.mlp.gate_proj")
    assert not whole.excluded("model.layers.1.mlp.gate_proj")


def test_shard_patterns_that_miss_the_fused_name_fail():
    analysis = analyse(Resolver(["*.q_proj", "*.k_proj", "*.v_proj"], FUSED), linears(1), linears(1), [])
    assert analysis.problems == [
        "model.layers.0.self_attn.qkv_proj: the patterns exclude q_proj/k_proj/v_proj one by one, but vLLM "
        "checks the fused name qkv_proj, which none of them matches, so vLLM would quantize it"
    ]


def test_pattern_matching_more_than_meant_warns():
    analysis = analyse(Resolver(["model.layers.1"], FUSED), linears(20), linears(20), [])
    assert analysis.problems == []
    assert analysis.warnings == [
        "pattern 'model.layers.1' also matches model.layers.10, model.layers.11, model.layers.12, "
        "model.layers.13 and 6 more (vLLM matches exclusions as substrings); "
        "write 'model.layers.1.*' if only that module was meant"
    ]
    assert analysis.excluded("model.layers.19.mlp.down_proj")
    star = analyse(Resolver(["model.layers.1*"], FUSED), linears(20), linears(20), [])
    assert star.warnings and star.warnings[0].startswith(
        "pattern 'model.layers.1*' also matches model.layers.10"
    )
    exact = analyse(Resolver(["model.layers.1.*"], FUSED), linears(20), linears(20), [])
    assert exact.warnings == [] and not exact.excluded("model.layers.10.mlp.down_proj")


def test_pattern_matching_nothing_warns():
    analysis = analyse(Resolver(["lm_head", "model.layerz.0*"], FUSED), linears(1), linears(1), [])
    assert analysis.warnings == ["pattern 'model.layerz.0*' matches no module of this checkpoint"]


def test_tied_embeddings_need_lm_head_excluded(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    edit_json(ckpt / "config.json", lambda c: c.update(tie_word_embeddings=True))
    edit_tensors(ckpt, lambda t: t.pop("lm_head.weight"))
    tied = check(ckpt)  # lm_head still in the exclude lists, as ModelOpt exports a tied model
    assert tied.ok
    assert tied.result("exclusions").status == "pass"  # the pattern names the lm_head vLLM builds
    edit_quant(
        ckpt, lambda q: q.update({k: ["model.embed_tokens"] for k in ("ignore", "exclude_modules") if k in q})
    )
    report = check(ckpt)
    assert failures(report) == {"exclusions"}
    assert report.result("exclusions").detail.startswith(
        "lm_head must stay unquantized (with tie_word_embeddings"
    )


def test_a_pattern_naming_the_fused_module_excludes_the_whole_pack():
    fused = "model.layers.0.self_attn.qkv_proj"
    analysis = analyse(Resolver([fused], FUSED), linears(1), linears(1), [])
    assert analysis.problems == [] and analysis.warnings == []
    assert analysis.decisions["model.layers.0.self_attn.k_proj"] == Match(True, "fnmatch", fused)
