"""deployments/media.py: remote images only from allowed hosts, within size and time; pixel bounds."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from serve_app.deployments.media import ImagePolicy, decode_image, load_image
from serve_app.errors import InvalidRequestError


def png_bytes(size=(32, 24), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((128, 128), 64).save(buffer, format="PNG")  # noise does not compress
    return buffer.getvalue()


NOISE = _noise_png()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/slow.png":
            time.sleep(2.0)
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "http://example.com/cat.png")
            self.end_headers()
            return
        body = NOISE if self.path == "/big.png" else png_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


ALLOWED = ImagePolicy(allowed_media_domains=("127.0.0.1",), max_image_bytes=4096, fetch_timeout_s=10)


def load(url: str, policy: ImagePolicy = ALLOWED):
    return asyncio.run(load_image(url, 0, policy, "vl"))


def test_an_allowed_host_is_fetched(server):
    image = load(f"{server}/ok.png")
    assert image.size == (32, 24)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big.png", "image 1: the image is larger than this model accepts (4096 bytes)"),
        ("/moved.png", "image 1: fetching the image answered HTTP 302"),
    ],
)
def test_fetch_limits(server, path, message):
    with pytest.raises(InvalidRequestError) as caught:
        load(f"{server}{path}")
    assert caught.value.message == message


def test_a_fetch_past_its_time_is_stopped(server):
    policy = ImagePolicy(allowed_media_domains=("127.0.0.1",), fetch_timeout_s=0.5)
    with pytest.raises(InvalidRequestError) as caught:
        load(f"{server}/slow.png", policy)  # the server answers after 2 s
    assert caught.value.message == "image 1: fetching the image took longer than 0.5 s"


def test_a_host_outside_the_list_is_refused_without_fetching(server):
    policy = ImagePolicy(allowed_media_domains=("images.example.com",))
    with pytest.raises(InvalidRequestError) as caught:
        load(f"{server}/ok.png", policy)
    assert caught.value.message == (
        "image 1: host '127.0.0.1' is not in model 'vl''s media.allowed_media_domains (images.example.com)"
    )


def test_a_decompression_bomb_is_refused_from_its_header():
    # 8000 x 8000 one-bit pixels: 64 M pixels (192 MB as RGB) in a file of a few kilobytes
    bomb = png_bytes((8000, 8000), mode="1")
    assert len(bomb) < 100_000
    with pytest.raises(InvalidRequestError) as caught:
        decode_image(bomb, 2, ImagePolicy())
    assert caught.value.message == (
        "image 3: the image is 8000x8000 pixels, more than this model accepts (16777216 pixels)"
    )


def test_a_data_url_of_another_media_type_is_refused():
    url = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    with pytest.raises(InvalidRequestError, match="data URL media type 'text/plain' is not an image type"):
        load(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1\t:9/ok.png", "image 1: the image URL contains whitespace or control characters"),
        ("http://127.0.0.1/ok.png\n", "image 1: the image URL contains whitespace or control characters"),
        ("http://127.0.0.1:abc/ok.png", "image 1: the image URL is not valid: "),
        ("http://[127.0.0.1/ok.png", "image 1: the image URL is not valid: "),
    ],
)
def test_urls_that_do_not_parse_are_refused_before_any_fetch(url, message):
    """urlsplit drops tabs and newlines that httpx refuses; broken hosts and ports are 400 too."""
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        load(url)


def test_data_url_scheme_and_type_are_case_insensitive_and_need_a_subtype():
    data = base64.b64encode(png_bytes()).decode()
    assert load(f"DATA:IMAGE/PNG;BASE64,{data}").size == (32, 24)
    with pytest.raises(InvalidRequestError, match="data URL media type 'image/' is not an image type"):
        load(f"data:image/;base64,{data}")
