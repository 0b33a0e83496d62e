"""Who may call, and how much, as the real `openai` SDK sees it against the facade under uvicorn: each error
class for a key, models per key, requests per minute with the SDK waiting as told; the public tier limited per
client address (X-Forwarded-For believed only from a trusted proxy), restricted and clamped; the caller named
in the request log and the metrics; and a reload that raises a caller's limits (but not one that moves them)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from capibara_facade.config.callers import hash_key
from tests import support
from tests.conftest import Upstream

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hola capibara"}]
MODELS = ("phi4_fast", "qwen_coder", "aya_expanse_multilingual")
READER_KEY = "sk-reader-4f1c2b7e9d0a"  # may use phi4_fast only
WRITER_KEY = "sk-writer-8e3d6a1f0c2b"  # from the environment (key_env)
FILER_KEY = "sk-filer-1a2b3c4d5e6f"  # from a secrets file (key_file)
LIMITED_KEY = "sk-limited-9f8e7d6c5b4a"  # 3 requests per minute
RETRIER_KEY = "sk-retrier-0a9b8c7d6e5f"  # 20 requests per minute


class Facade:
    """One of this module's facades, with its config file, request log and metrics at hand."""

    def __init__(self, server: support.ServerProcess, config_path: Path, log_path: Path) -> None:
        self.server, self.url, self.config_path, self.log_path = server, server.url, config_path, log_path

    def sdk(self, key: str, **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, **{"max_retries": 0, "timeout": 20, **options})

    def post(self, path: str, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(self.url + path, json=body, headers=headers, timeout=20)

    def chat(self, key: str | None = None, model: str = "phi4_fast") -> httpx.Response:
        return self.post("/v1/chat/completions", {"model": model, "messages": HELLO}, key)

    def log(self, request_id: str | None = None) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.log_path.read_text().splitlines()] if self.log_path.exists() else []
        return [line for line in lines if request_id is None or line["request_id"] == request_id]

    def logged(self, request_id: str) -> dict[str, Any]:
        """The request's log line, once written (it is, just after the answer)."""
        return support.wait_for(lambda: next(iter(self.log(request_id)), None))

    def counter(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` on /metrics whose labels include `labels`."""
        families = text_string_to_metric_families(httpx.get(self.url + "/metrics").text)
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def health(self) -> dict[str, Any]:
        document: dict[str, Any] = httpx.get(self.url + "/health").json()
        return document


def _config(upstream_url: str, log_path: Path, extra: str) -> str:
    models = "".join(f'[[models]]\nname = "{name}"\n' for name in MODELS)
    return f'{support.upstream_config(upstream_url)}{models}[request_log]\npath = "{log_path}"\n{extra}'


@contextlib.contextmanager
def _serving(directory: Path, upstream: Upstream, extra: str, env: dict[str, str] | None = None) -> Iterator[Facade]:
    log_path = directory / f"requests-{uuid.uuid4().hex[:8]}.jsonl"
    server = support.facade(directory, _config(upstream.url, log_path, extra), env=env)
    with support.running(server):
        yield Facade(server, Path(server.argv[server.argv.index("--config") + 1]), log_path)


def _caller(name: str, key_line: str, **limits: object) -> str:
    lines = [f"[callers.{name}]", key_line, *(f"{key} = {json.dumps(value)}" for key, value in limits.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Facade]:
    """Keys of every kind, limits, and the public tier behind a trusted proxy (127.0.0.1, this test)."""
    directory = tmp_path_factory.mktemp("keyed")
    printed = subprocess.run(
        [support.PYTHON, "-m", "capibara_facade", "hash-key", READER_KEY], capture_output=True, text=True, check=True
    ).stdout.strip()
    secret = directory / "filer.key"
    secret.write_text(FILER_KEY + "\n")
    extra = (
        '[server]\ntrusted_proxies = ["127.0.0.1"]\n'
        + _caller("reader", f'key_sha256 = "{printed}"', models=["phi4_fast"])
        + _caller("writer", 'key_env = "WRITER_API_KEY"')
        + _caller("filer", f'key_file = "{secret}"')
        + _caller("limited", f'key_sha256 = "{hash_key(LIMITED_KEY)}"', requests_per_minute=3)
        + _caller("retrier", f'key_sha256 = "{hash_key(RETRIER_KEY)}"', requests_per_minute=20)
        + '[public]\nenabled = true\nmodels = ["aya_expanse_multilingual"]\nmax_tokens = 7\nrequests_per_minute = 2\n'
    )
    with _serving(directory, upstream, extra, env={"WRITER_API_KEY": WRITER_KEY}) as facade:
        yield facade


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Facade]:
    """Keys only (no public tier), and a forbidden model answered 403 rather than hidden."""
    extra = _caller("reader", f'key_sha256 = "{hash_key(READER_KEY)}"', models=["phi4_fast"])
    extra += "[auth]\nhide_forbidden_models = false\n"
    with _serving(tmp_path_factory.mktemp("strict"), upstream, extra) as facade:
        yield facade


def _forwarded(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


# --- keys ----------------------------------------------------------------------------------------------------


def test_the_config_file_holds_only_the_digest_hash_key_printed_and_the_key_works(keyed: Facade) -> None:
    config = keyed.config_path.read_text()
    assert READER_KEY not in config and FILER_KEY not in config and WRITER_KEY not in config
    assert hash_key(READER_KEY) in config
    with keyed.sdk(READER_KEY) as sdk:
        assert sdk.chat.completions.create(model="phi4_fast", messages=HELLO).choices[0].message.content


def test_keys_from_the_environment_and_from_a_secrets_file_are_accepted(keyed: Facade) -> None:
    for key, name in ((WRITER_KEY, "writer"), (FILER_KEY, "filer")):
        with keyed.sdk(key) as sdk:
            raw = sdk.chat.completions.with_raw_response.create(model="qwen_coder", messages=HELLO)
        assert raw.parse().choices[0].message.content
        assert keyed.logged(raw.headers["x-request-id"])["caller"] == name


def test_a_wrong_key_raises_authentication_error_even_with_the_public_tier_open(keyed: Facade) -> None:
    with keyed.sdk("sk-guessed") as sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.chat.completions.create(model="aya_expanse_multilingual", messages=HELLO)
    assert caught.value.code == "invalid_api_key"
    assert "sk-guessed" not in caught.value.message


def test_without_a_public_tier_a_request_without_a_key_raises_authentication_error(strict: Facade) -> None:
    with strict.sdk("unused") as sdk, pytest.raises(openai.AuthenticationError) as caught:
        sdk.chat.completions.create(model="phi4_fast", messages=HELLO, extra_headers={"Authorization": openai.Omit()})
    assert caught.value.code == "invalid_api_key"
    assert "Missing API key" in caught.value.message
    with strict.sdk("unused") as sdk, pytest.raises(openai.AuthenticationError):
        sdk.models.list(extra_headers={"Authorization": openai.Omit()})


# --- models per key ------------------------------------------------------------------------------------------


def test_each_key_lists_and_retrieves_only_the_models_it_may_use(keyed: Facade) -> None:
    with keyed.sdk(READER_KEY) as reader, keyed.sdk(WRITER_KEY) as writer:
        assert [model.id for model in reader.models.list()] == ["phi4_fast"]
        assert [model.id for model in writer.models.list()] == list(MODELS)
        assert reader.models.retrieve("phi4_fast").id == "phi4_fast"
        assert writer.models.retrieve("qwen_coder").id == "qwen_coder"
        with pytest.raises(openai.NotFoundError):
            reader.models.retrieve("qwen_coder")
    keyless = httpx.get(keyed.url + "/v1/models").json()
    assert [model["id"] for model in keyless["data"]] == ["aya_expanse_multilingual"]


def test_a_model_the_key_may_not_use_raises_not_found_listing_only_its_own(keyed: Facade) -> None:
    with keyed.sdk(READER_KEY) as sdk:
        for model in ("qwen_coder", "gpt-17"):  # forbidden, or not configured: told apart by nothing
            with pytest.raises(openai.NotFoundError) as caught:
                sdk.chat.completions.create(model=model, messages=HELLO)
            assert caught.value.code == "model_not_found"
            assert caught.value.message.endswith(f"The model '{model}' does not exist. Available models: phi4_fast.")


def test_with_hide_forbidden_models_off_a_forbidden_model_raises_permission_denied(strict: Facade) -> None:
    with strict.sdk(READER_KEY) as sdk:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            sdk.chat.completions.create(model="qwen_coder", messages=HELLO)
        assert (caught.value.code, caught.value.param) == ("model_not_allowed", "model")
        with pytest.raises(openai.PermissionDeniedError):
            sdk.models.retrieve("qwen_coder")
        assert sdk.chat.completions.create(model="phi4_fast", messages=HELLO).choices


# --- limits ----------------------------------------------------------------------------------------------------


def test_past_its_requests_per_minute_a_key_gets_rate_limit_error_with_openais_headers(keyed: Facade) -> None:
    before = keyed.counter("capibara_rate_limited_total", caller="limited", limit="requests")
    with keyed.sdk(LIMITED_KEY) as sdk:
        answers = [sdk.chat.completions.with_raw_response.create(model="phi4_fast", messages=HELLO) for _ in range(3)]
        assert [raw.headers["x-ratelimit-limit-requests"] for raw in answers] == ["3", "3", "3"]
        assert [raw.headers["x-ratelimit-remaining-requests"] for raw in answers] == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model="phi4_fast", messages=HELLO)
    error, headers = caught.value, caught.value.response.headers
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    assert "Rate limit reached for the key 'limited' on requests per minute (RPM): Limit 3." in error.message
    assert 1 <= int(headers["retry-after"]) <= 20 and 0 < int(headers["retry-after-ms"]) <= 20000
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "0")
    assert keyed.logged(headers["x-request-id"])["limited"] == "requests"
    assert keyed.counter("capibara_rate_limited_total", caller="limited", limit="requests") == before + 1


def test_with_one_retry_the_sdk_waits_as_told_and_the_retry_succeeds(keyed: Facade, upstream: Upstream) -> None:
    # Spend the key's 20 requests a minute until a refusal asks for a wait of a second or more (one request comes
    # back every 3 s), so the SDK's own first attempt is refused too.
    with httpx.Client(base_url=keyed.url, headers={"Authorization": f"Bearer {RETRIER_KEY}"}, timeout=20) as raw:
        for _ in range(100):
            refused = raw.post("/v1/chat/completions", json={"model": "phi4_fast", "messages": HELLO})
            if refused.status_code == 429 and int(refused.headers["retry-after-ms"]) >= 1000:
                break
    assert refused.status_code == 429 and 1000 <= int(refused.headers["retry-after-ms"]) <= 3000
    request_id = uuid.uuid4().hex  # both attempts carry it, and it reaches the upstream as it is
    with keyed.sdk(RETRIER_KEY, max_retries=1) as sdk:
        completion = sdk.chat.completions.create(
            model="phi4_fast", messages=HELLO, extra_headers={"X-Request-ID": request_id}
        )
    assert completion.choices[0].message.content
    attempts = support.wait_for(lambda: lines if len(lines := keyed.log(request_id)) >= 2 else None)
    assert [(line["status"], line["limited"]) for line in attempts] == [(429, "requests"), (200, None)]
    assert [record["request_id"] for record in upstream.requests()].count(request_id) == 1


# --- the public tier -------------------------------------------------------------------------------------------


def test_without_a_key_api_chat_is_limited_per_client_address_a_trusted_proxy_forwarded(keyed: Facade) -> None:
    one, other = _forwarded("203.0.113.10"), _forwarded("203.0.113.11")
    assert [keyed.post("/api/chat", {"message": "hola"}, **one).status_code for _ in range(2)] == [200, 200]
    refused = keyed.post("/api/chat", {"message": "hola"}, **one)
    assert refused.status_code == 429
    assert refused.json()["error"]["message"].startswith("Rate limit reached for this address on requests per minute")
    assert "203.0.113.10" not in refused.text
    assert keyed.post("/api/chat", {"message": "hola"}, **other).status_code == 200


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored_so_every_claimed_address_shares_one_count(
    tmp_path: Path, upstream: Upstream
) -> None:
    with _serving(tmp_path, upstream, "[public]\nrequests_per_minute = 2\n") as open_site:  # no trusted_proxies
        claims = [{"X-Forwarded-For": f"198.51.100.{n}", "X-Real-IP": f"198.51.100.{n}"} for n in range(1, 4)]
        statuses = [open_site.post("/api/chat", {"message": "hola"}, **claim).status_code for claim in claims]
    assert statuses == [200, 200, 429]


def test_the_public_tier_cannot_use_a_model_outside_its_list(keyed: Facade) -> None:
    legacy = keyed.post("/api/chat", {"message": "hola", "model": "phi4_fast"}, **_forwarded("203.0.113.20"))
    assert legacy.status_code == 404
    assert legacy.json()["error"]["code"] == "model_not_found"
    assert "qwen_coder" not in legacy.text
    chat = keyed.post("/v1/chat/completions", {"model": "qwen_coder", "messages": HELLO}, **_forwarded("203.0.113.20"))
    assert chat.status_code == 404


def test_public_max_tokens_clamps_what_the_upstream_receives(keyed: Facade, upstream: Upstream) -> None:
    for body in ({"message": "hola", "max_tokens": 500}, {"message": "hola"}):  # asked for, or the default 200
        answer = keyed.post("/api/chat", body, **_forwarded("203.0.113.30"))
        assert answer.status_code == 200, answer.text
        sent = json.loads(upstream.request(answer.headers["x-request-id"])["body"])
        assert sent["max_tokens"] == 7


def test_the_caller_is_named_in_the_request_log_and_the_metrics(keyed: Facade) -> None:
    requests_by = {caller: keyed.counter("capibara_requests_total", caller=caller) for caller in ("reader", "public")}
    with keyed.sdk(READER_KEY) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="phi4_fast", messages=HELLO)
    anonymous = keyed.post("/api/chat", {"message": "hola"}, **_forwarded("203.0.113.40"))
    assert keyed.logged(raw.headers["x-request-id"])["caller"] == "reader"
    assert keyed.logged(anonymous.headers["x-request-id"])["caller"] == "public"
    assert {caller: keyed.counter("capibara_requests_total", caller=caller) for caller in requests_by} == {
        caller: count + 1 for caller, count in requests_by.items()
    }


# --- reload ------------------------------------------------------------------------------------------------------

STREAMER_KEY, COUNTED_KEY = "sk-streamer-5e4d3c2b1a09", "sk-counted-6f5e4d3c2b1a"
LONG_STREAM = {
    "model": "phi4_fast",
    "messages": [{"role": "user", "content": " ".join(["capibara"] * 30)}],
    "stream": True,
    "demo": {"chunk_delay": 0.5},  # the demo upstream's vendor field: a stream that stays open for seconds
}


def _reload_callers(max_concurrent: int, requests_per_minute: int, limits: str = "") -> str:
    return (
        _caller("streamer", f'key_sha256 = "{hash_key(STREAMER_KEY)}"', max_concurrent=max_concurrent)
        + _caller("counted", f'key_sha256 = "{hash_key(COUNTED_KEY)}"', requests_per_minute=requests_per_minute)
        + limits
    )


def _reload(facade: Facade, upstream: Upstream, extra: str) -> dict[str, Any]:
    """Rewrite the config, send SIGHUP, wait (bounded) for the reload's result in /health."""
    facade.config_path.write_text(_config(upstream.url, facade.log_path, extra))
    before = facade.health()["config"].get("at")
    facade.server.signal(signal.SIGHUP)
    config: dict[str, Any] = support.wait_for(
        lambda: c if (c := facade.health()["config"]).get("at") != before else None
    )
    return config


def test_a_reload_raising_a_callers_limits_applies_them_to_new_requests(tmp_path: Path, upstream: Upstream) -> None:
    with _serving(tmp_path, upstream, _reload_callers(max_concurrent=1, requests_per_minute=1)) as facade:
        assert facade.chat(COUNTED_KEY).status_code == 200
        refused = facade.chat(COUNTED_KEY)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 30  # a minute's one request
        streamer = {"Authorization": f"Bearer {STREAMER_KEY}"}
        with httpx.stream("POST", facade.url + "/v1/chat/completions", json=LONG_STREAM, headers=streamer) as held:
            assert held.status_code == 200
            events = held.iter_raw()  # kept: a dropped iterator would close the stream
            next(events)  # admitted, and holding the key's one place
            second = facade.chat(STREAMER_KEY)
            assert (second.status_code, second.json()["error"]["message"]) == (
                429,
                "Too many requests in flight for the key 'streamer': the limit is 1 at once.",
            )
            raised = _reload_callers(max_concurrent=2, requests_per_minute=600)
            assert _reload(facade, upstream, raised)["result"] == "ok"
            assert facade.chat(STREAMER_KEY).status_code == 200
            assert upstream.request(held.headers["x-request-id"])["outcome"] == "in_progress"
        # The minute's one request was spent under the old limit; under 600 a minute one comes back every 0.1 s.
        support.wait_for(lambda: facade.chat(COUNTED_KEY).status_code == 200 or None, within=10)


def test_a_reload_that_changes_limits_is_refused_naming_the_key(tmp_path: Path, upstream: Upstream) -> None:
    with _serving(tmp_path, upstream, _reload_callers(max_concurrent=1, requests_per_minute=1)) as facade:
        assert facade.chat(COUNTED_KEY).status_code == 200
        moved = _reload_callers(max_concurrent=1, requests_per_minute=600, limits="[limits]\nredis_timeout_ms = 20\n")
        config = _reload(facade, upstream, moved)
        assert (config["result"], config["generation"]) == ("refused", 1)
        assert "limits.redis_timeout_ms (50.0 -> 20.0) cannot change without a restart" in config["error"]
        # The old config is kept, callers included: the key still has its one request a minute.
        assert facade.chat(COUNTED_KEY).status_code == 429
