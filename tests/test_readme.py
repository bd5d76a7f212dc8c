"""The README stays true: its commands are CI's, and its reference lists every registry field."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from serve_app.registry.models import ModelSpec, RegistrySpec, RouterSpec

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            names += fields(sub, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def test_every_model_and_router_field_is_in_the_reference():
    documented = fields(ModelSpec) + fields(RouterSpec, "router.") + ["base_dir"]
    missing = [name for name in documented if f"| `{name}` |" not in README]
    assert missing == []
    assert set(RegistrySpec.model_fields) == {"models", "router", "base_dir"}


def test_ci_runs_the_readme_test_command():
    assert "make test" in README and "make serve" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
