"""Read the registry out of a Ray Serve config file (models.yaml) or out of build_app's args.

Errors are RegistryError with one line per problem, each naming the file, the model and the
field, and saying what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.errors import RegistryError
from serve_app.registry.models import ModelSpec, RegistrySpec

IMPORT_PATH = "serve_app.app:build_app"


def load_registry(path: str | Path, app_name: str | None = None) -> RegistrySpec:
    """Load and validate the registry of the application in a Serve config file."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: no such file") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
    args = registry_args(document, path, app_name)
    return parse_registry(args, source=str(path), base_dir=path.resolve().parent)


def registry_args(document: Any, path: Path, app_name: str | None = None) -> dict[str, Any]:
    """The ``args`` dict of our application inside a Serve config document."""
    if not isinstance(document, dict) or not isinstance(document.get("applications"), list):
        raise RegistryError(
            f"{path}: expected a Ray Serve config file with an 'applications:' list "
            f"(one entry with import_path: {IMPORT_PATH})"
        )
    ours = [
        app
        for app in document["applications"]
        if isinstance(app, dict)
        and app.get("import_path") == IMPORT_PATH
        and (app_name is None or app.get("name") == app_name)
    ]
    if not ours:
        which = f" named {app_name!r}" if app_name else ""
        raise RegistryError(f"{path}: no application{which} with import_path: {IMPORT_PATH}")
    if len(ours) > 1 and app_name is None:
        names = ", ".join(repr(app.get("name")) for app in ours)
        raise RegistryError(f"{path}: several applications use {IMPORT_PATH} ({names}); pick one by name")
    args = ours[0].get("args")
    if not isinstance(args, dict):
        raise RegistryError(
            f"{path}: application {ours[0].get('name')!r}: 'args' must be a mapping with 'models:'"
        )
    return args


def parse_registry(
    args: dict[str, Any], source: str = "args", base_dir: Path | None = None, check_paths: bool = True
) -> RegistrySpec:
    """Validate build_app's args. Relative checkpoints resolve against base_dir (or args' base_dir)."""
    try:
        registry = RegistrySpec.model_validate(args)
    except ValidationError as exc:
        raise RegistryError(format_validation_error(exc, args, source)) from None
    root = registry.base_dir or base_dir or Path.cwd()
    problems = []
    for index, model in enumerate(registry.models):
        if not model.checkpoint.is_absolute():
            model.checkpoint = (root / model.checkpoint).resolve()
        if check_paths and not model.checkpoint.is_dir():
            problems.append(
                f"{source}: models[{index}] (name {model.name!r}): field 'checkpoint': directory "
                f"{model.checkpoint} does not exist; point it at a ModelOpt FP8 export "
                "(scripts/make_checkpoint.py makes one)"
            )
    keys_file = registry.router.auth.api_keys_file
    if keys_file is not None and not keys_file.is_absolute():
        registry.router.auth.api_keys_file = (root / keys_file).resolve()
    if problems:
        raise RegistryError("\n".join(problems))
    return registry


def format_validation_error(exc: ValidationError, args: Any, source: str) -> str:
    lines = [f"{source}: invalid registry ({exc.error_count()} problem(s)):"]
    for error in exc.errors():
        lines.append("  " + describe_error(error, args, source))
    return "\n".join(lines)


def describe_error(error: dict[str, Any], args: Any, source: str) -> str:
    loc = list(error["loc"])
    where = source
    in_model = len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int)
    if in_model and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        name = _model_name(args, index)
        where += f": models[{index}]" + (f" (name {name!r})" if name else "")
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(_fields_at(loc[:-1], top=not in_model)))
        message = f"unknown field; allowed fields here: {allowed}"
    elif error["type"] == "literal_error" or error["type"].startswith(("greater_than", "less_than")):
        message = f"{message} (got {error.get('input')!r})"
    return f"{where}: field {field!r}: {message}" if field else f"{where}: {message}"


def _model_name(args: Any, index: int) -> str | None:
    try:
        name = args["models"][index].get("name")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _fields_at(path: list[Any], top: bool) -> list[str]:
    """Field names allowed at a location, to list them after 'unknown field'."""
    model: type[BaseModel] = RegistrySpec if top else ModelSpec
    for part in path:
        annotation = model.model_fields.get(str(part))
        sub = getattr(annotation, "annotation", None) if annotation else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            break
    return list(model.model_fields)
