"""MicroPython side of tests/test_firmware_mdns.py: the firmware's mDNS responder + browser.

usage: micropython fw_mdns_node.py IP SECONDS
Advertises mesh "lab", node "fw-1" (as the runtime does) and browses for agents, gateways and
brokers. Prints "found TYPE NAME ADDR PORT TXT" once per new resolved service, "drops {...}"
whenever the drop counters change, and "end ..." after SECONDS.
"""

import asyncio
import json
import sys
import time

import mdns
import udp

IP = sys.argv[1]
SECONDS = int(sys.argv[2])
TYPES = ["_meshelect._udp.local", "_meshelect-gw._udp.local", "_mqtt._tcp.local"]


async def main():
    sock = udp.open_multicast(mdns.MDNS_GROUP, mdns.MDNS_PORT, IP, 255)
    m = mdns.Mdns(
        "lab-fw-1",
        TYPES[0],
        47470,
        IP,
        {"mesh": "lab", "node": "fw-1", "proto": "1", "role": "follower", "score": "640"},
        browse=TYPES,
        host="meshelect-lab-fw-1",
    )

    async def rx():
        while True:
            data, addr = await udp.recv(sock, 1500)
            for pkt, dest in m.receive(data, addr, time.ticks_ms()):
                udp.send(sock, pkt, dest[0], dest[1])

    asyncio.create_task(rx())
    printed = {}
    drops = {}
    start = time.ticks_ms()
    print("ready")
    while time.ticks_diff(time.ticks_ms(), start) < SECONDS * 1000:
        now = time.ticks_ms()
        for pkt, dest in m.tick(now):
            udp.send(sock, pkt, dest[0], dest[1])
        for stype in TYPES:
            for svc in m.found(stype, now):
                if svc.addr is not None and svc.port and svc.name not in printed:
                    printed[svc.name] = True
                    txt = json.dumps([[k, svc.txt[k]] for k in sorted(svc.txt)])
                    print("found %s %s %s %d %s" % (stype, svc.name, svc.addr, svc.port, txt))
        if m.drops != drops:
            drops = dict(m.drops)
            print("drops %s" % json.dumps([[k, drops[k]] for k in sorted(drops)]))
        await asyncio.sleep(0.05)
    print("end answered %d" % m.answered)


asyncio.run(main())
