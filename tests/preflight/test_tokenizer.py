"""Check 10: the tokenizer loads, fits the embedding and has a chat template."""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from tests.preflight.conftest import check, edit_json, failures


def vocab_size(ckpt) -> int:
    return json.loads((ckpt / "config.json").read_text())["vocab_size"]


def test_clean_tokenizer(qwen2_checkpoint):
    size = Tokenizer.from_file(str(qwen2_checkpoint / "tokenizer.json")).get_vocab_size(
        with_added_tokens=True
    )
    assert check(qwen2_checkpoint).result("tokenizer").detail == (
        f"tokenizer.json loads: {size} tokens (vocab_size {vocab_size(qwen2_checkpoint)}); "
        "chat template from chat_template.jinja"
    )


def test_missing_chat_template_warns(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    (ckpt / "chat_template.jinja").unlink()
    report = check(ckpt)
    result = report.result("tokenizer")
    assert report.ok and result.status == "warn"
    assert "no chat template, so /v1/chat/completions for this model answers 400" in result.detail


def test_template_in_tokenizer_config(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    template = (ckpt / "chat_template.jinja").read_text()
    (ckpt / "chat_template.jinja").unlink()
    edit_json(ckpt / "tokenizer_config.json", lambda c: c.update(chat_template=template))
    assert check(ckpt).result("tokenizer").detail.endswith("chat template from tokenizer_config.json")


def test_tokenizer_larger_than_the_embedding_fails(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    vocab = vocab_size(ckpt)
    tokenizer.add_tokens([f"<extra_{i}>" for i in range(vocab + 1 - tokenizer.get_vocab_size())])
    tokenizer.save(str(ckpt / "tokenizer.json"))
    report = check(ckpt)
    assert failures(report) == {"tokenizer"}
    assert report.result("tokenizer").detail == (
        f"tokenizer has {vocab + 1} tokens but the embedding has vocab_size {vocab}: "
        f"ids >= {vocab} crash the GPU kernel (device-side assert)"
    )


def test_broken_or_missing_tokenizer_fails(qwen2_checkpoint, copy_checkpoint):
    ckpt = copy_checkpoint(qwen2_checkpoint)
    (ckpt / "tokenizer.json").write_text("{not json")
    report = check(ckpt)
    assert failures(report) == {"tokenizer"}
    assert report.result("tokenizer").detail.startswith("tokenizer does not load: Exception:")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    assert check(ckpt).result("tokenizer").detail == f"no tokenizer files in {ckpt}"
