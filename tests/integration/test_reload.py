"""A config reload drops nothing: requests and streams in flight finish on the config they started with, new
ones use the new one, an invalid or restart-only change is refused with the old config kept, and every
worker reloads."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests import support

HELLO = [{"role": "user", "content": "hola capibara, qué tal"}]


def _config(targets: list[str], urls: dict[str, str], extra: str = "") -> str:
    upstreams = "".join(support.upstream_config(url, name) for name, url in urls.items())
    listed = ", ".join(f'{{ upstream = "{name}", upstream_model = "qwen_coder" }}' for name in targets)
    return f'{upstreams}[[models]]\nname = "m"\ntargets = [{listed}]\n[legacy_chat]\nmodel = "m"\n{extra}'


def _served(upstream: support.ServerProcess) -> list[dict[str, object]]:
    records: list[dict[str, object]] = httpx.get(upstream.url + "/_demo/requests").json()
    return records


def _reloads(facade: support.ServerProcess) -> dict[str, float]:
    """`capibara_config_reloads_total` by result: every worker's, added up."""
    text = httpx.get(facade.url + "/metrics").text
    samples = (line.split() for line in text.splitlines() if line.startswith("capibara_config_reloads_total{"))
    return {name.split('"')[1]: float(value) for name, value in samples}


def _reload(facade: support.ServerProcess, config_path: Path, text: str, workers: int, result: str) -> int:
    """Write the config, run `capibara-facade reload`, wait (bounded) until every worker has counted the
    reload's `result`; the generation then in use."""
    config_path.write_text(text)
    expected = _reloads(facade).get(result, 0) + workers
    command = [support.PYTHON, "-m", "capibara_facade", "reload", "--port", str(facade.port)]
    reloaded = subprocess.run(command, capture_output=True, text=True, timeout=20)
    assert reloaded.returncode == 0, reloaded.stderr
    support.wait_for(lambda: _reloads(facade).get(result) == expected or None)
    generation: int = httpx.get(facade.url + "/health").json()["config"]["generation"]
    return generation


def _client(facade: support.ServerProcess, stop: threading.Event, failures: list[str], served: list[int]) -> None:
    with httpx.Client(base_url=facade.url, timeout=30) as client:
        turn = 0
        while not stop.is_set():
            turn += 1
            body = {"model": "m", "messages": HELLO, "stream": turn % 2 == 0}
            response = client.post("/v1/chat/completions", json=body)
            ended = response.text.endswith("data: [DONE]\n\n") if body["stream"] else "choices" in response.text
            if response.status_code != 200 or not ended or '"error"' in response.text:
                failures.append(f"{response.status_code}: {response.text[-200:]}")
            served.append(1)


@pytest.mark.parametrize("workers", [1, 2])
def test_reloads_under_load_drop_nothing_and_move_traffic_as_configured(tmp_path: Path, workers: int) -> None:
    one = support.demo_upstream(tmp_path, "--chunk-delay", "0.02")
    two = support.demo_upstream(tmp_path, "--chunk-delay", "0.02")
    with support.running(one), support.running(two):
        urls = {"one": one.url, "two": two.url}
        facade = support.facade(tmp_path, _config(["one"], {"one": one.url}), "--workers", str(workers))
        config_path = Path(facade.argv[facade.argv.index("--config") + 1])
        with support.running(facade):
            stop, failures, served = threading.Event(), [], []
            clients = [threading.Thread(target=_client, args=(facade, stop, failures, served)) for _ in range(16)]
            for client in clients:
                client.start()
            try:
                support.wait_for(lambda: len(served) > 20 or None)
                assert _reload(facade, config_path, _config(["one", "two"], urls), workers, "ok") == 2
                support.wait_for(lambda: _served(two) or None)  # the added upstream takes traffic
                assert _reload(facade, config_path, "[[[ not toml", workers, "invalid") == 2
                restart_only = _config(["two"], urls, "[server]\nmax_body_bytes = 99\n")
                assert _reload(facade, config_path, restart_only, workers, "refused") == 2
                assert _reload(facade, config_path, _config(["two"], urls), workers, "ok") == 3  # the one in use goes
                support.wait_for(lambda: all(r["outcome"] != "in_progress" for r in _served(one)) or None)
                after_removal, served_before = len(_served(one)), len(served)
                retuned = _config(["two"], urls, "[routing]\nmax_attempts = 2\n")
                assert _reload(facade, config_path, retuned, workers, "ok") == 4
                support.wait_for(lambda: len(served) > served_before + 40 or None)
            finally:
                stop.set()
                for client in clients:
                    client.join(30)
            assert not failures, failures[:3]
            assert len(_served(one)) == after_removal  # nothing new reached the removed upstream
            assert _reloads(facade) == {"ok": 3.0 * workers, "invalid": 1.0 * workers, "refused": 1.0 * workers}
