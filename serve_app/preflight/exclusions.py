"""Which modules vLLM leaves unquantized, resolved exactly as vLLM resolves ModelOpt exclusions.

Mirrors vllm/model_executor/layers/quantization/modelopt.py (v0.24):
  * ``apply_vllm_mapper``: a pattern ``name*`` (not ``name.*``) becomes ``name`` and ``name.*``;
  * ``is_layer_excluded(prefix)``: (1) exact match, where a fused module (``qkv_proj``) is excluded
    only if every shard (``q_proj``, ``k_proj``, ``v_proj``) is listed, and a partly listed pack
    raises "Detected some but not all shards ..." (quant_utils.is_layer_skipped); (2) substring:
    any pattern contained in the prefix (also after stripping ``language_model.``); (3) fnmatch;
  * ``get_quant_method``: prefixes containing vision_tower / vision_model / visual stay unquantized.

vLLM asks about *its* module names, so a fused pack is judged by its fused name
(``model.layers.0.self_attn.qkv_proj``), never by the shard names the checkpoint and ModelOpt use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from serve_app.preflight.rules import Rule

VISION_SUBSTRINGS = ("vision_tower", "vision_model", "visual")


@dataclass(frozen=True)
class Match:
    excluded: bool
    how: str = ""  # "exact", "substring", "fnmatch", "vision", or "" when not excluded
    pattern: str | None = None  # the pattern as written in the config


def expand_patterns(patterns: tuple[str, ...] | list[str]) -> dict[str, str]:
    """vLLM's expansion of ``name*``: expanded pattern -> the pattern it came from."""
    out: dict[str, str] = {}
    for pattern in patterns:
        if len(pattern) >= 2 and pattern[-1] == "*" and pattern[-2] != ".":
            out.setdefault(pattern[:-1], pattern)
            out.setdefault(pattern[:-1] + ".*", pattern)
        else:
            out.setdefault(pattern, pattern)
    return out


class Resolver:
    def __init__(self, patterns: tuple[str, ...] | list[str], fused: dict[str, tuple[str, ...]]) -> None:
        self.original = tuple(patterns)
        self.expanded = expand_patterns(patterns)
        self.fused = fused

    def match_name(self, name: str) -> Match:
        """Steps 1-3 for one unfused name: how ModelOpt's own list reads for that module."""
        if name in self.expanded:
            return Match(True, "exact", self.expanded[name])
        return self._substring_or_glob(name)

    def _substring_or_glob(self, name: str) -> Match:
        """Steps 2 and 3; step 2 skips a pattern equal to the name, as vLLM's does."""
        stripped = name.removeprefix("language_model.") if name.startswith("language_model.") else None
        for pattern, origin in self.expanded.items():
            if pattern != name and (pattern in name or (stripped is not None and pattern in stripped)):
                return Match(True, "substring", origin)
        for pattern, origin in self.expanded.items():
            if fnmatchcase(name, pattern):
                return Match(True, "fnmatch", origin)
        return Match(False)

    def shard_names(self, prefix: str) -> list[str] | None:
        proj = prefix.rpartition(".")[2]
        shards = self.fused.get(proj)
        return [prefix.replace(proj, shard) for shard in shards] if shards else None

    def vllm_decision(self, prefix: str) -> tuple[Match, bool]:
        """(vLLM's verdict for one of its module prefixes, whether vLLM would raise on a partial pack)."""
        partial = False
        if self.expanded:
            shards = self.shard_names(prefix)
            if shards is not None:
                listed = [s in self.expanded for s in shards]
                partial = len(set(listed)) > 1
                if all(listed):
                    return Match(True, "exact", self.expanded[shards[0]]), partial
            elif prefix in self.expanded:
                return Match(True, "exact", self.expanded[prefix]), partial
            match = self._substring_or_glob(prefix)
            if match.excluded:
                return match, partial
        if any(v in prefix for v in VISION_SUBSTRINGS):
            return Match(True, "vision"), partial
        return Match(False), partial


@dataclass
class Analysis:
    decisions: dict[str, Match] = field(default_factory=dict)  # checkpoint module -> vLLM's verdict
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def excluded(self, module: str) -> bool:
        return self.decisions[module].excluded


