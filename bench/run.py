"""When each target is measured: warm-up and checks, then every round phase for each target in turn, round
after round with the order rotating, then the many slow streams and the soak on a fresh facade (`--phases`
picks some of them).

Facade variants run in the round phases their rows need (and nowhere else), placed right after the shipped
facade in each phase's order, so "off" and "on" are measured seconds apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.log import log
from bench.measure import Recorder
from bench.pairs import variant_phases
from bench.plan import SLOW_DELAY_MS, STREAM_DELAY_MS
from bench.procs import Service, rss_kib
from bench.scenarios import Scenarios, sequential_spec
from bench.targets import Targets


@dataclass(frozen=True)
class Phase:
    key: str  # the phase's name in the results JSON
    description: str
    measure: Callable[[Service], object]


def rotated(targets: list[Service], round_index: int) -> list[Service]:
    shift = round_index % len(targets)
    return targets[shift:] + targets[:shift]


# Every measurement, in the order of a run (the round phases, then the slow streams and the soak): the names
# `--phases` picks from, and the keys of the results JSON's `phases`.
PHASES = ("lat_c1", "tp_c32", "tp_c128", "burst_c128", "st_c1", "st_c1_busy", "st_c32", "st_rate", "slow", "soak")


class Run:
    def __init__(self, scenarios: Scenarios, targets: Targets, phases: frozenset[str] | None = None) -> None:
        self.scenarios = scenarios
        self.phases = phases  # only these of PHASES; None: all
        self.recorder: Recorder = scenarios.recorder
        self.plan = scenarios.plan
        self.targets = targets
        self.variant_phases = {v.service.name: variant_phases(v.variant) for v in targets.variants}

    def round_phases(self) -> list[Phase]:
        plan, s = self.plan, self.scenarios
        return [
            Phase("lat_c1", "latency c=1", lambda t: s.wrk_phase("lat_c1", t, 1, plan.latency_s)),
            Phase("tp_c32", "throughput c=32", lambda t: s.wrk_phase("tp_c32", t, 32, plan.throughput_s)),
            Phase("tp_c128", "throughput c=128", lambda t: s.wrk_phase("tp_c128", t, 128, plan.throughput_s)),
            Phase("burst_c128", "128 new connections at once, after idling", s.burst_phase),
            Phase(
                "st_c1",
                "streams c=1 (20 chunks, 5 ms apart)",
                lambda t: s.stream_phase(
                    "st_c1", t, sequential_spec(1, plan.stream_c1_streams, 600.0, STREAM_DELAY_MS), 120
                ),
            ),
            # The same first token, from a core that never idles long enough to go cold (see README).
            Phase(
                "st_c1_busy",
                "streams c=1 (20 chunks, back to back)",
                lambda t: s.stream_phase(
                    "st_c1_busy", t, sequential_spec(1, plan.stream_c1_busy_streams, 600.0, 0.0), 120
                ),
            ),
            Phase(
                "st_c32",
                "streams c=32 (20 chunks, 5 ms apart)",
                lambda t: s.stream_phase(
                    "st_c32", t, sequential_spec(32, 10**7, plan.stream_c32_s, STREAM_DELAY_MS), plan.stream_c32_s + 90
                ),
            ),
            Phase(
                "st_rate",
                "streams c=32 (20 chunks, back to back)",
                lambda t: s.stream_phase(
                    "st_rate", t, sequential_spec(32, 10**7, plan.stream_rate_s, 0.0), plan.stream_rate_s + 90
                ),
            ),
        ]

    def wanted(self, phase: str) -> bool:
        return self.phases is None or phase in self.phases

    def in_phase(self, phase: str) -> list[Service]:
        """The targets a phase measures: direct, facade, nginx, with the variants that need it after the facade."""
        variants = [v.service for v in self.targets.variants if phase in self.variant_phases[v.service.name]]
        out: list[Service] = []
        for target in self.targets.main:
            out.append(target)
            if target.name == "facade":
                out.extend(variants)
        return out

    def run(self) -> dict[str, Any]:
        plan, recorder = self.plan, self.recorder
        variants = [v.service for v in self.targets.variants]
        everyone = [*self.targets.main, *variants]
        self.scenarios.check(everyone)
        for target in everyone:
            if target.measured_pid:
                recorder.idle_rss_kib[target.name] = rss_kib(target.measured_pid)[0]
            log(f"warm-up {target.name}")
            self.scenarios.warm_up(target)

        for round_index in range(plan.rounds):
            for phase in self.round_phases():
                if not self.wanted(phase.key):
                    continue
                for target in rotated(self.in_phase(phase.key), round_index):
                    log(f"round {round_index + 1}/{plan.rounds} {target.name}: {phase.description}")
                    phase.measure(target)
        for service in variants:  # done: the phases below see the same machine as without variants
            service.stop()
        # After the rounds above, so the heap they leave behind does not colour their RSS rows.
        for round_index in range(plan.slow_rounds if self.wanted("slow") else 0):
            for target in rotated(self.targets.main, round_index):
                log(
                    f"round {round_index + 1}/{plan.slow_rounds} {target.name}: "
                    f"{plan.slow_streams} concurrent slow streams ({SLOW_DELAY_MS:g} ms apart)"
                )
                self.scenarios.slow_phase(target)
        for target in everyone:
            if target.measured_pid and target.alive():
                recorder.peak_rss_kib[target.name] = max(
                    recorder.peak_rss_kib.get(target.name, 0), rss_kib(target.measured_pid)[1]
                )
        soak = self.soak() if self.wanted("soak") else None
        return {
            "phases": recorder.phases,
            "soak": soak,
            "peak_rss_kib": recorder.peak_rss_kib,
            "idle_rss_kib": recorder.idle_rss_kib,
            "checks": recorder.checks,
        }

    def soak(self) -> dict[str, Any] | None:
        facade = self.targets.facade
        if facade is None:
            return None
        # A fresh process: a heap already grown by the earlier phases (1,000 streams) could hide a slow leak in
        # its free space; a new one shows every byte it keeps.
        facade.stop()
        log(f"facade (fresh process): soak of >= {self.plan.soak_requests:,} requests (c=32)")
        return self.scenarios.soak(self.targets.fresh_facade())
