"""The benchmark's main table: every round's numbers aggregated into rows, the targets side by side.

Aggregation: a round's number is one measurement of one target; the table shows the median over rounds. An
"added" row is the median over rounds of (target - direct) within the same round, so drifts between rounds
cancel. Errors are summed over rounds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from bench.aggregate import added_per_round, chunk_cpu_per_round, median_of, per_round, rounds_of
from bench.plan import BURST_CONNECTIONS, BURST_IDLE_S

# Targets of issue 3, for the facade (2-core machine, facade on one core, shipped configuration).
TARGETS: dict[str, tuple[str, float]] = {
    "c1_added_p50": ("<=", 0.6),
    "c32_rps": (">=", 2500),
    "c32_errors": ("==", 0),
    "c32_cpu": ("<=", 400),
    "c128_rps": (">=", 2000),
    "c128_errors": ("==", 0),
    "c128_cpu": ("<=", 400),
    "st_c1_added_ttfb": ("<=", 0.7),
    "st_added_total": ("<=", 1.0),
    "cpu_per_chunk": ("<=", 60),
    "slow_added_p99": ("<=", 5.0),
    "peak_rss": ("<=", 80),
    "soak_growth": ("<=", 5),
    "reached": ("==", 1),
}
_OPS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge, "==": operator.eq}
_SYMBOL = {"<=": "≤", ">=": "≥", "==": "="}


def table_rows(raw: dict[str, Any], targets: list[str], plan: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def median(phase: str, target: str, key: str) -> float | None:
        return median_of(per_round(raw, phase, target, key))

    def added(phase: str, target: str, key: str) -> float | None:
        return None if target == "direct" else median_of(added_per_round(raw, phase, target, key))

    def summed(phase: str, target: str, key: str) -> float | None:
        rounds = rounds_of(raw, phase, target)
        return sum(r[key] for r in rounds) if rounds else None

    def row(
        metric: str,
        unit: str,
        values: Callable[[str], float | None],
        target_key: str | None = None,
        ratio: bool = False,
        fmt: str = "{:.2f}",
        sign: bool = False,
    ) -> None:
        vals = {t: values(t) for t in targets}
        entry: dict[str, Any] = {"metric": metric, "unit": unit, "values": vals, "fmt": fmt, "sign": sign}
        if target_key:
            op, bound = TARGETS[target_key]
            entry["target"] = f"{_SYMBOL[op]} {bound:g}"
            facade = vals.get("facade")
            entry["ok"] = None if facade is None else bool(_OPS[op](facade, bound))
        if ratio and vals.get("facade") is not None and vals.get("direct"):
            entry["ratio"] = vals["facade"] / vals["direct"]  # type: ignore[operator]
        rows.append(entry)

    row("c=1 latency p50", "ms", lambda t: median("lat_c1", t, "p50_ms"), ratio=True, fmt="{:.3f}")
    row("c=1 latency p99", "ms", lambda t: median("lat_c1", t, "p99_ms"), ratio=True, fmt="{:.3f}")
    row("c=1 added latency p50", "ms", lambda t: added("lat_c1", t, "p50_ms"), "c1_added_p50", fmt="{:.3f}", sign=True)
    row("c=1 added latency p99", "ms", lambda t: added("lat_c1", t, "p99_ms"), fmt="{:.3f}", sign=True)

    def throughput_rows(conc: int) -> None:
        phase = f"tp_c{conc}"
        row(f"c={conc} throughput", "req/s", lambda t: median(phase, t, "rps"), f"c{conc}_rps", True, "{:,.0f}")
        row(f"c={conc} latency p99", "ms", lambda t: median(phase, t, "p99_ms"), ratio=True)
        row(f"c={conc} errors", "", lambda t: summed(phase, t, "errors"), f"c{conc}_errors", fmt="{:.0f}")
        row(
            f"c={conc} proxy CPU per request",
            "µs",
            lambda t: median(phase, t, "cpu_per_req_us"),
            f"c{conc}_cpu",
            fmt="{:.0f}",
        )
        row(
            "  of which in the kernel (stime)",
            "%",
            lambda t: _pct(median(phase, t, "cpu_sys_share")),
            fmt="{:.0f}",
        )

    for conc in (32, 128):
        throughput_rows(conc)
    # Fresh connections after a quiet spell: a server accepting a burst slowly delays the first requests only.
    burst = f"{BURST_CONNECTIONS} new connections after {BURST_IDLE_S:g} s idle"
    row(f"{burst}: first request p50", "ms", lambda t: median("burst_c128", t, "first_p50_ms"), ratio=True)
    row(f"{burst}: first request p99", "ms", lambda t: median("burst_c128", t, "first_p99_ms"), ratio=True)
    row(f"{burst}: later requests p99", "ms", lambda t: median("burst_c128", t, "rest_p99_ms"), ratio=True)
    row(
        "stream c=1 TTFB p50 (first event)", "ms", lambda t: median("st_c1", t, "ttfb_p50_ms"), ratio=True, fmt="{:.3f}"
    )
    row(
        "stream c=1 added TTFB p50",
        "ms",
        lambda t: added("st_c1", t, "ttfb_p50_ms"),
        "st_c1_added_ttfb",
        fmt="{:.3f}",
        sign=True,
    )
    row("stream c=1 added TTFB p99", "ms", lambda t: added("st_c1", t, "ttfb_p99_ms"), fmt="{:.3f}", sign=True)
    row(
        "  same, busy core (chunks back to back): TTFB p50",
        "ms",
        lambda t: median("st_c1_busy", t, "ttfb_p50_ms"),
        ratio=True,
        fmt="{:.3f}",
    )
    row(
        "  same, busy core: added TTFB p50",
        "ms",
        lambda t: added("st_c1_busy", t, "ttfb_p50_ms"),
        fmt="{:.3f}",
        sign=True,
    )
    row(
        "stream c=32 TTFB p50 (first event)",
        "ms",
        lambda t: median("st_c32", t, "ttfb_p50_ms"),
        ratio=True,
        fmt="{:.3f}",
    )
    row("stream c=32 added TTFB p50", "ms", lambda t: added("st_c32", t, "ttfb_p50_ms"), fmt="{:.3f}", sign=True)
    row("stream 20 chunks x 5 ms: total p50 (c=1)", "ms", lambda t: median("st_c1", t, "total_p50_ms"), fmt="{:.2f}")
    row(
        "stream 20 chunks x 5 ms: added total p50",
        "ms",
        lambda t: added("st_c1", t, "total_p50_ms"),
        "st_added_total",
        fmt="{:.3f}",
        sign=True,
    )
    row(
        "streams/s at c=32 (20 chunks back to back)",
        "/s",
        lambda t: median("st_rate", t, "streams_per_s"),
        ratio=True,
        fmt="{:,.0f}",
    )
    row(
        "streams/s at c=32 (20 chunks x 5 ms)",
        "/s",
        lambda t: median("st_c32", t, "streams_per_s"),
        ratio=True,
        fmt="{:,.0f}",
    )
    row(
        "proxy CPU per stream (20 chunks x 5 ms, c=32)",
        "µs",
        lambda t: median("st_c32", t, "cpu_per_stream_us"),
        fmt="{:.0f}",
    )

    row(
        "proxy CPU per forwarded chunk (marginal)",
        "µs",
        lambda t: median_of(chunk_cpu_per_round(raw, t)),
        "cpu_per_chunk",
        fmt="{:.1f}",
    )
    row(
        "  of which in the kernel (stime)",
        "%",
        lambda t: _pct(median("st_c32", t, "cpu_sys_share")),
        fmt="{:.0f}",
    )
    slow_n = plan.slow_streams
    row(
        f"{slow_n:,} slow streams (50 ms): event delay p50",
        "ms",
        lambda t: median("slow", t, "delay_p50_ms"),
        fmt="{:.2f}",
    )
    row(
        f"{slow_n:,} slow streams (50 ms): event delay p99",
        "ms",
        lambda t: median("slow", t, "delay_p99_ms"),
        fmt="{:.2f}",
    )
    row(
        f"{slow_n:,} slow streams: added event delay p99",
        "ms",
        lambda t: added("slow", t, "delay_p99_ms"),
        "slow_added_p99",
        fmt="{:.2f}",
        sign=True,
    )
    row(f"{slow_n:,} slow streams: completed", "", lambda t: median("slow", t, "completed"), fmt="{:.0f}")
    row(
        f"{slow_n:,} slow streams: open at once (stub)",
        "",
        lambda t: median("slow", t, "max_open_at_stub"),
        fmt="{:.0f}",
    )
    row(
        f"{slow_n:,} slow streams: proxy CPU per event",
        "µs",
        lambda t: median("slow", t, "cpu_per_event_us"),
        fmt="{:.0f}",
    )

    def peak_in(phase: str, t: str) -> float | None:
        values = [r["peak_rss_mib"] for r in rounds_of(raw, phase, t) if "peak_rss_mib" in r]
        return max(values) if values else None

    row(
        f"  of which in the kernel (stime), {slow_n:,} streams",
        "%",
        lambda t: _pct(median("slow", t, "cpu_sys_share")),
        fmt="{:.0f}",
    )
    idle = raw.get("idle_rss_kib", {})
    row("RSS after start-up, idle", "MiB", lambda t: idle[t] / 1024 if t in idle else None, fmt="{:.1f}")
    row("RSS peak during c=128 JSON load", "MiB", lambda t: peak_in("tp_c128", t), fmt="{:.1f}")
    row(f"RSS peak with {slow_n:,} streams open", "MiB", lambda t: peak_in("slow", t), fmt="{:.1f}")
    peak = raw.get("peak_rss_kib", {})
    row(
        "peak RSS under load (all phases)",
        "MiB",
        lambda t: peak[t] / 1024 if t in peak else None,
        "peak_rss",
        fmt="{:.1f}",
    )
    soak = raw.get("soak") or {}
    soak_label = f"RSS growth over soak ({soak.get('requests_after_baseline', 0):,} req)"
    row(
        soak_label,
        "MiB",
        lambda t: soak.get("growth_mib") if t == soak.get("target") else None,
        "soak_growth",
        fmt="{:.1f}",
        sign=True,
    )

    def reached(t: str) -> float | None:
        phases = [r for phase in raw["phases"].values() for r in phase.get(t, [])]
        if t == soak.get("target"):
            phases.append(soak)
        return float(all(r["reached_ok"] for r in phases)) if phases else None

    row("every request reached the upstream (stub counts)", "", reached, "reached", fmt="{:.0f}")
    checks = raw.get("checks", {})
    row(
        "non-stream body byte-identical to direct",
        "",
        lambda t: float(checks[t]["body_identical_to_direct"]) if t in checks else None,
        fmt="{:.0f}",
    )
    return rows


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100
