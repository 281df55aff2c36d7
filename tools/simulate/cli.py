"""The ``meshelect simulate`` command."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tools.simulate.field import MAX_NODES
from tools.simulate.report import markdown, write_all
from tools.simulate.run import SCHEMES, SETUPS, Options, make_setup, simulate

DESCRIPTION = """\
Simulate a wireless sensor field round by round and compare how long it lives with
meshelect's leader rotation (the real core's score and handoff rule) and with the clustering
literature's schemes: direct transmission, a static aggregator, LEACH, HEED and SEP. Every
scheme runs on the same node positions for each seed. Reports first, half and last node death
(FND/HND/LND, mean and spread over the seeds) and the data delivered, as a table (Markdown and
CSV) and as plots (PNG and SVG) in --out.

setups:
  leach         first-order radio model, 100 x 100 m, sink at (50, 50), E0 = 0.5 J, 4000-bit
                packets (the setup most comparisons share)
  sep           the same with --advanced nodes holding 1 + --alpha times the energy
  esp32         ESP32 data-sheet currents, every node awake in modem sleep (meshelect today)
  esp32-sleepy  ESP32, members deep-sleep between readings, aggregators stay awake
"""

EPILOG = """\
schemes: %s.
The model and its choices are described in docs/simulate.md. The defaults take a few
minutes on one core; try --seeds 3 --setups leach for a quick look.
""" % ", ".join(SCHEMES)


# Options that map one to one onto run.Options fields: (flag, type, help; the default is added).
TUNING = (
    ("--nodes", int, "nodes on the field"),
    ("--meshes", int, "meshelect: meshes by position, a square number; one leader each"),
    ("-p", float, "share of cluster heads: LEACH/SEP p, HEED's C_prob"),
    ("--advanced", float, "sep: share m of advanced nodes"),
    ("--alpha", float, "sep: advanced nodes hold 1 + alpha times E0"),
    ("--e0", float, "first-order model: initial energy, J"),
    ("--battery-mah", float, "esp32: battery"),
    ("--sleepy-battery-mah", float, "esp32-sleepy: battery (small, so few rounds; lifetimes scale with it)"),
    ("--round-s", float, "esp32: seconds per round"),
    ("--heed-range", float, "HEED's cluster range, m"),
    ("--max-rounds", int, "stop a run after this many rounds"),
)  # fmt: skip


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshelect simulate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = Options()
    add = parser.add_argument
    # fmt: off
    add("--setups", default=",".join(SETUPS), metavar="LIST", help="comma-separated (default: all)")
    add("--schemes", default=",".join(SCHEMES), metavar="LIST", help="comma-separated (default: all)")
    add("--seeds", type=int, default=20, metavar="N", help="seeds per setup (default 20)")
    add("--first-seed", type=int, default=1, metavar="N", help="seeds count from here (default 1)")
    for flag, kind, text in TUNING:
        default = getattr(defaults, dest(flag))
        metavar = "N" if kind is int else "X"
        add(flag, type=kind, default=default, metavar=metavar, help="%s (default %g)" % (text, default))
    add("--sink", type=point, default=defaults.sink, metavar="X,Y", help="the sink's position, m (default 50,50; the field is 100 x 100 m)")
    add("--out", type=Path, default=Path("simulate-out"), metavar="DIR", help="folder for the table and plots (default ./simulate-out)")
    add("--no-plots", action="store_true", help="write the table only (no matplotlib needed)")
    add("-q", "--quiet", action="store_true", help="no progress on stderr")
    # fmt: on
    return parser


def point(text: str) -> tuple[float, float]:
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected X,Y in metres, e.g. 50,175") from None
    return x, y


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setups = split(args.setups)
    for name in setups:
        if name not in SETUPS:
            parser.error("unknown setup %r (choose from %s)" % (name, ", ".join(SETUPS)))
    schemes = split(args.schemes)
    for name in schemes:
        if name not in SCHEMES:
            parser.error("unknown scheme %r (choose from %s)" % (name, ", ".join(SCHEMES)))
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if not 1 <= args.nodes <= MAX_NODES:
        parser.error("--nodes must be within 1..%d" % MAX_NODES)
    if args.meshes < 1 or int(args.meshes**0.5 + 0.5) ** 2 != args.meshes:
        parser.error("--meshes must be a square number (1, 4, 9, ...)")
    if not 0 < args.p <= 1:
        parser.error("-p must be within (0, 1]")
    if not 0 <= args.advanced <= 1 or args.alpha < 0:
        parser.error("--advanced must be within 0..1 and --alpha at least 0")
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        parser.error("plots need matplotlib: pip install 'meshelect[sim]', or use --no-plots")
    options = Options(
        seeds=tuple(range(args.first_seed, args.first_seed + args.seeds)),
        schemes=tuple(schemes),
        sink=args.sink,
        **{dest(flag): getattr(args, dest(flag)) for flag, _, _ in TUNING},
    )
    started = time.monotonic()

    def progress(text: str) -> None:
        if not args.quiet:
            print("[%6.1f s] %s" % (time.monotonic() - started, text), file=sys.stderr, flush=True)

    results = []
    for name in setups:
        setup = make_setup(name, options)
        progress("%s: %s, %d schemes x %d seeds" % (name, setup.title, len(schemes), args.seeds))
        results.append(simulate(setup, options, progress))
    written = write_all(results, args.out, plots=not args.no_plots)
    print(markdown(results))
    progress("wrote %s" % ", ".join(str(p) for p in written))
    return 0


def cli(argv: list[str]) -> int:
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
