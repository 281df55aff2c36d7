"""A sleepy member on a board: what survives a deep sleep, and the deep sleep itself.

Loaded only when ``config.json`` has a ``sleep`` table. The cycle's rules are the core's
(``agent/core/sleepy.py``, the same on the Pi agent); here is what a board adds. A deep sleep
resets the chip: the next wake runs ``boot.py`` and ``main.py`` again, and the node's state
would be gone. So before it sleeps the node writes ``sleepy.save`` (boot id, frame counter,
next seq, held readings, counters, energy) as CBOR into RTC memory, which keeps its content
through a deep sleep (``machine.RTC().memory()``, 2 KB on an ESP32), or, when it does not fit,
into the file ``sleep_state`` with a one-byte marker in RTC memory. A power cut clears RTC
memory: the node then starts a new boot, as any node does (its unconfirmed readings are lost,
as a board's are at any power cut). The hardware layer does the sleeping: ``machine.deepsleep``
on a board; on the unix port (``hw/unixsleep.py``, loaded here) the process ends with status 4
and its RTC memory is a file, and whoever restarts it plays the RTC timer (firmware/README.md,
"Sleepy members").
"""

import cbor

from agent.core import sleepy


class Sleeper:
    def __init__(self, cfg, hw):
        self.cycle = sleepy.SleepCycle(cfg["sleep"])
        if not hasattr(hw, "deepsleep"):  # the unix port: its stand-in
            from hw import unixsleep

            hw = unixsleep.Rtc(cfg)
        self.hw = hw  # (what keeps the state and sleeps)
        state = None
        try:
            data = hw.kept()
            if data:
                state = cbor.loads(data)
        except Exception:  # nothing kept, or not ours: a new boot
            state = None
        self.state = state
        self.boot = sleepy.boot_of(state)  # 0: a cold start, not a wake

    def restore(self, app, wall_ms):
        if self.boot:
            held = sleepy.restore(app, self.state, wall_ms, self.cycle.interval_ms)
            print("woke: boot %d, %d readings held" % (self.boot, held))
        self.state = None

    # The runtime's hooks into the cycle (agent/core/sleepy.py), named as names the process has
    # interned already: firmware/README.md, "Memory".
    def start(self, app, now):
        """A wake begins (called before app.start: its first heartbeat says F_SLEEPY): the
        app is made a sleepy member."""
        self.cycle.wake(app, now)

    def tick(self, app, now):
        """True when this wake is over (the runtime then keeps the state and sleeps)."""
        return self.cycle.due(app, now)

    def sleep(self, app, wall_ms):
        """Keep the state, then sleep (on the unix port: exit 4); never returns on a board."""
        self.hw.keep(cbor.dumps(sleepy.save(app, wall_ms)))
        print("sleep %d ms, %d readings held" % (self.cycle.interval_ms, app.buffer.depth))
        self.hw.deepsleep(self.cycle.interval_ms)
