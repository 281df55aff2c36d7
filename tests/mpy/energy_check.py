"""Energy accounting and the sleepy member on both runtimes: run by tests/test_energy.py under
MicroPython and CPython, which compares the two outputs line for line.

usage: micropython tests/mpy/energy_check.py     (checkout root and firmware/lib on MICROPYPATH)
       python tests/mpy/energy_check.py          (the same on PYTHONPATH)

Prints canonical lines (dicts sorted): the energy arithmetic for set counts, a sleepy node's
state kept across a deep sleep and taken back, and a small in-memory mesh in which the sleepy
node has the best battery and link and still never leads.
"""

import cbor

from agent.core import energyreport, sleepy
from agent.core.app import DEST_MESH, NodeApp
from agent.core.energy import Energy
from agent.core.node import ROLE_LEADER

LEADER, MEMBER, SLEEPY = 0, 1, 2  # the roles energyreport.charge takes


def line(name, value):
    if isinstance(value, dict):
        value = ", ".join("%s=%r" % (k, value[k]) for k in sorted(value))
    print("%s: %s" % (name, value))


def arithmetic():
    settings = {
        "tx_ua": 200000,
        "rx_ua": 100000,
        "awake_ua": 50000,
        "modem_ua": 20000,
        "deep_ua": 10,
        "frame_us": 1000,
        "byte_ns": 1000,
        "capacity_mah": 1500,
    }
    e = Energy(0, settings, modem=True)
    e.frame(True, 1000)  # 2000 us on air
    e.frame(True, 1000)
    e.frame(False, 0)  # 1000 us
    e.tick(3600000, True)  # an hour as a member, then leading
    for _ in range(10):
        e.frame(True, 500)  # 1500 us each
    line("member charge", energyreport.charge(e, MEMBER))
    line("leader charge", energyreport.charge(e, LEADER))
    line("report", energyreport.reading(e, 5400000))
    s = Energy(0, None, sleepy=True)
    s.frame(True, 64)
    s.tick(2000)
    energyreport.restore(s, s.counts[:], 58000)  # kept across a deep sleep of 58 s
    line("sleepy charge", energyreport.charge(s, SLEEPY))
    line("sleepy report", energyreport.reading(s, 2000))
    for bad in ({"tx_ua": -1}, {"frame_us": "x"}, {"volts": 3}):
        try:
            Energy(0, bad)
            line("refused", False)
        except ValueError as e:
            line("refused", str(e))


def app(node_id, boot=7):
    return NodeApp(node_id, "energy", b"k", boot, cbor.dumps, cbor.loads, buffer_size=8)


def deep_sleep():
    a = app("s1")
    a.energy = Energy(0, None, sleepy=True)
    cycle = sleepy.SleepCycle({"interval_ms": 5000})
    a.start(0)
    cycle.wake(a, 0)
    for i in range(3):
        a.sample(10 * i, 1700000000000 + i, {"t": 20000 + i})
    a.buffer.confirm([[7, 1, 1]])  # the first one was confirmed
    del a.out[:]
    a.codec.counter = 41
    state = cbor.loads(cbor.dumps(sleepy.save(a, 1700000001000)))
    line("kept boot", sleepy.boot_of(state))
    b = app("s1", sleepy.boot_of(state))
    b.energy = Energy(0, None, sleepy=True)
    held = sleepy.restore(b, state, 1700000004000, 5000)
    line("held after wake", held)
    line("unconfirmed", b.buffer.unconfirmed())
    line("next seq", b.sample(0, 1700000004000, {"t": 1}))
    line("counter", b.codec.counter)
    line("taken", b.buffer.taken)
    line("slept", b.energy.counts[9])
    line("no state", sleepy.boot_of(None))
    line("other version", sleepy.boot_of([9, 7, 0, 1, [], None, 0, []]))


def never_leads():
    """Three nodes exchange frames in memory; the sleepy one has the best score."""
    specs = (("s1", 1000, True), ("n2", 900, False), ("n3", 500, False))
    apps = []
    for node_id, battery, is_sleepy in specs:
        a = app(node_id, 3)
        a.needs_address = False
        a.set_power(battery, 1000, False, not is_sleepy)
        if is_sleepy:
            sleepy.SleepCycle().wake(a, 0)
        a.start(0)
        apps.append(a)
    led = {}
    for now in range(0, 8000, 10):
        for a in apps:
            a.tick(now)
        for a in apps:
            for dest, _name, _kind, frame in a.out:
                if dest == DEST_MESH:
                    for other in apps:
                        if other is not a:
                            other.frame(frame, None, now)
            del a.out[:]
            del a.events[:]
            if a.node.role == ROLE_LEADER:
                led[a.id] = True
    line("leaders", sorted(led))
    line("agreed", sorted({a.node.leader for a in apps}))
    line("sleepy score", apps[0].node.score)
    flags = apps[1].node.peers.by_id["s1"].flags
    line("sleepy flag heard", flags & 32)


arithmetic()
deep_sleep()
never_leads()
print("end")
