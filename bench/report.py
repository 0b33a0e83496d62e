"""How the results are shown and kept: the main table and the variants' pairs as text (stdout) and markdown,
the line on machine noise, and the result files bench/results/<UTC timestamp>.json and .md."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

PAIRS_TITLE = (
    "facade variants: off = the shipped facade above, on = the variant, measured in the same interleaved rounds; "
    "on - off and on/off are medians of the per-round values"
)


def _number(value: float | None, fmt: str, sign: bool) -> str:
    if value is None:
        return "—"
    text = fmt.format(value)
    return "+" + text if sign and value >= 0 else text


def _yes_no(value: float | None) -> str:
    return "—" if value is None else ("yes" if value else "NO")


def _cell(entry: dict[str, Any], value: float | None) -> str:
    if entry["fmt"] == "{:.0f}" and entry["unit"] == "" and entry["metric"].startswith(("every", "non-stream")):
        return _yes_no(value)
    return _number(value, entry["fmt"], entry.get("sign", False))


def _cells(rows: list[dict[str, Any]], targets: list[str]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "unit", *targets, "facade target", "ok", "facade/direct"]
    body = []
    for entry in rows:
        ok = entry.get("ok")
        body.append(
            [
                entry["metric"],
                entry["unit"],
                *(_cell(entry, entry["values"].get(t)) for t in targets),
                entry.get("target", ""),
                "" if "target" not in entry else ("—" if ok is None else ("✓" if ok else "✗")),
                f"{entry['ratio']:.2f}x" if entry.get("ratio") is not None else "",
            ]
        )
    return header, body


def _pair_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "unit", "off", "on", "on - off", "on/off"]
    body = []
    for entry in rows:
        if entry.get("yes_no"):
            values = [_yes_no(entry["off"]), _yes_no(entry["on"]), "", ""]
        else:
            fmt, sign = entry["fmt"], entry["sign"]
            ratio = entry["ratio"]
            values = [
                _number(entry["off"], fmt, sign),
                _number(entry["on"], fmt, sign),
                _number(entry["diff"], fmt, True),
                "—" if ratio is None else f"{ratio:.2f}x",
            ]
        body.append([entry["metric"], entry["unit"], *values])
    return header, body


def _text(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    right = set(range(2, len(header)))

    def fmt(line: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()

    out = [title, fmt(header), "  ".join("-" * w for w in widths)]
    out += [fmt(line) for line in body]
    out += [f"({note})" for note in notes]
    return "\n".join(out)


def _markdown(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    out = [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in body]
    out += ["", *(f"_{note}_" for note in notes)]
    return "\n".join(out) + "\n"


def _skipped(skipped: dict[str, str]) -> list[str]:
    return [f"{name} skipped: {why}" for name, why in skipped.items()]


def render_table(rows: list[dict[str, Any]], targets: list[str], title: str, skipped: dict[str, str]) -> str:
    return _text(title, *_cells(rows, targets), _skipped(skipped))


def render_markdown(rows: list[dict[str, Any]], targets: list[str], title: str, skipped: dict[str, str]) -> str:
    return _markdown(title, *_cells(rows, targets), _skipped(skipped))


def render_pairs(rows: list[dict[str, Any]], skipped: str, markdown: bool = False) -> str:
    """The variants' table, or why they did not run."""
    if not rows:
        note = f"facade variants skipped: {skipped}"
        return f"_{note}_\n" if markdown else f"({note})"
    return (_markdown if markdown else _text)(PAIRS_TITLE, *_pair_cells(rows), [])


def noise_note(raw: dict[str, Any]) -> str:
    """One line on how busy the machine was with other work while we measured."""
    entries = [
        (phase, target, r)
        for phase, per_target in raw["phases"].items()
        for target, rounds in per_target.items()
        for r in rounds
        if "foreign_cores" in r
    ]
    if not entries:
        return ""
    mean = statistics.mean(r["foreign_cores"] for _, _, r in entries)
    phase, target, worst = max(entries, key=lambda e: e[2]["foreign_cores"])
    steal = max(r.get("steal_cores", 0.0) for _, _, r in entries)
    text = (
        f"Other processes on the machine during measurements: mean {mean:.2f} cores, max "
        f"{worst['foreign_cores']:.2f} ({phase}/{target}); max VM steal {steal:.2f} cores."
    )
    if worst["foreign_cores"] > 0.25:
        text += " The machine was shared: latencies are noisy; CPU per request (from /proc) is the robust number."
    return text


def save(out: Path, stamp: str, result: dict[str, Any], markdown: str) -> Path:
    """Write <out>/<stamp>.json (everything) and .md (the tables); returns the JSON's path."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    (out / f"{stamp}.md").write_text(markdown)
    return json_path
