"""`meshelect bench SUBCOMMAND ...`: measurements, each in its own module, imported on demand.

    meshelect bench core      the election core on the in-memory mesh (simulated time)
    meshelect bench failover  agents in network namespaces, the real gateway, kill -9 the leader
    meshelect bench restart   agents in network namespaces, the real gateway, kill -9 them all
    meshelect bench soak      agents in network namespaces under packet loss: elections seen
    meshelect bench idle      CPU and memory of idle agents with default settings (loopback)
    meshelect bench gateway   the gateway's ingest throughput and live-feed delay

Each module has ``cli(argv) -> int`` and its own ``--help``. They print figures; none asserts a
timing (the tests run them only to see that they work).
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with cli(argv), summary, the extra its third-party imports come with)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "core": (
        "tools.bench.core",
        "the election core on the in-memory mesh: 10/100/1000 nodes",
        "",
    ),
    "failover": (
        "tools.bench.failover",
        "kill the leader of a real mesh M times; failover figures",
        "gateway",
    ),
    "restart": (
        "tools.bench.restart",
        "whole-site power cuts of a real mesh R times; restart-to-stored-batch figures",
        "gateway",
    ),
    "soak": (
        "tools.bench.soak",
        "a real mesh under steady packet loss for minutes; elections and suspicions seen",
        "gateway",
    ),
    "idle": (
        "tools.bench.idle",
        "CPU and memory of idle agents with default settings (loopback)",
        "gateway",
    ),
    "gateway": (
        "tools.bench.gateway",
        "gateway ingest throughput, dedup cost, live-feed delay",
        "gateway",
    ),
}


def cli(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print("usage: meshelect bench {%s} ..." % ",".join(sorted(SUBCOMMANDS)), file=sys.stderr)
        for name in sorted(SUBCOMMANDS):
            print("  %-10s %s" % (name, SUBCOMMANDS[name][1]), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    name = argv[0]
    module_name, _summary, extra = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = " (pip install 'meshelect[%s]')" % extra if extra else ""
        print(
            "meshelect bench %s: needs the Python package %r%s" % (name, exc.name, hint),
            file=sys.stderr,
        )
        return 2
    return int(module.cli(argv[1:]))


if __name__ == "__main__":
    sys.exit(cli())
