"""The healthcheck's address: where `serve` listens, as a probe inside the same host or container reaches it."""

from __future__ import annotations

import pytest

from capibara_facade.config import load_config
from capibara_facade.healthcheck import default_url, probe


@pytest.mark.parametrize(
    ("listen", "probed"),
    [
        ("0.0.0.0", "http://127.0.0.1:8123/health"),
        ("::", "http://[::1]:8123/health"),
        ("127.0.0.1", "http://127.0.0.1:8123/health"),
        ("10.0.0.7", "http://10.0.0.7:8123/health"),
        ("fd00::7", "http://[fd00::7]:8123/health"),
    ],
)
def test_a_facade_listening_on_every_address_is_probed_on_loopback_and_any_other_where_it_listens(
    listen: str, probed: str
) -> None:
    config = load_config(None, {"CAPIBARA_HOST": listen, "CAPIBARA_PORT": "8123"})
    assert default_url(config, "/health") == probed


def test_readiness_is_probed_on_the_same_address() -> None:
    config = load_config(None, {"CAPIBARA_PORT": "8123"})
    assert default_url(config, "/ready") == "http://127.0.0.1:8123/ready"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1:8000/health", "not an http:// URL"),  # the facade serves plain HTTP only
        ("127.0.0.1:8000/health", "not an http:// URL"),
        ("http://127.0.0.1:99999/health", "invalid port"),
    ],
)
def test_a_url_the_facade_cannot_be_serving_at_is_unhealthy_and_says_why(url: str, why: str) -> None:
    assert probe(url, timeout=0.1) == f"{url}: {why}"
