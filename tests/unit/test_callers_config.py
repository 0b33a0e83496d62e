"""Who may call, as configured: caller keys held as SHA-256 digests (or read from the environment or a
secrets file and hashed at load), `capibara-facade hash-key`, errors naming the caller's key, check-config's
warnings, and what the config means for a request (a key's caller, the public tier, 401)."""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from capibara_facade.callers.identity import PUBLIC, Callers
from capibara_facade.catalog import Catalog
from capibara_facade.cli import main
from capibara_facade.config import Config, ConfigError, load_config
from capibara_facade.config.callers import hash_key
from capibara_facade.config.checks import warnings
from capibara_facade.errors import AuthenticationFailed, ModelNotAllowed, ModelNotFound

KEY = "sk-capibara-alice-0123456789"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
MODELS = '[[models]]\nname = "phi4_fast"\n[[models]]\nname = "qwen_coder"\n[legacy_chat]\nmodel = "phi4_fast"\n'


def _load(tmp_path: Path, toml: str, environ: dict[str, str] | None = None) -> Config:
    path = tmp_path / "facade.toml"
    path.write_text(MODELS + toml)
    return load_config(path, environ or {})


def _bearer(key: str) -> bytes:
    return b"Bearer " + key.encode()


# --- keys --------------------------------------------------------------------------------------------------------


def test_hash_key_prints_the_digest_the_config_holds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", KEY]) == 0
    assert capsys.readouterr().out == DIGEST + "\n"
    assert hash_key(KEY) == DIGEST


def test_hash_key_reads_the_key_from_standard_input_so_it_stays_out_of_the_shell_history(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    assert main(["hash-key"]) == 0
    assert capsys.readouterr().out == DIGEST + "\n"


def test_hash_key_new_makes_a_fresh_key_and_prints_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "--new"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    key, digest = printed["key"].strip(), printed["key_sha256"].strip()
    assert key.startswith("sk-capibara-") and len(key) > 40
    assert digest == hash_key(key)


def test_a_config_may_hold_only_the_digest_of_a_key(tmp_path: Path) -> None:
    config = _load(tmp_path, f'[callers.alice]\nkey_sha256 = "{DIGEST}"\n')
    assert Callers(config).identify(_bearer(KEY), "127.0.0.1", None, None).name == "alice"


def test_a_key_from_the_environment_is_hashed_when_the_config_loads(tmp_path: Path) -> None:
    config = _load(tmp_path, '[callers.alice]\nkey_env = "ALICE_KEY"\n', {"ALICE_KEY": f" {KEY}\n"})
    caller = config.callers["alice"]
    assert (caller.key_sha256, caller.key_env, caller.key_file) == (DIGEST, None, None)
    assert KEY not in repr(config)


def test_a_key_from_a_secrets_file_is_hashed_when_the_config_loads(tmp_path: Path) -> None:
    secret = tmp_path / "alice.key"
    secret.write_text(KEY + "\n")
    config = _load(tmp_path, f'[callers.alice]\nkey_file = "{secret}"\n')
    assert (config.callers["alice"].key_sha256, config.callers["alice"].key_file) == (DIGEST, None)


# --- errors that name the key ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param(
            '[callers.alice]\nkey_sha256 = "0123"\n', "callers.alice.key_sha256: must be 64 lower-case hex", id="short"
        ),
        pytest.param("[callers.alice]\nmodels = []\n", "callers.alice: give exactly one of key_sha256", id="no-key"),
        pytest.param(
            f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nkey_env = "A"\n',
            "callers.alice: give exactly one of key_sha256, key_env, key_file (got ['key_sha256', 'key_env'])",
            id="two-keys",
        ),
        pytest.param(
            '[callers.alice]\nkey_env = "NOT_SET"\n',
            "callers.alice.key_env: the environment variable 'NOT_SET' is not set or empty",
            id="env-unset",
        ),
        pytest.param(
            '[callers.alice]\nkey_file = "/nonexistent/alice.key"\n',
            "callers.alice.key_file: cannot read '/nonexistent/alice.key'",
            id="file-missing",
        ),
        pytest.param(
            f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nmodels = ["phi4_fast", "gpt-17"]\n',
            "callers.alice.models[1]: 'gpt-17' is not a configured model name",
            id="caller-model",
        ),
        pytest.param('[public]\nmodels = ["gpt-17"]\n', "public.models[0]: 'gpt-17'", id="public-model"),
        pytest.param(
            '[server]\ntrusted_proxies = ["127.0.0.1", "nginx.local"]\n',
            "server.trusted_proxies[1]: 'nginx.local' is not an address or network",
            id="proxy",
        ),
        pytest.param(
            f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nrequests_per_minute = 0\n',
            "callers.alice.requests_per_minute: Expected `int` >= 1 (got 0)",
            id="zero-limit",
        ),
        pytest.param(
            f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nrequests_per_minutes = 5\n',
            "callers.alice: Object contains unknown field `requests_per_minutes`",
            id="misspelt",
        ),
        pytest.param(
            f'[callers.alice]\nkey_sha256 = "{DIGEST}"\n[callers.bob]\nkey_sha256 = "{DIGEST}"\n',
            "callers.bob: has the same key as callers.alice",
            id="shared-key",
        ),
        pytest.param(
            f'[callers.public]\nkey_sha256 = "{DIGEST}"\n', "callers.public: a caller's name is", id="named-public"
        ),
        pytest.param(
            f'[callers."a b"]\nkey_sha256 = "{DIGEST}"\n', "callers.a b: a caller's name is", id="label-unsafe"
        ),
        pytest.param("[public]\nenabled = false\n", "public.enabled: false needs at least one key", id="nobody"),
        pytest.param('[limits]\nredis_url = "http://x"\n', "limits.redis_url: must be a redis://", id="redis-url"),
        pytest.param('[limits]\non_redis_error = "shrug"\n', "limits.on_redis_error", id="policy"),
    ],
)
def test_a_bad_callers_config_fails_with_a_message_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _load(tmp_path, toml)


