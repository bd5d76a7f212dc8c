"""The rules table: one test per architecture row, plus the facts every architecture shares."""

from __future__ import annotations

from dataclasses import replace

from serve_app.preflight import layouts, rules
from serve_app.preflight.checkpoint import Geometry
from serve_app.preflight.exclusions import Resolver, analyse
from tests.preflight.conftest import GOOD_ENV, check, edit_json, failures

LLAMA_PACKS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
G = Geometry(hidden=64, heads=4, kv_heads=2, head_dim=16, layers=1, vocab=128, intermediate=128,
             tied=False, dtype="BF16")  # fmt: skip


def relabel(ckpt, architecture: str) -> None:
    edit_json(ckpt / "config.json", lambda c: c.update(architectures=[architecture]))


def test_every_row_has_a_reason_and_a_source():
    for rule in rules.RULES:
        assert rule.reason and rule.source, rule
        assert rule.layout in (None, *layouts.LAYOUTS), rule


def test_fp8_needs_compute_capability_8_9():
    assert rules.min_capability("LlamaForCausalLM", "0.24.0")[0] == (8, 9)


def test_vllm_0_24_is_supported_and_pins_torch_2_11():
    row = rules.platform_rule("0.24.0+cu130")
    assert row is not None and (row.torch, row.cuda) == ("2.11.0", 13)
    assert rules.platform_rule("0.23.1") is None and rules.platform_rule("0.25.0") is None
    assert rules.supported_vllm() == [">=0.24.0,<0.25"]


def test_unknown_architecture_fails_config(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    relabel(ckpt, "GPT2LMHeadModel")
    report = check(ckpt)
    assert failures(report) == {"config"}
    assert report.result("config").detail.startswith(
        "architecture GPT2LMHeadModel is not in the preflight rules table"
    )


def test_llama(llama_checkpoint):
    assert (
        rules.layout("LlamaForCausalLM") == "llama" and rules.fused_groups("LlamaForCausalLM") == LLAMA_PACKS
    )
    assert check(llama_checkpoint).ok


def test_mistral(llama_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(llama_checkpoint)
    relabel(ckpt, "MistralForCausalLM")
    assert rules.fused_groups("MistralForCausalLM") == LLAMA_PACKS
    assert check(ckpt).ok


def test_qwen2(qwen2_checkpoint):
    assert rules.layout("Qwen2ForCausalLM") == "qwen2"
    report = check(qwen2_checkpoint)
    assert report.ok and "27 tensors match" in report.result("tensor_shapes").detail  # incl. q/k/v biases


def test_qwen3():
    expected = layouts.expected_tensors(rules.layout("Qwen3ForCausalLM"), G, set(), {}, tied=False)
    assert expected.shapes["model.layers.0.self_attn.q_norm.weight"] == (16,)
    assert "model.layers.0.self_attn.q_proj.bias" not in expected.shapes
    assert rules.fused_groups("Qwen3ForCausalLM") == LLAMA_PACKS


def test_qwen2_5_vl():
    arch = "Qwen2_5_VLForConditionalGeneration"
    assert [pkg for pkg, _ in rules.extras(arch, "0.10.1")] == ["xformers"]
    assert rules.extras(arch, "0.24.0") == []
    # vLLM hard-codes 'visual' modules as unquantized, so the vision tower needs no pattern
    modules = ["model.visual.blocks.0.attn.qkv", "lm_head"]
    analysis = analyse(
        Resolver(["lm_head"], rules.fused_groups(arch)), modules, modules, rules.must_exclude(arch, False)
    )
    assert analysis.problems == [] and analysis.decisions["model.visual.blocks.0.attn.qkv"].how == "vision"
    names = {"model.language_model.embed_tokens.weight"}
    assert layouts.text_prefix(names) == "model.language_model."


def test_pixtral(qwen2_checkpoint, copy_checkpoint):
    arch = "PixtralForConditionalGeneration"
    assert [pkg for pkg, _ in rules.extras(arch, "0.24.0")] == ["xformers"]
    modules = ["multi_modal_projector.linear_1", "lm_head"]
    analysis = analyse(Resolver(["lm_head"], {}), modules, modules, rules.must_exclude(arch, False))
    assert analysis.problems and analysis.problems[0].startswith(
        "multi_modal_projector.linear_1 must stay unquantized"
    )
    ckpt = copy_checkpoint(qwen2_checkpoint)
    relabel(ckpt, arch)
    missing = replace(GOOD_ENV, packages={"xformers": None})
    report = check(ckpt, env=missing)
    assert failures(report) == {"arch_extras"}
    assert report.result("arch_extras").detail.startswith(
        "PixtralForConditionalGeneration with vLLM 0.24.0 needs xformers: vLLM does not install xFormers"
    )
    assert report.result("tensor_shapes").status == "skipped"
    assert check(ckpt).result("arch_extras").status == "pass"
