"""Images from OpenAI ``image_url`` parts: data URLs, and remote URLs only where a model allows them.

Rules (each failure is a 400 naming ``messages``):

- ``data:image/<type>;base64,<data>``: decoded here. Other ``data:`` media types are refused.
- ``http://`` / ``https://``: off unless the model's ``media.allowed_media_domains`` lists the
  URL's host (vLLM's ``--allowed-media-domains``; vLLM fetches any URL by default, which lets
  a request make the server fetch what it likes). Fetched with httpx's async client, so the
  event loop never blocks: no redirects (a redirect could leave the list), at most
  ``max_image_bytes`` read, ``fetch_timeout_s`` for the whole fetch.
- ``file://`` and every other scheme: never.
- Decoding: Pillow, restricted to ``IMAGE_FORMATS``, in a worker thread. The pixel count is read
  from the header and checked against ``max_image_pixels`` before any pixel is decoded, so a
  small file that expands to gigabytes (a decompression bomb) is refused cheaply. Images come
  back as RGB, as vLLM's media connector converts them (``ImageMediaIO`` with
  ``image_mode="RGB"``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from serve_app.errors import InvalidRequestError

# Formats Pillow may open: the common web formats. Others (and their parsers) are never reached.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
PARAM = "messages"


@dataclass(frozen=True)
class ImagePolicy:
    """One model's image rules: the registry's ``media`` fields of the same names."""

    limit_per_prompt: int = 4
    allowed_media_domains: tuple[str, ...] = ()
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    fetch_timeout_s: float = 5.0


def image_policy(spec: Any) -> ImagePolicy:
    """The ``ImagePolicy`` of a registry ``MediaSpec`` (fields of the same names)."""
    return ImagePolicy(
        limit_per_prompt=spec.limit_per_prompt,
        allowed_media_domains=tuple(spec.allowed_media_domains),
        max_image_bytes=spec.max_image_bytes,
        max_image_pixels=spec.max_image_pixels,
        fetch_timeout_s=spec.fetch_timeout_s,
    )


def _refuse(index: int, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"image {index + 1}: {message}", param=PARAM)


def _data_url_bytes(url: str, index: int, policy: ImagePolicy) -> bytes:
    header, comma, data = url.partition(",")
    header = header.lower()  # RFC 2397's scheme, type and ";base64" are case-insensitive
    media_type = header[len("data:") :].split(";")[0].strip()
    if not comma or not header.endswith(";base64"):
        raise _refuse(index, "a data URL must be base64: data:image/<type>;base64,<data>")
    if not media_type.startswith("image/") or media_type == "image/":
        raise _refuse(index, f"data URL media type {media_type[:64]!r} is not an image type")
    if len(data) * 3 // 4 > policy.max_image_bytes:
        raise _refuse(index, f"the image is larger than this model accepts ({policy.max_image_bytes} bytes)")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(index, "the data URL is not valid base64") from None


async def _fetch(url: str, index: int, policy: ImagePolicy, model_name: str) -> bytes:
    if not policy.allowed_media_domains:
        raise _refuse(
            index,
            f"model {model_name!r} does not fetch remote images; send the image as a data URL "
            "(data:image/png;base64,...), or list the host in the model's media.allowed_media_domains",
        )
    # urlsplit drops tabs and newlines that httpx refuses, and raises on a broken IPv6 host: a URL
    # with either is refused here, before the host is judged (the host httpx would contact must be
    # the one checked).
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise _refuse(index, "the image URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise _refuse(index, f"the image URL is not valid: {str(error)[:100]}") from None
    if host not in policy.allowed_media_domains:
        raise _refuse(
            index,
            f"host {host[:200]!r} is not in model {model_name!r}'s media.allowed_media_domains "
            f"({', '.join(policy.allowed_media_domains)})",
        )
    import httpx

    try:
        async with asyncio.timeout(policy.fetch_timeout_s):
            async with (
                httpx.AsyncClient(follow_redirects=False, trust_env=False) as client,
                client.stream("GET", url) as response,
            ):
                if response.status_code != 200:
                    raise _refuse(index, f"fetching the image answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > policy.max_image_bytes:
                        raise _refuse(
                            index,
                            f"the image is larger than this model accepts ({policy.max_image_bytes} bytes)",
                        )
                return bytes(body)
    except TimeoutError:
        raise _refuse(index, f"fetching the image took longer than {policy.fetch_timeout_s:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:  # InvalidURL is not an HTTPError
        raise _refuse(index, f"the image could not be fetched: {type(error).__name__}") from None


def decode_image(data: bytes, index: int, policy: ImagePolicy) -> Any:
    """Bytes -> an RGB ``PIL.Image.Image``; 400 for anything Pillow cannot decode or too many pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > policy.max_image_pixels:
                raise _refuse(
                    index,
                    f"the image is {width}x{height} pixels, more than this model accepts "
                    f"({policy.max_image_pixels} pixels)",
                )
            return image.convert("RGB")
    except Image.DecompressionBombError:  # Pillow's own bound (2 x Image.MAX_IMAGE_PIXELS), at open
        raise _refuse(
            index, f"the image has more pixels than this model accepts ({policy.max_image_pixels} pixels)"
        ) from None
    except UnidentifiedImageError:
        raise _refuse(
            index, f"the data could not be decoded as an image ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise _refuse(index, f"the image could not be decoded: {str(error)[:200]}") from None


async def load_image(url: str, index: int, policy: ImagePolicy, model_name: str) -> Any:
    """One ``image_url`` -> an RGB ``PIL.Image.Image`` (rules in the module docstring)."""
    scheme = url[: url.find(":")].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, index, policy)
    elif scheme in ("http", "https"):
        data = await _fetch(url, index, policy, model_name)
    else:
        raise _refuse(index, f"URL scheme {scheme[:20]!r} is not supported; send a data URL (data:image/...)")
    async with _decoding():
        return await asyncio.to_thread(decode_image, data, index, policy)


# A decoded image holds width x height x 3 bytes until the processor resizes it (48 MB for a 4096^2
# image from a 1.4 KB PNG): a few decodes at a time per replica bound that memory and keep the
# replica's threads free for its tokenizer and other requests.
MAX_CONCURRENT_DECODES = 4
_decode_slots: dict[int, asyncio.Semaphore] = {}


def _decoding() -> asyncio.Semaphore:
    """This event loop's decode semaphore (one per loop: a Semaphore belongs to one loop)."""
    loop = id(asyncio.get_running_loop())
    slots = _decode_slots.get(loop)
    if slots is None:
        slots = _decode_slots[loop] = asyncio.Semaphore(MAX_CONCURRENT_DECODES)
    return slots


async def load_images(urls: list[str], policy: ImagePolicy, model_name: str) -> list[Any]:
    """Every image of a request, in order; the first failure is the 400."""
    if len(urls) > policy.limit_per_prompt:
        raise InvalidRequestError(
            f"{len(urls)} images in one request; model {model_name!r} accepts at most "
            f"{policy.limit_per_prompt} (its media.limit_per_prompt, vLLM's limit_mm_per_prompt)",
            param=PARAM,
        )
    tasks = [asyncio.ensure_future(load_image(u, i, policy, model_name)) for i, u in enumerate(urls)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one failed (or the caller went away): stop the other fetches
        for task in tasks:
            task.cancel()
