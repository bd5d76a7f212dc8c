"""Images in chat requests, through the official openai client, on a real Ray Serve app.

One app (route prefix /vl) serves a tiny Qwen2.5-VL FP8 checkpoint with at most two images per
request; the text-only model is the shared two-model app's. Images are made here with Pillow.
"""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.serve_fixtures import start_app_from_yaml, wait_ready, write_models_yaml

QUESTION = "What is in the picture?"


def data_url(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


PNG = data_url(Image.new("RGB", (64, 48), (200, 30, 40)), "PNG")  # -> 56x56: 4 image tokens
JPEG = data_url(Image.linear_gradient("L").resize((112, 84)).convert("RGB"), "JPEG")  # 8x6 -> 12


def image_part(url: str, detail: str | None = None) -> dict:
    image_url = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {"type": "image_url", "image_url": image_url}


def ask(client, *urls: str, model: str = "vl-tiny", **options):
    content = [image_part(url) for url in urls] + [{"type": "text", "text": QUESTION}]
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0, **options
    )


@pytest.fixture(scope="module")
def vl_app(two_model_app, tmp_path_factory, vl_checkpoint):
    from ray import serve

    folder = tmp_path_factory.mktemp("vl-app")
    models = [
        {
            "name": "vl-tiny",
            "checkpoint": str(vl_checkpoint),
            "engine": "cpu",
            "max_model_len": 1024,
            "media": {"limit_per_prompt": 2},
        }
    ]
    path = write_models_yaml(folder, models, name="vl", prefix="/vl")
    start_app_from_yaml(path)
    base = f"{two_model_app}/vl"
    wait_ready(base)
    yield base
    serve.delete("vl")


@pytest.fixture
def vl_client(vl_app):
    with openai.OpenAI(base_url=f"{vl_app}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def test_one_png_image_counts_its_tokens_in_usage(vl_client):
    text_only = vl_client.chat.completions.create(
        model="vl-tiny", messages=[{"role": "user", "content": QUESTION}], max_tokens=8, temperature=0
    )
    reply = ask(vl_client, PNG)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    # <|vision_start|> + 4 image tokens + <|vision_end|>, as vLLM's prompt_token_ids count them
    assert reply.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 + 4


def test_two_images_png_and_jpeg_with_detail(vl_client):
    content = [image_part(PNG, "low"), image_part(JPEG, "high"), {"type": "text", "text": QUESTION}]
    reply = vl_client.chat.completions.create(
        model="vl-tiny", messages=[{"role": "user", "content": content}], max_tokens=8, temperature=0
    )
    one = ask(vl_client, PNG)
    assert reply.usage.prompt_tokens == one.usage.prompt_tokens + 2 + 12


def test_greedy_answer_depends_on_the_image_and_streams_the_same(vl_client):
    whole = ask(vl_client, JPEG)
    chunks = list(
        vl_client.chat.completions.create(
            model="vl-tiny",
            messages=[{"role": "user", "content": [image_part(JPEG), {"type": "text", "text": QUESTION}]}],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content


def test_more_images_than_the_limit_is_400(vl_client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(vl_client, PNG, JPEG, PNG)
    error = caught.value.body
    assert error["param"] == "messages"
    assert error["message"] == (
        "3 images in one request; model 'vl-tiny' accepts at most 2 "
        "(its media.limit_per_prompt, vLLM's limit_mm_per_prompt)"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "data:image/png;base64," + base64.b64encode(b"this is not a PNG").decode(),
            "image 1: the data could not be decoded as an image (PNG, JPEG, WEBP, GIF, BMP)",
        ),
        ("data:image/png;base64,@@@not-base64", "image 1: the data URL is not valid base64"),
        (  # a PNG cut in half: its header reads, its pixels do not
            "data:image/png;base64," + base64.b64encode(base64.b64decode(PNG.split(",")[1])[:60]).decode(),
            "image 1: the image could not be decoded: ",
        ),
    ],
)
def test_an_undecodable_image_is_400(vl_client, url, message):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(vl_client, url)
    assert caught.value.body["param"] == "messages"
    assert caught.value.body["message"].startswith(message)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://127.0.0.1:9/cat.png",
            "image 1: model 'vl-tiny' does not fetch remote images; send the image as a data URL "
            "(data:image/png;base64,...), or list the host in the model's media.allowed_media_domains",
        ),
        (
            "file:///etc/passwd",
            "image 1: URL scheme 'file' is not supported; send a data URL (data:image/...)",
        ),
    ],
)
def test_remote_and_file_urls_are_refused(vl_client, url, message):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(vl_client, url)
    assert caught.value.body["message"] == message


def test_an_image_to_a_text_model_is_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, PNG, model="qwen")
    assert caught.value.body["param"] == "messages"
    assert caught.value.body["message"] == (
        "model 'qwen-tiny' is a text-only model and does not take images; "
        "send image_url parts to a vision-language model"
    )


def test_images_only_in_user_messages(vl_client):
    messages = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": [image_part(PNG)]},
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        vl_client.chat.completions.create(model="vl-tiny", messages=messages, max_tokens=4)
    assert "image_url parts are only allowed in user messages, not assistant" in caught.value.body["message"]


def test_an_image_the_processor_refuses_is_400(vl_client):
    """Qwen2-VL's smart_resize refuses an aspect ratio of 200 or more (a 1x300 image)."""
    with pytest.raises(openai.BadRequestError) as caught:
        ask(vl_client, data_url(Image.new("RGB", (1, 300)), "PNG"))
    assert caught.value.body["param"] == "messages"
    assert "absolute aspect ratio must be smaller than 200" in caught.value.body["message"]


def test_text_beside_an_image_counts_before_tokenizing(vl_client):
    """A long text part next to an image is refused from its rendered length, before the tokenizer."""
    parts = [image_part(PNG)] + [{"type": "text", "text": "ab " * 5000}] * 200
    with pytest.raises(openai.BadRequestError) as caught:
        vl_client.chat.completions.create(
            model="vl-tiny", messages=[{"role": "user", "content": parts}], max_tokens=1
        )
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "render to 3000" in caught.value.body["message"]
