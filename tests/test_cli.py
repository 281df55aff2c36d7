"""The `meshelect` dispatcher: help, version, lazy subcommands, clear errors when one is missing."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import COMMANDS, EXIT_PIPE_CLOSED, Command, main
from agent.status import write_status
from tests.paths import REPO_ROOT

EXPECTED_COMMANDS = {
    "agent": "agent.runtime",
    "status": "agent.status",
    "gateway": "gateway.cli",
    "demo": "agent.demo",
    "replay": "agent.core.replay",
    "bench": "tools.bench.cli",
    "firmware": "tools.firmware",
    "simulate": "tools.simulate.cli",
}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_table_names_every_subcommand_and_its_module() -> None:
    assert {c.name: c.module for c in COMMANDS} == EXPECTED_COMMANDS


def test_help_lists_every_subcommand() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in EXPECTED_COMMANDS:
        assert "\n  %s " % name in result.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == "meshelect %s" % __version__


def test_console_script_matches_python_dash_m() -> None:
    script = Path(sys.executable).parent / "meshelect"
    if not script.exists():
        pytest.skip("meshelect is not installed in this environment (run scripts/setup.sh)")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout.strip()) == (0, "meshelect %s" % __version__)


def test_help_imports_no_subcommand_and_no_heavy_dependency() -> None:
    probe = textwrap.dedent(
        """
        import sys
        from agent.cli import main
        assert main(["--help"]) == 0
        heavy = ("paho", "zeroconf", "cbor2", "gateway", "starlette", "uvicorn", "asyncio")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy
                        or m in {c.module for c in __import__("agent.cli").cli.COMMANDS})
        print("LOADED", loaded)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


@pytest.mark.parametrize(("argv", "message"), [([], "required"), (["nope"], "invalid choice")])
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    result = run(*argv)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.fixture
def providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake provider modules on sys.path, to test dispatch without teammates' modules."""
    (tmp_path / "mi_echo.py").write_text(
        "import argparse\n"
        "def cli(argv):\n"
        "    parser = argparse.ArgumentParser(prog='meshelect echo')\n"
        "    parser.add_argument('--code', type=int, default=0)\n"
        "    args, rest = parser.parse_known_args(argv)\n"
        "    print('echo', rest)\n"
        "    return args.code\n"
    )
    (tmp_path / "mi_needs_dep.py").write_text(
        "import mi_third_party_lib\ndef cli(argv):\n    return 0\n"
    )
    (tmp_path / "mi_no_cli.py").write_text("x = 1\n")
    (tmp_path / "mi_interrupted.py").write_text("def cli(argv):\n    raise KeyboardInterrupt\n")
    (tmp_path / "mi_returns_none.py").write_text("def cli(argv):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


TABLE = (
    Command("echo", "mi_echo", "echo"),
    Command("dep", "mi_needs_dep", "needs a third-party module", extra="gateway"),
    Command("absent", "agent.mi_not_written_yet", "not written yet"),
    Command("nocli", "mi_no_cli", "module without cli"),
    Command("interrupted", "mi_interrupted", "Ctrl-C"),
    Command("none", "mi_returns_none", "returns None"),
)


@pytest.mark.usefixtures("providers")
def test_dispatch_passes_remaining_arguments_and_returns_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["echo", "a", "--code", "3", "b"], TABLE) == 3
    assert capsys.readouterr().out.strip() == "echo ['a', 'b']"


@pytest.mark.usefixtures("providers")
def test_subcommand_help_is_the_providers_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "--help"], TABLE) == 0  # argparse's SystemExit(0) becomes a status
    assert "usage: meshelect echo" in capsys.readouterr().out


