"""The firmware's mDNS/DNS-SD (firmware/lib/mdns.py) against real python-zeroconf, across two
network namespaces: zeroconf's browser finds and resolves the firmware node (same service type
and TXT as the Pi agent), and the firmware's browser finds zeroconf's gateway and broker.
A name-compression loop sent at the responder is dropped, counted, and the node keeps
answering. The pure parser is also checked on CPython (same code as on the board)."""

from __future__ import annotations

import importlib.util
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mpy import MPY_SCRIPTS, micropython_env
from tests.helpers.netns import Lab
from tests.helpers.tools import REPO_ROOT, require_tool


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


# ------------------------------------------------------------------ the parser on CPython


def test_compression_loops_and_garbage_are_counted() -> None:
    m = mdns.Mdns("a-b", "_meshelect._udp.local", 47470, "10.0.0.1", {"mesh": "a"})
    head = b"\x00\x00\x84\x00\x00\x00\x00\x01\x00\x00\x00\x00"
    assert (
        m.receive(
            head + b"\xc0\x0c\x00\x0c\x00\x01\x00\x00\x00\x78\x00\x02\xc0\x0c",
            ("10.0.0.2", 5353),
            0,
        )
        == []
    )
    assert m.receive(b"\x00" * 5, ("10.0.0.2", 5353), 0) == []
    # 17 chained backward pointers: more jumps than allowed.
    chain = bytearray(head[:6] + b"\x00\x01" + head[8:])
    chain += b"\x01a\x00"
    for i in range(17):
        chain += bytes((0xC0, 12 + (0 if i == 0 else 3 + 2 * (i - 1))))
    with pytest.raises(mdns.DnsError):
        mdns.read_name(bytes(chain), len(chain) - 2)
    assert m.drops == {"loop": 1, "truncated": 1}


def test_answers_ptr_query_with_srv_txt_a_and_respects_known_answers() -> None:
    m = mdns.Mdns(
        "lab-n1",
        "_meshelect._udp.local",
        47470,
        "10.0.0.7",
        {"mesh": "lab", "node": "n1"},
        host="meshelect-lab-n1",
    )
    q = mdns._Writer(0, 0)
    q.question("_meshelect._udp.local", mdns.T_PTR)
    out = m.receive(q.finish(), ("10.0.0.2", 5353), 0)
    assert len(out) == 1
    _, flags, _, records = mdns.parse(out[0][0])
    assert flags == 0x8400
    kinds = sorted(
        (r[1], r[3] if r[1] != mdns.T_TXT else tuple(sorted(r[3].items()))) for r in records
    )
    assert kinds == sorted(
        [
            (mdns.T_PTR, "lab-n1._meshelect._udp.local"),
            (mdns.T_SRV, (0, 0, 47470, "meshelect-lab-n1.local")),
            (mdns.T_TXT, (("mesh", "lab"), ("node", "n1"))),
            (mdns.T_A, "10.0.0.7"),
        ]
    )
    assert out[0][1] == ("224.0.0.251", 5353)
    # Same query with our PTR as a known answer (fresh TTL): nothing to say (rate limit aside).
    q2 = mdns._Writer(0, 0)
    q2.question("_meshelect._udp.local", mdns.T_PTR)
    q2.record(1, "_meshelect._udp.local", mdns.T_PTR, 4500, "lab-n1._meshelect._udp.local", False)
    assert m.receive(q2.finish(), ("10.0.0.2", 5353), 10000) == []
    # A legacy (non-5353) querier gets a unicast answer echoing its id and question.
    q3 = mdns._Writer(77, 0)
    q3.question("lab-n1._meshelect._udp.local", mdns.T_SRV)
    out3 = m.receive(q3.finish(), ("10.0.0.2", 40000), 20000)
    msg_id, _, questions, _ = mdns.parse(out3[0][0])
    assert (msg_id, out3[0][1]) == (77, ("10.0.0.2", 40000))
    assert questions == [("lab-n1._meshelect._udp.local", mdns.T_SRV, False)]


def test_browser_learns_expires_and_bounds_its_cache() -> None:
    m = mdns.Mdns(
        "x-me",
        "_meshelect._udp.local",
        47470,
        "10.0.0.1",
        {},
        browse=["_t._udp.local"],
        max_services=3,
    )
    for i in range(5):
        w = mdns._Writer(0, 0x8400)
        name = "s%d._t._udp.local" % i
        w.record(1, "_t._udp.local", mdns.T_PTR, 120, name, False)
        w.record(3, name, mdns.T_SRV, 120, (0, 0, 1000 + i, "h%d.local" % i), True)
        w.record(3, "h%d.local" % i, mdns.T_A, 120, "10.0.0.%d" % (10 + i), True)
        m.receive(w.finish(), ("10.0.0.%d" % (10 + i), 5353), 0)
    found = m.found("_t._udp.local", 1000)
    assert [(s.name, s.addr, s.port) for s in found] == [
        ("s0._t._udp.local", "10.0.0.10", 1000),
        ("s1._t._udp.local", "10.0.0.11", 1001),
        ("s2._t._udp.local", "10.0.0.12", 1002),
    ]
    assert m.drops == {"cache_full": 2}
    # Goodbye (TTL 0) removes within a second; TTL expiry removes the rest.
    bye = mdns._Writer(0, 0x8400)
    bye.record(1, "_t._udp.local", mdns.T_PTR, 0, "s0._t._udp.local", False)
    m.receive(bye.finish(), ("10.0.0.10", 5353), 2000)
    m.tick(3001)
    assert [s.name for s in m.found("_t._udp.local", 3001)] == [
        "s1._t._udp.local",
        "s2._t._udp.local",
    ]
    m.tick(121000)
    assert m.found("_t._udp.local", 121000) == []
