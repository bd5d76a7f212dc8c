#!/usr/bin/env python3
"""Make a ModelOpt FP8 checkpoint from a randomly initialised Hugging Face model.

Uses the real nvidia-modelopt: ``mtq.quantize(model, mtq.FP8_DEFAULT_CFG, calibrate)`` then
``export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=...)`` (without ``dtype`` the
export fails under transformers 5). Adds a byte-level BPE tokenizer with a chat template whose
vocabulary is no larger than the model's; the chat template has tool support in the family's
format (Qwen2.5's for qwen2, Llama 3.1's for llama). Nothing is downloaded.

    python scripts/make_checkpoint.py --arch qwen2 --size tiny --out checkpoints/qwen2-tiny
    python scripts/make_checkpoint.py --arch qwen2 --size 3b --out /tmp/ck/qwen2.5-3b --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# geometry presets: (hidden, intermediate, layers, heads, kv_heads, vocab, max_position)
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1024,
        max_position_embeddings=2048,
    ),
    "small": dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=2048,
        max_position_embeddings=4096,
    ),
    # Qwen2.5-3B geometry (vocab cut to 16384 so random-weight checkpoints stay small to make).
    "3b": dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=16384,
        max_position_embeddings=32768,
    ),
    # Llama-3-8B geometry.
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=16384,
        max_position_embeddings=8192,
    ),
}

ARCHITECTURES: dict[str, tuple[str, str]] = {
    # arch flag: (transformers config class, architecture name in config.json)
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
}

# Chat templates. Without tools both render every message as <|im_start|>role\ncontent<|im_end|>\n
# (ChatML; the only special tokens this tokenizer has). With tools, each follows its family:
# Qwen2.5's template (its tokenizer_config.json): a system block listing the tools in <tools>, calls
# written <tool_call>{"name", "arguments"}</tool_call>, results as <tool_response> in a user turn
# (vLLM's `hermes` parser). Llama 3.1's (tools_in_user_message): the tools as JSON before the first
# user message, calls as {"name", "parameters"} JSON, results in an `ipython` turn (`llama3_json`).
_PLAIN = "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
_GENERATION = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
QWEN_TOOLS_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
)
QWEN2_CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] }}{% else %}"
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.{% endif %}"
    + QWEN_TOOLS_PROMPT
    + "{% endif %}{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant"
    "{% if message['content'] %}\n{{ message['content'] }}{% endif %}"
    "{% for call in message['tool_calls'] %}\n<tool_call>\n"
    '{"name": "{{ call[\'function\'][\'name\'] }}", "arguments": '
    "{{ call['function']['arguments'] | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ message['content'] }}\n</tool_response>"
    "{% if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}" + _PLAIN + "{% endif %}{% endfor %}" + _GENERATION
)
LLAMA_TOOLS_PROMPT = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\nRespond in the format "
    '{"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n{% for tool in tools %}{{ tool | tojson }}\n\n{% endfor %}"
)
LLAMA_CHAT_TEMPLATE = (
    "{% set ns = namespace(tools_shown=false) %}{% for message in messages %}"
    "{% if message['role'] == 'assistant' and message['tool_calls'] %}<|im_start|>assistant\n"
    "{% for call in message['tool_calls'] %}{% if not loop.first %}; {% endif %}"
    '{"name": "{{ call[\'function\'][\'name\'] }}", "parameters": '
    "{{ call['function']['arguments'] | tojson }}}{% endfor %}<|im_end|>\n"
    "{% elif message['role'] == 'tool' %}<|im_start|>ipython\n{{ message['content'] }}<|im_end|>\n"
    "{% elif tools and message['role'] == 'user' and not ns.tools_shown %}"
    "{% set ns.tools_shown = true %}<|im_start|>user\n"
    + LLAMA_TOOLS_PROMPT
    + "{{ message['content'] }}<|im_end|>\n"
    "{% else %}" + _PLAIN + "{% endif %}{% endfor %}" + _GENERATION
)


def _keep_newlines(template: str) -> str:
    """transformers renders with trim_blocks, which drops a newline right after a block tag."""
    return template.replace("%}\n", "%}{{ '\\n' }}")


CHAT_TEMPLATES = {"qwen2": _keep_newlines(QWEN2_CHAT_TEMPLATE), "llama": _keep_newlines(LLAMA_CHAT_TEMPLATE)}
CHAT_TEMPLATE = CHAT_TEMPLATES["qwen2"]  # the default (scripts that build a tokenizer alone)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "ModelOpt quantizes large language models to FP8 for fast inference on GPUs.",
    "Ray Serve scales replicas across a cluster; vLLM batches requests continuously.",
    "Hello, world! How are you today? I am a small random model.",
    "user assistant system: answer the question in one sentence please.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
]


def build_tokenizer(vocab_size: int, chat_template: str = CHAT_TEMPLATE) -> Any:
    """A byte-level BPE tokenizer trained in memory, with a chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    budget = min(vocab_size, 1024)  # 256 bytes + merges + specials; never above the model's vocab
    trainer = trainers.BpeTrainer(
        vocab_size=budget,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    fast.chat_template = chat_template
    if len(fast) > vocab_size:
        raise ValueError(f"tokenizer has {len(fast)} tokens, more than the model's vocab {vocab_size}")
    return fast


def build_model(
    arch: str, geometry: dict[str, int], seed: int, device: str, overrides: dict[str, Any]
) -> Any:
    import torch
    import transformers

    config_cls_name, arch_name = ARCHITECTURES[arch]
    config_cls = getattr(transformers, config_cls_name)
    config = config_cls(**geometry, tie_word_embeddings=False, architectures=[arch_name], **overrides)
    torch.manual_seed(seed)
    # Initialise on the target device: random init of an 8B model on the CPU takes minutes.
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def quantize_fp8(model: Any, vocab_limit: int, seed: int) -> Any:
    import modelopt.torch.quantization as mtq
    import torch

    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    batches = [torch.randint(0, vocab_limit, (2, 32), generator=generator) for _ in range(4)]

    def calibrate(m: Any) -> None:
        with torch.no_grad():
            for batch in batches:
                m(batch.to(device))

    return mtq.quantize(model, mtq.FP8_DEFAULT_CFG, calibrate)


def make_checkpoint(
    out: Path,
    arch: str = "qwen2",
    size: str = "tiny",
    seed: int = 0,
    device: str = "cpu",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Write a ModelOpt FP8 checkpoint with tokenizer to ``out`` and return it."""
    import torch
    from modelopt.torch.export import export_hf_checkpoint

    geometry = dict(SIZES[size])
    geometry.update({k: v for k, v in (overrides or {}).items() if k in geometry})
    extra = {k: v for k, v in (overrides or {}).items() if k not in geometry}
    tokenizer = build_tokenizer(geometry["vocab_size"], CHAT_TEMPLATES[arch])
    if size in ("tiny", "small") and "vocab_size" not in (overrides or {}):
        # Every id the random model can emit then decodes to text, so demo answers are not empty.
        geometry["vocab_size"] = len(tokenizer)
    extra.setdefault("eos_token_id", tokenizer.convert_tokens_to_ids("<|im_end|>"))
    extra.setdefault("pad_token_id", tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    model = build_model(arch, geometry, seed, device, extra)
    model = quantize_fp8(model, len(tokenizer), seed)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=str(out))
    tokenizer.save_pretrained(str(out))
    _write_generation_config(out, extra["eos_token_id"], extra["pad_token_id"])
    return out


def _write_generation_config(out: Path, eos: int, pad: int) -> None:
    path = out / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config.update({"eos_token_id": eos, "pad_token_id": pad})
    path.write_text(json.dumps(config, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="qwen2")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for realistic sizes")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config field, e.g. --set num_hidden_layers=4",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    args = parser.parse_args(argv)
    if (args.out / "config.json").exists() and not args.force:
        print(f"{args.out}: checkpoint exists (use --force to remake it)")
        return 0
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    started = time.perf_counter()
    make_checkpoint(args.out, args.arch, args.size, args.seed, args.device, overrides)
    seconds = time.perf_counter() - started
    print(f"{args.out}: {args.arch} {args.size} ModelOpt FP8 checkpoint in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
