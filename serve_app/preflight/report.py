"""What preflight found: one CheckResult per check, grouped per model, and the whole Report.

Exit codes (``Report.exit_code``): 0 when nothing failed (warnings allowed), 1 when a check
failed. The CLI adds 2 for a usage or YAML error, which never gets as far as a Report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from serve_app.engines.selection import Platform

Status = Literal["pass", "warn", "fail", "skipped"]
STATUSES: tuple[Status, ...] = ("pass", "warn", "fail", "skipped")


@dataclass(frozen=True)
class CheckResult:
    """One check's verdict. ``fix`` says what to do when the status is warn or fail."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "check": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }
        if self.data:
            out["data"] = self.data
        return out


def passed(name: str, detail: str, **data: Any) -> CheckResult:
    return CheckResult(name, "pass", detail, data=data)


def warned(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name, "warn", detail, fix, data=data)


def failed(name: str, detail: str, fix: str, **data: Any) -> CheckResult:
    return CheckResult(name, "fail", detail, fix, data=data)


def skipped(name: str, reason: str, **data: Any) -> CheckResult:
    return CheckResult(name, "skipped", reason, data=data)


@dataclass
class ModelReport:
    """All checks of one model. ``policy`` is the model's ``on_preflight_failure``."""

    model: str
    checkpoint: str
    policy: Literal["fail", "skip"] = "fail"
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_checks()

    def failed_checks(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def statuses(self) -> dict[str, Status]:
        return {r.name: r.status for r in self.results}

    @property
    def reason(self) -> str:
        """One line for /readyz: which checks failed and why."""
        return "; ".join(f"preflight check {r.name!r} failed: {r.detail}" for r in self.failed_checks())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "on_preflight_failure": self.policy,
            "ok": self.ok,
            "checks": [r.to_dict() for r in self.results],
        }


@dataclass
class Report:
    """Every model's report plus the checks that span models (cluster fit)."""

    models: list[ModelReport] = field(default_factory=list)
    cluster: list[CheckResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    # What engine choice was decided on; build_app hands it to the deployment builder, so the
    # engine preflight checked is the engine that gets deployed.
    platform: Platform | None = None

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.models) and all(r.status != "fail" for r in self.cluster)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def model(self, name: str) -> ModelReport:
        for m in self.models:
            if m.model == name:
                return m
        raise KeyError(name)

    def failed_models(self) -> list[ModelReport]:
        return [m for m in self.models if not m.ok]

    def unavailable(self) -> dict[str, str]:
        """Failed models whose policy is ``skip``: name -> reason, for /readyz."""
        return {m.model: m.reason for m in self.failed_models() if m.policy == "skip"}

    def blocking(self) -> list[str]:
        """Why the app must not start: failed ``fail``-policy models and failed cluster checks."""
        lines = [f"model {m.model!r}: {m.reason}" for m in self.failed_models() if m.policy == "fail"]
        lines += [f"cluster: check {r.name!r} failed: {r.detail}" for r in self.cluster if r.status == "fail"]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "models": [m.to_dict() for m in self.models],
            "cluster": [r.to_dict() for r in self.cluster],
        }
