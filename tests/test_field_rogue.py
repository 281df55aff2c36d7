"""A forger holding the mesh key (here: a mesh without one) sends heartbeats and a batch at
terms the wire can barely carry: 2^32-1 (whose successor would not encode) and 2^32-2 (a jump
far beyond any election). Real agents in namespaces, the real gateway: the agents keep their
leader and term and count the frames dropped, readings keep flowing, the gateway is not fenced.
"""

from __future__ import annotations

import sys
import time

import pytest

from testkit.gateway import BatchSender, make_batch
from testkit.meshlab import GATEWAY_PORT, MeshUnderTest
from testkit.tools import python_env
from tests.test_agent_netns import _dump

pytestmark = [pytest.mark.netns, pytest.mark.slow]

WAIT_S = 30.0
MAX_TERM = 2**32 - 1

FORGER = r"""
import socket, sys, time
from agent import strict_cbor
from agent.core.messages import F_LEADER, HEARTBEAT, Msg
from agent.core.wire import Codec

mesh, ip, seconds, batch, port = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
codec = Codec(mesh, None, strict_cbor.dumps, strict_cbor.loads, boot=1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ip))
sock.sendto(bytes.fromhex(batch), (ip, int(port)))  # to the gateway, beside us
end = time.monotonic() + seconds
sent = 0
while time.monotonic() < end:
    for term in (2**32 - 1, 2**32 - 2):
        beat = Msg(HEARTBEAT, "rogue", term=term, flags=F_LEADER, score=1000, battery=1000,
                   link=1000)
        sock.sendto(bytes(codec.encode(beat)), ("239.255.77.77", 47470))
        sent += 1
    time.sleep(0.1)
print("sent", sent)
"""


def _jumps(mesh: MeshUnderTest) -> int:
    return sum(s["stats"].get("term_jumps", 0) for s in mesh.statuses().values())


def test_a_forged_huge_term_does_not_capture_the_mesh() -> None:
    mesh = MeshUnderTest(4, "udp", mesh="t-rogue", sample_ms=300)
    try:
        with mesh:
            for host in (1, 2, 3, 4):
                mesh.start_agent(host, 1000 - 100 * host)
            assert mesh.wait_for(lambda: mesh.agreed_leader() == "n1", WAIT_S), _dump(mesh)
            assert mesh.wait_for(lambda: mesh.batches(), WAIT_S), _dump(mesh)
            term = mesh.statuses()[1]["term"]

            assert mesh.gateway is not None
            rogue = BatchSender(mesh.mesh, "rogue", mesh.gateway.udp)
            reading = ["rogue", 1, 1, int(time.time() * 1000), {"temp": 1}]
            frame = rogue.frame(MAX_TERM, make_batch(1, mesh.mesh, "rogue", [reading]))
            address = mesh.lab.address(mesh.gw_host)
            forger = mesh.lab.run(
                mesh.gw_host,
                [
                    sys.executable,
                    "-c",
                    FORGER,
                    mesh.mesh,
                    address,
                    "3",
                    frame.hex(),
                    str(GATEWAY_PORT),
                ],
                env=python_env(),
            )
            assert forger.wait(30) == 0
            t_end = time.time()

            # Every agent dropped and counted the forged frames, and kept its leader and term.
            assert mesh.wait_for(lambda: _jumps(mesh) >= 4, WAIT_S), _dump(mesh)
            assert mesh.agreed_leader() == "n1", _dump(mesh)
            assert {s["term"] for s in mesh.statuses().values()} == {term}, _dump(mesh)
            # Readings keep flowing: the real leader's batches are still accepted.
            assert mesh.wait_for(
                lambda: any(b["leader"] == "n1" and b["wall"] > t_end for b in mesh.batches()),
                WAIT_S,
            ), _dump(mesh)
            assert max(b["term"] for b in mesh.batches()) == term
            refused = mesh.gateway_counters().get("meshelect_gateway_term_jumps_refused_total")
            assert refused == 1.0, mesh.gateway_counters()
    finally:
        mesh.cleanup()
