"""`meshelect bench failover` over several heartbeats, `meshelect bench soak`, and the etcd
comparison: the options they take, the table they print, and short real runs (figures are
printed, never asserted)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.netns import Lab
from testkit.tools import python_env
from tools.bench import etcd, failover


def test_heartbeats_are_a_list_in_the_cores_range() -> None:
    assert failover.heartbeat_list("50,100,250") == [50, 100, 250]
    assert failover.heartbeat_list(" 100 ") == [100]
    for bad, why in (
        ("10", "heartbeat_ms"),
        ("50,x", "not an integer"),
        ("50,,100", "not an integer"),
        ("50,50", "given twice"),
        ("70000", "heartbeat_ms"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            failover.heartbeat_list(bad)


def test_the_bench_defaults_to_20_kills_and_takes_a_list() -> None:
    parser = failover.build_parser()
    args = parser.parse_args([])
    assert (args.kills, args.heartbeat_ms, args.compare) == (20, [250], None)
    args = parser.parse_args(["--heartbeat-ms", "50,100,250", "--kills", "3", "--compare", "etcd"])
    assert (args.kills, args.heartbeat_ms, args.compare) == (3, [50, 100, 250], "etcd")
    with pytest.raises(SystemExit):
        parser.parse_args(["--compare", "zookeeper"])


def test_the_suspect_time_is_a_bench_option_within_the_cores_range() -> None:
    parser = failover.build_parser()
    assert parser.parse_args([]).suspect_intervals is None
    assert failover.election_settings(None) == ""  # the agents keep the core's default
    args = parser.parse_args(["--suspect-intervals", "6"])
    assert failover.election_settings(args.suspect_intervals) == (
        "[election]\nsuspect_intervals = 6\n"
    )
    with pytest.raises(argparse.ArgumentTypeError, match=r"within 2\.\.100"):
        failover.suspect_intervals_arg("1")


def test_probes_are_a_bench_option_within_the_cores_range() -> None:
    parser = failover.build_parser()
    args = parser.parse_args([])
    assert args.probes is None and failover.election_summary(args) == "suspect after 3 heartbeats"
    args = parser.parse_args(["--probes", "3", "--suspect-intervals", "4"])
    assert failover.election_settings(args.suspect_intervals, args.probes) == (
        "[election]\nsuspect_intervals = 4\nprobes = 3\n"
    )
    assert failover.election_settings(None, 3) == "[election]\nprobes = 3\n"
    assert "and 3 unanswered probes" in failover.election_summary(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["--probes", "11"])  # election.probes: 0..10


def _row(heartbeat_ms: int, follow: list[float], **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"heartbeat_ms": heartbeat_ms, "follow": follow, "batch": follow}
    row.update(extra)
    return row


def test_the_table_has_one_line_per_heartbeat_with_its_figures() -> None:
    args = failover.build_parser().parse_args(["--heartbeat-ms", "50,250"])
    done = _row(
        50,
        [0.120, 0.140, 0.300],
        usage={1: (2.5, 30_000_000), 2: (2.9, 30_000_000)},
        frames_per_s=131.4,
        taken=100,
        stored=97,
        lost=1,
        lost_with_kill=2,
        in_flight_at_end=3,
        duplicate_arrivals=7,
    )
    failed = _row(250, [])  # no leader agreed: the row stays, with what is known
    lines = failover.table(args, [done, failed]).splitlines()
    header = lines[1].split()
    assert header[:3] == ["heartbeat", "kills", "follow"]
    fifty = lines[2].split()
    # heartbeat, kills, follow median and p99, batch median and p99, frames/s, the busiest
    # agent's CPU, taken, stored, lost (kill -9 included), arrived twice
    assert " ".join(fifty) == "50 ms 3 140 300 140 300 131 2.9% 100 97 3 7"
    assert lines[3].split()[:4] == ["250", "ms", "0", "-"]
    assert "heartbeat 50 ms: 3 readings still in flight at the end (not lost)" in lines


def test_soak_and_failover_are_bench_subcommands() -> None:
    from tools.bench.cli import SUBCOMMANDS

    assert SUBCOMMANDS["soak"][0] == "tools.bench.soak"
    assert SUBCOMMANDS["failover"][0] == "tools.bench.failover"


def test_per_frame_loss_drops_before_the_bridge_floods() -> None:
    """Per link: one rule in the forward hook (per copy); per frame: the prerouting hook."""
    lab = Lab("mq-", "10.96.0.0/24", hosts=3)
    lab._loss = {1: 10}
    lab._frame_loss = {2: 20}
    rules = lab.ruleset()  # pure: no root needed
    forward, prerouting = rules.split("chain prerouting")
    assert 'iifname "p1" numgen random mod 100 < 10 drop' in forward
    assert 'iifname "p2" numgen random mod 100 < 20 drop' in prerouting
    assert "p2" not in forward and "p1" not in prerouting


def _bench(*argv: str, timeout: float) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "bench", *argv],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.netns
@pytest.mark.slow
def test_a_short_failover_run_at_50_ms_prints_the_table() -> None:
    out = _bench(
        "failover", "--heartbeat-ms", "50", "--kills", "2", "--idle-s", "1", "--settle-s", "3",
        timeout=240,
    )  # fmt: skip
    assert "hb 50 ms kill  2:" in out, out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["heartbeat", "kills"])
    row = lines[header + 1].split()
    assert row[:3] == ["50", "ms", "2"], out  # both kills timed
    cells = dict(zip(lines[header].split()[-4:], row[-4:], strict=True))
    assert int(cells["taken"]) > 0 and cells["lost"] == "0", out  # kill -9 loses nothing


@pytest.mark.netns
@pytest.mark.slow
def test_a_short_soak_under_loss_prints_what_it_saw() -> None:
    out = _bench(
        "soak", "--heartbeat-ms", "50", "--loss", "10", "--per-frame", "--minutes", "0.1",
        "--report-s", "3", "--settle-s", "3",
        timeout=180,
    )  # fmt: skip
    assert "10% loss per frame" in out and "elections seen:" in out, out
    assert " lost 0 " in out, out


@pytest.mark.netns  # root: the bench checks for it before it looks for etcd
def test_compare_without_etcd_says_what_to_install_before_any_mesh_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "bench", "failover", "--compare", "etcd"],
        capture_output=True,
        text=True,
        env=python_env(PATH=str(tmp_path)),  # no etcd on this PATH (nor in the sbin folders)
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "etcd is not installed (apt-get install etcd-server)" in done.stderr
    assert "kill" not in done.stdout  # nothing ran


@pytest.mark.compare
@pytest.mark.slow
def test_etcd_fails_over_and_the_ratio_is_printed() -> None:
    times = etcd.failover(2, log=False)
    assert len(times) == 2 and all(t > 0 for t in times)
    text = etcd.compare(1, {"follow": [0.150]})
    assert "etcd / meshelect" in text, text
