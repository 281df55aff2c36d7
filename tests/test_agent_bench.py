"""The agent benches' plumbing: the real gateway as the failover bench's sink (a real
`python -m gateway` on loopback), the idle bench's agent config, the status file's
skip-unchanged rule."""

from __future__ import annotations

import time
from pathlib import Path

from agent.config import from_dict, load_config
from agent.core.messages import ACK_OK
from agent.status import settled_view
from testkit.gateway import BatchSender, GatewayProcess, make_batch
from tools.bench.idle import idle_agent_toml
from tools.bench.realgateway import DEDUP_METRIC, gateway_records


def test_gateway_records_come_from_the_real_gateways_database(tmp_path: Path) -> None:
    db = str(tmp_path / "gw.db")
    with GatewayProcess(db) as gateway:
        sender = BatchSender("bench", "n1", gateway.udp)
        readings = [["n2", 3, seq, 1_700_000_000_000 + seq, {"t": seq}] for seq in (1, 2, 3)]
        before = time.time()
        assert sender.deliver(4, make_batch(7, "bench", "n1", readings)) == [7, ACK_OK, 4]
        assert sender.deliver(4, make_batch(7, "bench", "n1", readings)) == [7, ACK_OK, 4]
        sender.close()
        records = gateway_records(db, "bench")
    batches = [r for r in records if r["leader"] == "n1"]
    assert len(batches) == 1  # the resent batch is stored once
    assert batches[0]["status"] == ACK_OK and batches[0]["term"] == 4
    assert before - 1 <= batches[0]["wall"] <= time.time() + 1  # the gateway's wall clock
    stored = next(r for r in records if r["leader"] is None)["readings"]
    assert sorted(stored) == [["n2", 3, 1], ["n2", 3, 2], ["n2", 3, 3]]
    assert gateway_records(db, "other-mesh") == [
        {"event": "batch", "leader": None, "wall": 0, "readings": []}
    ]
    assert gateway_records(str(tmp_path / "absent.db"), "bench") == []


def test_dedup_metric_line_is_recognised() -> None:
    match = DEDUP_METRIC.match("meshelect_gateway_dedup_hits_total 20.0")
    assert match is not None and match.group(1) == "20.0"
    assert DEDUP_METRIC.match("meshelect_gateway_dedup_hits_created 1.7e9") is None


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
