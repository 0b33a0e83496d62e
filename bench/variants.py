"""Facade variants: the facade in another configuration, measured beside the shipped one in the same rounds.

A variant is a name, a label for its rows, a function from the benchmark's base config (the dict of
`bench.facade_config.shipped_config`) to the variant's, and the pair rows it reports (keys of
`bench.pairs.PAIR_METRICS`). The runner starts one more facade per selected variant and measures it only in the
phases those rows need, interleaved with direct, the shipped facade and nginx; the report shows each row as
"<label> off vs on", off being the shipped facade of the same rounds. Register one by adding it to VARIANTS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from bench.facade_config import FacadeConfig, merged

# What a feature on the request path should report at least: CPU per request at c=32, latency added at c=1
# and CPU per forwarded chunk (together they need three phases: c=1 and c=32 JSON, c=32 streams 5 ms apart).
REQUEST_PATH_ROWS = ("c32_cpu", "c1_added_p50", "cpu_per_chunk")


@dataclass(frozen=True)
class Variant:
    name: str  # for --variants, and the facade's target name "facade+<name>" in the JSON
    label: str  # rows read "<label> off vs on: <metric>"
    configure: Callable[[FacadeConfig], FacadeConfig]
    rows: tuple[str, ...] = REQUEST_PATH_ROWS
    # The shipped facade has the feature on and the variant turns it off (the rows still read "off vs on").
    turns_off: bool = False
    # Request headers every load generator sends to this variant (e.g. its caller's key).
    headers: tuple[tuple[str, str], ...] = ()
    # The runner starts a redis-server for the run (loopback, a free port, no persistence, on the load core)
    # and lays `limits.redis_url`, pointing at it, over the variant's config.
    redis: bool = False

    @property
    def target(self) -> str:
        return f"facade+{self.name}"


def _two_targets(config: FacadeConfig) -> FacadeConfig:
    """The benchmark's model served by two upstreams (both the stub, under two names), so every request goes
    through the power-of-two-choices pick between two targets."""
    stub = dict(config["upstreams"]["default"])
    targets = [{"upstream": "default"}, {"upstream": "second"}]
    return merged(
        config,
        {
            "upstreams": {"default": stub, "second": stub},
            "models": [{"name": "aya_expanse_multilingual", "targets": targets}],
        },
    )


BENCH_KEY = "sk-bench-limits"
# Limits a run never reaches (c=32 is a few thousand requests a second, ~100 tokens each): what the variants
# measure is what checking and settling them costs, not a refusal.
_UNREACHED_LIMITS = {"requests_per_minute": 10_000_000, "tokens_per_minute": 10**9, "max_concurrent": 100_000}


def _limited_key(config: FacadeConfig) -> FacadeConfig:
    """Every request from one caller key with requests, tokens and concurrency limits (and so no public tier:
    with keys configured, a request without one gets 401)."""
    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    return merged(config, {"callers": {"bench": {"key_sha256": digest, **_UNREACHED_LIMITS}}})


_BEARER = (("Authorization", f"Bearer {BENCH_KEY}"),)

VARIANTS: tuple[Variant, ...] = (
    Variant(name="two_targets", label="two targets behind the model (one vs two)", configure=_two_targets),
    # Shipped on: Prometheus metrics (every request, stream and upstream call updates them) and the JSON
    # request log (one line written per request).
    Variant(
        name="metrics_log",
        label="metrics and request log",
        configure=lambda config: merged(config, {"metrics": {"enabled": False}, "request_log": {"enabled": False}}),
        turns_off=True,
    ),
    # At the shipped log level ("warning") uvicorn builds each access-log record's arguments and drops it, so
    # an access log that is written needs "info" too; at info httpx also logs every upstream request.
    Variant(
        name="access_log",
        label="access log (info)",
        configure=lambda config: merged(config, {"server": {"access_log": True, "log_level": "info"}}),
    ),
    # Issue 11: a key with limits, its state in Redis on loopback (two EVALSHA per request: admit and
    # settle), against the open configuration; and the same limits kept in the facade's own process.
    Variant(
        name="limits_redis",
        label="a key with limits through Redis (open vs limited)",
        configure=_limited_key,
        headers=_BEARER,
        redis=True,
    ),
    Variant(
        name="limits_local",
        label="a key with limits in-process (open vs limited)",
        configure=_limited_key,
        headers=_BEARER,
    ),
)


def select(names: str | None) -> list[Variant]:
    """The variants named in a comma-separated list: None means all registered, "none" (or "") none."""
    if names is None:
        return list(VARIANTS)
    wanted = [name.strip() for name in names.split(",") if name.strip() and name.strip() != "none"]
    known = {variant.name: variant for variant in VARIANTS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; registered: {', '.join(known) or 'none'}")
    return [known[name] for name in dict.fromkeys(wanted)]
