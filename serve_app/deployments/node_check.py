"""A replica's own look at its checkpoint, on the node where Ray placed it.

Preflight reads each checkpoint where ``build_app`` runs: the driver, or the node ``serve run``
built the app on. In a cluster of several nodes each node has its own filesystem, and a
replica may land on a node where the path is missing or holds another copy. So ``build_app``
records what preflight saw (a :class:`CheckpointManifest`: file names and sizes at the top of
the checkpoint directory), and each replica compares its node's directory with it before it
loads anything. A difference raises ``CheckpointLoadError`` naming the model, the path, the
node (id and IP from ``ray.get_runtime_context()``) and where preflight read it; Ray Serve
shows that message in ``serve status`` and the ``serve run`` log.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.errors import CheckpointLoadError


@dataclass(frozen=True)
class CheckpointManifest:
    """What preflight saw: ``files`` maps each top-level file name to its size in bytes;
    ``read_on`` is "node <id> (<ip>)" or "host <hostname>" outside a Ray cluster."""

    directory: str
    read_on: str
    files: dict[str, int] | None = field(default_factory=dict)


def checkpoint_files(directory: Path) -> dict[str, int] | None:
    """{file name: size} of the regular files directly in ``directory`` (symlinks followed,
    hidden files left out); None when the directory does not exist."""
    if not directory.is_dir():
        return None
    return {
        entry.name: entry.stat().st_size
        for entry in sorted(directory.iterdir())
        if entry.is_file() and not entry.name.startswith(".")
    }


def record_manifest(directory: Path) -> CheckpointManifest:
    """The manifest of ``directory`` as this process sees it, labelled with where it runs."""
    from serve_app.engines.selection import node_view

    view = node_view()
    read_on = view.here if view is not None else f"host {socket.gethostname()}"
    return CheckpointManifest(str(directory), read_on, checkpoint_files(directory))


def differences(manifest: CheckpointManifest, found: dict[str, int] | None) -> str:
    """What differs between the manifest and the files found here, in words; "" when nothing
    (or when preflight found no directory either: then the engine's own error stands)."""
    if manifest.files is None:
        return ""
    if found is None:
        return "the directory does not exist"
    missing = [name for name in manifest.files if name not in found]
    resized = [
        f"{name} ({found[name]} bytes here, {size} where preflight read it)"
        for name, size in manifest.files.items()
        if name in found and found[name] != size
    ]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if resized:
        parts.append("different size: " + ", ".join(resized))
    return "; ".join(parts)


def verify_on_this_node(model: str, manifest: CheckpointManifest, here: str) -> None:
    """Raise ``CheckpointLoadError`` when this node's checkpoint differs from the manifest.

    ``here`` is this node's label, "node <id> (<ip>)" (``selection.node_label``)."""
    problem = differences(manifest, checkpoint_files(Path(manifest.directory)))
    if not problem:
        return
    raise CheckpointLoadError(
        f"model {model!r}: checkpoint {manifest.directory} on {here}, where Ray placed this replica: "
        f"{problem}. Preflight read it on {manifest.read_on}. Every node that may run this model's "
        "replicas needs the checkpoint at the same path (a shared filesystem, or a copy per node); "
        "or pin the model to nodes that have it with resources.resources.",
        param="checkpoint",
    )