@pytest.mark.usefixtures("providers")
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dep", "needs the Python package 'mi_third_party_lib', which is not installed "
         "(pip install 'meshelect[gateway]')"),
        ("absent", "is not available in this installation (no module agent.mi_not_written_yet)"),
        ("nocli", "is not available in this installation (mi_no_cli has no cli())"),
    ],
)  # fmt: skip
def test_unavailable_subcommand_explains_and_exits_2(
    name: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([name], TABLE) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshelect %s: this command " % name)
    assert message in err


@pytest.mark.usefixtures("providers")
def test_interrupt_and_none() -> None:
    assert main(["interrupted"], TABLE) == 130
    assert main(["none"], TABLE) == 0


def test_missing_subcommand_module_in_a_subprocess() -> None:
    """A subcommand whose module is absent fails cleanly in a real process (no traceback)."""
    probe = (
        "import sys\n"
        "from agent.cli import Command, main\n"
        "sys.exit(main(['later'], [Command('later', 'agent.mi_not_written', 'later')]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
    )
    assert result.returncode == 2
    assert "meshelect later: this command is not available" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ a reader that goes away

# The smallest pipe Linux makes (one page): a command's output beyond it waits for the reader,
# so closing the pipe after a few lines leaves the command writing into a closed pipe, as
# `meshelect ... | head -n 3` does to a longer output.
PIPE_BYTES = 4096


def read_lines_then_close(argv: list[str], lines: int = 3) -> tuple[list[str], int, str]:
    """Run ``meshelect argv`` into a one-page pipe, read ``lines`` lines and close the pipe, as
    ``head -n 3`` does; return the lines, the exit status and stderr."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    # Buffered output, as in a user's shell: unbuffered (PYTHONUNBUFFERED, which some harnesses
    # set) loses the rest of a partly written line instead of failing on it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with subprocess.Popen(
        [sys.executable, "-m", "agent", *argv],
        stdout=write_end,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    ) as proc:
        os.close(write_end)
        data = b""
        while data.count(b"\n") < lines:
            chunk = os.read(read_end, 64)  # small reads: the page is never emptied
            if not chunk:
                break
            data += chunk
        os.close(read_end)
        _, err = proc.communicate(timeout=60)
    return data.decode().splitlines()[:lines], proc.returncode, err.decode()


def assert_ends_quietly(argv: list[str]) -> None:
    full = run(*argv)
    assert full.returncode == 0, full.stderr
    # Longer than the pipe: the command is still writing when the pipe closes.
    assert len(full.stdout.encode()) > PIPE_BYTES, "output too short to test a closed pipe"
    head, status, err = read_lines_then_close(argv)
    assert len(head) == 3 and head[0] == full.stdout.splitlines()[0]
    assert (status, err) == (EXIT_PIPE_CLOSED, "")  # no BrokenPipeError traceback


def test_status_into_a_pipe_closed_after_three_lines(tmp_path: Path) -> None:
    peers = [
        {"id": "n%03d" % i, "score": 500, "battery": 900, "link": 800, "term": 3, "flags": 4,
         "age_ms": 120}
        for i in range(200)
    ]  # fmt: skip
    write_status(
        str(tmp_path),
        {"node": "me", "mesh": "m", "role": "follower", "term": 3, "leader": "n001",
         "updated": time.time(), "peers": peers, "stale_peers": [], "buffer": {}},
    )  # fmt: skip
    assert_ends_quietly(["status", "--state-dir", str(tmp_path)])
    assert_ends_quietly(["status", "--state-dir", str(tmp_path), "--json"])


def test_gateway_help_into_a_pipe_closed_after_three_lines() -> None:
    assert_ends_quietly(["gateway", "--help"])


def test_a_pipe_closed_before_the_first_write() -> None:
    """The reader gone before anything was written (``meshelect replay X | true``): the same."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    scenario = str(REPO_ROOT / "tests" / "scenarios" / "three-nodes-crash.json")
    with subprocess.Popen(
        [sys.executable, "-m", "agent", "replay", scenario],
        stdout=write_end,
        stderr=subprocess.PIPE,
    ) as proc:
        os.close(write_end)
        _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err.decode()) == (EXIT_PIPE_CLOSED, "")


def test_a_broken_pipe_that_is_not_our_output_is_an_error(tmp_path: Path) -> None:
    """Only a closed stdout or stderr ends quietly: another pipe's error keeps its traceback."""
    (tmp_path / "mi_pipe.py").write_text(
        "import os\ndef cli(argv):\n    r, w = os.pipe()\n    os.close(r)\n    os.write(w, b'x')\n"
    )
    probe = (
        "import sys\n"
        "from agent.cli import Command, main\n"
        "sys.exit(main(['pipe'], [Command('pipe', 'mi_pipe', 'a pipe of its own')]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env={**os.environ, "PYTHONPATH": "%s%s%s" % (REPO_ROOT, os.pathsep, tmp_path)},
        check=False,
    )
    assert result.returncode == 1
    assert "BrokenPipeError" in result.stderr
