"""The firmware's asyncio loop around the shared core's node application
(``agent.core.app.NodeApp``, which does everything a node does with frames): hardware, the
link the mesh's frames travel on, mDNS, status.

The link is UDP multicast and unicast (``UdpLink``, here) or an MQTT broker
(``app.mqtt_transport.MqttLink``, loaded only when ``transport`` is ``mqtt``: its code costs a
UDP node no heap). Both take the app's outgoing frames and feed it the frames that arrive; the
runtime never asks which one it has.

Tasks: one receiver per socket (frames are handled the moment they arrive), the link's own
task (MQTT), and one main loop (ticks at the app's wakeup, sensor samples every
``sample_ms``, power every heartbeat, Wi-Fi and address check every second, watchdog, LED, mDNS
announcements and queries, status).

Status lines on stdout (``role leader term 3 leader fw-1``, printed from the app's events,
``status {...}``) are what the tests and a serial console read; ``status_file`` (optional)
gets the same as JSON. The gateway gets one line each time mDNS finds it (``gateway
10.0.0.9:47471 (mdns)``) or its goodbye says it stopped (``gateway lost (mdns)``), and one if
none is known ``_GATEWAY_GRACE_MS`` after boot (``gateway none (...)``).

MicroPython only (``time.ticks_ms``, ``asyncio.sleep_ms``, ``sys.print_exception``). What
runs once at boot lives in ``app.config`` (unloaded after boot). Constants are ``_NAME =
const(...)``: inlined by the compiler, they cost no module global and no interned name.
"""

import gc
import json
import os
import sys
import time

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio  # type: ignore[no-redef]

import mdns
import udp
from micropython import const  # type: ignore[import-not-found]

from agent.core.app import DEST_GATEWAY, DEST_MESH, DEST_NODE, nonzero
from agent.core.node import ROLE_LEADER, ROLE_NAMES

_AGENT_TYPE = const("_meshelect._udp.local")
_GATEWAY_TYPE = const("_meshelect-gw._udp.local")
_PROTO = const("1")
# Re-announce the TXT on a role change, or a score change this large (as the Pi agent does).
_SCORE_CHANGE_TO_ANNOUNCE = const(100)
_MIN_ANNOUNCE_INTERVAL_MS = const(5000)
_MAX_SLEEP_MS = const(100)
# mDNS finds a gateway within a second or two: one still unknown after this says so, once.
_GATEWAY_GRACE_MS = const(5000)
# Every receive allocates this much first: one datagram, not the codec's 4 KB frame limit (what
# the mesh sends a node is under datapath._READINGS_FRAME_BYTES; a longer one is cut, dropped).
_RX_BYTES = const(1500)
# After this long without a crash the app is healthy: start.py's failed-boot count is cleared.
_HEALTHY_MS = const(60000)
_FAILS_FILE = const("boot_fails")  # start.py's count of failed starts
# Readings' t_ms count from 1970 on every runtime; the ESP32 port's time counts from 2000.
_EPOCH_2000_MS = const(946684800000)
# The runtime's clock goes back by _REBASE_MS whenever it reaches _REBASE_AT (every 3.1 days),
# and every time the app, mDNS and the hardware layer hold with it: so every time value, and
# a day's deadline above it, stays a small int on a 32-bit board (they end at 2**30: 12.4
# days of ms) and no step allocates a long int (NodeApp.rebase).
_REBASE_AT = const(1 << 29)
_REBASE_MS = const(1 << 28)


