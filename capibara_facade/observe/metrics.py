"""Prometheus metrics: what the facade served, how fast, what it cost, and how its upstreams are doing.

Every series is updated from the request's `RequestRecord` once it is finished (`observe`), except the
gauges that describe the present (requests in flight per upstream, open streams, upstream up). Labels are
bounded by the config: `model` is a configured public name or "other", `upstream` a configured upstream.

With several workers prometheus-client's multiprocess mode is used: each worker writes its values to
memory-mapped files in one directory (the CLI creates it and sets `PROMETHEUS_MULTIPROC_DIR` before the
workers start), and whichever worker answers `GET /metrics` adds up every worker's files, so each count
appears once. Gauges of workers that died are dropped (`mark_dead`).

Histogram buckets are chosen for LLM latencies: time to first token from 10 ms to 60 s, the facade's own
overhead from 50 µs to 50 ms.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..upstream.breaker import STATES
from .record import RequestRecord

__all__ = ["CONTENT_TYPE", "Metrics", "mark_dead"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
OTHER_MODEL = "other"


class Metrics:
    def __init__(
        self, model_names: Iterable[str], multiprocess_dir: str | None, caller_names: Iterable[str] = ()
    ) -> None:
        self._models = frozenset(model_names)
        self._callers = frozenset(caller_names)
        self._multiprocess_dir = multiprocess_dir
        registry = self._registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "capibara_requests",
            "Requests answered, by route, public model, upstream, HTTP status, streaming and caller.",
            ["route", "model", "upstream", "status", "stream", "caller"],
            registry=registry,
        )
        self.duration = Histogram(
            "capibara_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            ["route", "model", "stream"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "capibara_time_to_first_token_seconds",
            "Time from a stream request's arrival to its first event carrying generated output.",
            ["model", "upstream"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "capibara_time_per_output_token_seconds",
            "Time per output token after the first, for streams whose upstream reported usage.",
            ["model", "upstream"],
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "capibara_overhead_seconds",
            "Time spent in the facade itself, not waiting on the upstream.",
            ["stream"],
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "capibara_tokens",
            "Tokens the upstreams reported, by kind and caller.",
            ["model", "kind", "caller"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "capibara_rate_limited",
            "Requests refused by a caller's limit, by caller and limit (requests, tokens, concurrent, daily...)",
            ["caller", "limit"],
            registry=registry,
        )
        self.limiter_up = Gauge(
            "capibara_limiter_up",
            "1 while the rate limits' store answers (always 1 for in-process limits), else 0.",
            multiprocess_mode="livemin",
            registry=registry,
        )
        self.usage_missing = Counter(
            "capibara_usage_missing",
            "Answers that completed without the upstream reporting usage (nothing was counted for them).",
            ["model"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "capibara_upstream_errors", "Upstream failures, by kind.", ["upstream", "kind"], registry=registry
        )
        self.disconnects = Counter(
            "capibara_client_disconnects",
            "Clients that left before their answer was complete, by phase.",
            ["phase"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "capibara_in_flight",
            "Requests in flight to each upstream.",
            ["upstream"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.open_streams = Gauge(
            "capibara_open_streams", "Streams being relayed.", multiprocess_mode="livesum", registry=registry
        )
        self.upstream_up = Gauge(
            "capibara_upstream_up",
            "1 when the upstream answered its last health probe, else 0.",
            ["upstream"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.upstream_state = Gauge(
            "capibara_upstream_state",
            "1 for the state each upstream's circuit breaker is in (closed, open, half_open), else 0.",
            ["upstream", "state"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.reloads = Counter(
            "capibara_config_reloads",
            "Config reloads, by result (ok, invalid, refused).",
            ["result"],
            registry=registry,
        )
        self.generation = Gauge(
            "capibara_config_generation",
            "The config generation in use (1 at start, one more for each reload that took).",
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.store_failures = Counter(
            "capibara_store_failures",
            "Chat completions that were to be stored and were not, by reason (dropped, unstorable, store_error).",
            ["reason"],
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: prometheus-client's own lookup is the costly part of an update."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def set_models(self, model_names: Iterable[str]) -> None:
        """After a reload: the public names that are labels of their own (any other is "other")."""
        self._models = frozenset(model_names)

    def set_callers(self, caller_names: Iterable[str]) -> None:
        """After a reload: the callers that are labels of their own."""
        self._callers = frozenset(caller_names)

    def store_failed(self, reason: str) -> None:
        self._child(self.store_failures, reason).inc()

    def set_limiter_up(self, up: bool) -> None:
        self.limiter_up.set(1 if up else 0)

    def reloaded(self, result: str | None, generation: int) -> None:
        if result is not None:
            self._child(self.reloads, result).inc()
        self.generation.set(generation)

    def model_label(self, model: str | None) -> str:
        if model is None:
            return ""
        return model if model in self._models else OTHER_MODEL

    def observe(self, record: RequestRecord) -> None:
        model = self.model_label(record.model)
        upstream = record.upstream or ""
        stream = "true" if record.stream else "false"
        caller = record.caller if record.caller in self._callers else ""
        child = self._child
        child(self.requests, record.route, model, upstream, str(record.status), stream, caller).inc()
        if record.limited is not None:
            child(self.rate_limited, caller, record.limited).inc()
        child(self.duration, record.route, model, stream).observe(record.duration)
        overhead = record.overhead
        if overhead is not None:
            child(self.overhead, stream).observe(overhead)
        if record.upstream_error is not None:
            child(self.upstream_errors, upstream, record.upstream_error).inc()
        if record.disconnect_phase is not None:
            child(self.disconnects, record.disconnect_phase).inc()
        ttft = record.ttft
        if ttft is not None:
            child(self.ttft, model, upstream).observe(ttft)
        if record.prompt_tokens is not None:
            child(self.tokens, model, "prompt", caller).inc(record.prompt_tokens)
        if record.completion_tokens is not None:
            child(self.tokens, model, "completion", caller).inc(record.completion_tokens)
            tokens_after_first = record.completion_tokens - 1
            if record.first_token_at is not None and record.finished_at is not None and tokens_after_first > 0:
                per_token = (record.finished_at - record.first_token_at) / tokens_after_first
                child(self.tpot, model, upstream).observe(per_token)
        elif record.status == 200 and record.upstream is not None and record.outcome == "completed":
            child(self.usage_missing, model).inc()

    def in_flight_gauge(self, upstream: str) -> Any:
        return self._child(self.in_flight, upstream)

    def set_upstream_up(self, upstream: str, up: bool) -> None:
        self._child(self.upstream_up, upstream).set(1 if up else 0)

    def set_upstream_state(self, upstream: str, state: str) -> None:
        for each in STATES:
            self._child(self.upstream_state, upstream, each).set(1 if each == state else 0)

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self._registry)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


def mark_dead(pid: int, multiprocess_dir: str) -> None:
    """Drop the live gauges of a worker that exited (its counters stay: what it served still counts)."""
    multiprocess.mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]
