"""The firmware's asyncio loop on UDP multicast: hardware, sockets, mDNS, and the shared core
through ``MeshNode``. On MQTT, ``app.mqtt_transport.MqttRuntime`` extends it (that module is
never loaded on UDP, so its code costs a UDP node no heap).

Tasks: one receiver per socket (frames are handled the moment they arrive) and one main loop
(ticks at the core's wakeup, sensor samples every ``sample_ms``, power every heartbeat, Wi-Fi
and address check every second, watchdog, LED, mDNS announcements and queries, status).

Status lines on stdout (``role leader term 3 leader fw-1``, ``status {...}``) are what the
tests and a serial console read; ``status_file`` (optional) gets the same as JSON.

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

import cbor
import mdns
import udp
from micropython import const  # type: ignore[import-not-found]

from app.meshnode import BATCH_FRAME_BYTES, DEST_GATEWAY, DEST_MESH, DEST_NODE, MeshNode

_AGENT_TYPE = const("_meshelect._udp.local")
_GATEWAY_TYPE = const("_meshelect-gw._udp.local")
_PROTO = const("1")
# Re-announce the TXT on a role change, or a score change this large (as the Pi agent does).
_SCORE_CHANGE_TO_ANNOUNCE = const(100)
_MIN_ANNOUNCE_INTERVAL_MS = const(5000)
_MAX_SLEEP_MS = const(100)
# Every receive allocates this much first: one datagram, not the codec's 4 KB frame limit (what
# the mesh sends a node is under READINGS_FRAME_BYTES; a longer datagram is cut and dropped).
_RX_BYTES = const(1500)


def nonzero(drops):
    """The counters of ``drops`` that are not 0 (the status lists only what happened)."""
    out = {}
    for key in drops:
        if drops[key]:
            out[key] = drops[key]
    return out


class Runtime:
    transport = "udp"
    clock_paused = False  # the election clock never stops on UDP (see MqttRuntime)
    browse = (_GATEWAY_TYPE, _AGENT_TYPE)  # service types mDNS looks for

    def __init__(self, cfg, hw):
        self.cfg = cfg
        self.hw = hw
        self._ticks = time.ticks_ms()
        self._ms = 0
        from app import config  # boot only: main() unloads it after

        boot = config.next_boot(cfg["boot_file"])
        self.boot = boot
        self.mesh = MeshNode(
            cfg["node_id"],
            cfg["mesh"],
            cfg["key_bytes"],
            boot,
            # One reused encode buffer, a batch datagram long: no growing copies per frame.
            cbor.Encoder(BATCH_FRAME_BYTES).dumps,
            cbor.loads,
            buffer_size=cfg["data"]["buffer_capacity"],
            collector_size=cfg["data"]["collector_capacity"],
            heartbeat_ms=cfg["heartbeat_ms"],
            election=cfg["election"],
            score=cfg["score"],
            seed=boot,
        )
        udp_cfg = cfg["udp"]
        port = int(udp_cfg.get("port", udp.MESH_PORT))
        self.group = (udp_cfg.get("group", udp.MESH_GROUP), port)  # the mesh's (address, port)
        self.unicast_port = int(udp_cfg.get("unicast_port", port))
        self.gateway = config.host_port(cfg["gateway"].get("address", ""), udp.GATEWAY_PORT)
        self.mesh.gateway_known = self.gateway is not None
        self.sockets = []
        self.send_errors = 0
        self.mdns = None
        self.mdns_sock = None
        self._mdns_heard = False  # a packet came in since the last look at what mDNS found
        self._announced = (None, 0, -_MIN_ANNOUNCE_INTERVAL_MS)
        self._view = [None, None, None]  # role, term, leader last printed
        self.peak_heap = 0
        self.loop_errors = 0
        self.ip = None
        self._rx_tasks = []

    def now(self):
        """Milliseconds since boot that never wrap (``ticks_ms`` wraps after 2**30 ms, about 12
        days): the election clock."""
        t = time.ticks_ms()
        self._ms += time.ticks_diff(t, self._ticks)
        self._ticks = t
        return self._ms

    real = now  # time that never stops, even when MqttRuntime's now() does

    # ---- sockets -----------------------------------------------------------------------

    def open(self):
        """Open the sockets on the current address and start their receivers.

        Called again whenever the address changes (Wi-Fi reconnected elsewhere); with no
        address yet (``0.0.0.0``) nothing opens and the LED shows "offline".
        """
        self.close()
        ip = self.hw.ip()
        self.ip = ip
        if ip == "0.0.0.0":
            return
        cfg = self.cfg
        try:
            if self.transport == "udp":
                group, port = self.group
                ttl = int(cfg["udp"].get("ttl", 1))
                if self.unicast_port == port:
                    self.sockets = [udp.open_multicast(group, port, ip, ttl)]
                else:
                    # Several nodes on one host (demos): unicast on its own port, group shared.
                    self.sockets = [
                        udp.open_unicast(ip, self.unicast_port),
                        udp.open_multicast(group, port, ip, ttl, bind_ip=group),
                    ]
            if cfg["discovery"].get("enabled", True):
                if self.mdns is None:
                    self.mdns = mdns.Mdns(
                        "%s-%s" % (cfg["mesh"], cfg["node_id"]),
                        _AGENT_TYPE,
                        self.unicast_port,
                        ip,
                        self._txt(),
                        browse=self.browse,
                        host="meshelect-%s-%s" % (cfg["mesh"], cfg["node_id"]),
                    )
                else:
                    self.mdns.ip = ip
                    self.mdns.set_txt({}, 0)  # forces a re-announcement with the new address
                    self.mdns.set_txt(self._txt(), 0)
                self.mdns_sock = udp.open_multicast(mdns.MDNS_GROUP, mdns.MDNS_PORT, ip, 255)
        except OSError as e:
            print("network: cannot open sockets on %s: %r" % (ip, e))
            self.close()
            self.ip = None  # try again at the next check
            return
        for sock in self.sockets:
            self._rx_tasks.append(asyncio.create_task(self.receive(sock)))
        if self.mdns_sock is not None:
            self._rx_tasks.append(asyncio.create_task(self.receive(self.mdns_sock)))

    def close(self):
        for task in self._rx_tasks:
            task.cancel()
        self._rx_tasks = []
        for sock in self.sockets:
            sock.close()
        if self.mdns_sock is not None:
            self.mdns_sock.close()
        self.sockets = []
        self.mdns_sock = None

    def _txt(self):
        return {
            "mesh": self.cfg["mesh"],
            "node": self.cfg["node_id"],
            "proto": _PROTO,
            "role": self.mesh.role_name,
            "score": str(self.mesh.node.score),
        }

    # ---- sending -----------------------------------------------------------------------

    def flush(self):
        out = self.mesh.out
        if not out:
            return
        if not self.sockets:
            self.send_errors += len(out)  # offline: the core and the data path resend
            del out[:]
            return
        sock = self.sockets[0]
        for dest, name, _kind, frame in out:
            if dest == DEST_MESH:
                addr = self.group
            elif dest == DEST_NODE:
                addr = self.mesh.address(name)  # learned from its frames; None: not yet
            elif dest == DEST_GATEWAY:
                addr = self.gateway
            else:
                addr = None
            if addr is None or not udp.send(sock, frame, addr[0], addr[1]):
                self.send_errors += 1
        del out[:]

    # ---- tasks -------------------------------------------------------------------------

    async def receive(self, sock):
        """One socket's receiver (the mesh's or mDNS's)."""
        while True:
            try:
                data, addr = await udp.recv(sock, _RX_BYTES)
                if sock is self.mdns_sock:
                    self._mdns_heard = True
                    for pkt, dest in self.mdns.receive(data, addr, self.real()):
                        udp.send(sock, pkt, dest[0], dest[1])
                else:
                    self.mesh.frame(data, addr, self.now())
                    self.flush()
            except MemoryError:
                # Out of heap: count it, let the other tasks run (and free), and go on
                # receiving: a dead receiver would be a deaf node. Senders resend.
                self.loop_errors += 1
                gc.collect()
                await asyncio.sleep_ms(_MAX_SLEEP_MS)

    async def run(self, run_ms=0):
        """Open the sockets and run the node until ``run_ms`` (0: for ever).

        The core and the data path follow the election clock (``now()``, which MqttRuntime
        stops while the broker is away); sampling, power, Wi-Fi, mDNS, LED and status follow
        real time (``real()``), as in the Pi agent.
        """
        self.open()
        cfg = self.cfg
        mesh = self.mesh
        hw = self.hw
        now = self.now()
        real = self.real()
        battery, link, mains = hw.power(real)
        mesh.set_power(battery, link, mains, cfg["eligible"])
        mesh.start(now)
        self.flush()
        next_sample = real
        next_power = real + cfg["heartbeat_ms"]
        next_second = real
        next_status = real
        status_ms = int(cfg.get("status_ms", 1000))
        while True:
            now = self.now()
            real = self.real()
            if run_ms and real >= run_ms:
                break
            try:
                if real >= next_power:
                    next_power = real + cfg["heartbeat_ms"]
                    battery, link, mains = hw.power(real)
                    mesh.set_power(battery, link, mains, cfg["eligible"])
                if real >= next_sample:
                    next_sample = real + cfg["data"]["sample_ms"]
                    try:
                        metrics = hw.sample(real)
                    except Exception:
                        mesh.sample_errors += 1
                        metrics = None
                    if metrics:
                        # Readings' t_ms: wall-clock ms (the board's RTC; set by NTP if it can).
                        mesh.sample(now, time.time_ns() // 1000000, metrics)
                if now >= mesh.wakeup:  # (as the Pi agent: a tick with no work still allocates)
                    mesh.tick(now)
                    self.flush()
                if real >= next_second:
                    # Once a second: keep Wi-Fi up (board), reopen the sockets if the address
                    # moved, mDNS upkeep (its announcements and queries are seconds apart;
                    # answers go out from the receiver at once).
                    next_second = real + 1000
                    hw.maintain(real)
                    if hw.ip() != self.ip:
                        self.open()
                    self.discovery(real)
                node = mesh.node
                view = self._view  # compared in place: no tuple per round
                if view[0] != node.role or view[1] != node.term or view[2] != node.leader:
                    view[0] = node.role
                    view[1] = node.term
                    view[2] = node.leader
                    print("role %s term %d leader %s" % (mesh.role_name, node.term, node.leader))
                hw.feed()
                offline = self.transport == "udp" and not self.sockets
                hw.show("offline" if offline else mesh.role_name, real)
                if real >= next_status:
                    next_status = real + status_ms
                    self.status(now, real)
            except MemoryError:
                # Out of heap: count it, free what we can, go on with the next round (the
                # core and the data path resend what this one could not send).
                self.loop_errors += 1
                gc.collect()
            wait = min(next_sample, next_power) - self.real()
            wait = min(wait, mesh.wakeup - self.now(), _MAX_SLEEP_MS)
            await asyncio.sleep_ms(wait if wait > 0 else 0)

    def discovery(self, now):
        m = self.mdns
        if m is None:
            return
        node = self.mesh.node
        role = self.mesh.role_name
        last_role, last_score, last_at = self._announced
        if role != last_role or (
            abs(node.score - last_score) >= _SCORE_CHANGE_TO_ANNOUNCE
            and now - last_at >= _MIN_ANNOUNCE_INTERVAL_MS
        ):
            self._announced = (role, node.score, now)
            m.set_txt(self._txt(), now)
        for pkt, dest in m.tick(now):
            if self.mdns_sock is not None:  # (None: the last open() failed)
                udp.send(self.mdns_sock, pkt, dest[0], dest[1])
        # What mDNS found changes only when a packet comes in: no lookup (and its lists)
        # otherwise.
        if self._mdns_heard and not self.cfg["gateway"].get("address"):
            self._mdns_heard = False
            for svc in m.found(_GATEWAY_TYPE, now):
                if svc.addr is not None and svc.port:
                    if self.gateway != (svc.addr, svc.port):
                        self.gateway = (svc.addr, svc.port)
                        print("gateway %s:%d (mdns)" % self.gateway)
                    self.mesh.gateway_known = True
                    break

    def status(self, now, real):
        """The node's view, in the Pi agent's status shape (``meshelect status`` reads both).

        Streamed as JSON to stdout and to ``status_file``: no 2 KB string on the heap.
        """
        gc.collect()  # live heap, not garbage waiting for the next collection
        used = gc.mem_alloc()
        if used > self.peak_heap:
            self.peak_heap = used
        cfg = self.cfg
        mesh = self.mesh
        node = mesh.node
        buf = mesh.buffer
        col = mesh.collector
        m = self.mdns
        # Node ids of our mesh that mDNS found (as the Pi agent's status lists them).
        mdns_peers = []
        if m is not None:
            for svc in m.found(_AGENT_TYPE, real):
                txt = svc.txt
                if (
                    txt.get("mesh") == cfg["mesh"]
                    and txt.get("node")
                    and txt.get("proto") == _PROTO
                ):
                    mdns_peers.append(txt["node"])
            mdns_peers.sort()
        status = {
            "node": mesh.id,
            "mesh": cfg["mesh"],
            "runtime": "micropython",
            "boot": self.boot,
            "clock_ms": now,
            "role": mesh.role_name,
            "term": node.term,
            "leader": node.leader,
            "lead_reason": node.lead_reason,
            "score": node.score,
            "battery": node.battery,
            "link": node.link,
            "mains": node.mains,
            "peers": sorted(node.peers.by_id),
            "clock_paused": self.clock_paused,
            "stats": {
                "sent": node.stats_sent,
                "terms_started": node.stats_terms_started,
                "suspicions": node.stats_suspicions,
                "handoffs": node.stats_handoffs,
            },
            "buffer": {
                "depth": buf.depth,
                "taken": buf.taken,
                "dropped": buf.dropped,
                "sent": buf.sent,
                "resent": buf.resent,
                "confirmed": buf.confirmed,
            },
            "collector": {
                "held": col.held,
                "received": col.received,
                "overflow": col.overflow,
                "duplicates": col.duplicates,
                "batches_sent": col.batches_sent,
                "batches_acked": col.batches_acked,
                "batches_fenced": col.batches_fenced,
                "discarded": col.discarded,
            },
            "drops": nonzero(mesh.codec.drops),
            "mdns_drops": nonzero(m.drops) if m else {},
            "mdns_peers": mdns_peers,
            "send_errors": self.send_errors,
            "errors": mesh.errors + self.loop_errors,
            "last_error": mesh.last_error,
            "heap": used,
            "peak_heap": self.peak_heap,
            "gateway": "%s:%d" % self.gateway if self.gateway else None,
            "transport": self._transport_status(),
        }
        if cfg.get("print_status", True):
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

    def _transport_status(self):
        return {"transport": "udp", "connected": bool(self.sockets)}

    def stop(self):
        """Graceful: hand over, say goodbye on mDNS; sends synchronously (the loop is gone)."""
        self.mesh.stop(self.now())
        if self.transport == "udp":  # (MQTT: the client's task is gone with the loop)
            self.flush()
        if self.mdns is not None and self.mdns_sock is not None:
            udp.send(self.mdns_sock, self.mdns.goodbye(), mdns.MDNS_GROUP, mdns.MDNS_PORT)
        print("stopped")


def main(path="config.json"):
    # Loading the code leaves garbage between the modules: collected now, what boot allocates
    # next (config, the node's long-lived buffers) fills those holes instead of the free end,
    # which stays in one piece. Without it a 128k heap has no room for the encode buffer.
    gc.collect()
    from app import config

    cfg, hw = config.boot(path)
    if cfg["transport"] == "mqtt":
        from app.mqtt_transport import MqttRuntime

        rt = MqttRuntime(cfg, hw)
    else:
        rt = Runtime(cfg, hw)
        # Read once at boot: forget app.config so that the collector frees its code (nothing
        # else holds one of its functions; a later import would load it again). The MQTT
        # transport keeps it: it uses its host_port.
        config = None
        del sys.modules["app.config"]
        del sys.modules["app"].config
    crashed = False
    try:
        asyncio.run(rt.run(int(cfg.get("run_ms", 0))))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # a bug: say what it was, then (on a board) start over
        crashed = True
        sys.print_exception(e)
    finally:
        try:
            rt.stop()
        finally:
            rt.close()
            hw.close()
    if crashed:
        # A board left at the REPL is a dead node: reset it (the unix port just exits 1).
        if sys.platform in ("linux", "darwin"):
            sys.exit(1)
        import machine  # type: ignore[import-not-found]

        time.sleep(5)  # time to read the traceback on the serial console
        machine.reset()
