"""The CPU engine on a tiny Qwen2.5-VL FP8 checkpoint: image prompts, greedy = transformers' generate."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from serve_app.deployments.vision import ImagePrompts
from serve_app.engines.fp8_loading import load_dequantized_model
from serve_app.engines.protocol import GenerationRequest
from serve_app.errors import InvalidRequestError
from tests.engines.cpu_helpers import GREEDY, collect, run, text, tokens

MAX_TOKENS = 16


def _image_prompt(checkpoint, images, question="What is in the picture?"):
    """(expanded prompt ids, PromptMedia) for one user message with ``images`` then ``question``."""
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    parts = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": parts}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    return ImagePrompts(checkpoint, tokenizer).media(ids, list(images), tensors=True)


def _pictures():
    gradient = Image.linear_gradient("L").resize((112, 84)).convert("RGB")
    return [Image.new("RGB", (64, 48), (200, 30, 40)), gradient]


def test_image_prompt_expands_placeholders_by_the_grid(vl_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(str(vl_checkpoint))
    prompts = ImagePrompts(vl_checkpoint, tokenizer)
    expanded, media = _image_prompt(vl_checkpoint, _pictures())
    # 64x48 -> resized to 56x56 (min_pixels 3136): 4x4 patches -> 4 tokens; 112x84: 8x6 -> 12 tokens
    assert media.tensors["image_grid_thw"].tolist() == [[1, 4, 4], [1, 6, 8]]
    assert prompts.tokens_per_image(_pictures()) == [4, 12]
    placeholder = prompts.image_token_id
    assert media.prompt_token_ids.count(placeholder) == 2
    assert expanded.count(placeholder) == 16
    assert len(expanded) == len(media.prompt_token_ids) + 14
    assert media.tensors["mm_token_type_ids"].sum().item() == 16


def test_placeholders_must_match_the_images(vl_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(str(vl_checkpoint))
    ids = tokenizer.encode("no placeholder here", add_special_tokens=False)
    with pytest.raises(InvalidRequestError, match=r"rendered 0 image placeholder\(s\) for 1 image\(s\)"):
        ImagePrompts(vl_checkpoint, tokenizer).media(ids, _pictures()[:1], tensors=False)


def test_greedy_with_images_matches_transformers_generate(vl_checkpoint):
    expanded, media = _image_prompt(vl_checkpoint, _pictures())
    sampling = dataclasses.replace(GREEDY, max_tokens=MAX_TOKENS)
    tokenizer = AutoTokenizer.from_pretrained(str(vl_checkpoint))
    placeholder = ImagePrompts(vl_checkpoint, tokenizer).image_token_id
    text_only = [token for token in media.prompt_token_ids if token != placeholder]

    async def scenario(engine):
        # A text-only request runs between two image requests: each keeps its own M-RoPE offset.
        first = await collect(engine, GenerationRequest("img-1", expanded, sampling, media))
        plain = await collect(engine, GenerationRequest("text", text_only, sampling))
        together = await asyncio.gather(
            collect(engine, GenerationRequest("img-2", expanded, sampling, media)),
            collect(engine, GenerationRequest("text-2", text_only, sampling)),
        )
        return first, plain, together

    first, plain, (second, plain_again) = run(vl_checkpoint, scenario, dtype="float32")

    model = load_dequantized_model(vl_checkpoint, dtype="float32")
    tensors = media.tensors
    with torch.inference_mode():
        output = model.generate(
            input_ids=torch.tensor([expanded]),
            attention_mask=torch.ones(1, len(expanded), dtype=torch.long),
            pixel_values=tensors["pixel_values"],
            image_grid_thw=tensors["image_grid_thw"],
            mm_token_type_ids=tensors["mm_token_type_ids"],
            do_sample=False,
            max_new_tokens=MAX_TOKENS,
            eos_token_id=[],
            pad_token_id=0,
        )
    expected = output[0, len(expanded) :].tolist()
    assert len(expected) == MAX_TOKENS
    assert tokens(first) == expected
    assert tokens(second) == expected  # interleaved with a text request, same tokens
    assert tokens(plain) == tokens(plain_again)
    assert {delta.prompt_tokens for delta in first} == {len(expanded)}
    assert text(first) == text(second)


def test_images_to_a_text_only_checkpoint_are_refused(qwen2_checkpoint, vl_checkpoint):
    _, media = _image_prompt(vl_checkpoint, _pictures()[:1])

    async def scenario(engine):
        with pytest.raises(InvalidRequestError, match="model 'tiny' does not take images"):
            engine.generate(GenerationRequest("r", [1, 2, 3], GREEDY, media))

    run(qwen2_checkpoint, scenario)
