"""`capibara-facade healthcheck` against real facades: the exit status a container or exec probe acts on, and the
one line that says why.

The facades here are started with nothing but a config file, as the image starts them, so the healthcheck has
to find the address the same way `serve` did.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests import support


def healthcheck(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a probe runs it, in an environment without this shell's CAPIBARA_* variables."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CAPIBARA")}
    argv = [support.PYTHON, "-m", "capibara_facade", "healthcheck", *args]
    return subprocess.run(argv, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=30)


def reason(result: subprocess.CompletedProcess[str]) -> str:
    """The one stderr line an unhealthy result must come with."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class Served(NamedTuple):
    """A running facade that learnt its port only from its config file."""

    config: Path
    port: int


@contextlib.contextmanager
def facade_from_config_file(tmp_path: Path, upstream_url: str) -> Iterator[Served]:
    port = support.free_port()
    config = tmp_path / f"facade-{port}.toml"
    config.write_text(f"[server]\nport = {port}\n\n" + support.upstream_config(upstream_url))
    argv = [support.PYTHON, "-m", "capibara_facade", "serve", "--config", str(config)]
    with support.running(support.ServerProcess(argv, port, tmp_path / f"facade-{port}.log")):
        yield Served(config, port)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A facade whose upstream answers."""
    tmp_path = tmp_path_factory.mktemp("healthcheck")
    with (
        support.running(support.demo_upstream(tmp_path)) as upstream,
        facade_from_config_file(tmp_path, upstream.url) as facade,
    ):
        yield facade


@pytest.fixture(scope="module")
def without_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A facade whose only upstream is a port where nothing listens."""
    tmp_path = tmp_path_factory.mktemp("healthcheck-no-upstream")
    with facade_from_config_file(tmp_path, f"http://127.0.0.1:{support.free_port()}") as facade:
        yield facade


def test_healthcheck_exits_0_at_the_address_serve_took_from_the_same_config_file(served: Served) -> None:
    result = healthcheck("--config", str(served.config))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_healthcheck_finds_the_port_through_capibara_config_and_capibara_port_as_serve_does(
    served: Served, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(f"[server]\nport = {support.free_port()}\n")
    # As in the image: CAPIBARA_CONFIG names the file, CAPIBARA_HOST says every address; CAPIBARA_PORT wins.
    env = {"CAPIBARA_CONFIG": str(elsewhere), "CAPIBARA_PORT": str(served.port), "CAPIBARA_HOST": "0.0.0.0"}
    result = healthcheck(env=env)
    assert result.returncode == 0, result.stderr
    assert healthcheck(env={**env, "CAPIBARA_PORT": str(support.free_port())}).returncode == 1


def test_ready_healthcheck_exits_1_naming_the_503_while_no_upstream_answers(without_upstream: Served) -> None:
    result = healthcheck("--ready", "--config", str(without_upstream.config))
    assert result.returncode == 1
    assert "/ready: HTTP 503" in reason(result)
    assert "unavailable" in reason(result)


def test_a_facade_without_upstream_is_still_alive_so_nothing_restarts_it(without_upstream: Served) -> None:
    result = healthcheck("--config", str(without_upstream.config))
    assert result.returncode == 0, result.stderr


def test_healthcheck_exits_1_naming_the_refused_connection_when_nothing_listens() -> None:
    port = support.free_port()
    url = f"http://127.0.0.1:{port}/health"
    result = healthcheck("--url", url)
    assert result.returncode == 1
    assert reason(result).endswith(f"{url}: connection refused (nothing listens on port {port})")


def test_healthcheck_gives_up_with_exit_1_on_a_server_that_accepts_but_never_answers() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads the request
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/health"
        result = healthcheck("--url", url, "--timeout", "0.5")
    assert result.returncode == 1
    assert reason(result).endswith(f"{url}: no answer within 0.5 s")


def test_healthcheck_exits_1_not_dockers_reserved_2_on_a_config_it_cannot_use(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 8000\n")
    result = healthcheck("--config", str(config))
    assert result.returncode == 1
    assert "configuration error" in reason(result)
    assert "prot" in reason(result)