class UdpLink:
    """The mesh on UDP: election frames to the multicast group, readings and acks unicast to
    where the peer's frames came from, batches to the gateway. (The runtime's link interface:
    ``app.mqtt_transport.MqttLink`` has the same.)"""

    clock_paused = False  # the election clock never stops on UDP (see MqttLink)
    browse = ()  # service types mDNS looks for besides the gateway and the agents

    def __init__(self, runtime):
        self.runtime = runtime
        udp_cfg = runtime.cfg["udp"]
        port = int(udp_cfg.get("port", udp.MESH_PORT))
        self.group = (udp_cfg.get("group", udp.MESH_GROUP), port)  # the mesh's (address, port)
        self.ttl = int(udp_cfg.get("ttl", 1))
        self.sockets = []
        self.send_errors = 0

    def open(self, ip):
        """The sockets frames arrive on (the runtime starts a receiver on each)."""
        group, port = self.group
        unicast_port = self.runtime.unicast_port
        if unicast_port == port:
            self.sockets = [udp.open_multicast(group, port, ip, self.ttl)]
        else:
            # Several nodes on one host (demos): unicast on its own port, group shared.
            self.sockets = [
                udp.open_unicast(ip, unicast_port),
                udp.open_multicast(group, port, ip, self.ttl, bind_ip=group),
            ]
        return self.sockets

    def close(self):
        for sock in self.sockets:
            sock.close()
        self.sockets = []

    def offline(self):
        return not self.sockets

    def send(self, out):
        if not self.sockets:
            self.send_errors += len(out)  # offline: the core and the data path resend
            return
        sock = self.sockets[0]
        app = self.runtime.app
        for dest, name, _kind, frame in out:
            if dest == DEST_MESH:
                addr = self.group
            elif dest == DEST_NODE:
                addr = app.address(name)  # learned from its frames; None: not yet
            elif dest == DEST_GATEWAY:
                addr = self.runtime.gateway
            else:
                addr = None
            if addr is None or not udp.send(sock, frame, addr[0], addr[1]):
                self.send_errors += 1

    def leader(self, term):
        pass  # we lead in ``term`` (MQTT publishes the leader record)

    def found(self, m, now):
        pass  # (MQTT looks for a broker)

    run = None  # no task of its own: the runtime's receivers do it all

    def status(self):
        return {"transport": "udp", "connected": bool(self.sockets)}


