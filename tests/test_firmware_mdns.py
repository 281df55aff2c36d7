"""The firmware's mDNS/DNS-SD (firmware/lib/mdns.py) against real python-zeroconf, across two
network namespaces: zeroconf's browser finds and resolves the firmware node (same service type
and TXT as the Pi agent), and the firmware's browser finds zeroconf's gateway and broker.
A name-compression loop sent at the responder is dropped, counted, and the node keeps
answering. The same code is also checked on CPython, where python-zeroconf builds the packets it
receives and decodes the packets it sends."""

from __future__ import annotations

import importlib.util
import json
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from zeroconf import (
    DNSAddress,
    DNSIncoming,
    DNSOutgoing,
    DNSPointer,
    DNSQuestion,
    DNSService,
    DNSText,
)
from zeroconf import const as zc_const

from testkit.mpy import micropython_env
from testkit.netns import Lab
from testkit.tools import require_tool
from tests.paths import MPY_SCRIPTS, REPO_ROOT


def _load_firmware_module(name: str) -> Any:
    """``firmware/lib/<name>.py`` by path (pure Python: the board's code runs on CPython too)."""
    spec = importlib.util.spec_from_file_location(
        "firmware_lib_" + name, REPO_ROOT / "firmware" / "lib" / (name + ".py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mdns = _load_firmware_module("mdns")

PREFIX = "mf-"
SUBNET = "10.94.0.0/24"
WAIT_S = 15.0

ZEROCONF_SIDE = r"""
import json, socket, sys, time
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, Zeroconf

ip, seconds = sys.argv[1], float(sys.argv[2])
register = sys.argv[3] == "register"
zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
for stype, name, port in () if not register else (("_meshelect-gw._udp.local.", "gw-1", 47471),
                          ("_mqtt._tcp.local.", "broker-1", 1884)):
    zc.register_service(ServiceInfo(stype, "%s.%s" % (name, stype),
        addresses=[socket.inet_aton(ip)], port=port, properties={"role": name},
        server="%s.local." % name))
print("registered", flush=True)

class Listener:
    def add_service(self, zc, stype, name):
        info = zc.get_service_info(stype, name, timeout=3000)
        if info is None:
            print("unresolved", name, flush=True)
            return
        props = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
        print("found", json.dumps({"name": name, "addresses": info.parsed_addresses(),
                                   "port": info.port, "server": info.server,
                                   "txt": props}), flush=True)
    def update_service(self, zc, stype, name):
        pass
    def remove_service(self, zc, stype, name):
        print("removed", name, flush=True)

ServiceBrowser(zc, "_meshelect._udp.local.", Listener())
time.sleep(seconds)
zc.close()
print("closed", flush=True)
"""

LOOP_SENDER = r"""
import socket, sys, time
ip = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
head = b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00"
packets = [
    head + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x02\xc0\x0c",   # name points at itself
    head + b"\x01a\xc0\x10\x01b\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x78\x00\x04\x01\x02\x03\x04",
    b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x0c\x00\x01",  # query loop
]
for p in packets:
    s.sendto(p, ("224.0.0.251", 5353))
print("sent", len(packets), flush=True)
"""


def reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for(lines: queue.Queue[str], match: Callable[[str], bool], seen: list[str]) -> str:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.1)
        except queue.Empty:
            continue
        seen.append(line)
        if match(line):
            return line
    raise AssertionError("not seen; output:\n" + "\n".join(seen))


@pytest.mark.netns
@pytest.mark.micropython
def test_firmware_and_zeroconf_find_each_other(
    lab_factory: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = lab_factory(prefix=PREFIX, subnet=SUBNET, hosts=2)
    exe = require_tool("micropython")
    fw_ip, zc_ip = lab.address(1), lab.address(2)
    fw = lab.run(
        1,
        [
            "env",
            "MICROPYPATH=" + micropython_env([REPO_ROOT / "firmware" / "lib"])["MICROPYPATH"],
            exe,
            str(MPY_SCRIPTS / "fw_mdns_node.py"),
            fw_ip,
            "10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )
    fw_lines = reader(fw)
    fw_seen: list[str] = []
    wait_for(fw_lines, lambda line: line == "ready", fw_seen)
    script = tmp_path / "zc_side.py"
    script.write_text(ZEROCONF_SIDE)
    zc = lab.run(
        2,
        [sys.executable, str(script), zc_ip, "6", "register"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    zc_lines = reader(zc)
    zc_seen: list[str] = []

    # python-zeroconf's browser resolves the firmware node: SRV port, A address, the TXT keys.
    found = wait_for(zc_lines, lambda line: line.startswith("found "), zc_seen)
    info = json.loads(found[len("found ") :])
    assert info["name"] == "lab-fw-1._meshelect._udp.local."
    assert info["addresses"] == [fw_ip]
    assert info["port"] == 47470
    assert info["server"] == "meshelect-lab-fw-1.local."
    assert info["txt"] == {
        "mesh": "lab",
        "node": "fw-1",
        "proto": "1",
        "role": "follower",
        "score": "640",
    }

    # The firmware's browser finds zeroconf's gateway and broker, with addresses and ports.
    wanted = {
        "_meshelect-gw._udp.local": "gw-1._meshelect-gw._udp.local %s 47471" % zc_ip,
        "_mqtt._tcp.local": "broker-1._mqtt._tcp.local %s 1884" % zc_ip,
    }
    got = {}
    while len(got) < len(wanted):
        line = wait_for(fw_lines, lambda line: line.startswith("found "), fw_seen)
        parts = line.split(" ", 5)
        got[parts[1]] = " ".join(parts[2:5])
    assert got == wanted
    assert '[["role", "gw-1"]]' in "\n".join(fw_seen)

    # Compression loops: dropped and counted, and the responder keeps answering.
    sender = tmp_path / "loops.py"
    sender.write_text(LOOP_SENDER)
    sent = lab.exec(2, [sys.executable, str(sender), zc_ip])
    assert sent.stdout.strip() == "sent 3", sent.stdout + sent.stderr
    drops = wait_for(
        fw_lines, lambda line: line.startswith("drops ") and '"loop", 3' in line, fw_seen
    )
    assert '["loop", 3]' in drops
    # A fresh zeroconf resolves the node again after the attack.
    again = lab.exec(2, [sys.executable, str(script), zc_ip, "3", "browse"], timeout=30)
    assert "lab-fw-1._meshelect._udp.local." in again.stdout, again.stdout + again.stderr
    fw.wait(WAIT_S + 10)
    zc.wait(WAIT_S + 10)
    tail = "\n".join(fw_seen + list(fw_lines.queue))
    assert "end answered" in tail
    assert "Traceback" not in tail


# ------------------------------------------------------------------ on CPython, against zeroconf
# The board's code runs unchanged on CPython: python-zeroconf builds the packets it receives
# and decodes the packets it sends, so both directions are checked against another
# implementation, not against the module's own parser.

AGENT = "_meshelect._udp.local"
OURS = "lab-n1." + AGENT
HOST = "meshelect-lab-n1.local"
TXT = {"mesh": "lab", "node": "n1", "proto": "1", "role": "follower", "score": "640"}
MULTICAST = ("10.0.0.2", 5353)


def node(**kwargs: Any) -> Any:
    kwargs.setdefault("host", "meshelect-lab-n1")
    return mdns.Mdns("lab-n1", AGENT, 47470, "10.0.0.7", TXT, **kwargs)


def query(*questions: tuple[str, int], known: Any = (), msg_id: int = 0) -> bytes:
    out = DNSOutgoing(zc_const._FLAGS_QR_QUERY, not msg_id, msg_id)  # multicast: id 0
    for name, qtype in questions:
        out.add_question(DNSQuestion(name + ".", qtype, zc_const._CLASS_IN))
    for record in known:
        out.add_answer_at_time(record, 0)
    return out.packets()[0]


def response(answers: Any, additionals: Any = ()) -> bytes:
    out = DNSOutgoing(zc_const._FLAGS_QR_RESPONSE | zc_const._FLAGS_AA, True)
    for record in answers:
        out.add_answer_at_time(record, 0)
    for record in additionals:
        out.add_additional_answer(record)
    return out.packets()[0]


def ptr(stype: str, instance: str, ttl: int = 4500) -> DNSPointer:
    return DNSPointer(stype + ".", zc_const._TYPE_PTR, zc_const._CLASS_IN, ttl, instance + ".")


def srv(instance: str, port: int, host: str) -> DNSService:
    return DNSService(
        instance + ".", zc_const._TYPE_SRV, zc_const._CLASS_IN, 120, 0, 0, port, host + "."
    )


def txt(instance: str, raw: bytes) -> DNSText:
    return DNSText(instance + ".", zc_const._TYPE_TXT, zc_const._CLASS_IN, 4500, raw)


def a(host: str, ip: str, ttl: int = 120) -> DNSAddress:
    return DNSAddress(host + ".", zc_const._TYPE_A, zc_const._CLASS_IN, ttl, socket.inet_aton(ip))


def decoded(packet: Any) -> tuple[DNSIncoming, list[tuple[Any, ...]]]:
    """zeroconf's view of a packet we sent: every record as (type, name, ttl, unique, rdata)."""
    incoming = DNSIncoming(bytes(packet))
    assert incoming.valid
    records = []
    for r in incoming.answers():
        if isinstance(r, DNSPointer):
            data: Any = r.alias
        elif isinstance(r, DNSService):
            data = (r.priority, r.weight, r.port, r.server)
        elif isinstance(r, DNSText):
            data = r.text
        else:
            assert isinstance(r, DNSAddress)
            data = socket.inet_ntoa(r.address)
        records.append((r.type, r.name, r.ttl, r.unique, data))
    return incoming, records


OUR_TXT_RDATA = b"\x08mesh=lab\x07node=n1\x07proto=1\rrole=follower\tscore=640"
OUR_RECORDS = [
    (zc_const._TYPE_PTR, AGENT + ".", 4500, False, OURS + "."),
    (zc_const._TYPE_SRV, OURS + ".", 120, True, (0, 0, 47470, HOST + ".")),
    (zc_const._TYPE_TXT, OURS + ".", 4500, True, OUR_TXT_RDATA),
    (zc_const._TYPE_A, HOST + ".", 120, True, "10.0.0.7"),
]


def test_announcement_goodbye_and_browse_query_decode_in_zeroconf() -> None:
    m = node(browse=[AGENT, "_mqtt._tcp.local"])
    out = m.tick(0)
    assert [dest for _, dest in out] == [("224.0.0.251", 5353)] * 2
    incoming, records = decoded(out[0][0])
    assert incoming.flags == 0x8400 and incoming.num_answers == 4
    assert records == OUR_RECORDS
    # A second announcement a second later (RFC 6762 8.3), then none until the TXT changes
    # (between them, browse queries at growing intervals: 1 s, 2 s, 4 s...).
    flags = [[DNSIncoming(bytes(p)).flags for p, _ in m.tick(t)] for t in (999, 1000, 2500, 3000)]
    assert flags == [[], [0x8400, 0], [], [0]]
    m.set_txt(dict(TXT, role="leader"), 3100)
    again = decoded(m.tick(3100)[0][0])[1]
    assert again[2][4] == OUR_TXT_RDATA.replace(b"\rrole=follower", b"\x0brole=leader")
    _, bye = decoded(m.goodbye())
    assert [(r[0], r[1], r[2]) for r in bye] == [(r[0], r[1], 0) for r in OUR_RECORDS]
    # The browse query: one PTR question per browsed type, nothing known yet.
    query_in, known = decoded(out[1][0])
    assert query_in.flags == 0 and known == []
    assert [(q.name, q.type) for q in query_in.questions] == [
        (AGENT + ".", zc_const._TYPE_PTR),
        ("_mqtt._tcp.local.", zc_const._TYPE_PTR),
    ]


def test_answers_queries_with_additionals_known_answers_and_rate_limit() -> None:
    m = node()
    out = m.receive(query((AGENT, zc_const._TYPE_PTR)), MULTICAST, 0)
    assert len(out) == 1 and out[0][1] == ("224.0.0.251", 5353)
    incoming, records = decoded(out[0][0])
    assert (incoming.flags, incoming.num_answers, incoming.num_additionals) == (0x8400, 1, 3)
    assert records == OUR_RECORDS
    # The same question within 250 ms is not multicast again (RFC 6762 6.2).
    assert m.receive(query((AGENT, zc_const._TYPE_PTR)), MULTICAST, 100) == []
    # Known-answer suppression (RFC 6762 7.1): the querier holds our PTR with a fresh TTL.
    fresh = query((AGENT, zc_const._TYPE_PTR), known=[ptr(AGENT, OURS)])
    assert m.receive(fresh, MULTICAST, 10000) == []
    stale = query((AGENT, zc_const._TYPE_PTR), known=[ptr(AGENT, OURS, ttl=2000)])
    assert len(m.receive(stale, MULTICAST, 10000)) == 1
    # Names compare without case; the A alone has no additionals; other names get nothing.
    out = m.receive(query((HOST.upper(), zc_const._TYPE_ANY)), MULTICAST, 20000)
    assert decoded(out[0][0])[1] == OUR_RECORDS[3:]
    assert m.receive(query(("other.local", zc_const._TYPE_A)), MULTICAST, 20000) == []
    # DNS-SD service type enumeration (RFC 6763 9).
    meta = m.receive(query(("_services._dns-sd._udp.local", zc_const._TYPE_PTR)), MULTICAST, 0)
    assert decoded(meta[0][0])[1] == [
        (zc_const._TYPE_PTR, "_services._dns-sd._udp.local.", 4500, False, AGENT + ".")
    ]
    # A legacy (non-5353) querier gets a unicast answer echoing its id and question.
    legacy = query((OURS, zc_const._TYPE_SRV), msg_id=77)
    out = m.receive(legacy, ("10.0.0.2", 40000), 20000)
    assert out[0][1] == ("10.0.0.2", 40000)
    incoming, records = decoded(out[0][0])
    assert incoming.id == 77
    assert [(q.name, q.type) for q in incoming.questions] == [(OURS + ".", zc_const._TYPE_SRV)]
    assert records == [OUR_RECORDS[1], OUR_RECORDS[2], OUR_RECORDS[3]]
    assert m.answered == 5


def test_browser_learns_expires_and_bounds_its_cache() -> None:
    m = node(browse=["_t._udp.local"], max_services=3)
    for i in range(5):
        name = "s%d._t._udp.local" % i
        packet = response(
            [ptr("_t._udp.local", name, ttl=120)],
            [srv(name, 1000 + i, "h%d.local" % i), a("h%d.local" % i, "10.0.0.%d" % (10 + i))],
        )
        assert m.receive(packet, MULTICAST, 0) == []
    found = m.found("_t._udp.local", 1000)
    assert [(s.name, s.addr, s.port) for s in found] == [
        ("s0._t._udp.local", "10.0.0.10", 1000),
        ("s1._t._udp.local", "10.0.0.11", 1001),
        ("s2._t._udp.local", "10.0.0.12", 1002),
    ]
    assert m.drops == {"cache_full": 2}
    assert len(m.services) == 3
    # Goodbye (TTL 0) removes within a second; TTL expiry removes the rest.
    m.receive(response([ptr("_t._udp.local", "s0._t._udp.local", ttl=0)]), MULTICAST, 2000)
    m.tick(3001)
    assert [s.name for s in m.found("_t._udp.local", 3001)] == [
        "s1._t._udp.local",
        "s2._t._udp.local",
    ]
    m.tick(121000)
    assert m.found("_t._udp.local", 121000) == []
    assert m.services == {}


def test_browser_resolves_in_any_order_and_asks_for_what_is_missing() -> None:
    gw = "gw-1._meshelect-gw._udp.local"
    m = node(browse=["_meshelect-gw._udp.local", AGENT])
    # The PTR alone (no additionals): known, not reachable yet.
    m.receive(response([ptr("_meshelect-gw._udp.local", gw)]), MULTICAST, 0)
    assert [(s.name, s.addr, s.port, s.txt) for s in m.found("_meshelect-gw._udp.local", 0)] == [
        (gw, None, 0, {})
    ]
    # Our own instance, and an unrelated host's address, are not cached.
    m.receive(response([ptr(AGENT, OURS), a("printer.local", "10.0.0.99")]), MULTICAST, 0)
    assert sorted(m.services) == [gw]
    # The browse query asks for its SRV and TXT.
    query_in, _ = decoded(m.tick(0)[1][0])
    assert [(q.name, q.type) for q in query_in.questions][2:] == [
        (gw + ".", zc_const._TYPE_SRV),
        (gw + ".", zc_const._TYPE_TXT),
    ]
    # Address before SRV in one packet; TXT keys lower case, the first occurrence wins.
    raw = b"\x07Role=gw\x07role=xx\x04flag\x00"
    m.receive(
        response([a("GW-Host.local", "10.0.0.5"), srv(gw, 47471, "GW-Host.local"), txt(gw, raw)]),
        MULTICAST,
        10,
    )
    (svc,) = m.found("_meshelect-gw._udp.local", 10)
    assert (svc.addr, svc.port, svc.txt) == ("10.0.0.5", 47471, {"role": "gw", "flag": ""})
    # The host moves: the address is forgotten until the new host's A comes, which the
    # browse query then asks for.
    m.receive(response([srv(gw, 47471, "gw-2.local")]), MULTICAST, 20)
    assert svc.addr is None
    query_in, known = decoded(m.tick(5000)[1][0])
    assert [(q.name, q.type) for q in query_in.questions][2:] == [("gw-2.local.", zc_const._TYPE_A)]
    assert known == [(zc_const._TYPE_PTR, "_meshelect-gw._udp.local.", 4495, False, gw + ".")]
    m.receive(response([a("gw-2.local", "10.0.0.6")]), MULTICAST, 5010)
    assert svc.addr == "10.0.0.6"


def _chain(jumps: int) -> bytes:
    """A query whose last question's name is ``jumps`` pointers, each to the one before."""
    packet = bytearray(struct.pack("!6H", 0, 0, jumps + 1, 0, 0, 0))
    packet += b"\x01a\x00\x00\x01\x00\x01"
    target = 12
    for _ in range(jumps):
        at = len(packet)
        packet += bytes((0xC0, target)) + b"\x00\x01\x00\x01"
        target = at
    return bytes(packet)


def test_malformed_packets_are_dropped_and_counted() -> None:
    m = node(browse=[AGENT])
    head = b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00"
    cases = [
        (head + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x02\xc0\x0c", "loop"),  # self
        (head + b"\x01a\xc0\x10\x01b\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x78\x00\x04abcd", "loop"),
        (_chain(17), "loop"),  # more jumps than allowed
        (b"\x00" * 5, "truncated"),
        (head + b"\x05ab", "truncated"),
        (head + b"\x02\xff\xfe\x00\x00\x01\x00\x01\x00\x00\x00\x78\x00\x04abcd", "utf8"),
        (head + b"\x41a\x00", "label_type"),
        (head + (b"\x3f" + b"a" * 63) * 4 + b"\x00", "name_too_long"),
        (head[:6] + b"\x00\x41" + head[8:], "too_many"),
        (head + b"\x01a\x00\x00\x21\x00\x01\x00\x00\x00\x78\x00\x03abc", "rdata"),  # short SRV
        (head + b"\x01a\x00\x00\x01\x00\x01\x00\x00\x00\x78\x00\x03abc", "rdata"),  # short A
        (head + b"\x01a\x00\x00\x10\x00\x01\x00\x00\x00\x78\x00\x02\x05a", "truncated"),  # TXT
        (head + b"\x01a\x00\x00\x10\x00\x01\x00\x00\x00\x78\x00\x02\x01\xff", "utf8"),
    ]
    expected: dict[str, int] = {}
    for packet, reason in cases:
        assert m.receive(packet, MULTICAST, 0) == [], reason
        expected[reason] = expected.get(reason, 0) + 1
        assert m.drops == expected, reason
    # Sixteen jumps are fine; the node keeps answering.
    assert m.receive(_chain(16), MULTICAST, 0) == []
    assert m.drops == expected
    assert len(m.receive(query((AGENT, zc_const._TYPE_PTR)), MULTICAST, 0)) == 1


def test_never_raises_on_mutated_packets() -> None:
    """Random mutations of real packets: each is handled or dropped, nothing escapes."""
    m = node(browse=[AGENT, "_meshelect-gw._udp.local"], max_services=8)
    seeds = [
        m.goodbye(),
        query((AGENT, zc_const._TYPE_PTR), known=[ptr(AGENT, "x." + AGENT)]),
        response(
            [ptr(AGENT, "p." + AGENT)], [srv("p." + AGENT, 1, "p.local"), a("p.local", "10.1.1.1")]
        ),
        response([txt("p." + AGENT, b"\x03a=b\x03c=d")]),
    ]
    rng = random.Random(5)
    for i in range(3000):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randrange(1, 4)):
            if not data:
                break
            at = rng.randrange(len(data))
            if rng.random() < 0.8:
                data[at] = rng.randrange(256)
            else:
                data = data[:at]  # truncated
        out = m.receive(bytes(data), ("10.0.0.3", rng.choice([5353, 40000])), i)
        assert isinstance(out, list)
        if i % 100 == 0:
            m.tick(i * 50)
    assert sum(m.drops.values()) > 500
    assert len(m.services) <= 8
