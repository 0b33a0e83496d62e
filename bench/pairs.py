"""The facade variants' rows: each variant against the shipped facade measured in the same rounds (the shipped
facade is "off", or "on" for a variant that turns a shipped feature off).

off and on are medians over rounds; "on - off" and "on/off" are medians of the per-round differences and ratios,
so drifts between rounds cancel, as in the main table's "added" rows. A variant names the rows it reports by
their keys in PAIR_METRICS; each row names the round phases it needs, so a variant runs in those phases only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.aggregate import added_per_round, chunk_cpu_per_round, median_of, per_round, rounds_of
from bench.variants import Variant

PerRound = Callable[[dict[str, Any], str], list[float | None]]  # (raw results, target) -> one value per round


@dataclass(frozen=True)
class PairMetric:
    """A number a variant can report beside the shipped facade's, and the round phases it is computed from."""

    label: str
    unit: str
    fmt: str
    phases: tuple[str, ...]
    per_round: PerRound
    sign: bool = False


def _value(phase: str, key: str) -> PerRound:
    return lambda raw, target: per_round(raw, phase, target, key)


def _added(phase: str, key: str) -> PerRound:
    return lambda raw, target: added_per_round(raw, phase, target, key)


# The rows a variant can report, by key (labels as in the main table).
PAIR_METRICS: dict[str, PairMetric] = {
    "c1_added_p50": PairMetric("c=1 added latency p50", "ms", "{:.3f}", ("lat_c1",), _added("lat_c1", "p50_ms"), True),
    "c32_rps": PairMetric("c=32 throughput", "req/s", "{:,.0f}", ("tp_c32",), _value("tp_c32", "rps")),
    "c32_cpu": PairMetric(
        "c=32 proxy CPU per request", "µs", "{:.0f}", ("tp_c32",), _value("tp_c32", "cpu_per_req_us")
    ),
    "st_c1_added_ttfb": PairMetric(
        "stream c=1 added TTFB p50", "ms", "{:.3f}", ("st_c1",), _added("st_c1", "ttfb_p50_ms"), True
    ),
    "stream_cpu": PairMetric(
        "proxy CPU per stream (20 chunks x 5 ms, c=32)",
        "µs",
        "{:.0f}",
        ("st_c32",),
        _value("st_c32", "cpu_per_stream_us"),
    ),
    "cpu_per_chunk": PairMetric(
        "proxy CPU per forwarded chunk (marginal)", "µs", "{:.1f}", ("tp_c32", "st_c32"), chunk_cpu_per_round
    ),
}


def variant_phases(variant: Variant) -> set[str]:
    """The round phases a variant must run in for its rows."""
    unknown = [key for key in variant.rows if key not in PAIR_METRICS]
    if unknown:
        raise ValueError(f"variant {variant.name}: unknown row(s) {unknown}; known: {', '.join(PAIR_METRICS)}")
    return {phase for key in variant.rows for phase in PAIR_METRICS[key].phases}


def pair_rows(raw: dict[str, Any], variants: list[Variant]) -> list[dict[str, Any]]:
    """Each variant's rows against the shipped facade ("off"), then whether it answered everything right."""
    rows: list[dict[str, Any]] = []
    for variant in variants:
        off_target, on_target = (variant.target, "facade") if variant.turns_off else ("facade", variant.target)
        for key in variant.rows:
            metric = PAIR_METRICS[key]
            pairs = [
                (off, on)
                for off, on in zip(metric.per_round(raw, off_target), metric.per_round(raw, on_target), strict=False)
                if off is not None and on is not None
            ]
            ratios = [on / off for off, on in pairs if off > 0]
            rows.append(
                {
                    "variant": variant.name,
                    "metric": f"{variant.label} off vs on: {metric.label}",
                    "unit": metric.unit,
                    "fmt": metric.fmt,
                    "sign": metric.sign,
                    "off": median_of([off for off, _ in pairs]),
                    "on": median_of([on for _, on in pairs]),
                    "diff": median_of([on - off for off, on in pairs]),
                    "ratio": median_of(ratios),
                }
            )
        phases = sorted(variant_phases(variant))
        rows.append(
            {
                "variant": variant.name,
                "metric": f"{variant.label} off vs on: 0 errors, all reached the upstream, same body",
                "unit": "",
                "yes_no": True,
                "off": _answered_right(raw, off_target, phases),
                "on": _answered_right(raw, on_target, phases),
            }
        )
    return rows


def _answered_right(raw: dict[str, Any], target: str, phases: list[str]) -> float | None:
    rounds = [r for phase in phases for r in rounds_of(raw, phase, target)]
    check = raw.get("checks", {}).get(target)
    if not rounds or check is None:
        return None
    right = all(r["reached_ok"] and r["errors"] == 0 for r in rounds)
    return float(right and check["body_identical_to_direct"] and check["stream_ok"])