class Runtime:
    def __init__(self, cfg, hw, link=UdpLink):
        ms = hw.clock_ms  # 0 but in tests (hw/unix.py): the uptime the clock starts at
        while ms >= _REBASE_AT:
            ms -= _REBASE_MS  # (as now() goes on)
        # The clock: ms as now() last gave it, the ticks_ms it was read at, how often now() set
        # it back. (One list: each attribute's name would be interned for the node's life.)
        self._clock = [ms, 0, 0]
        self._announced = (None, 0, -_MIN_ANNOUNCE_INTERVAL_MS)  # role, score, when
        # The rest (the boot id, the node application, the link, ...) runs once: it is
        # app.config's, which main() unloads after boot (its code goes back to the heap).
        from app import config

        config.runtime(self, cfg, hw, link)

    def wall_ms(self):
        """Wall-clock ms since 1970 (the board's RTC, set by NTP if it can): readings' t_ms.
        (gmtime(0) is asked each time: a module global would be one more interned name, see
        firmware/README.md "Memory")"""
        t_ms = time.time_ns() // 1000000
        if time.gmtime(0)[0] == 2000:
            t_ms += _EPOCH_2000_MS
        return t_ms

    def now(self):
        """Milliseconds since boot, less _REBASE_MS for every time it reached _REBASE_AT (it
        never wraps as ``ticks_ms`` does, and stays a small int). The app keeps its own
        election clock on top (it stops while MQTT's broker is away)."""
        clock = self._clock
        t = time.ticks_ms()
        ms = clock[0] + time.ticks_diff(t, clock[1])
        clock[1] = t
        if ms >= _REBASE_AT:
            self.app.rebase(ms, _REBASE_MS)
            _unload("agent.core.rebase")  # its code was loaded for this only
            if self.mdns is not None:
                self.mdns.rebase(_REBASE_MS)
            self.hw.rebase(_REBASE_MS)
            role, score, at = self._announced
            self._announced = (role, score, at - _REBASE_MS)
            ms -= _REBASE_MS
            clock[2] += 1  # (run() moves its own deadlines)
        clock[0] = ms
        return ms

    # ---- sockets -----------------------------------------------------------------------

    def open(self):
        """Open the sockets on the current address and start their receivers.

        Called again whenever the address changes (Wi-Fi reconnected elsewhere); with no
        address yet (``0.0.0.0``) nothing opens and the LED shows "offline".
        """
        self.close()
        udp.forget()
        ip = self.hw.ip()
        self.ip = ip
        if ip == "0.0.0.0":
            return
        cfg = self.cfg
        try:
            sockets = self.link.open(ip)
        except OSError as e:
            print("network: cannot open sockets on %s: %r" % (ip, e))
            self.close()
            self.ip = None  # try again at the next check
            return
        # mDNS in a try of its own: the mesh never depends on it.
        if cfg["discovery"].get("enabled", True):
            if self.mdns is None:
                self.mdns = mdns.Mdns(
                    "%s-%s" % (cfg["mesh"], cfg["node_id"]),
                    _AGENT_TYPE,
                    self.unicast_port,
                    ip,
                    self._txt(),
                    browse=(_GATEWAY_TYPE, _AGENT_TYPE) + self.link.browse,
                    host="meshelect-%s-%s" % (cfg["mesh"], cfg["node_id"]),
                )
            else:
                self.mdns.ip = ip
                self.mdns.set_txt({}, 0)  # forces a re-announcement with the new address
                self.mdns.set_txt(self._txt(), 0)
            try:
                self.mdns_sock = udp.open_multicast(mdns.MDNS_GROUP, mdns.MDNS_PORT, ip, 255)
                self.mdns.announcing = True
            except OSError as e:
                # 5353 is taken (a stock ESP32 image runs ESP-IDF's responder there, bound
                # without SO_REUSEADDR): browse from an ephemeral port, announce nothing.
                print("mdns: port 5353 unusable (%r): browsing only, not announcing" % (e,))
                self.mdns.announcing = False
                try:
                    self.mdns_sock = udp.open_unicast(ip)
                except OSError:
                    self.mdns_sock = None
        for sock in sockets:
            self._rx_tasks.append(asyncio.create_task(self.receive(sock)))
        if self.mdns_sock is not None:
            self._rx_tasks.append(asyncio.create_task(self.receive(self.mdns_sock)))

    def close(self):
        for task in self._rx_tasks:
            try:
                task.cancel()
            except RuntimeError:  # "can't cancel self": a Ctrl-C stopped the loop in this task
                pass
        self._rx_tasks = []
        self.link.close()
        if self.mdns_sock is not None:
            self.mdns_sock.close()
        self.mdns_sock = None

    def _txt(self):
        app = self.app
        return {
            "mesh": self.cfg["mesh"],
            "node": self.cfg["node_id"],
            "proto": _PROTO,
            "role": ROLE_NAMES[app.node.role],
            "score": str(app.node.score),
        }

    # ---- the app's output --------------------------------------------------------------

    def flush(self):
        """Send what the app queued; act on its events."""
        app = self.app
        out = app.out
        if out:
            self.link.send(out)
            del out[:]
        events = app.events
        if events:
            for event in events:
                kind = event[0]
                if kind == "role" or kind == "term":
                    role = event[1]
                    print("role %s term %d leader %s" % (ROLE_NAMES[role], event[2], event[3]))
                    if role != event[5]:
                        self._announced = (None, 0, -_MIN_ANNOUNCE_INTERVAL_MS)  # new TXT
                    if role == ROLE_LEADER:
                        self.link.leader(event[2])  # once per term
                elif kind == "max_term":
                    path = self.cfg["boot_file"] + "." + "term"
                    try:
                        with open(path + ".tmp", "w") as f:
                            f.write("%d\n" % event[1])
                        os.rename(path + ".tmp", path)  # a power cut leaves old or new
                    except OSError:
                        pass  # read-only filesystem: a FENCED answer still teaches the term
                elif kind == "clock_paused":
                    print(("clock paused: %s" if event[1] else "clock resumed: %s") % event[2])
            del events[:]

    # ---- tasks -------------------------------------------------------------------------

    async def receive(self, sock):
        """One socket's receiver (the mesh's or mDNS's)."""
        while True:
            try:
                data, addr = await udp.recv(sock, _RX_BYTES)
                if sock is self.mdns_sock:
                    self._mdns_heard = True
                    for pkt, dest in self.mdns.receive(data, addr, self.now()):
                        udp.send(sock, pkt, dest[0], dest[1])
                elif data and data[0] == 85:  # "U": an update notice, not a mesh frame
                    from app import ota

                    ota.frame(self, data)
                else:
                    self.app.frame(data, addr, self.now())
                    self.flush()
            except MemoryError:
                # Out of heap: count it, let the other tasks run (and free), and go on
                # receiving: a dead receiver would be a deaf node. Senders resend.
                self.loop_errors += 1
                gc.collect()
                await asyncio.sleep_ms(_MAX_SLEEP_MS)

    async def run(self, run_ms=0):
        """Open the sockets and run the node until ``run_ms`` (0: for ever)."""
        task = None
        if self.link.run is not None:  # the link's own task (MQTT: its client)
            task = asyncio.create_task(self.link.run())
        try:
            self.open()
            if self.ota.get("state", "idle") != "idle":  # a trial, or an outcome to report
                from app import ota

                asyncio.create_task(ota.run(self))
            cfg = self.cfg
            app = self.app
            hw = self.hw
            now = self.now()
            battery, link, mains = hw.power(now)
            app.set_power(battery, link, mains, cfg["eligible"])
            sleeper = self.sleeper
            if sleeper is not None:
                # Before the start: the heartbeat that announces this wake says F_SLEEPY (a
                # new leader lists it as sleepy before its readings tell the interval).
                sleeper.start(app, app.clock_ms(now))
            app.start(now)
            self.flush()
            energy_ms = app.energy.settings[8]  # [energy] report_ms
            next_energy = now + energy_ms if energy_ms else -1
            if sleeper is not None:
                next_energy = now  # one report per wake, with its reading
            next_sample = now
            next_power = now + cfg["heartbeat_ms"]
            next_second = now
            next_status = now
            healthy_at = now + _HEALTHY_MS
            status_ms = int(cfg.get("status_ms", 1000))
            clock = self._clock
            rebases = clock[2]
            # When no gateway known says so, once (0: said or found). (A local, not an
            # attribute: a new attribute name is one more interned string.)
            gateway_due = now + _GATEWAY_GRACE_MS
            while True:
                now = self.now()
                if rebases != clock[2]:  # the clock went back: the deadlines go with it
                    back = (clock[2] - rebases) * _REBASE_MS
                    rebases = clock[2]
                    next_sample -= back
                    next_power -= back
                    next_second -= back
                    next_status -= back
                    if healthy_at:
                        healthy_at = max(1, healthy_at - back)
                    if gateway_due:
                        gateway_due = max(1, gateway_due - back)
                    if run_ms:
                        run_ms = max(1, run_ms - back)
                    if next_energy > 0:  # (-1: no report due)
                        next_energy = max(0, next_energy - back)
                if (run_ms and now >= run_ms) or self.reboot:
                    break
                if sleeper is not None and sleeper.tick(app, app.clock_ms(now)):
                    break  # main() keeps what must survive and sleeps
                try:
                    if now >= next_power:
                        next_power = now + cfg["heartbeat_ms"]
                        battery, link, mains = hw.power(now)
                        app.set_power(battery, link, mains, cfg["eligible"])
                    if now >= next_sample:
                        # (a sleepy member: one reading per wake)
                        next_sample = now + (86400000 if sleeper else cfg["data"]["sample_ms"])
                        try:
                            metrics = hw.sample(now)
                        except Exception:
                            app.sample_errors += 1
                            metrics = None
                        if metrics:
                            app.sample(now, self.wall_ms(), metrics)
                    if 0 <= next_energy <= now:
                        next_energy = now + energy_ms if sleeper is None else -1
                        from agent.core import energyreport

                        metrics = energyreport.reading(app.energy, app.clock_ms(now))
                        _unload("agent.core.energyreport")  # loaded for the report only
                        app.sample(now, self.wall_ms(), metrics)
                    if now >= app.wakeup:  # (as the Pi agent: a tick with no work still allocates)
                        app.tick(now)
                    self.flush()
                    if now >= next_second:
                        # Once a second: keep Wi-Fi up (board), reopen the sockets if the address
                        # moved, mDNS upkeep (its announcements and queries are seconds apart;
                        # answers go out from the receiver at once).
                        next_second = now + 1000
                        if healthy_at and now >= healthy_at:
                            healthy_at = 0
                            _started_well()  # running a while
                        hw.maintain(now)
                        if hw.ip() != self.ip:
                            self.open()
                        self.discovery(now)
                        if gateway_due and now >= gateway_due:
                            gateway_due = 0
                            if not app.gateway_known:  # (once: not a line a second)
                                print(
                                    "gateway none (mdns: not found yet)"
                                    if self.mdns
                                    else "gateway none (no address)"
                                )
                    hw.feed()
                    hw.show("offline" if self.link.offline() else ROLE_NAMES[app.node.role], now)
                    if now >= next_status:
                        next_status = now + status_ms
                        self.status(now)
                except MemoryError:
                    # Out of heap: count it, free what we can, go on with the next round (the
                    # core and the data path resend what this one could not send).
                    self.loop_errors += 1
                    gc.collect()
                now = self.now()
                wait = min(next_sample, next_power) - now
                wait = min(wait, app.wakeup - now, _MAX_SLEEP_MS)
                await asyncio.sleep_ms(wait if wait > 0 else 0)
        finally:
            if task is not None:
                task.cancel()

    def discovery(self, now):
        m = self.mdns
        if m is None:
            return
        node = self.app.node
        role, score, at = self._announced
        if role is None or (
            abs(node.score - score) >= _SCORE_CHANGE_TO_ANNOUNCE
            and now - at >= _MIN_ANNOUNCE_INTERVAL_MS
        ):
            self._announced = (node.role, node.score, now)
            m.set_txt(self._txt(), now)
        known = len(m.services)
        for pkt, dest in m.tick(now):
            if self.mdns_sock is not None:  # (None: the last open() failed)
                udp.send(self.mdns_sock, pkt, dest[0], dest[1])
        # What mDNS found changes only when a packet comes in, or a record expires (a
        # goodbye's second ran out): no lookup (and its lists) otherwise.
        if self._mdns_heard or len(m.services) < known:
            self._mdns_heard = False
            if not self.cfg["gateway"].get("address"):
                found = m.found(_GATEWAY_TYPE, now)
                for svc in found:
                    if svc.addr is not None and svc.port:
                        if self.gateway != (svc.addr, svc.port):
                            self.gateway = (svc.addr, svc.port)
                            print("gateway %s:%d (mdns)" % self.gateway)
                        self.app.gateway_known = True
                        break
                if not found and self.gateway is not None:  # it said goodbye: it stopped
                    self.gateway = None
                    self.app.gateway_known = False  # batches wait; the members keep readings
                    print("gateway lost (mdns)")
            self.link.found(m, now)

    def status(self, now):
        """The app's status (the Pi agent's layout: ``meshelect status`` reads both) with the
        board's own figures. Streamed as JSON to stdout and to ``status_file``: no 2 KB string
        on the heap.
        """
        gc.collect()  # live heap, not garbage waiting for the next collection
        used = gc.mem_alloc()
        if used > self.peak_heap:
            self.peak_heap = used
        cfg = self.cfg
        m = self.mdns
        # Node ids of our mesh that mDNS found (as the Pi agent's status lists them).
        mdns_peers = []
        if m is not None:
            for svc in m.found(_AGENT_TYPE, now):
                txt = svc.txt
                if (
                    txt.get("mesh") == cfg["mesh"]
                    and txt.get("node")
                    and txt.get("proto") == _PROTO
                ):
                    mdns_peers.append(txt["node"])
            mdns_peers.sort()
        status = self.app.status(now, False)  # peers by id: a smaller heap
        status["runtime"] = "micropython"
        status["mdns_drops"] = nonzero(m.drops) if m else {}
        status["mdns_peers"] = mdns_peers
        status["announcing"] = m is not None and m.announcing  # on mDNS
        status["send_errors"] = self.link.send_errors
        status["errors"] += self.loop_errors
        status["heap"] = used
        status["peak_heap"] = self.peak_heap
        status["clock_rebases"] = self._clock[2]  # how often the clock went back (3.1 days)
        status["gateway"] = "%s:%d" % self.gateway if self.gateway else None
        status["transport"] = self.link.status()
        if self.ota:  # (a node never updated over the air: no key, a smaller status)
            status["ota"] = self.ota
        if cfg.get("print_status", False):  # ~1.5 KB/s on a board's UART: asked for only
            print("status", end=" ")
            json.dump(status, sys.stdout)
            print()
        path = cfg.get("status_file")
        if path:
            try:
                with open(path + ".tmp", "w") as f:
                    json.dump(status, f)
                os.rename(path + ".tmp", path)  # readers never see half a file
            except OSError:
                pass

    def stop(self):
        """Graceful: hand over, say goodbye on mDNS; sends synchronously (the loop is gone,
        so on MQTT, whose client was a task, the goodbye stays unsent)."""
        gc.collect()  # the loop's last garbage: room for the goodbye in a full heap
        self.app.stop(self.now())
        self.flush()
        if self.mdns is not None and self.mdns_sock is not None and self.mdns.announcing:
            udp.send(self.mdns_sock, self.mdns.goodbye(), mdns.MDNS_GROUP, mdns.MDNS_PORT)
        print("stopped")


