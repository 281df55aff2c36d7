"""The results as a table (Markdown and CSV) and as plots (PNG and SVG, with matplotlib)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tools.simulate.run import Result, Summary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LIFETIMES = ("FND", "HND", "LND")
CSV_FIELDS = (
    "setup",
    "scheme",
    "nodes",
    "seeds",
    "fnd_mean",
    "fnd_sd",
    "fnd_not_reached",
    "hnd_mean",
    "hnd_sd",
    "hnd_not_reached",
    "lnd_mean",
    "lnd_sd",
    "lnd_not_reached",
    "readings_mean",
    "packets_mean",
)


def cell(summary: Summary, which: int) -> str:
    mean, sd, missing = summary.stat(which)
    if math.isnan(mean):
        return "not reached"
    text = "%.0f ± %.0f" % (mean, sd)
    if missing:
        text += " (%d of %d seeds not reached)" % (missing, len(summary.runs))
    return text


def markdown(results: Sequence[Result]) -> str:
    lines = []
    for result in results:
        setup, o = result.setup, result.options
        lines += [
            "## %s: %s" % (setup.name, setup.title),
            "",
            "%d nodes on 100 x 100 m, sink at (%g, %g), %d seeds (%s), p = %g, meshelect in "
            "%d mesh%s by position; %s."
            % (
                o.nodes,
                o.sink[0],
                o.sink[1],
                len(o.seeds),
                seed_range(o.seeds),
                o.p,
                o.meshes,
                "" if o.meshes == 1 else "es",
                result.setup.model.describe(),
            ),
            "Rounds: mean ± standard deviation over the seeds.",
            "",
            "| scheme | FND | HND | LND | readings at the sink | packets to the sink |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in result.summaries:
            lines.append(
                "| %s | %s | %s | %s | %.0f | %.0f |"
                % (s.scheme, cell(s, 0), cell(s, 1), cell(s, 2), s.mean("readings"),
                   s.mean("packets"))
            )  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def seed_range(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return "%d..%d" % (seeds[0], seeds[-1]) if len(seeds) > 1 else "%d" % seeds[0]
    return ",".join(str(s) for s in seeds)


def write_csv(results: Sequence[Result], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for result in results:
            for s in result.summaries:
                row: list[object] = [result.setup.name, s.scheme, s.n, len(s.runs)]
                for which in range(3):
                    mean, sd, missing = s.stat(which)
                    row += ["%.1f" % mean, "%.1f" % sd, missing]
                row += ["%.1f" % s.mean("readings"), "%.1f" % s.mean("packets")]
                writer.writerow(row)


def plot(result: Result, out: Path) -> list[Path]:
    """alive-SETUP and deaths-SETUP, each as PNG and SVG; returns the files written."""
    from matplotlib.figure import Figure  # the `sim` extra; imported only to plot

    name = result.setup.name
    written = []
    title = "%s: %s (%d nodes, %d seeds)" % (
        name,
        result.setup.title,
        result.options.nodes,
        len(result.options.seeds),
    )

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(result.summaries):
        curve = s.alive_curve()
        # Dashes as well as colours: schemes that coincide (LEACH and SEP on a homogeneous
        # field) stay visible.
        style = ("-", "--", "-.", ":")[i % 4]
        ax.plot(np.arange(len(curve)), curve, style, label=s.scheme, linewidth=1.4)
    ax.set_xlabel("round")
    ax.set_ylabel("live nodes (mean over seeds)")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(0, result.options.nodes * 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written += save(fig, out / ("alive-%s" % name))

    fig = Figure(figsize=(9, 5.5), layout="constrained")
    ax = fig.add_subplot()
    count = len(result.summaries)
    width = 0.8 / len(LIFETIMES)
    x = np.arange(count)
    for k, label in enumerate(LIFETIMES):
        stats = [s.stat(k) for s in result.summaries]
        means = [m for m, _, _ in stats]
        spreads = [sd for _, sd, _ in stats]
        ax.bar(x + (k - 1) * width, means, width, yerr=spreads, capsize=2, label=label)
    ax.set_xticks(x, [s.scheme for s in result.summaries], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("round (mean ± sd over seeds)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    written += save(fig, out / ("deaths-%s" % name))
    return written


def save(fig: Figure, stem: Path) -> list[Path]:
    png = stem.with_suffix(".png")
    svg = stem.with_suffix(".svg")
    fig.savefig(png, dpi=110)
    fig.savefig(svg, metadata={"Date": None})  # no timestamp: the same run, the same file
    return [png, svg]


def write_all(results: Sequence[Result], out: Path, plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    table = out / "results.md"
    table.write_text("# meshelect simulate\n\n" + markdown(results))
    data = out / "results.csv"
    write_csv(results, data)
    written = [table, data]
    if plots:
        for result in results:
            written += plot(result, out)
    return written
