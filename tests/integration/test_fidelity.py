"""Drop-in fidelity: an OpenAI client gets what OpenAI would send it, no more and no less."""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests import support
from tests.conftest import Upstream, facade_config

HELLO = [{"role": "user", "content": "hola"}]
README = support.ROOT / "README.md"
SHIPPED_CONFIG = support.ROOT / "deploy" / "capibara-facade.toml"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[support.ServerProcess]:
    """The facade in its shipped configuration (two workers, every public model), in front of the demo upstream."""
    facade = support.facade(
        tmp_path_factory.mktemp("shipped"),
        SHIPPED_CONFIG.read_text(),
        env={"CAPIBARA__UPSTREAMS__MODELS_EUROPE__URL": upstream.url},
    )
    with support.running(facade) as server:
        yield server


def _readme_streaming_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    return next(block for block in blocks if "stream=True" in block)


def _public_models(server: support.ServerProcess) -> list[str]:
    return [model["id"] for model in httpx.get(server.url + "/v1/models").json()["data"]]


def test_the_readmes_streaming_example_runs_on_every_public_model_of_the_shipped_config(
    shipped: support.ServerProcess,
) -> None:
    example = _readme_streaming_example()
    assert 'base_url="http://127.0.0.1:8000/v1"' in example and 'model="capibara6"' in example
    models = _public_models(shipped)
    assert "capibara6" in models and len(models) == 6
    for model in models:
        code = example.replace("http://127.0.0.1:8000", shipped.url).replace('"capibara6"', f'"{model}"')
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        assert printed.getvalue().startswith("Hola! You said:"), model


def test_a_stream_without_include_usage_is_the_upstreams_minus_exactly_the_usage_chunk(
    shipped: support.ServerProcess, upstream: Upstream
) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True}
    with_usage = {**body, "stream_options": {"include_usage": True}}
    direct = httpx.post(upstream.url + "/v1/chat/completions", json=with_usage, timeout=20).content
    relayed = httpx.post(shipped.url + "/v1/chat/completions", json=body, timeout=20)
    usage_chunk = next(event + b"\n\n" for event in direct.split(b"\n\n") if b'"choices":[]' in event)
    assert relayed.content == direct.replace(usage_chunk, b"")
    asked = json.loads(upstream.request(relayed.headers["x-request-id"])["body"])
    assert asked["stream_options"] == {"include_usage": True}  # the facade still learns what the stream cost


def test_a_client_that_declines_usage_keeps_its_other_stream_options_and_gets_no_usage_chunk(
    shipped: support.ServerProcess, upstream: Upstream
) -> None:
    options = {"include_usage": False, "include_obfuscation": False}
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "stream_options": options}
    relayed = httpx.post(shipped.url + "/v1/chat/completions", json=body, timeout=20)
    assert b'"usage"' not in relayed.content and relayed.content.endswith(b"data: [DONE]\n\n")
    asked = json.loads(upstream.request(relayed.headers["x-request-id"])["body"])
    assert asked["stream_options"] == {"include_usage": True, "include_obfuscation": False}


def test_a_client_that_asks_for_usage_gets_the_upstreams_stream_byte_for_byte(
    shipped: support.ServerProcess, upstream: Upstream
) -> None:
    body = {"model": "qwen_coder", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    direct = httpx.post(upstream.url + "/v1/chat/completions", json=body, timeout=20).content
    relayed = httpx.post(shipped.url + "/v1/chat/completions", json=body, timeout=20).content
    assert relayed == direct and b'"choices":[],"usage"' in relayed


def test_langchain_with_stream_usage_gets_the_token_counts(shipped: support.ServerProcess) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=shipped.url + "/v1", api_key="unused", model="capibara6", stream_usage=True)
    chunks = list(chat.stream("hola capibara"))
    usage = [chunk.usage_metadata for chunk in chunks if chunk.usage_metadata]
    assert usage and usage[-1]["output_tokens"] > 0


# --- the facade's own answers in OpenAI's words ----------------------------------------------------------


def test_the_wrong_method_on_a_chat_route_says_which_is_allowed(http: httpx.Client) -> None:
    # GET /v1/chat/completions lists stored completions (a 404 while [store] is off, as it is here).
    for path, method, allowed in (("/v1/chat/completions", "PUT", "GET, POST"), ("/api/chat", "GET", "POST")):
        response = http.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed


def test_an_unknown_path_is_named_with_its_method_as_openai_does(http: httpx.Client) -> None:
    response = http.get("/v1/foo")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/foo)"


def test_a_browser_request_from_a_site_not_in_the_cors_policy_is_refused_before_any_work(
    http: httpx.Client, upstream: Upstream
) -> None:
    before = len(upstream.requests())
    response = http.post(
        "/api/chat",
        content=b'{"message": "hola"}',
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"
    assert "access-control-allow-origin" not in response.headers
    assert len(upstream.requests()) == before


def test_with_api_keys_configured_the_model_list_needs_a_key_too(tmp_path: Path, upstream: Upstream) -> None:
    config = facade_config(upstream.url, '[auth]\napi_keys = ["sk-capibara-1"]\n')
    with support.running(support.facade(tmp_path, config)) as facade:
        with openai.OpenAI(base_url=facade.url + "/v1", api_key="sk-wrong", max_retries=0) as stranger:
            with pytest.raises(openai.AuthenticationError):
                stranger.models.list()
            with pytest.raises(openai.AuthenticationError):
                stranger.models.retrieve("capibara6")
        with openai.OpenAI(base_url=facade.url + "/v1", api_key="sk-capibara-1", max_retries=0) as caller:
            assert "capibara6" in [model.id for model in caller.models.list()]
            assert caller.models.retrieve("capibara6").id == "capibara6"