def main(path="config.json"):
    # Loading the code leaves garbage between the modules: collected now, what boot allocates
    # next (config, the node's long-lived buffers) fills those holes instead of the free end,
    # which stays in one piece. Without it a 128k heap has no room for the encode buffer.
    gc.collect()
    from app import config

    cfg, hw = config.boot(path)
    link = UdpLink
    if cfg["transport"] == "mqtt":
        from app.mqtt_transport import MqttLink as link
    try:
        rt = Runtime(cfg, hw, link)
    except ValueError as e:  # settings the core refuses (app.config checked their types)
        print("config: %s" % e)
        sys.exit(2)
    except KeyboardInterrupt:  # in the wait for the clock (a deploy's interrupt): on purpose
        hw.close()
        _started_well()
        return
    # The energy settings' check (agent/core/energyreport.py) ran at boot: unloaded until a
    # report is due.
    _unload("agent.core.energyreport")
    if link is UdpLink:
        # Read once at boot: forget app.config so that the collector frees its code (nothing
        # else holds one of its functions; a later import would load it again). The MQTT
        # link keeps it: it uses its host_port.
        config = None
        _unload("app.config")
    crashed = False
    asleep = False  # a sleepy member's wake ended: no goodbye, it is still a member
    try:
        asyncio.run(rt.run(int(cfg.get("run_ms", 0))))
        asleep = rt.sleeper is not None
    except KeyboardInterrupt:
        pass
    except Exception as e:  # a bug: say what it was, then (on a board) start over
        crashed = True
        sys.print_exception(e)
    finally:
        try:
            if not asleep:
                rt.stop()
        finally:
            rt.close()
            hw.close()
    if not crashed:  # stopped on purpose (a deploy's interrupt, Ctrl-C, run_ms): no failed start
        _started_well()
    if asleep:
        rt.sleeper.sleep(rt.app, rt.wall_ms())
    if crashed or rt.reboot:
        # A board left at the REPL is a dead node: reset it. An update asks for a reset too
        # (app/ota.py). The unix port exits: 1 after a crash, 3 for a reset asked for.
        if sys.platform in ("linux", "darwin"):
            sys.exit(1 if crashed else 3)
        import machine  # type: ignore[import-not-found]

        if crashed:
            time.sleep(5)  # time to read the traceback on the serial console
        machine.reset()


def _unload(name):
    """Forget the module ``name`` (loaded for a rare job: at boot, a report, a clock rebase),
    so that the collector frees its code until it is imported again."""
    sys.modules.pop(name, None)
    package, _, attr = name.rpartition(".")
    parent = sys.modules.get(package)
    if parent is not None and hasattr(parent, attr):
        delattr(parent, attr)


def _started_well():
    try:  # start.py's count of failed starts ends
        os.remove(_FAILS_FILE)
    except OSError:
        pass
