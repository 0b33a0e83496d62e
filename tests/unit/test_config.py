"""Configuration: one TOML file plus environment overrides, validated at start with messages naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from capibara_facade.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "capibara-facade.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facade.toml"
    path.write_text(text)
    return path


def test_without_a_file_the_five_models_europe_ids_and_the_capibara6_alias_are_served() -> None:
    config = load_config()
    names = [model.name for model in config.models]
    assert names == [
        "aya_expanse_multilingual", "phi4_fast", "mistral_balanced", "qwen_coder", "gemma3_multimodal", "capibara6"
    ]  # fmt: skip
    assert config.models[-1].target == "aya_expanse_multilingual"
    assert config.upstreams["default"].url == "http://127.0.0.1:8082"
    assert (config.legacy_chat.model, config.legacy_chat.temperature, config.legacy_chat.max_tokens) == (
        "aya_expanse_multilingual", 0.7, 200
    )  # fmt: skip


def test_the_documented_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert "capibara6" in [model.name for model in config.models]


def test_environment_overrides_the_common_settings() -> None:
    config = load_config(
        None,
        {
            "CAPIBARA_UPSTREAM_URL": "http://10.1.2.3:8082",
            "CAPIBARA_HOST": "0.0.0.0",
            "CAPIBARA_PORT": "9000",
            "CAPIBARA_API_KEYS": "sk-a, sk-b",
            "CAPIBARA__SERVER__MAX_BODY_BYTES": "1024",
            "CAPIBARA__UPSTREAMS__DEFAULT__READ_TIMEOUT_SECONDS": "12.5",
        },
    )
    assert config.upstreams["default"].url == "http://10.1.2.3:8082"
    assert (config.server.host, config.server.port, config.server.max_body_bytes) == ("0.0.0.0", 9000, 1024)
    assert config.upstreams["default"].read_timeout_seconds == 12.5
    assert config.auth.api_keys == ("sk-a", "sk-b")


def test_an_upstream_named_with_a_dash_is_found_from_its_environment_name(tmp_path: Path) -> None:
    path = _write(tmp_path, '[upstreams.models-europe]\nurl = "http://127.0.0.1:1"\n[[models]]\nname = "x"\n'
                  'upstream = "models-europe"\n[legacy_chat]\nmodel = "x"\n')  # fmt: skip
    config = load_config(path, {"CAPIBARA__UPSTREAMS__MODELS_EUROPE__URL": "http://127.0.0.1:2"})
    assert config.upstreams["models-europe"].url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[upstreams.default]\nurl = "ftp://x"\n', "upstreams.default.url: 'ftp://x'", id="bad-url"),
        pytest.param('[[models]]\nname = "a"\nupstream = "nowhere"\n', "models[0].upstream: 'nowhere'", id="alias"),
        pytest.param('[[models]]\nname = "a"\n[[models]]\nname = "a"\n', "models[1].name: duplicate", id="dup"),
        pytest.param("[server]\nport = 'eighty'\n", "server.port: Expected `int`, got `str` (got 'eighty')", id="type"),
        pytest.param(
            '[upstreams.eu]\nurl = "http://a"\nmax_connections = 0\n', "upstreams.eu.max_connections", id="name"
        ),
        pytest.param('[upstreams.default]\nurl = "http://127.0.0.1:99999"\n', "invalid port", id="bad-port"),
        pytest.param(
            '[[models]]\nname = "a"\nmax_tokens = 10\ndefaults = { max_tokens = 50 }\n[legacy_chat]\nmodel = "a"\n',
            "models[0].defaults.max_tokens: 50 is above the max_tokens cap 10",
            id="default-over-cap",
        ),
        pytest.param("[server]\nprot = 8000\n", "unknown field `prot`", id="misspelt-key"),
        pytest.param("[server]\nport = 70000\n", "server.port", id="out-of-range"),
        pytest.param('[legacy_chat]\nmodel = "nope"\n', "legacy_chat.model: 'nope'", id="legacy-model"),
        pytest.param("[server\n", "invalid TOML", id="not-toml"),
        pytest.param(
            'passthrough_unknown_models_to = "nowhere"\n',
            "passthrough_unknown_models_to: 'nowhere' is not a configured upstream",
            id="passthrough-to-no-upstream",
        ),
        pytest.param(
            '[store]\nmodels = ["nope"]\n', "store.models[0]: 'nope' is not a configured model", id="store-model"
        ),
        pytest.param(
            '[store]\ncallers = ["nobody"]\n', "store.callers[0]: 'nobody' is not a caller", id="store-caller"
        ),
        pytest.param('[store]\nurl = "mysql://db/x"\n', "store.url: must be a postgresql://", id="store-url"),
    ],
)
def test_a_bad_config_fails_with_a_message_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(_write(tmp_path, toml))


def test_an_api_key_of_digits_from_the_environment_stays_a_string() -> None:
    config = load_config(None, {"CAPIBARA__UPSTREAMS__DEFAULT__API_KEY": "123456"})
    assert config.upstreams["default"].api_key == "123456"


def test_the_upstream_url_shortcut_refuses_to_guess_between_several_upstreams(tmp_path: Path) -> None:
    path = _write(tmp_path, '[upstreams.a]\nurl = "http://127.0.0.1:1"\n[upstreams.b]\nurl = "http://127.0.0.1:2"\n'
                  '[[models]]\nname = "x"\nupstream = "a"\n[legacy_chat]\nmodel = "x"\n')  # fmt: skip
    with pytest.raises(ConfigError, match="CAPIBARA_UPSTREAM_URL: there are several upstreams"):
        load_config(path, {"CAPIBARA_UPSTREAM_URL": "http://10.0.0.1:8082"})


def test_an_error_caused_by_the_environment_says_so() -> None:
    with pytest.raises(ConfigError, match=r"CAPIBARA_\* environment / command-line options: server.port"):
        load_config(None, {"CAPIBARA_PORT": "eighty"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param('[upstreams.default]\nurl = "not a url"\n', "upstreams.default.url: 'not a url'", id="bad-url"),
        # Only building the app would notice it otherwise: after check-config has said OK.
        pytest.param(
            'passthrough_unknown_models_to = "nowhere"\n',
            "passthrough_unknown_models_to: 'nowhere'",
            id="passthrough-to-no-upstream",
        ),
    ],
)
def test_check_config_exits_non_zero_naming_the_bad_key(tmp_path: Path, toml: str, message: str) -> None:
    path = _write(tmp_path, toml)
    result = subprocess.run(
        [sys.executable, "-m", "capibara_facade", "check-config", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_the_example() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "capibara_facade", "check-config", str(EXAMPLE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_an_upstream_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    path = _write(tmp_path, '[upstreams.default]\nurl = "http://user:hunter2@127.0.0.1:8082"\napi_key = "k"\n')
    with pytest.raises(ConfigError, match=r"upstreams\.default\.url: .*upstreams\.default\.api_key") as refused:
        load_config(path)
    assert "hunter2" not in str(refused.value)
