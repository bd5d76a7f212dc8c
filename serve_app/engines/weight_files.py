"""Which files of a checkpoint directory hold its weights, decided as vLLM 0.24's loader does.

Source: vllm/model_executor/model_loader/default_loader.py ``DefaultModelLoader._prepare_weights``
and weight_utils.py ``filter_duplicate_safetensors_files``, for a local directory and the default
``load_format="auto"``:

1. Any ``consolidated*.safetensors`` switches ``auto`` to the Mistral format, which reads only
   those files (and ``consolidated.safetensors.index.json``). This app serves Hugging Face
   exports, so that is an error here.
2. Otherwise every ``*.safetensors`` in the directory (not its subfolders).
3. When ``model.safetensors.index.json`` exists, only the files its ``weight_map`` names; others
   are skipped. A file the index names but the directory lacks is skipped too, and its tensors
   end up missing (vLLM then fails: "weights not initialized from checkpoint").
4. No ``*.safetensors`` at all: vLLM falls back to ``*.bin``, which this app does not read.

Used by preflight (safetensors_index.py) and the CPU loader (fp8_loading.py). Imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from serve_app.errors import CheckpointLoadError

INDEX_NAME = "model.safetensors.index.json"
PATTERN = "*.safetensors"
MISTRAL_PATTERN = "consolidated*.safetensors"


@dataclass(frozen=True)
class WeightFiles:
    """What vLLM reads from one checkpoint directory.

    ``files``: the safetensors files it loads, sorted by name. ``weight_map``: tensor name ->
    file name from the index ({} without one). ``unlisted``: ``*.safetensors`` the index leaves
    out, which vLLM skips. ``missing``: file names the index lists that do not exist.
    """

    directory: Path
    files: tuple[Path, ...]
    index_path: Path | None = None
    weight_map: dict[str, str] | None = None
    unlisted: tuple[Path, ...] = ()
    missing: tuple[str, ...] = ()


def weight_files(directory: Path) -> WeightFiles:
    """The files vLLM loads from ``directory`` (rules in the module docstring).

    Raises CheckpointLoadError when vLLM would load nothing this app can read (no
    ``*.safetensors``, Mistral-format files) or the index is unreadable; the message names the file.
    """
    directory = Path(directory)
    found = sorted(directory.glob(PATTERN))
    mistral = sorted(directory.glob(MISTRAL_PATTERN))
    if mistral:
        raise CheckpointLoadError(
            f"{', '.join(p.name for p in mistral)} in {directory}: vLLM then loads only "
            f"{MISTRAL_PATTERN} in Mistral's format, not this Hugging Face export's files"
        )
    if not found:
        bins = " (vLLM would fall back to *.bin, which this app does not read)"
        raise CheckpointLoadError(
            f"no {PATTERN} file in {directory}" + (bins if any(directory.glob("*.bin")) else "")
        )
    index_path = directory / INDEX_NAME
    if not index_path.is_file():
        return WeightFiles(directory, tuple(found))
    weight_map = _weight_map(index_path)
    listed = sorted(set(weight_map.values()))
    names = {p.name for p in found}
    return WeightFiles(
        directory,
        files=tuple(p for p in found if p.name in listed),
        index_path=index_path,
        weight_map=weight_map,
        unlisted=tuple(p for p in found if p.name not in listed),
        missing=tuple(name for name in listed if name not in names),
    )


def _weight_map(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointLoadError(f"{INDEX_NAME} is unreadable or has no 'weight_map' object") from None
    return {str(name): str(file) for name, file in weight_map.items()}