def test_a_plain_key_pasted_where_its_digest_belongs_is_not_shown_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"callers\.alice\.key_sha256") as refused:
        _load(tmp_path, f'[callers.alice]\nkey_sha256 = "{KEY}"\n')
    assert KEY not in str(refused.value)


def test_a_redis_url_with_a_password_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"limits\.redis_url") as refused:
        _load(tmp_path, '[limits]\nredis_url = "htp://:hunter2@redis:6379"\n')
    assert "hunter2" not in str(refused.value)


# --- check-config's warnings -------------------------------------------------------------------------------------


def test_several_workers_without_redis_are_warned_about(tmp_path: Path) -> None:
    config = _load(tmp_path, f'[server]\nworkers = 2\n[callers.alice]\nkey_sha256 = "{DIGEST}"\nmax_concurrent = 2\n')
    assert any(
        warning.startswith("server.workers is 2 and limits.redis_url is not set") for warning in warnings(config)
    )
    shared = _load(tmp_path, '[server]\nworkers = 2\n[public]\nrequests_per_minute = 5\n'
                   '[limits]\nredis_url = "redis://127.0.0.1:6379/0"\n')  # fmt: skip
    assert not any("redis_url" in warning for warning in warnings(shared))


def test_public_limits_without_trusted_proxies_are_warned_about(tmp_path: Path) -> None:
    assert any(
        "server.trusted_proxies is empty" in w for w in warnings(_load(tmp_path, "[public]\nrequests_per_minute = 5\n"))
    )
    trusted = _load(tmp_path, '[server]\ntrusted_proxies = ["127.0.0.1"]\n[public]\nrequests_per_minute = 5\n')
    assert warnings(trusted) == []


