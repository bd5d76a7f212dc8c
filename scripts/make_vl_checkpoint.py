#!/usr/bin/env python3
"""Make a ModelOpt FP8 checkpoint of a randomly initialised Qwen2.5-VL model (nothing downloaded).

The language model is quantized to FP8; the vision tower (``*visual*``) and ``lm_head`` stay in
BF16, as in NVIDIA's published Qwen2.5-VL FP8 checkpoints, whose hf_quant_config.json lists them
under ``exclude_modules``. The tokenizer is scripts/make_checkpoint.py's byte-level BPE one plus
Qwen2.5-VL's vision special tokens, and the checkpoint carries a Qwen2.5-VL
``preprocessor_config.json`` so vLLM can build its multimodal processor (it profiles the vision
tower with a dummy image at start-up).

    python scripts/make_vl_checkpoint.py --size 3b --out /tmp/ck/qwen2.5-vl-3b --device cuda
    python scripts/make_vl_checkpoint.py --size tiny --out /tmp/ck/qwen2.5-vl-tiny   # CPU, seconds
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _make_checkpoint_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "scripts" / "make_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE_CHECKPOINT = _make_checkpoint_module()
# The text geometries are make_checkpoint.py's presets (3b: Qwen2.5-3B, vocab cut to 16384).
TEXT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {**MAKE_CHECKPOINT.SIZES["tiny"], "max_position_embeddings": 4096},
    "3b": dict(MAKE_CHECKPOINT.SIZES["3b"]),
}
# The vision tower's real geometry (config.json of Qwen/Qwen2.5-VL-3B-Instruct).
VISION_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, fullatt_block_indexes=[1]),
    "3b": dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        fullatt_block_indexes=[7, 15, 23, 31],
    ),
}
VISION_COMMON: dict[str, Any] = dict(
    hidden_act="silu",
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    tokens_per_second=2,
)
# head_dim 128 (3b) is split 16/24/24 over (t, h, w); scale for smaller heads.
MROPE_SECTION = {"tiny": [2, 3, 3], "3b": [16, 24, 24]}

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2.5-VL's preprocessor_config.json, with max_pixels cut from 12845056 (16384 image tokens) to
# 1280 * 28 * 28 (1280 tokens), so vLLM's start-up profiling image fits a 4096-token context.
PREPROCESSOR_CONFIG = {
    "min_pixels": 3136,
    "max_pixels": 1003520,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}

# make_checkpoint.py's ChatML template, plus image/video parts as Qwen2.5-VL writes them.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ['image', 'image_url'] %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] in ['video', 'video_url'] %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(vocab_size: int) -> Any:
    tokenizer = MAKE_CHECKPOINT.build_tokenizer(vocab_size - len(VISION_TOKENS))
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) > vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the model's vocab {vocab_size}")
    return tokenizer


def build_config(size: str, tokenizer: Any) -> Any:
    from transformers import Qwen2_5_VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    text = dict(TEXT_SIZES[size])
    text.update(
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": MROPE_SECTION[size],
        },
        tie_word_embeddings=False,
        max_window_layers=TEXT_SIZES[size]["num_hidden_layers"],
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    vision = dict(VISION_COMMON, **VISION_SIZES[size], out_hidden_size=text["hidden_size"])
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )


def quant_config() -> dict[str, Any]:
    import modelopt.torch.quantization as mtq

    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    # FP8_DEFAULT_CFG already skips these in modelopt 0.47; say so explicitly so a future default
    # cannot quantize the vision tower or the output head of this checkpoint.
    cfg["quant_cfg"] = [
        *cfg["quant_cfg"],
        {"quantizer_name": "*visual*", "enable": False},
        {"quantizer_name": "*lm_head*", "enable": False},
    ]
    return cfg


def make_vl_checkpoint(out: Path, size: str = "3b", seed: int = 0, device: str = "cpu") -> dict[str, float]:
    """Write the checkpoint to ``out``; return the seconds each step took."""
    import modelopt.torch.quantization as mtq
    import torch
    import transformers
    from modelopt.torch.export import export_hf_checkpoint

    timings: dict[str, float] = {}
    mark = time.perf_counter()
    tokenizer = build_tokenizer(TEXT_SIZES[size]["vocab_size"])
    config = build_config(size, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model = model.to(device).eval()
    timings["init"] = time.perf_counter() - mark

    mark = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    text_vocab = len(tokenizer) - len(VISION_TOKENS)  # calibrate on text tokens only
    batches = [torch.randint(0, text_vocab, (2, 32), generator=generator) for _ in range(4)]

    def calibrate(m: Any) -> None:
        with torch.no_grad():
            for batch in batches:
                m(input_ids=batch.to(device))

    model = mtq.quantize(model, quant_config(), calibrate)
    timings["quantize"] = time.perf_counter() - mark

    mark = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(out))
    tokenizer.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    _write_generation_config(out, config.text_config.eos_token_id, config.text_config.pad_token_id)
    timings["export"] = time.perf_counter() - mark
    check_exclusions(out)
    return timings


def _write_generation_config(out: Path, eos: int, pad: int) -> None:
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update({"eos_token_id": eos, "pad_token_id": pad})
    path.write_text(json.dumps(config, indent=2) + "\n")


def check_exclusions(out: Path) -> list[str]:
    """Fail unless the export says the vision tower and lm_head are not quantized."""
    path = out / "hf_quant_config.json"
    if not path.exists():
        raise RuntimeError(f"{out}: export wrote no hf_quant_config.json")
    quant = json.loads(path.read_text()).get("quantization", {})
    excluded = quant.get("exclude_modules") or []
    if quant.get("quant_algo") != "FP8":
        raise RuntimeError(f"{path}: quant_algo is {quant.get('quant_algo')!r}, expected 'FP8'")
    for needle in ("visual", "lm_head"):
        if not any(needle in pattern for pattern in excluded):
            raise RuntimeError(f"{path}: exclude_modules {excluded} does not cover {needle!r}")
    return excluded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(TEXT_SIZES), default="3b")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the 3b size")
    parser.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    args = parser.parse_args(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out}: checkpoint exists (use --force to remake it)")
        return 0
    started = time.perf_counter()
    timings = make_vl_checkpoint(args.out, args.size, args.seed, args.device)
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    excluded = check_exclusions(args.out)
    print(
        f"{args.out}: qwen2_5_vl {args.size} ModelOpt FP8 checkpoint in "
        f"{time.perf_counter() - started:.1f} s ({steps}); exclude_modules={excluded}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
