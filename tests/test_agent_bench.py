"""The benches' plumbing: what the real gateway stored, read back from its database and
/metrics; the idle bench's agent config; the status file's skip-unchanged rule; the bench
subcommands' help; a bench beside a test run (their namespace labs stay apart)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agent.config import from_dict, load_config
from agent.core.messages import ACK_FENCED, ACK_OK
from agent.status import settled_view
from testkit.gateway import (
    BatchSender,
    GatewayProcess,
    accepted_batches,
    make_batch,
    parse_counters,
    stored_readings,
)
from testkit.meshlab import DEFAULT_PREFIX
from testkit.netns import Lab, run_tag
from testkit.tools import python_env
from testkit.waiting import poll_until
from tools.bench import failover
from tools.bench.cli import SUBCOMMANDS, cli
from tools.bench.idle import idle_agent_toml


def test_the_gateways_database_tells_what_it_accepted_and_stored(tmp_path: Path) -> None:
    db = str(tmp_path / "gw.db")
    with GatewayProcess(db) as gateway:
        sender = BatchSender("bench", "n1", gateway.udp)
        readings = [["n2", 3, seq, 1_700_000_000_000 + seq, {"t": seq}] for seq in (1, 2, 3)]
        before = time.time()
        assert sender.deliver(4, make_batch(7, "bench", "n1", readings)) == [7, ACK_OK, 4]
        assert sender.deliver(4, make_batch(7, "bench", "n1", readings)) == [7, ACK_OK, 4]
        assert sender.deliver(3, make_batch(8, "bench", "n1", readings)) == [8, ACK_FENCED, 4]
        sender.close()
        batches = accepted_batches(db, "bench")
        stored = stored_readings(db, "bench")
        counters = parse_counters(httpx.get(gateway.url + "/metrics", timeout=10).text)
    assert len(batches) == 1  # the resent batch is stored once, the fenced one not at all
    assert (batches[0]["leader"], batches[0]["term"], batches[0]["id"]) == ("n1", 4, 7)
    assert before - 1 <= batches[0]["wall"] <= time.time() + 1  # the gateway's wall clock
    assert stored == {("n2", 3): {1, 2, 3}}
    # Every reading of an accepted batch was either stored now or counted as a duplicate (a
    # slow ack may make the sender resend, so the exact numbers may be higher than 6 and 3).
    received = counters["meshelect_gateway_readings_received_total"]
    assert counters["meshelect_gateway_dedup_hits_total"] >= 3
    assert received == 3 + counters["meshelect_gateway_dedup_hits_total"]
    assert accepted_batches(db, "other-mesh") == [] and stored_readings(db, "other-mesh") == {}
    assert accepted_batches(str(tmp_path / "absent.db"), "bench") == []
    assert stored_readings(str(tmp_path / "absent.db"), "bench") == {}


def test_metrics_samples_are_parsed_with_their_labels() -> None:
    text = (
        "# HELP meshelect_gateway_dedup_hits_total Readings already stored.\n"
        "meshelect_gateway_dedup_hits_total 20.0\n"
        'meshelect_gateway_batches_total{transport="udp",status="ok"} 3.0\n'
        "meshelect_gateway_dedup_hits_created 1.7e+09\n"
        "not a sample\n"
    )
    assert parse_counters(text) == {
        "meshelect_gateway_dedup_hits_total": 20.0,
        'meshelect_gateway_batches_total{transport="udp",status="ok"}': 3.0,
        "meshelect_gateway_dedup_hits_created": 1.7e9,
    }


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_bench_has_its_own_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli([name, "--help"])
    assert exit_.value.code == 0
    assert "meshelect bench %s" % name in capsys.readouterr().out


def test_a_bench_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mi_bench_probe.py").write_text("import mi_no_such_web_stack\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "probe", ("mi_bench_probe", "a probe", "gateway"))
    assert cli(["probe"]) == 2
    err = capsys.readouterr().err
    assert "'mi_no_such_web_stack'" in err and "meshelect[gateway]" in err


def test_bench_without_a_subcommand_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([]) == 2
    listed = capsys.readouterr().err
    assert all("  %s " % name in listed for name in SUBCOMMANDS)


def test_idle_agents_keep_the_default_settings(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(idle_agent_toml("n1", "m", str(tmp_path), "mqtt", 40000, "127.0.0.1:1884"))
    cfg = load_config(str(path))
    defaults = from_dict({})
    for name in ("heartbeat_ms", "status_ms", "sample_ms", "discovery", "buffer_capacity"):
        assert getattr(cfg, name) == getattr(defaults, name), name
    assert [s.type for s in cfg.sensors] == [s.type for s in defaults.sensors]
    assert cfg.mqtt.broker == ("127.0.0.1", 1884)


def test_status_is_rewritten_only_for_changes_that_matter() -> None:
    def status(clock_ms: int, age_ms: int, sent: int, role: str, term: int) -> dict[str, object]:
        return {
            "updated": clock_ms / 1000,
            "clock_ms": clock_ms,
            "role": role,
            "term": term,
            "peers": [{"id": "b", "score": 500, "age_ms": age_ms}],
            "stats": {"sent": sent, "frames_in": sent, "loop_turns": sent, "terms_started": 1},
            "transport": {"transport": "udp", "sent": sent, "received": sent},
        }

    base = settled_view(status(1000, 10, 5, "member", 1))
    assert settled_view(status(1500, 240, 9, "member", 1)) == base  # only moving figures
    assert settled_view(status(1500, 240, 9, "leader", 1)) != base
    assert settled_view(status(1500, 240, 9, "member", 2)) != base


def _namespaces(prefix: str) -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.startswith(prefix)}


@pytest.mark.netns
@pytest.mark.slow
def test_a_bench_and_a_test_run_side_by_side_leave_each_others_labs_alone() -> None:
    """`meshelect bench failover` while a test's lab with the very same prefix is open: the
    bench's lab opening does not remove the test's namespaces or kill its processes, the
    test's lab closing does not touch the bench's, and the bench completes its kill."""
    assert failover.LAB_PREFIX != DEFAULT_PREFIX  # and even with one prefix, as below:
    ours = Lab(failover.LAB_PREFIX, "10.94.0.0/24", hosts=1).open()
    try:
        sleeper = ours.run(1, ["sleep", "600"])
        bench = subprocess.Popen(
            [sys.executable, "-m", "agent", "bench", "failover", "--agents", "2", "--kills",
             "1", "--idle-s", "0.5", "--settle-s", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=python_env(),
        )  # fmt: skip
        theirs = "%s%s-" % (failover.LAB_PREFIX, run_tag(bench.pid))
        assert poll_until(lambda: _namespaces(theirs), 60), bench.communicate(timeout=60)
        assert {ours.ns(1), ours.run_prefix + "br"} <= _namespaces(ours.run_prefix)
        assert sleeper.poll() is None  # the bench's lab left ours alone
    finally:
        ours.close()
    assert _namespaces(theirs)  # ours closed, the bench's lab still stands
    output, _ = bench.communicate(timeout=120)
    assert bench.returncode == 0, output
    assert "kill  1: n1 -> n2" in output and "failover over udp, 2 agents" in output, output
    assert not _namespaces(theirs) and not _namespaces(ours.run_prefix)
