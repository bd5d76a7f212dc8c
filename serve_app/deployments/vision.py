"""Image prompts for vision-language checkpoints: which models take images, and their prompt ids.

A chat template renders one image placeholder token per image (Qwen2.5-VL: ``<|image_pad|>``
between ``<|vision_start|>`` and ``<|vision_end|>``). The model sees each placeholder repeated
once per image token: ``image_grid_thw.prod() // merge_size**2`` times, the patch grid of the
resized image merged ``merge_size`` x ``merge_size`` (transformers'
``Qwen2_5_VLProcessor.replace_image_token``; vLLM 0.24's ``Qwen2VLMultiModalProcessor``
``_get_prompt_updates`` expands by the same rule with the same image processor). Those expanded
ids are what vLLM reports as ``RequestOutput.prompt_token_ids``, so they are what
``usage.prompt_tokens`` counts and what the context window must hold.

The checkpoint's own image processor (``AutoImageProcessor``, from preprocessor_config.json) sizes
and normalises the images. transformers' ``AutoProcessor`` would also load a video processor,
which needs torchvision; the CPU build of torch has no matching torchvision, so this module
combines the image processor and the tokenizer itself.

Facts per architecture are the rows of ``registry/vision_models.py``; an architecture without a
row is text-only here, and an image sent to it is a 400 naming the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve_app.engines.protocol import PromptMedia
from serve_app.errors import InvalidRequestError
from serve_app.registry.vision_models import vision_model


class ImagePrompts:
    """Expands a rendered prompt's image placeholders for one checkpoint (see the module docstring).

    Not thread-safe beyond what the image processor is: the model server calls it from its one
    tokenizer thread."""

    def __init__(self, checkpoint: Path, tokenizer: Any, trust_remote_code: bool = False) -> None:
        from transformers import AutoImageProcessor

        found = vision_model(checkpoint)
        if found is None:
            raise ValueError(f"{checkpoint} is not a vision-language checkpoint this app knows")
        self.architecture, row = found
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        self.image_token_id = int(config[row.image_token_key])
        self.tokenizer = tokenizer
        self.image_processor = AutoImageProcessor.from_pretrained(
            str(checkpoint), trust_remote_code=trust_remote_code
        )
        self.merge_size = int(getattr(self.image_processor, "merge_size", 2))

    def tokens_per_image(self, images: list[Any]) -> list[int]:
        """Image tokens each image becomes, from its size alone (no pixels are processed).

        Raises InvalidRequestError for a size the processor refuses (Qwen2-VL's ``smart_resize``:
        an aspect ratio of 200 or more)."""
        merge = self.merge_size**2
        with processor_errors():
            return [
                self.image_processor.get_number_of_image_patches(image.height, image.width, {}) // merge
                for image in images
            ]

    def media(self, prompt_ids: list[int], images: list[Any], tensors: bool) -> tuple[list[int], PromptMedia]:
        """(the expanded prompt ids, the ``PromptMedia`` engines take) for a rendered prompt.

        ``tensors``: also run the image processor for the pixel values a transformers model
        needs (the CPU engine); vLLM runs its own copy of the processor, so it needs only the
        images. Raises InvalidRequestError when the template did not render one placeholder per
        image."""
        placeholders = sum(1 for token in prompt_ids if token == self.image_token_id)
        if placeholders != len(images):
            raise InvalidRequestError(
                f"the chat template rendered {placeholders} image placeholder(s) for {len(images)} "
                "image(s); every image must be in a message the template renders",
                param="messages",
            )
        processed: dict[str, Any] = {}
        if tensors:
            with processor_errors():
                processed = dict(self.image_processor(images=images, return_tensors="pt"))
            merge = self.merge_size**2
            counts = [int(grid.prod()) // merge for grid in processed["image_grid_thw"]]
        else:
            counts = self.tokens_per_image(images)
        expanded: list[int] = []
        image = 0
        for token in prompt_ids:
            if token == self.image_token_id:
                expanded.extend([token] * counts[image])
                image += 1
            else:
                expanded.append(token)
        if tensors:
            import torch

            ids = torch.tensor([expanded])
            processed["mm_token_type_ids"] = (ids == self.image_token_id).to(torch.int32)
        return expanded, PromptMedia(tuple(images), list(prompt_ids), processed)


@contextmanager
def processor_errors() -> Iterator[None]:
    """The image processor's refusals of an image (ValueError) as a 400 naming ``messages``.

    Qwen2-VL's ``smart_resize`` raises "absolute aspect ratio must be smaller than 200" for a
    1x300 image, on the CPU engine's path and on the size-only count for vLLM alike."""
    try:
        yield
    except ValueError as error:
        raise InvalidRequestError(
            f"the image processor cannot take this image: {str(error)[:200]}", param="messages"
        ) from None
