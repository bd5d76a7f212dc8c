"""Checks 1-4 and 9: config.json, the quantization method, the two configs agreeing, the
exclusion list as vLLM resolves it, and the shard layout; plus max_model_len against the
checkpoint's limit and a stored lm_head that tied embeddings ignore. They read JSON and headers only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.errors import MaxModelLenError
from serve_app.preflight import layouts, rules
from serve_app.preflight.gpu import GIB
from serve_app.preflight.quant_config import CONFIG_JSON, HF_QUANT_JSON
from serve_app.preflight.report import CheckResult, failed, passed, skipped, warned

if TYPE_CHECKING:
    from serve_app.preflight.context import ModelContext

EXPORT_FIX = (
    "re-export with nvidia-modelopt: mtq.quantize(model, mtq.FP8_DEFAULT_CFG, calibrate) then "
    "export_hf_checkpoint(model, dtype=torch.bfloat16, export_dir=...) (scripts/make_checkpoint.py does this)"
)


def check_config(ctx: ModelContext) -> CheckResult:
    name = "config"
    ckpt = ctx.ckpt
    if ckpt.config is None:
        return failed(name, ckpt.config_error or "config.json is missing", EXPORT_FIX)
    arch = ckpt.architecture
    if arch is None:
        return failed(
            name, "config.json has no 'architectures' list", "add the model class, e.g. ['LlamaForCausalLM']"
        )
    if not rules.is_known(arch):
        return failed(
            name,
            f"architecture {arch} is not in the preflight rules table "
            f"(known: {', '.join(rules.known_architectures())})",
            "add a row for it to serve_app/preflight/rules.py and a test in tests/preflight/test_rules.py",
        )
    try:
        g = ctx.geometry
    except KeyError as exc:
        return failed(
            name, f"config.json lacks {exc.args[0]!r}", "export config.json from the model's own config"
        )
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        return failed(name, f"config.json has an unusable geometry field: {exc}", "fix config.json")
    return passed(
        name,
        f"{arch}: {g.layers} layers, hidden {g.hidden}, "
        f"{g.heads} heads / {g.kv_heads} KV heads x {g.head_dim}, "
        f"vocab {g.vocab}, {g.dtype}",
    )


def check_quant_method(ctx: ModelContext) -> CheckResult:
    name = "quant_method"
    quant = ctx.ckpt.quant
    if quant is None:
        return failed(
            name,
            f"no quantization config: {CONFIG_JSON} has no quantization_config and "
            f"there is no {HF_QUANT_JSON}; "
            "vLLM would load this as an unquantized model",
            EXPORT_FIX,
        )
    if not quant.is_modelopt:
        return failed(
            name,
            f"quantization method {quant.method!r} ({quant.source}); this deployment serves ModelOpt FP8",
            EXPORT_FIX,
        )
    if quant.algo != "FP8":
        return failed(
            name,
            f"ModelOpt algorithm {quant.algo or '(none)'} ({quant.source}); this deployment serves FP8 "
            "(W8A8, per-tensor scales)",
            f"re-export with mtq.FP8_DEFAULT_CFG, or serve this {quant.algo} checkpoint "
            "with a deployment made for it",
        )
    older = f" (older export: only {HF_QUANT_JSON})" if quant.source == HF_QUANT_JSON else ""
    version = f" {quant.producer_version}" if quant.producer_version else ""
    return passed(name, f"ModelOpt{version} FP8 from {quant.source}{older}")


def check_config_agreement(ctx: ModelContext) -> CheckResult:
    name = "config_agreement"
    ckpt = ctx.ckpt
    if ckpt.hf_quant_error:
        return failed(name, ckpt.hf_quant_error, f"re-export, or delete the broken {HF_QUANT_JSON}")
    main, legacy = ckpt.quant_config_json, ckpt.quant_hf
    if main is None and legacy is None:
        return skipped(name, "no quantization config to compare")
    if main is None or legacy is None:
        only = (main or legacy).source  # type: ignore[union-attr]
        return passed(name, f"only {only} present; nothing to compare")
    differences = []
    if main.algo != legacy.algo:
        differences.append(f"quant_algo: {CONFIG_JSON} {main.algo}, {HF_QUANT_JSON} {legacy.algo}")
    if set(main.exclude) != set(legacy.exclude):
        only_main = sorted(set(main.exclude) - set(legacy.exclude))
        only_legacy = sorted(set(legacy.exclude) - set(main.exclude))
        differences.append(
            f"excluded modules: only in {CONFIG_JSON} {only_main}, only in {HF_QUANT_JSON} {only_legacy}"
        )
    if main.kv_algo != legacy.kv_algo:
        differences.append(
            f"KV cache: {CONFIG_JSON} {main.kv_algo or 'none'}, {HF_QUANT_JSON} {legacy.kv_algo or 'none'}"
        )
    if differences:
        return failed(
            name,
            "; ".join(differences) + f" (vLLM silently uses {CONFIG_JSON}; other tools read {HF_QUANT_JSON})",
            f"re-export, or make {HF_QUANT_JSON} say what {CONFIG_JSON}'s quantization_config says",
        )
    return passed(
        name,
        f"{CONFIG_JSON} and {HF_QUANT_JSON} agree: {main.algo}, {len(main.exclude)} exclusions, "
        f"KV {main.kv_algo or 'none'}",
    )


def check_exclusions(ctx: ModelContext) -> CheckResult:
    name = "exclusions"
    analysis = ctx.analysis
    patterns = ctx.ckpt.quant.exclude if ctx.ckpt.quant else ()
    if analysis.problems:
        return failed(
            name,
            "; ".join(analysis.problems),
            "exclude whole packs (q/k/v together, gate/up together) by their parent module, e.g. "
            "'model.layers.0.self_attn*', and re-export so the tensors match",
        )
    kept = [m for m in ctx.ckpt.linear_modules() if analysis.excluded(m)]
    detail = f"{len(patterns)} patterns; {len(kept)} linear module(s) stay unquantized ({_few(kept)})"
    if analysis.warnings:
        return warned(name, "; ".join(analysis.warnings) + f"; {detail}", "tighten the patterns named above")
    return passed(name, detail)


def check_shards(ctx: ModelContext) -> CheckResult:
    name = "shards"
    index = ctx.ckpt.index
    if index.problems:
        return failed(
            name,
            "; ".join(index.problems),
            "copy or download the checkpoint again (all shards and model.safetensors.index.json)",
        )
    layout = f"index + {len(index.files)} shards" if index.index_path else f"{len(index.files)} file(s)"
    detail = f"{layout}, {len(index.tensors)} tensors, {index.total_bytes / GIB:.2f} GiB"
    if index.notes:
        return warned(name, f"{detail}; {'; '.join(index.notes)}", "remove stray *.safetensors files")
    return passed(name, detail)


def check_max_model_len(ctx: ModelContext) -> CheckResult:
    """The registry's max_model_len against the checkpoint's limit, by vLLM 0.24's rule."""
    name = "max_model_len"
    try:
        length = ctx.context_length()
    except MaxModelLenError as exc:
        return failed(name, exc.message, exc.fix)
    data = {"max_model_len": length.value, "checkpoint_limit": length.derived}
    if length.beyond_limit:
        return warned(
            name,
            length.describe(),
            f"positions past {length.derived} were not trained: lower max_model_len unless the model "
            "was fine-tuned longer",
            **data,
        )
    return passed(name, length.describe(), **data)


