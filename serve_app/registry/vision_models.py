"""Which architectures take images here, and how their prompts hold them: one row per architecture.

An architecture without a row is text-only for this app: an image sent to it is a 400 naming
the model. Read without transformers or vLLM (config.json's ``architectures``), so the builder,
the engines and the model server agree on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VisionModel:
    """How one architecture takes images: the config.json key of its image placeholder token id."""

    image_token_key: str
    reason: str
    source: str


VISION_MODELS: dict[str, VisionModel] = {
    "Qwen2_5_VLForConditionalGeneration": VisionModel(
        image_token_key="image_token_id",
        reason="the chat template renders one <|image_pad|> per image; the model sees it "
        "image_grid_thw.prod() // merge_size**2 times",
        source="transformers models/qwen2_5_vl/processing_qwen2_5_vl.py replace_image_token; "
        "vllm/model_executor/models/qwen2_vl.py Qwen2VLMultiModalProcessor._get_prompt_updates",
    ),
}


def vision_model(checkpoint: Path) -> tuple[str, VisionModel] | None:
    """(architecture, its row) when the checkpoint's config.json names an architecture with a
    row; None for a text-only (or unreadable) checkpoint."""
    try:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for architecture in config.get("architectures") or () if isinstance(config, dict) else ():
        if architecture in VISION_MODELS:
            return architecture, VISION_MODELS[architecture]
    return None