def test_check_config_prints_the_warnings_and_still_says_ok(tmp_path: Path) -> None:
    path = tmp_path / "facade.toml"
    path.write_text(MODELS + "[server]\nworkers = 2\n[public]\nrequests_per_minute = 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "capibara_facade", "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "WARNING: server.workers is 2" in result.stdout
    assert "WARNING: public limits apply per client address" in result.stdout


# --- what the config means for a request -----------------------------------------------------------------------


def test_without_keys_every_request_is_public_whatever_key_it_carries(tmp_path: Path) -> None:
    callers = Callers(_load(tmp_path, ""))
    assert callers.identify(_bearer("anything"), "127.0.0.1", None, None).name == PUBLIC
    assert callers.identify(None, "127.0.0.1", None, None).name == PUBLIC


def test_with_keys_and_no_public_tier_a_request_without_a_key_gets_401(tmp_path: Path) -> None:
    callers = Callers(_load(tmp_path, f'[callers.alice]\nkey_sha256 = "{DIGEST}"\n'))
    with pytest.raises(AuthenticationFailed, match="Missing API key"):
        callers.identify(None, "127.0.0.1", None, None)
    with pytest.raises(AuthenticationFailed, match="Missing API key"):
        callers.identify(b"Bearer   ", "127.0.0.1", None, None)
    with pytest.raises(AuthenticationFailed, match="Incorrect API key"):
        callers.identify(_bearer(KEY + "x"), "127.0.0.1", None, None)


def test_with_keys_and_the_public_tier_on_a_request_without_a_key_is_public_but_a_wrong_key_is_not(
    tmp_path: Path,
) -> None:
    callers = Callers(_load(tmp_path, f'[callers.alice]\nkey_sha256 = "{DIGEST}"\n[public]\nenabled = true\n'))
    assert callers.identify(None, "127.0.0.1", None, None).name == PUBLIC
    with pytest.raises(AuthenticationFailed):
        callers.identify(_bearer("sk-guess"), "127.0.0.1", None, None)


def test_plain_api_keys_from_before_callers_are_unlimited_callers_named_by_position(tmp_path: Path) -> None:
    callers = Callers(_load(tmp_path, '[auth]\napi_keys = ["sk-one", "sk-two"]\n'))
    second = callers.identify(_bearer("sk-two"), "127.0.0.1", None, None)
    assert (second.name, second.limits, second.models) == ("key-2", None, None)
    assert callers.names == [PUBLIC, "key-1", "key-2"]


def test_the_public_tier_counts_each_client_address_on_its_own(tmp_path: Path) -> None:
    callers = Callers(_load(tmp_path, "[public]\nrequests_per_minute = 5\n"))
    one = callers.identify(None, "198.51.100.7", None, None)
    other = callers.identify(None, "198.51.100.8", None, None)
    assert (one.limit_key, other.limit_key) == ("public:198.51.100.7", "public:198.51.100.8")


def test_a_model_the_key_may_not_use_is_hidden_as_404_unless_configured_to_say_403(tmp_path: Path) -> None:
    caller_toml = f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nmodels = ["phi4_fast"]\n'
    hidden = Callers(_load(tmp_path, caller_toml))
    alice = hidden.identify(_bearer(KEY), "127.0.0.1", None, None)
    hidden.check_model(alice, "phi4_fast")
    with pytest.raises(ModelNotFound):
        hidden.check_model(alice, "qwen_coder")
    told = Callers(_load(tmp_path, caller_toml + "[auth]\nhide_forbidden_models = false\n"))
    with pytest.raises(ModelNotAllowed):
        told.check_model(told.identify(_bearer(KEY), "127.0.0.1", None, None), "qwen_coder")


def test_a_404_to_a_key_limited_to_some_models_lists_only_those(tmp_path: Path) -> None:
    config = _load(tmp_path, f'[callers.alice]\nkey_sha256 = "{DIGEST}"\nmodels = ["phi4_fast"]\n')
    callers, catalog = Callers(config), Catalog(config)
    alice = callers.identify(_bearer(KEY), "127.0.0.1", None, None)
    assert callers.resolve(alice, catalog.resolve, "phi4_fast").public_name == "phi4_fast"
    for name in ("qwen_coder", "gpt-17"):  # forbidden, or not configured at all: the same answer
        with pytest.raises(ModelNotFound) as refused:
            callers.resolve(alice, catalog.resolve, name)
        assert str(refused.value).endswith("Available models: phi4_fast.")


def test_a_key_listed_both_as_a_caller_and_in_api_keys_is_refused_rather_than_losing_its_limits(
    tmp_path: Path,
) -> None:
    toml = f'[auth]\napi_keys = ["{KEY}"]\n[callers.alice]\nkey_sha256 = "{DIGEST}"\nrequests_per_minute = 5\n'
    with pytest.raises(ConfigError, match=r"auth\.api_keys\[0\]: is also the key of callers\.alice"):
        _load(tmp_path, toml)


@pytest.mark.parametrize(
    ("url", "problem"),
    [("redis://:s3cret@127.0.0.1:abc/0", "invalid port"), ("redis://:s3cret@127.0.0.1:6379/zero", "database number")],
)
def test_a_malformed_redis_url_is_a_config_error_that_never_shows_the_url(
    tmp_path: Path, url: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        _load(tmp_path, f'[limits]\nredis_url = "{url}"\n')
    assert "s3cret" not in str(raised.value)
