"""One Ray Serve cluster for the router tests, with a two-model app built from a models.yaml."""

from __future__ import annotations

import pytest

from tests.serve_fixtures import free_port, start_app_from_yaml, wait_ready, write_models_yaml


@pytest.fixture(scope="session")
def serve_cluster():
    import ray
    from ray import serve

    port = free_port()
    # Logical CPUs, not cores: model replicas ask for fractions, and several test apps share them.
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def two_model_app(serve_cluster, tmp_path_factory, qwen2_checkpoint, llama_checkpoint):
    folder = tmp_path_factory.mktemp("app")
    (folder / "ckpt").mkdir()
    (folder / "ckpt" / "qwen").symlink_to(qwen2_checkpoint)
    models = [
        # relative to the YAML's folder, as users write it
        {
            "name": "qwen-tiny",
            "aliases": ["qwen"],
            "checkpoint": "ckpt/qwen",
            "engine": "cpu",
            "max_model_len": 256,
        },
        {
            "name": "llama-tiny",
            "checkpoint": str(llama_checkpoint),
            "engine": "cpu",
            "max_model_len": 256,
            # tests/router/test_hardening.py: request templates, with a short time budget
            "allow_request_chat_template": True,
            "chat_template_timeout_s": 1.0,
        },
    ]
    # tests/router/test_hardening.py: a body that arrives too slowly
    path = write_models_yaml(folder, models, request_body_timeout_s=10)
    start_app_from_yaml(path)
    wait_ready(serve_cluster)
    return serve_cluster


@pytest.fixture
def client(two_model_app):
    from openai import OpenAI

    with OpenAI(base_url=f"{two_model_app}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c
