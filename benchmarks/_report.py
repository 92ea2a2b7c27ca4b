"""The outputs: one printed table, docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from _common import COLUMNS, Chart, Row, Section, machine, versions

HEADINGS = {"reference": "reference"}


def _all_rows(sections: Sequence[Section]) -> list[Row]:
    return [row for section in sections for row in section.rows]


def text_table(sections: Sequence[Section]) -> str:
    """The final table as aligned plain text."""
    header = ["scenario", "measure", *COLUMNS]
    lines = [[_short(r.scenario), r.measure, *(r.values.get(c, "") for c in COLUMNS)]
             for r in _all_rows(sections)]  # fmt: skip
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=False)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


def _short(title: str) -> str:
    return title.split(":", 1)[0]


def markdown(
    sections: Sequence[Section],
    *,
    started: datetime,
    elapsed: float,
    quick: bool,
    argv: str,
    load: str,
) -> str:
    """The whole report as Markdown: machine, table, parameters, notes, how to reproduce."""
    m = machine()
    stamp = started.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks: genesys-token against its peers",
        "",
        "Measured side by side in one run of `make bench` (all servers on loopback).",
        *(["", "**This is a `--quick` smoke run: the numbers mean nothing.**"] if quick else []),
        "",
        f"- Date: {stamp} (run took {elapsed:.0f} s)",
        f"- Machine: {m['cores']} cores, {m['cpu']}, {m['python']}, {m['os']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- Command: `{argv}`",
        f"- Load average (1 min) at start / end: {load}; anything else running on the "
        "machine slows every subject, which is why subjects are interleaved and compared "
        "by ratio",
        "",
        "![benchmark chart](benchmarks.png)",
        "",
        "## Results",
        "",
        "| scenario | measure | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in _all_rows(sections):
        cells = [row.values.get(c, "") for c in COLUMNS]
        lines.append(f"| {_short(row.scenario)} | {row.measure} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Reference column: the hot path's floor is a function that only compares "
        "`time.monotonic()` with an expiry; the auth overhead's is the same session with a "
        "fixed `Authorization` header. The seed port is a straight Python port of the "
        "TypeScript tutorial this project started from, defects included "
        "(`benchmarks/seed_port.py` lists them): a baseline, not a library.",
        "",
        "Set-up common to all scenarios: the Genesys emulator (`genesys_token.testing`) and "
        "the minimal token server run in their own process (the client under test gets a "
        "core of its own, as with a remote Genesys) with `TCP_NODELAY` on, over loopback. "
        "The emulator issues JWTs throughout because the seed port rejects opaque tokens, "
        "which is what Genesys really issues; the other peers work with either. authlib and "
        "requests-auth are used as their documentation shows, with their early-refresh "
        "window set like the others' where tokens are short (their defaults, 60 s and 30 s, "
        "would refresh on every call with 2-second tokens).",
        "",
        "## Scenarios and parameters",
    ]
    for section in sections:
        lines += ["", f"### {section.title}", ""]
        lines += [f"- {key}: {value}" for key, value in section.params.items()]
        lines += [f"- Note: {note}" for note in section.notes]
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "make bench            # builds .venv if needed, installs '.[bench]' (authlib,",
        "                      # requests-auth, matplotlib, psutil), runs every scenario,",
        "                      # prints the table and rewrites docs/benchmarks.md and .png",
        ".venv/bin/python benchmarks/run.py --quick --out /tmp/bench   # a fast smoke run",
        "```",
        "",
        "Nothing is asserted about time: `make bench` fails only when a scenario crashes. "
        "Medians are over the repeats given per scenario; expect a few percent of noise "
        "between runs on a shared machine.",
        "",
    ]
    return "\n".join(lines)


def chart(sections: Sequence[Section], path: Path, *, subtitle: str) -> None:
    """Draw every scenario's panel into one PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[Chart] = [c for section in sections for c in section.charts]
    cols = 3
    rows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    colours = {"genesys-token": "#2a7ab9", "seed port": "#c0504d"}
    for ax, panel in zip(axes.flat, panels, strict=False):
        bar_colours = [colours.get(label.split("\n")[0], "#8c8c8c") for label in panel.labels]
        bars = ax.bar(panel.labels, panel.values, color=bar_colours)
        if panel.log and any(v > 0 for v in panel.values):
            ax.set_yscale("symlog", linthresh=1)
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.ylabel)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        for bar, value in zip(bars, panel.values, strict=True):
            ax.annotate(f"{value:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"genesys-token vs peers: {subtitle}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
