"""The `meshelect` command: a thin dispatcher over subcommands provided by other modules.

Each subcommand lives in its own module, which exposes ``cli(argv: list[str]) -> int`` and does
its own argument parsing (so ``meshelect agent --help`` shows the agent's own help). The table
below names the module of each subcommand; modules are imported only when their subcommand
runs, so ``meshelect --help`` stays fast and a missing optional dependency (say, the gateway's
web stack on a Pi) breaks only the subcommand that needs it, with a message saying what to
install.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import select
import sys
from collections.abc import Callable, Sequence

from agent import __version__

# Exit status for "this subcommand cannot run here" and for usage errors (as argparse uses).
EXIT_UNAVAILABLE = 2

# Exit status when the reader of our output went away (`meshelect status | head -3`): what the
# shell reports for a tool that SIGPIPE ended (128 + 13), as for `cat` or `seq`, so a script
# with `set -o pipefail` sees the same as with them. (Python ignores SIGPIPE: a write to a closed
# pipe raises BrokenPipeError instead, which would end in a traceback.)
EXIT_PIPE_CLOSED = 141

# Our own top-level packages: a module of these that is missing is part of meshelect not being
# there (not yet written, or left out of this installation), not a third-party dependency.
FIRST_PARTY = ("agent", "gateway", "hil", "tools", "testkit")


class Command:
    """One subcommand: where its ``cli`` lives and what to install when it cannot be imported."""

    __slots__ = ("extra", "module", "name", "summary")

    def __init__(self, name: str, module: str, summary: str, extra: str | None = None) -> None:
        self.name = name
        self.module = module
        self.summary = summary
        self.extra = extra  # the pip extra that brings this command's optional dependencies


COMMANDS: tuple[Command, ...] = (
    Command("agent", "agent.runtime", "run a mesh agent (Raspberry Pi / Linux)"),
    Command("status", "agent.status", "show the mesh as a running agent sees it"),
    Command(
        "gateway", "gateway.cli", "run the gateway: ingest, storage, API, dashboard", "gateway"
    ),
    Command("demo", "agent.demo", "start a small local mesh with a gateway and dashboard", "all"),
    Command("replay", "agent.core.replay", "replay a scenario on the election core"),
    Command("bench", "tools.bench.cli", "measure election and data-path performance"),
    Command(
        "firmware",
        "tools.firmware",
        "build, flash, deploy and provision ESP32 boards",
        "micropython",
    ),
    Command(
        "simulate", "tools.simulate.cli", "compare leader rotation with LEACH, HEED, SEP", "sim"
    ),
)


def main(argv: Sequence[str] | None = None, commands: Sequence[Command] = COMMANDS) -> int:
    """Run ``meshelect`` with ``argv`` (default: the process arguments); return the exit status.

    A closed output ends the command quietly with EXIT_PIPE_CLOSED: the BrokenPipeError unwinds
    the command (its ``finally`` blocks clean up as for any error), and the stream is pointed
    at /dev/null so nothing more (the interpreter's last flush) fails on it."""
    try:
        status = dispatch(argv, commands)
        sys.stdout.flush()  # what is still buffered fails here, not at interpreter exit
    except BrokenPipeError:
        if not silence_closed_outputs():
            raise  # some other pipe or socket: a real error, with its traceback
        return EXIT_PIPE_CLOSED
    return status


def silence_closed_outputs() -> bool:
    """Point stdout and stderr at /dev/null if their reader is gone; True if one was."""
    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poller = select.poll()
            poller.register(fd, select.POLLOUT)
            events = poller.poll(0)
        except (AttributeError, OSError, ValueError):  # no real file (a test's capture): not ours
            continue
        if any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events):
            closed = True
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
    return closed


def dispatch(argv: Sequence[str] | None, commands: Sequence[Command]) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    table = {command.name: command for command in commands}
    # Dispatch by hand rather than with argparse sub-parsers: everything after the subcommand
    # name, `--help` included, belongs to the subcommand's own parser.
    if args and args[0] in table:
        return run_command(table[args[0]], args[1:])
    try:
        build_parser(commands).parse_args(args)
    except SystemExit as exit_:  # --help, --version, or a usage error (already printed)
        return exit_code(exit_.code)
    return EXIT_UNAVAILABLE  # not reached: COMMAND is required, and valid ones return above


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    listing = "\n".join("  %-10s %s" % (c.name, c.summary) for c in commands)
    parser = argparse.ArgumentParser(
        prog="meshelect",
        description="Leader election and data aggregation for IoT and edge meshes.",
        epilog="commands:\n%s\n\nRun 'meshelect COMMAND --help' for the options of a command."
        % listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version="meshelect %s" % __version__)
    parser.add_argument(
        "command", choices=[c.name for c in commands], metavar="COMMAND", help="see below"
    )
    return parser


def run_command(command: Command, argv: list[str]) -> int:
    provider = load_provider(command)
    if provider is None:
        return EXIT_UNAVAILABLE
    try:
        return exit_code(provider(argv))
    except KeyboardInterrupt:
        return 130  # the shell convention for SIGINT
    except SystemExit as exit_:  # a provider's argparse exiting on --help or a usage error
        return exit_code(exit_.code)


def load_provider(command: Command) -> Callable[[list[str]], int | None] | None:
    """Import the module of ``command`` and return its ``cli``; explain on stderr if impossible."""
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if is_part_of(missing, command.module) or missing.split(".")[0] in FIRST_PARTY:
            fail(command, "is not available in this installation (no module %s)" % missing)
        else:
            hint = " (pip install 'meshelect[%s]')" % command.extra if command.extra else ""
            fail(
                command,
                "needs the Python package %r, which is not installed%s" % (missing, hint),
            )
        return None
    except ImportError as error:
        fail(command, "could not be loaded: %s" % error)
        return None
    provider: Callable[[list[str]], int | None] | None = getattr(module, "cli", None)
    if not callable(provider):
        fail(command, "is not available in this installation (%s has no cli())" % command.module)
        return None
    return provider


def is_part_of(missing: str, module: str) -> bool:
    """True if the missing module is ``module`` itself or one of its parent packages."""
    return missing == module or module.startswith(missing + ".")


def fail(command: Command, problem: str) -> None:
    print("meshelect %s: this command %s" % (command.name, problem), file=sys.stderr)


def exit_code(code: object) -> int:
    """Map what a provider or SystemExit hands back to a process exit status."""
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message") means: print it, exit 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
