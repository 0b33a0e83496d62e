"""The systemd unit: it verifies, and the facade it starts behaves as an operator relies on.

The facade is started the way deploy/systemd/capibara-facade.service starts it: its ExecStartPre and
ExecStart lines, with the unit's Environment= and the shipped EnvironmentFile example
(deploy/systemd/capibara-facade.env.example), and the documented config (deploy/capibara-facade.toml) where
the unit expects /etc/capibara-facade/capibara-facade.toml. Only the port (a free one) and the upstream
(the demo upstream) are overridden, as an operator's EnvironmentFile would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from capibara_facade.config import load_config
from tests import support
from tests.deploy.tools import (
    DEPLOY,
    FACADE_TOML,
    Arrivals,
    accepting_process,
    environment_file,
    expand,
    process_group,
    unit_values,
)

UNIT = DEPLOY / "systemd" / "capibara-facade.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "capibara-facade.env.example"
INSTALL_PREFIX = "/opt/capibara-facade"
INSTALLED_CONFIG = "/etc/capibara-facade/capibara-facade.toml"


def on_this_machine(text: str) -> str:
    """The unit's paths moved from the documented install (/opt/capibara-facade) to this checkout."""
    venv_bin = Path(sys.executable).parent
    return text.replace(f"{INSTALL_PREFIX}/.venv/bin/", f"{venv_bin}/").replace(INSTALL_PREFIX, str(support.ROOT))


@dataclass
class Launch:
    """What systemd would run for the unit, and with which environment."""

    port: int
    environ: dict[str, str]
    pre: list[str]
    start: list[str]


def unit_launch(**overrides: str) -> Launch:
    environ: dict[str, str] = {}
    for assignment in unit_values(UNIT, "Service", "Environment"):
        name, _, value = assignment.partition("=")
        environ[name] = value
    assert environ.get("CAPIBARA_CONFIG") == INSTALLED_CONFIG
    environ["CAPIBARA_CONFIG"] = str(FACADE_TOML)
    environ.update(environment_file(ENV_EXAMPLE))
    port = support.free_port()
    environ.update(CAPIBARA_PORT=str(port), **overrides)
    (pre,) = unit_values(UNIT, "Service", "ExecStartPre")
    (start,) = unit_values(UNIT, "Service", "ExecStart")
    return Launch(port, environ, expand(on_this_machine(pre), environ), expand(on_this_machine(start), environ))


def started(launch: Launch, tmp_path: Path) -> support.ServerProcess:
    checked = subprocess.run(launch.pre, env={**os.environ, **launch.environ}, capture_output=True, text=True)
    assert checked.returncode == 0, f"ExecStartPre failed: {checked.stdout}{checked.stderr}"
    return support.ServerProcess(launch.start, launch.port, tmp_path / "facade.log", launch.environ)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.ServerProcess]:
    directory = tmp_path_factory.mktemp("upstream")
    with support.running(support.demo_upstream(directory, "--chunk-delay", "0")) as server:
        yield server


def chat_body(message: str, *, stream: bool = False, chunk_delay: float = 0.0) -> bytes:
    body = {"model": "capibara6", "messages": [{"role": "user", "content": message}], "stream": stream}
    if chunk_delay:
        body["demo"] = {"chunk_delay": chunk_delay}  # the demo upstream's per-request switch
    return json.dumps(body).encode()


def post_over(sock: socket.socket, body: bytes) -> tuple[int, bytes]:
    """One POST /v1/chat/completions on an already connected socket; the status and the body."""
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: capibara-facade\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# --- the unit file ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian: systemd)")
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = tmp_path / "capibara-facade.service"
    unit.write_text(on_this_machine(UNIT.read_text()))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "capibara-facade" in line]
    assert result.returncode == 0, result.stderr
    assert not complaints  # unknown keys and bad values are only warnings for systemd: none is allowed here


def test_systemd_waits_longer_than_the_facades_grace_period_before_killing() -> None:
    environ = {**environment_file(ENV_EXAMPLE), "CAPIBARA_CONFIG": str(FACADE_TOML)}
    grace = load_config(FACADE_TOML, environ).server.shutdown_grace_seconds
    (timeout,) = unit_values(UNIT, "Service", "TimeoutStopSec")
    assert float(timeout) > grace + 5


