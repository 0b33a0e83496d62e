"""`python -m bench` (what `make bench` runs): the facade against the direct upstream and nginx, interleaved.

Starts the stub upstream (bench/stub_upstream.py), the facade in its shipped configuration (one worker), one more
facade per selected variant (bench/variants.py) and, when installed, nginx as a plain reverse proxy; pins the
proxy under test alone on one core and everything else (stub, wrk, the SSE client, this runner) on the other;
runs every measurement for each target in turn, round after round (the order rotates each round), so slow drifts
on a shared machine hit all targets alike. Prints the tables and writes bench/results/<UTC timestamp>.json (and
.md). See bench/README.md for what each row means.

    python -m bench            full run (a few minutes)
    python -m bench --quick    smoke run (about a minute): same rows, fewer requests; numbers are rough
    python -m bench --phases tp_c32,burst_c128   only those measurements (the other rows show "—")
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench import report
from bench.log import log
from bench.machine import machine_info, prepare, wait_quiet
from bench.measure import Recorder
from bench.pairs import pair_rows, variant_phases
from bench.plan import FULL, QUICK
from bench.procs import REPO, make_workdir
from bench.rows import table_rows
from bench.run import PHASES, Run
from bench.scenarios import Scenarios
from bench.targets import started
from bench.variants import VARIANTS, select

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["direct", "facade", "nginx"]  # fixed shape; a skipped target shows as "—"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (rough numbers)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--no-nginx", action="store_true", help="skip nginx even when installed")
    parser.add_argument("--no-facade", action="store_true", help="skip the facade (develop the bench itself)")
    parser.add_argument(
        "--variants",
        metavar="NAME,...",
        help="facade variants to measure beside the shipped config, comma-separated, or 'none' "
        f"(default: all registered: {', '.join(v.name for v in VARIANTS) or 'none'})",
    )
    parser.add_argument(
        "--phases",
        metavar="NAME,...",
        help=f"only these measurements, comma-separated (default: all: {', '.join(PHASES)})",
    )
    parser.add_argument("--soak-requests", type=int, help="requests in the soak after its warm-up segment")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON/markdown results")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for other processes to use < 0.3 cores (a shared machine)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for the runner and everything it starts (root only; 0 to leave as is). Default -10: "
        "other work on a shared machine then disturbs every target less; CPU time per request is unaffected",
    )
    args = parser.parse_args(argv)
    if args.phases is not None:
        args.phases = frozenset(name.strip() for name in args.phases.split(",") if name.strip())
        if unknown := sorted(args.phases - set(PHASES)):
            parser.error(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(PHASES)}")
    try:
        args.variants = select(args.variants)
        for variant in args.variants:
            variant_phases(variant)  # a variant naming an unknown row fails here, not after the run
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, rounds=args.rounds or plan.rounds, soak_requests=args.soak_requests or plan.soak_requests)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: run `bash scripts/install-system-packages.sh` (make install-test)", file=sys.stderr
        )
        return 2

    cores, niceness = prepare(args.nice)
    busy = wait_quiet(args.wait_quiet)
    log(f"other processes use {busy:.2f} cores right now" + (" (noisy: see the last line)" if busy > 0.3 else ""))
    workdir = make_workdir()
    started_at = dt.datetime.now(dt.UTC)
    info = machine_info(cores)
    info["niceness"] = niceness
    log(f"cores: load={cores.load} proxy={cores.proxy}; work dir {workdir}")
    begin = time.monotonic()
    with started(workdir, cores, facade=not args.no_facade, nginx=not args.no_nginx, variants=args.variants) as targets:
        recorder = Recorder(targets.stub, targets.services)
        raw = Run(Scenarios(plan, cores, recorder), targets, args.phases).run()
    elapsed = time.monotonic() - begin
    info["loadavg_end"] = os.getloadavg()

    rows = table_rows(raw, COLUMNS, plan)
    pairs = pair_rows(raw, [v.variant for v in targets.variants])
    mode = "quick" if args.quick else "full"
    title = (
        f"capibara-facade bench ({mode}, {plan.rounds} interleaved round(s), {elapsed:.0f} s) — "
        f"{info['cpu']}, {info['cpus']} cores, proxy pinned to core {cores.proxy}, load on core {cores.load}"
    )
    # The main table, the variants' pairs below it, the noise line last.
    note = report.noise_note(raw)
    table = report.render_table(rows, COLUMNS, title, targets.skipped)
    markdown = report.render_markdown(rows, COLUMNS, title, targets.skipped)
    if pairs or targets.variants_skipped:
        table += "\n\n" + report.render_pairs(pairs, targets.variants_skipped)
        markdown += "\n" + report.render_pairs(pairs, targets.variants_skipped, markdown=True)
    if note:
        table += "\n" + note
        markdown += f"\n{note}\n"
    print(table)
    result: dict[str, Any] = {
        "started": started_at.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "mode": mode,
        "plan": asdict(plan),
        "machine": info,
        "targets": [t.name for t in targets.main],
        "skipped": targets.skipped,
        "rows": rows,
        "table": table,
        "variants": [v.describe() for v in targets.variants],
        "variant_rows": pairs,
        **raw,
    }
    json_path = report.save(args.out, started_at.strftime("%Y%m%dT%H%M%SZ"), result, markdown)
    log(f"wrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
