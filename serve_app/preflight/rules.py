"""The one table of facts that vary by architecture or vLLM version, each row with reason and source.

A row applies to ``architecture`` (``"*"``: every architecture) and, when ``vllm`` is set, only to
vLLM versions in that PEP 440 range. An architecture is *known* when a row names it. Adding an
architecture is one row here plus one test in tests/preflight/test_rules.py.

Row fields:
  layout          tensor naming in layouts.py ("llama", "qwen2", "qwen3"); None: names not checked
  fused           vLLM's packed_modules_mapping: fused module -> the checkpoint modules it packs
  extras          Python distributions vLLM needs installed for this architecture
  must_exclude    fnmatch patterns of modules that must stay unquantized
  exclude_if_tied the same, when config.json has tie_word_embeddings
  side_prefixes   tensor-name prefixes outside the language model (vision tower, projector)
  min_capability  lowest CUDA compute capability for FP8 W8A8
  torch, cuda     the exact torch and the CUDA major that vLLM's wheels in the range are built for;
                  a row with ``torch`` set also marks its vLLM range as supported
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

PINNED_VLLM = "0.24.0"

LLAMA_FUSED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    ("gate_up_proj", ("gate_proj", "up_proj")),
)


@dataclass(frozen=True)
class Rule:
    architecture: str
    reason: str
    source: str
    vllm: str = ""
    layout: str | None = None
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()
    extras: tuple[str, ...] = ()
    must_exclude: tuple[str, ...] = ()
    exclude_if_tied: tuple[str, ...] = ()
    side_prefixes: tuple[str, ...] = ()
    min_capability: tuple[int, int] | None = None
    torch: str | None = None
    cuda: int | None = None

    def applies(self, architecture: str, vllm_version: str | None) -> bool:
        if self.architecture not in ("*", architecture):
            return False
        if not self.vllm:
            return True
        return vllm_version is not None and version_in(vllm_version, self.vllm)


RULES: tuple[Rule, ...] = (
    # --- every architecture ---------------------------------------------------------------------
    Rule(
        "*",
        min_capability=(8, 9),
        reason="vLLM's ModelOpt FP8 (W8A8) linear needs FP8 tensor cores: Ada (8.9), Hopper (9.0) or newer; "
        "vLLM refuses to load the checkpoint on older GPUs",
        source="vllm/model_executor/layers/quantization/modelopt.py: "
        "ModelOptFp8Config.get_min_capability() == 89",
    ),
    Rule(
        "*",
        vllm=">=0.24.0,<0.25",
        torch="2.11.0",
        cuda=13,
        reason="the vLLM release this deployment pins; its wheels are built for exactly torch 2.11.0 "
        "and CUDA 13",
        source="pyproject.toml [project.optional-dependencies] gpu; "
        "vLLM 0.24.0 wheel metadata: Requires-Dist torch==2.11.0",
    ),
    Rule(
        "*",
        exclude_if_tied=("lm_head",),
        reason="with tie_word_embeddings lm_head *is* the embedding matrix, which vLLM never quantizes; "
        "a quantized lm_head would have no FP8 weight to load",
        source="vllm/model_executor/layers/quantization/modelopt.py get_quant_method: "
        "VocabParallelEmbedding gets no FP8 method",
    ),
    # --- text models ----------------------------------------------------------------------------
    Rule(
        "LlamaForCausalLM",
        layout="llama",
        fused=LLAMA_FUSED,
        reason="vLLM packs q/k/v into qkv_proj and gate/up into gate_up_proj; each pack has one precision",
        source="vllm/model_executor/models/llama.py: LlamaForCausalLM.packed_modules_mapping",
    ),
    Rule(
        "MistralForCausalLM",
        layout="llama",
        fused=LLAMA_FUSED,
        reason="vLLM runs Mistral as Llama: same packs, same tensor names",
        source="vllm/model_executor/models/mistral.py: MistralForCausalLM(LlamaForCausalLM)",
    ),
    Rule(
        "Qwen2ForCausalLM",
        layout="qwen2",
        fused=LLAMA_FUSED,
        reason="Llama packs plus q/k/v biases",
        source="vllm/model_executor/models/qwen2.py: Qwen2ForCausalLM.packed_modules_mapping",
    ),
    Rule(
        "Qwen3ForCausalLM",
        layout="qwen3",
        fused=LLAMA_FUSED,
        reason="Llama packs plus per-head q_norm/k_norm",
        source="vllm/model_executor/models/qwen3.py: Qwen3ForCausalLM.packed_modules_mapping",
    ),
    # --- vision-language models -----------------------------------------------------------------
    Rule(
        "Qwen2_5_VLForConditionalGeneration",
        layout="qwen2",
        fused=LLAMA_FUSED,
        must_exclude=("*visual*",),
        side_prefixes=("visual.", "model.visual."),
        reason="the vision tower stays BF16: vLLM hard-codes 'visual' modules as unquantized, so FP8 "
        "weights there would be read as BF16",
        source="vllm/model_executor/layers/quantization/modelopt.py get_quant_method "
        "('vision_tower'/'vision_model'/'visual' -> UnquantizedLinearMethod)",
    ),
    Rule(
        "Qwen2_5_VLForConditionalGeneration",
        vllm=">=0.10.0,<0.11",
        extras=("xformers",),
        reason="vLLM 0.10 runs the Qwen2.5-VL vision tower's attention through xFormers",
        source="vllm/model_executor/models/qwen2_5_vl.py (v0.10.x): Qwen2_5_VisionAttention, "
        "XFORMERS backend (from xformers import ops as xops)",
    ),
    Rule(
        "PixtralForConditionalGeneration",
        must_exclude=(
            "*vision_tower*",
            "*vision_encoder*",
            "*multi_modal_projector*",
            "*vision_language_adapter*",
        ),
        side_prefixes=(
            "vision_tower.",
            "vision_encoder.",
            "multi_modal_projector.",
            "vision_language_adapter.",
        ),
        reason="vision encoder and projector stay BF16; vLLM does not hard-code the projector as "
        "unquantized, so it must be in the exclude list",
        source="vllm/model_executor/models/pixtral.py; vllm/model_executor/layers/quantization/modelopt.py",
    ),
    Rule(
        "PixtralForConditionalGeneration",
        vllm=">=0.24.0,<0.25",
        extras=("xformers",),
        reason="vLLM does not install xFormers; without it the Pixtral vision encoder falls back to a dense "
        "block-diagonal mask per image batch (memory quadratic in image patches)",
        source="vllm/model_executor/models/pixtral.py: USE_XFORMERS_OPS / xops.fmha.BlockDiagonalMask; "
        "pyproject.toml gpu extra pins xformers==0.0.35",
    ),
)


def version_in(version: str, specifier: str) -> bool:
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def rules_for(architecture: str, vllm_version: str | None) -> list[Rule]:
    return [rule for rule in RULES if rule.applies(architecture, vllm_version)]


def known_architectures() -> list[str]:
    return sorted({rule.architecture for rule in RULES if rule.architecture != "*"})


def is_known(architecture: str) -> bool:
    return architecture in known_architectures()


def layout(architecture: str) -> str | None:
    return next((r.layout for r in rules_for(architecture, None) if r.layout), None)


def fused_groups(architecture: str) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    for rule in rules_for(architecture, None):
        groups.update(dict(rule.fused))
    return groups


def side_prefixes(architecture: str) -> tuple[str, ...]:
    return tuple(p for rule in rules_for(architecture, None) for p in rule.side_prefixes)


def must_exclude(architecture: str, tied: bool) -> list[tuple[str, Rule]]:
    out = [(p, r) for r in rules_for(architecture, None) for p in r.must_exclude]
    if tied:
        out += [(p, r) for r in rules_for(architecture, None) for p in r.exclude_if_tied]
    return out


def extras(architecture: str, vllm_version: str) -> list[tuple[str, Rule]]:
    return [(pkg, r) for r in rules_for(architecture, vllm_version) for pkg in r.extras]


def min_capability(architecture: str = "*", vllm_version: str | None = None) -> tuple[tuple[int, int], Rule]:
    found = [(r.min_capability, r) for r in rules_for(architecture, vllm_version) if r.min_capability]
    return max(found, key=lambda item: item[0])


def platform_rule(vllm_version: str) -> Rule | None:
    """The row that supports this vLLM version (torch pin, CUDA major), or None if unsupported."""
    return next(
        (r for r in RULES if r.torch and r.architecture == "*" and version_in(vllm_version, r.vllm)), None
    )


def supported_vllm() -> list[str]:
    return [r.vllm for r in RULES if r.torch and r.architecture == "*"]