def check_tied_lm_head(ctx: ModelContext) -> CheckResult:
    """A stored lm_head that tie_word_embeddings makes vLLM (and the CPU engine) ignore: a warning.

    Not a failure: both engines load the same weights (the embedding), so replicas agree and vLLM
    serves it without a word. It is worth a warning because the flag may be wrong: a fine-tune
    that untied lm_head but kept ``tie_word_embeddings: true`` loses its trained lm_head.
    """
    name = "tied_lm_head"
    ckpt = ctx.ckpt
    tied = ckpt.is_tied(ctx.geometry)
    stored = ckpt.stored_lm_head()
    if not tied:
        return passed(name, "tie_word_embeddings is false: lm_head is loaded from its own tensor")
    embedding = f"{layouts.text_prefix(ckpt.tensors)}embed_tokens.weight"
    if not stored:
        return passed(name, f"tie_word_embeddings is true: lm_head is {embedding}; none stored")
    return warned(
        name,
        f"tie_word_embeddings is true, so vLLM and the CPU engine use {embedding} as lm_head and "
        f"ignore the stored {', '.join(stored)}",
        "if the stored lm_head is the trained one, set tie_word_embeddings to false in config.json; "
        "otherwise delete the lm_head tensors from the checkpoint",
        ignored=stored,
    )


def _few(names: list[str], limit: int = 3) -> str:
    return (
        ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "") or "none"
    )
