"""Read the registry out of a Ray Serve config file (models.yaml) or out of build_app's args.

Errors are RegistryError with one line per problem, each naming the file, the model and the
field, and saying what is allowed.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from serve_app.errors import RegistryError
from serve_app.registry.engine_arg_names import VLLM_ENGINE_ARGS
from serve_app.registry.layout import (
    LEGACY_IMPORT_PATH,
    LIVE_FIELDS,
    LIVE_OPTIONS,
    MODEL_DEPLOYMENT,
    MODEL_IMPORT_PATH,
    ROUTER_IMPORT_PATH,
)
from serve_app.registry.models import AutoscalingSpec, ModelSpec, RegistrySpec, RouterSpec


def load_registry(path: str | Path, app_name: str | None = None) -> RegistrySpec:
    """Load and validate the fleet a Serve config file describes: its router application and
    every model application (registry/layout.py). ``app_name`` keeps one model application.

    Each model's live options (its ``deployments:`` entry) are read into the spec, so preflight
    counts the replicas Serve will start."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(f"{path}: no such file") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from exc
    routers, models = fleet_applications(document, path)
    if app_name is not None:
        models = [app for app in models if app.get("name") == app_name]
        if not models:
            raise RegistryError(f"{path}: no model application named {app_name!r}")
    base_dir = path.resolve().parent
    specs = []
    for app in models:
        source = f"{path}: application {app.get('name')!r}"
        spec = parse_model_args(app.get("args"), source=source, base_dir=base_dir)
        specs.append(apply_live_options(spec, app.get("deployments"), source))
    router = parse_router_args(routers[0].get("args") if routers else {}, f"{path}: router application")
    keys_file = router.auth.api_keys_file
    if keys_file is not None and not keys_file.is_absolute():  # as checkpoints: the YAML's folder
        router.auth.api_keys_file = (base_dir / keys_file).resolve()
    try:
        return RegistrySpec(models=specs, router=router)
    except ValidationError as exc:
        raise RegistryError(format_validation_error(exc, {}, str(path))) from None