def analyse(
    resolver: Resolver,
    linear: list[str],
    all_modules: list[str],
    required: list[tuple[str, Rule]],
) -> Analysis:
    """Resolve every linear module, then look for partial packs, over-broad and unused patterns."""
    result = Analysis()
    packs: dict[str, list[str]] = {}
    shard_to_pack = {shard: fused for fused, shards in resolver.fused.items() for shard in shards}
    for module in linear:
        parent, _, leaf = module.rpartition(".")
        if leaf in shard_to_pack:
            fused = f"{parent}.{shard_to_pack[leaf]}" if parent else shard_to_pack[leaf]
            packs.setdefault(fused, []).append(module)
        else:
            result.decisions[module] = resolver.vllm_decision(module)[0]
    for fused_prefix, shards in sorted(packs.items()):
        _resolve_pack(resolver, fused_prefix, shards, result)
    _overbroad(resolver, result)
    # Modules vLLM builds without a tensor of their own (a tied lm_head) count as modules: a
    # pattern that excludes one is used, not stray.
    built = [pattern for pattern, _ in required if not any(ch in pattern for ch in "*?[")]
    _unused(resolver, [*all_modules, *packs, *built], result)
    _required(resolver, linear, required, result)
    return result


def _resolve_pack(resolver: Resolver, fused_prefix: str, shards: list[str], result: Analysis) -> None:
    intents = {shard: resolver.match_name(shard) for shard in shards}
    decision, _ = resolver.vllm_decision(fused_prefix)
    leaves = [s.rpartition(".")[2] for s in shards]
    fused_leaf = fused_prefix.rpartition(".")[2]
    excluded = [s.rpartition(".")[2] for s, m in intents.items() if m.excluded]
    problems = len(result.problems)
    if excluded and len(excluded) < len(shards):
        kept = [leaf for leaf in leaves if leaf not in excluded]
        result.problems.append(
            f"{fused_prefix.rpartition('.')[0]}: {', '.join(excluded)} excluded but {', '.join(kept)} "
            f"quantized; vLLM fuses {'/'.join(leaves)} into one {fused_leaf} with one precision "
            "(it stops with 'Detected some but not all shards ... are quantized' or loads garbage)"
        )
    elif excluded and not decision.excluded:
        result.problems.append(
            f"{fused_prefix}: the patterns exclude {'/'.join(leaves)} one by one, but vLLM checks the fused "
            f"name {fused_leaf}, which none of them matches, so vLLM would quantize it"
        )
    # Tensor checks then expect what vLLM will load; after a reported problem, what the exporter
    # meant, so that one defect fails one check.
    for shard, intent in intents.items():
        result.decisions[shard] = intent if len(result.problems) > problems else decision


def _overbroad(resolver: Resolver, result: Analysis) -> None:
    """Substring matches that do not fall on a dot boundary: 'model.layers.1' inside 'model.layers.12'."""
    stray: dict[str, set[str]] = {}
    for module, match in result.decisions.items():
        if match.how != "substring" or match.pattern is None:
            continue
        candidates = [p for p, origin in resolver.expanded.items() if origin == match.pattern and p in module]
        if candidates and not any(_on_boundary(module, p) for p in candidates):
            stray.setdefault(match.pattern, set()).add(_container(module, candidates[0]))
    for pattern, containers in sorted(stray.items()):
        shown = sorted(containers)
        more = f" and {len(shown) - 4} more" if len(shown) > 4 else ""
        result.warnings.append(
            f"pattern {pattern!r} also matches {', '.join(shown[:4])}{more} (vLLM matches exclusions as "
            f"substrings); write {pattern.rstrip('*').rstrip('.') + '.*'!r} if only that module was meant"
        )


def _on_boundary(name: str, pattern: str) -> bool:
    start = name.find(pattern)
    while start != -1:
        end = start + len(pattern)
        if (start == 0 or name[start - 1] == ".") and (end == len(name) or name[end] == "."):
            return True
        start = name.find(pattern, start + 1)
    return False


def _container(module: str, pattern: str) -> str:
    """The dotted component the pattern ran into, e.g. 'model.layers.12'."""
    start = module.find(pattern)
    end = module.find(".", start + len(pattern))
    return module if end == -1 else module[:end]


def _unused(resolver: Resolver, all_modules: list[str], result: Analysis) -> None:
    for pattern in resolver.original:
        probe = Resolver([pattern], {})
        if not any(probe.match_name(m).excluded for m in all_modules):
            result.warnings.append(f"pattern {pattern!r} matches no module of this checkpoint")


def _required(
    resolver: Resolver, linear: list[str], required: list[tuple[str, Rule]], result: Analysis
) -> None:
    for pattern, rule in required:
        names = [m for m in linear if fnmatchcase(m, pattern) or m.endswith("." + pattern)]
        if not any(ch in pattern for ch in "*?["):
            names.append(pattern)  # vLLM builds it even without a tensor (a tied lm_head)
        quantized = sorted(
            {n for n in names if not result.decisions.get(n, resolver.vllm_decision(n)[0]).excluded}
        )
        if quantized:
            result.problems.append(
                f"{', '.join(quantized[:3])}{' ...' if len(quantized) > 3 else ''} must stay unquantized "
                f"({rule.reason}; source: {rule.source}) but no exclude pattern covers it"
            )