def test_the_unit_refuses_to_start_on_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[[models]]\nname = "capibara6"\nupstream = "nowhere"\n')
    launch = unit_launch(CAPIBARA_CONFIG=str(broken))
    result = subprocess.run(launch.pre, env={**os.environ, **launch.environ}, capture_output=True, text=True)
    assert result.returncode != 0
    assert "models[0].upstream" in result.stderr


# --- the facade it runs -----------------------------------------------------------------------------------------


def test_the_workers_the_environment_file_asks_for_share_one_port_and_all_answer(
    tmp_path: Path, upstream: support.ServerProcess
) -> None:
    launch = unit_launch(CAPIBARA_UPSTREAM_URL=upstream.url)
    workers = int(launch.environ["CAPIBARA_WORKERS"])
    assert workers >= 2, "the example EnvironmentFile should run several workers"
    with support.running(started(launch, tmp_path)) as facade:
        assert facade.process is not None
        supervisor = facade.process.pid
        connections: dict[int, socket.socket] = {}
        spare: list[socket.socket] = []
        deadline = time.monotonic() + 30  # workers start one after another; the first answers /health
        try:
            while len(connections) < workers and time.monotonic() < deadline:
                sock = socket.create_connection(("127.0.0.1", facade.port), timeout=10)
                owner = accepting_process(facade.port, sock.getsockname()[1], process_group(supervisor))
                if owner in connections:
                    spare.append(sock)
                    time.sleep(0.02)
                else:
                    connections[owner] = sock
            assert len(connections) == workers, f"only {sorted(connections)} accepted connections on the port"
            assert supervisor not in connections, "the supervisor itself served: not separate worker processes"
            for pid, sock in connections.items():
                status, body = post_over(sock, chat_body(f"worker {pid}"))
                assert status == 200, body
                assert json.loads(body)["choices"][0]["message"]["content"].endswith(f"worker {pid}")
        finally:
            for sock in [*connections.values(), *spare]:
                sock.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # accepted by the kernel but never served: not refused
        return False
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_an_open_stream_finish_and_refuses_new_connections(
    tmp_path: Path, upstream: support.ServerProcess, workers: str
) -> None:
    launch = unit_launch(CAPIBARA_UPSTREAM_URL=upstream.url, CAPIBARA_WORKERS=workers)
    arrivals = Arrivals()
    first_event = threading.Event()
    failures: list[BaseException] = []

    def consume(url: str) -> None:
        body = chat_body("uno dos tres cuatro cinco seis siete ocho nueve diez", stream=True, chunk_delay=0.15)
        try:
            with httpx.Client(timeout=30) as client, client.stream("POST", url, content=body) as response:
                for chunk in response.iter_raw():
                    arrivals.feed(chunk, time.monotonic())
                    first_event.set()
        except BaseException as exc:
            failures.append(exc)
            first_event.set()

    with support.running(started(launch, tmp_path)) as facade:
        assert facade.process is not None
        reader = threading.Thread(target=consume, args=(facade.url + "/v1/chat/completions",))
        reader.start()
        assert first_event.wait(20) and not failures, failures
        # What systemd (KillMode=mixed) and Kubernetes do: SIGTERM to the main process only.
        os.kill(facade.process.pid, signal.SIGTERM)
        refused_at = None
        while reader.is_alive() and refused_at is None:
            if refused(facade.port):
                refused_at = time.monotonic()
            else:
                time.sleep(0.05)
        reader.join(40)
        assert not failures, failures
        assert arrivals.done, f"the stream was cut: {arrivals.events[-2:]}"
        assert refused_at is not None and refused_at < arrivals.times[-1], (
            "after SIGTERM, new connections were still accepted until the open stream had ended"
        )
        # Exit 0, or uvicorn's re-raised SIGTERM: both are a clean stop for systemd, not a failure to restart.
        assert facade.process.wait(40) in (0, -signal.SIGTERM), facade.log()