def fleet_applications(document: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(router applications, model applications) of a Serve config document.

    Raises RegistryError for a file that is not a Serve config, has no model application, more
    than one router, or uses the one-application layout of earlier versions."""
    if not isinstance(document, dict) or not isinstance(document.get("applications"), list):
        raise RegistryError(
            f"{path}: expected a Ray Serve config file with an 'applications:' list "
            f"(a router application with import_path: {ROUTER_IMPORT_PATH} and one application per "
            f"model with import_path: {MODEL_IMPORT_PATH})"
        )
    apps = [app for app in document["applications"] if isinstance(app, dict)]
    if any(app.get("import_path") == LEGACY_IMPORT_PATH for app in apps):
        raise RegistryError(
            f"{path}: import_path {LEGACY_IMPORT_PATH} (one application holding every model) is "
            f"gone: each model is now its own application (import_path: {MODEL_IMPORT_PATH}, its "
            f"registry entry as args) beside one router application (import_path: "
            f"{ROUTER_IMPORT_PATH}), so that changing one model restarts only that model; see "
            "README.md, 'models.yaml reference'"
        )
    routers = [app for app in apps if app.get("import_path") == ROUTER_IMPORT_PATH]
    models = [app for app in apps if app.get("import_path") == MODEL_IMPORT_PATH]
    if len(routers) > 1:
        names = ", ".join(repr(app.get("name")) for app in routers)
        raise RegistryError(f"{path}: several router applications ({names}); keep one")
    if not models:
        raise RegistryError(f"{path}: no model application (import_path: {MODEL_IMPORT_PATH})")
    return routers, models


def parse_model_args(
    args: Any, source: str = "args", base_dir: Path | None = None, check_paths: bool = True
) -> ModelSpec:
    """One model application's ``args``: a ``ModelSpec`` plus an optional ``base_dir``.

    The live options (``autoscaling``, ``max_ongoing_requests``, ``max_queued_requests``) are
    refused here, naming the ``deployments:`` option that sets them without a restart."""
    if not isinstance(args, dict):
        raise RegistryError(f"{source}: 'args' must map the model's fields (name, checkpoint, ...)")
    args = dict(args)
    live = [field for field in LIVE_FIELDS if field in args]
    if live:
        moves = ", ".join(f"{field} -> {LIVE_FIELDS[field]}" for field in live if field != LIVE_FIELDS[field])
        names = f", under Ray Serve's names ({moves})" if moves else ""
        raise RegistryError(
            f"{source}: field(s) {', '.join(live)} belong in the application's 'deployments:' entry "
            f"(- name: {MODEL_DEPLOYMENT}){names}, where changing them "
            "restarts nothing; under 'args' every change would restart the model"
        )
    own_base = args.pop("base_dir", None)
    try:
        registry = parse_registry(
            {"models": [args], **({"base_dir": own_base} if own_base is not None else {})},
            source=source,
            base_dir=base_dir,
            check_paths=check_paths,
        )
    except RegistryError as exc:  # one model per application: its list index says nothing
        raise RegistryError(str(exc).replace(f"{source}: models[0]", source)) from None
    return registry.models[0]


def parse_router_args(args: Any, source: str = "router args") -> RouterSpec:
    """The router application's ``args``: ``{router: RouterSpec}`` (both optional)."""
    if args is None:
        args = {}
    if not isinstance(args, dict) or set(args) - {"router"}:
        raise RegistryError(f"{source}: 'args' may only hold 'router:' (the router's settings)")
    try:
        return RouterSpec.model_validate(args.get("router") or {})
    except ValidationError as exc:
        lines = [f"{source}: invalid router settings:"]
        lines += [f"  field 'router.{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors()]
        raise RegistryError("\n".join(lines)) from None


def apply_live_options(spec: ModelSpec, deployments: Any, source: str) -> ModelSpec:
    """The spec with the live options of its application's ``deployments:`` entry.

    Serve replaces the builder's whole ``autoscaling_config`` with the entry's, filling what it
    leaves out with Serve's generic defaults; ``target_ongoing_requests`` (Serve's default: 2)
    must therefore be given."""
    if deployments is None:
        return spec
    if not isinstance(deployments, list) or not all(isinstance(d, dict) for d in deployments):
        raise RegistryError(f"{source}: 'deployments' must be a list of mappings")
    update: dict[str, Any] = {}
    for entry in deployments:
        if entry.get("name") != MODEL_DEPLOYMENT:
            raise RegistryError(
                f"{source}: deployments: {entry.get('name')!r} does not exist; a model application "
                f"has one deployment, {MODEL_DEPLOYMENT!r}"
            )
        unknown = sorted(set(entry) - LIVE_OPTIONS)
        if unknown:
            raise RegistryError(
                f"{source}: deployments: {MODEL_DEPLOYMENT}: option(s) {', '.join(unknown)} are set from "
                f"the model's args by the builder; allowed here: {', '.join(sorted(LIVE_OPTIONS))}"
            )
        scaling = entry.get("autoscaling_config")
        if isinstance(scaling, dict):
            if "target_ongoing_requests" not in scaling:
                raise RegistryError(
                    f"{source}: deployments: {MODEL_DEPLOYMENT}: autoscaling_config must set "
                    "target_ongoing_requests: Serve replaces the whole autoscaling_config, and its own "
                    "default (2) would add a replica for every 2 streams"
                )
            # What preflight counts; Serve's other options (look_back_period_s, ...) are Serve's.
            update["autoscaling"] = {k: v for k, v in scaling.items() if k in AutoscalingSpec.model_fields}
        elif isinstance(entry.get("num_replicas"), int):
            count = entry["num_replicas"]
            update["autoscaling"] = {"min_replicas": count, "max_replicas": max(count, 1)}
        for field in ("max_ongoing_requests", "max_queued_requests"):
            if field in entry:
                update[field] = entry[field]
    try:
        return ModelSpec.model_validate({**spec.model_dump(exclude_unset=True), **update})
    except ValidationError as exc:
        lines = [f"{source}: deployments: {MODEL_DEPLOYMENT}: invalid options:"]
        lines += [f"  {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise RegistryError("\n".join(lines)) from None


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
        names = sorted(_fields_at(loc[:-1], top=not in_model))
        close = difflib.get_close_matches(str(loc[-1]), names, n=1) if loc else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        if loc and str(loc[-1]) in VLLM_ENGINE_ARGS and "engine_args" in names:
            hint = f"it is a vLLM engine argument: set it under engine_args ({{{loc[-1]}: ...}}); "
        message = f"unknown field; {hint}allowed fields here: {', '.join(names)}"
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
    """Field names allowed at a location, to list them after 'unknown field'. A model's live
    fields are left out: they go in the application's ``deployments:`` entry, not its args."""
    if not top and not path:
        return [name for name in ModelSpec.model_fields if name not in LIVE_FIELDS]
    model: type[BaseModel] = RegistrySpec if top else ModelSpec
    for part in path:
        annotation = model.model_fields.get(str(part))
        sub = getattr(annotation, "annotation", None) if annotation else None
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
        else:
            break
    return list(model.model_fields)
