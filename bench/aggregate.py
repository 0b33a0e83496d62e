"""Per-round numbers out of the run's results (phase -> target -> one measurement per round), and their median.

Lists keep one entry per round, in round order, so two targets' lists pair up round by round."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def rounds_of(raw: dict[str, Any], phase: str, target: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = raw["phases"].get(phase, {}).get(target, [])
    return found


def per_round(raw: dict[str, Any], phase: str, target: str, key: str) -> list[float | None]:
    return [r.get(key) for r in rounds_of(raw, phase, target)]


def added_per_round(raw: dict[str, Any], phase: str, target: str, key: str) -> list[float | None]:
    """target - direct, round by round."""
    mine = rounds_of(raw, phase, target)
    base = rounds_of(raw, phase, "direct")
    return [m[key] - b[key] for m, b in zip(mine, base, strict=False)]


def chunk_cpu_per_round(raw: dict[str, Any], target: str) -> list[float | None]:
    """The cost of a stream beyond a plain request's, per forwarded chunk (same round, same c=32)."""
    streams = rounds_of(raw, "st_c32", target)
    requests = rounds_of(raw, "tp_c32", target)
    return [
        (s["cpu_per_stream_us"] - r["cpu_per_req_us"]) / s["chunks"]
        if "cpu_per_stream_us" in s and "cpu_per_req_us" in r
        else None
        for s, r in zip(streams, requests, strict=False)
    ]


def median_of(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None
