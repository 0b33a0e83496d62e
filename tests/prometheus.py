"""A real Prometheus for the tests: Debian's `prometheus` server scraping the facade, its HTTP API, and promtool.

The server runs with the shipped scrape config (deploy/prometheus/prometheus.yml) pointed at the test's
facade and scraping every second, on a free loopback port, with its database in the test's temporary
directory, so it never meets a Prometheus the machine may run on :9090.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests import support

PROMETHEUS = "/usr/bin/prometheus"  # Debian: prometheus (scripts/system-packages.txt)
PROMTOOL = "/usr/bin/promtool"
SCRAPE_CONFIG = support.ROOT / "deploy" / "prometheus" / "prometheus.yml"
JOB = "capibara-facade"


def scrape_config(target: str, interval: str = "1s") -> str:
    """The shipped config with its facade job scraping only `target` (host:port), every `interval`."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    (targets,) = job["static_configs"]
    targets["targets"] = [target]
    config["scrape_configs"] = [job]
    rendered: str = yaml.safe_dump(config)
    return rendered


def prometheus_server(tmp_path: Path, config: str) -> support.ServerProcess:
    """Debian's Prometheus with `config`, listening on a free loopback port; start it with `support.running(
    server, "/-/ready")` (it answers 503 there until its database is open)."""
    port = support.free_port()
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(config)
    argv = [
        PROMETHEUS,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return support.ServerProcess(argv, port, tmp_path / "prometheus.log")


def promtool(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    result = subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=30)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(), result.stderr.decode())


class PrometheusAPI:
    """Instant queries against Prometheus's HTTP API (/api/v1/query), and waiting for a fresh scrape."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector `promql` evaluates to now: a list of {"metric": labels, "value": [time, "text"]}."""
        answer = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10).json()
        assert answer["status"] == "success", f"{promql}: {answer}"
        assert answer["data"]["resultType"] == "vector", f"{promql}: {answer['data']['resultType']}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        """The single number `promql` evaluates to (an aggregation without `by`)."""
        result = self.query(promql)
        assert len(result) == 1, f"{promql} gave {len(result)} series, not one: {result}"
        return float(result[0]["value"][1])

    def by(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        """{(label values…): number} for a `sum by (labels…)` query."""
        return {
            tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
            for sample in self.query(promql)
        }

    def wait_for_scrape_after(self, moment: float, within: float = 15.0) -> float:
        """Wait until the facade's job has been scraped successfully with a scrape that began after `moment`
        (Unix time); return when that scrape began."""
        deadline = time.monotonic() + within
        scraped = math.nan
        while time.monotonic() < deadline:
            up = self.query(f'up{{job="{JOB}"}} == 1')
            if up:
                scraped = self.value(f'max(timestamp(up{{job="{JOB}"}}))')
                if scraped > moment:
                    return scraped
            time.sleep(0.2)
        raise AssertionError(f"Prometheus did not scrape {JOB} after {moment} within {within}s (last: {scraped})")
