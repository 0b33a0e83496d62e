"""The facade's metrics, proven with a real Prometheus: Debian's `prometheus` scrapes a facade running two
workers while a known mix of requests goes through it (tests/traffic.py: whole answers, streams with and
without usage, errors, a client that leaves mid-stream), then its HTTP API must count exactly what was sent.
The Grafana dashboard's queries and the request log are checked against the same traffic.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from capibara_facade.config import load_config
from tests import support
from tests.conftest import Upstream
from tests.deploy.tools import FACADE_TOML, accepting_process, process_group
from tests.prometheus import JOB, SCRAPE_CONFIG, PrometheusAPI, prometheus_server, promtool, scrape_config
from tests.traffic import Sent, exchange, expected, send_the_mix

WORKERS = 2
DASHBOARD = support.ROOT / "deploy" / "grafana" / "capibara-facade.json"
LOG_FIELDS = {"request_id", "route", "model", "upstream", "upstream_model", "status", "stream", "ttft_ms",
              "duration_ms", "overhead_ms", "prompt_tokens", "completion_tokens", "bytes_out", "outcome"}  # fmt: skip


def facade_toml(upstream_url: str) -> str:
    return f"""
[metrics]
enabled = true

[request_log]
enabled = true

[upstreams.default]
url = "{upstream_url}"
probe_interval_seconds = 0.5

[upstreams.down]
url = "http://127.0.0.1:{support.free_port()}"
connect_timeout_seconds = 1
probe_interval_seconds = 0.5

[[models]]
name = "capibara6"
upstream_model = "aya_expanse_multilingual"

[[models]]
name = "phi4_fast"

[[models]]
name = "capibara6-quiet"
upstream_model = "phi4_fast"
stream_usage = false

[[models]]
name = "offline"
upstream = "down"

[legacy_chat]
model = "capibara6"
"""


# --- the facade's workers, and what they expose ------------------------------------------------------------


@contextlib.contextmanager
def one_connection_per_worker(facade: support.ServerProcess) -> Iterator[dict[int, http.client.HTTPConnection]]:
    """A kept-alive connection accepted by each worker process, by pid (found in /proc): connections are
    opened, and held while the worker that accepted one already has its own, until every worker has one."""
    assert facade.process is not None
    connections: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    deadline = time.monotonic() + 30
    try:
        while len(connections) < WORKERS and time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", facade.port, timeout=20)
            connection.connect()
            assert connection.sock is not None
            candidates = process_group(facade.process.pid)  # workers start one after another
            owner = accepting_process(facade.port, connection.sock.getsockname()[1], candidates)
            if owner in connections:
                spare.append(connection)
                time.sleep(0.02)
            else:
                connections[owner] = connection
        for connection in spare:
            connection.close()
        yield connections
    finally:
        for connection in [*connections.values(), *spare]:
            connection.close()


# --- the scenario: every test below reads the same traffic -------------------------------------------------


def facade_metrics(connection: http.client.HTTPConnection) -> str:
    status, body = exchange(connection, "GET", "/metrics")
    assert status == 200, body
    return body.decode()


def requests_counted(metrics_text: str) -> float:
    families = {family.name: family for family in text_string_to_metric_families(metrics_text)}
    family = families.get("capibara_requests")
    return sum(sample.value for sample in family.samples if sample.name.endswith("_total")) if family else 0.0


def request_log(facade: support.ServerProcess) -> list[dict[str, object]]:
    lines = []
    for line in facade.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            document = json.loads(line)
            if isinstance(document, dict) and "request_id" in document:
                lines.append(document)
    return lines


@dataclass
class Scenario:
    facade: support.ServerProcess
    prometheus: PrometheusAPI
    workers: dict[int, http.client.HTTPConnection]
    sent: list[Sent]
    abandoned_request_id: str


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Scenario]:
    tmp_path = tmp_path_factory.mktemp("prometheus")
    facade = support.facade(tmp_path, facade_toml(upstream.url), "--workers", str(WORKERS))
    # Prometheus first: it takes a few seconds to start scraping a new target, the facade to start its workers.
    server = prometheus_server(tmp_path, scrape_config(f"127.0.0.1:{facade.port}"))
    with support.running(server, "/-/ready"), support.running(facade), one_connection_per_worker(facade) as workers:
        prometheus = PrometheusAPI(server.url)
        prometheus.wait_for_scrape_after(time.time())  # the series start before the traffic does
        abandoned_request_id = str(uuid.uuid4())
        sent = send_the_mix(workers, facade.url, upstream, abandoned_request_id)
        # Bounded: the facade counts a request when it has finished it (an abandoned one, when it noticed).
        worker = next(iter(workers.values()))
        deadline = time.monotonic() + 15
        while requests_counted(facade_metrics(worker)) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
        prometheus.wait_for_scrape_after(time.time())
        yield Scenario(facade, prometheus, workers, sent, abandoned_request_id)


# --- what Prometheus saw -------------------------------------------------------------------------------------


def test_prometheus_counts_every_request_sent_once_by_route_status_stream_and_upstream(scenario: Scenario) -> None:
    prometheus, sent = scenario.prometheus, scenario.sent
    assert prometheus.value("sum(capibara_requests_total)") == len(sent)
    for labels in (("route", "status"), ("stream",), ("upstream",), ("route", "upstream", "status", "stream")):
        query = f"sum by ({', '.join(labels)}) (capibara_requests_total)"
        assert prometheus.by(query, *labels) == expected(sent, *labels), query
    named = [request for request in sent if request.model is not None]
    query = 'sum by (model, route, status) (capibara_requests_total{status!="400"})'
    assert prometheus.by(query, "model", "route", "status") == expected(named, "model", "route", "status")


def test_tokens_are_the_usage_the_upstream_reported_plus_what_an_abandoned_stream_relayed(scenario: Scenario) -> None:
    prometheus, sent = scenario.prometheus, scenario.sent
    for kind in ("prompt", "completion"):
        per_model: collections.Counter[tuple[str, ...]] = collections.Counter()
        for request in sent:
            tokens = getattr(request, f"{kind}_tokens")
            if tokens is not None:
                per_model[(str(request.model),)] += tokens
        assert prometheus.value(f'sum(capibara_tokens_total{{kind="{kind}"}})') == sum(per_model.values()), kind
        assert prometheus.by(f'sum by (model) (capibara_tokens_total{{kind="{kind}"}})', "model") == per_model, kind


def test_a_stream_whose_upstream_reported_no_usage_is_counted_as_usage_missing(scenario: Scenario) -> None:
    assert scenario.prometheus.by("sum by (model) (capibara_usage_missing_total)", "model") == {("capibara6-quiet",): 1}


def test_a_client_leaving_mid_stream_is_counted_as_a_disconnect_while_streaming(scenario: Scenario) -> None:
    query = "sum by (phase) (capibara_client_disconnects_total)"
    assert scenario.prometheus.by(query, "phase") == {("streaming",): 1}


def test_upstream_failures_are_counted_by_upstream_and_kind(scenario: Scenario) -> None:
    query = "sum by (upstream, kind) (capibara_upstream_errors_total)"
    assert scenario.prometheus.by(query, "upstream", "kind") == {
        ("default", "status_5xx"): 1,
        ("default", "broke_off"): 1,
    }


def test_upstream_up_is_1_for_the_answering_upstream_and_0_for_the_dead_one(scenario: Scenario) -> None:
    series = scenario.prometheus.query("capibara_upstream_up")
    assert {sample["metric"]["upstream"]: float(sample["value"][1]) for sample in series} == {"default": 1, "down": 0}
    assert all(set(sample["metric"]) == {"__name__", "upstream", "instance", "job", "service"} for sample in series)


def test_in_flight_and_open_streams_are_back_to_zero_once_every_request_finished(scenario: Scenario) -> None:
    prometheus = scenario.prometheus
    assert prometheus.value("sum(capibara_open_streams)") == 0
    assert prometheus.by("sum by (upstream) (capibara_in_flight)", "upstream").get(("default",)) == 0


def test_every_worker_answers_a_scrape_with_every_workers_counts(scenario: Scenario) -> None:
    workers = scenario.workers
    assert len(workers) == WORKERS  # separate worker processes, found in /proc, each served part of the mix
    assert scenario.facade.process is not None and scenario.facade.process.pid not in workers
    for pid, connection in workers.items():
        assert requests_counted(facade_metrics(connection)) == len(scenario.sent), f"worker {pid}"
    scraped = time.time()
    for _ in range(3):  # several scrapes by Prometheus itself, whichever worker answers them
        scraped = scenario.prometheus.wait_for_scrape_after(scraped)
        assert scenario.prometheus.value("sum(capibara_requests_total)") == len(scenario.sent)


def test_promtool_check_metrics_accepts_the_facades_metrics(scenario: Scenario) -> None:
    text = facade_metrics(next(iter(scenario.workers.values())))
    assert "capibara_time_to_first_token_seconds_bucket" in text
    result = promtool("check", "metrics", stdin=text.encode())
    problems = (result.stdout + result.stderr).strip().splitlines()
    # promtool exits 3 for lint findings, and 1 when the text does not parse. Missing help text would be
    # tolerable (a warning); nothing else is.
    assert result.returncode in (0, 3), problems
    assert all(problem.endswith("no help text") for problem in problems), problems


def test_every_query_of_the_grafana_dashboard_returns_data(scenario: Scenario) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(queries) >= 10
    for query in queries:
        promql = re.sub(r"\$__(rate_)?interval", "1m", query)
        assert "$" not in promql, query
        assert scenario.prometheus.query(promql), f"no data for the dashboard's query {query}"


def test_request_log_lines_agree_with_the_metrics(scenario: Scenario) -> None:
    deadline = time.monotonic() + 10  # bounded: lines are written when each request finishes
    while len(lines := request_log(scenario.facade)) < len(scenario.sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(lines) == len(scenario.sent)
    assert all(set(line) >= LOG_FIELDS for line in lines), lines[0]
    assert len({line["request_id"] for line in lines}) == len(lines)
    statuses = collections.Counter((str(line["status"]),) for line in lines)
    assert statuses == scenario.prometheus.by("sum by (status) (capibara_requests_total)", "status")
    logged_tokens = sum(int(str(line["completion_tokens"])) for line in lines if line["completion_tokens"] is not None)
    assert logged_tokens == scenario.prometheus.value('sum(capibara_tokens_total{kind="completion"})')
    (abandoned,) = [line for line in lines if line["request_id"] == scenario.abandoned_request_id]
    assert abandoned["outcome"] == "client_gone"


# --- the shipped files ---------------------------------------------------------------------------------------


def test_the_shipped_scrape_config_passes_promtool_and_targets_the_shipped_facade_port() -> None:
    result = promtool("check", "config", str(SCRAPE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    (job,) = [job for job in yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"] if job["job_name"] == JOB]
    server = load_config(FACADE_TOML, {}).server
    assert [target for group in job["static_configs"] for target in group["targets"]] == [
        f"{server.host}:{server.port}"
    ]
    assert job.get("metrics_path", "/metrics") == "/metrics"


def test_every_dashboard_panel_queries_the_datasource_chosen_in_its_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    for panel in dashboard["panels"]:
        for source in [panel["datasource"], *(target["datasource"] for target in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
