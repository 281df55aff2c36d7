"""The firmware's asyncio loop: hardware, transport (UDP multicast or MQTT), mDNS, and the
shared core through ``MeshNode``.

Tasks: one receiver per socket (frames are handled the moment they arrive), one main loop
(ticks at the core's wakeup, sensor samples every ``sample_ms``, power every heartbeat,
watchdog, LED, mDNS announcements and queries, status), and on MQTT the client's own task.

Status lines on stdout (``role leader term 3 leader fw-1``, ``status {...}``) are what the
tests and a serial console read; ``status_file`` (optional) gets the same as JSON.
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

from app.meshnode import BATCH_FRAME_BYTES, DEST_GATEWAY, DEST_MESH, DEST_NODE, MeshNode

AGENT_TYPE = "_meshelect._udp.local"
GATEWAY_TYPE = "_meshelect-gw._udp.local"
BROKER_TYPE = "_mqtt._tcp.local"
PROTO = "1"
# Re-announce the TXT on a role change, or a score change this large (as the Pi agent does).
SCORE_CHANGE_TO_ANNOUNCE = 100
MIN_ANNOUNCE_INTERVAL_MS = 5000
_MAX_SLEEP_MS = 100
GC_THRESHOLD = 16384
# Every receive allocates this much first: one datagram, not the codec's 4 KB frame limit (what
# the mesh sends a node is under READINGS_FRAME_BYTES; a longer datagram is cut and dropped).
_RX_BYTES = 1500


class Clock:
    """Milliseconds that never wrap (``ticks_ms`` wraps after 2**30 ms, about 12 days), and
    that can be paused.

    The pause is the Pi agent's broker pause (agent/runtime.py): on MQTT every frame goes
    through the broker, so while it is unreachable silence says nothing about the peers.
    Time stops for the core, nobody is suspected, and no election starts on either side.
    """

    def __init__(self):
        self._last = time.ticks_ms()
        self._now = 0
        self.paused = False
        self._paused_total = 0  # ms spent paused, taken out of now()
        self._paused_at = 0  # now() while paused
        self._paused_real = 0  # real() when the pause began

    def real(self):
        t = time.ticks_ms()
        self._now += time.ticks_diff(t, self._last)
        self._last = t
        return self._now

    def now(self):
        real = self.real()
        return self._paused_at if self.paused else real - self._paused_total

    def pause(self):
        if not self.paused:
            real = self.real()
            self._paused_at = real - self._paused_total
            self._paused_real = real
            self.paused = True

    def resume(self):
        if self.paused:
            self._paused_total += self.real() - self._paused_real
            self.paused = False


def set_gc_threshold(amount):
    """Collect after every ``amount`` bytes allocated (MicroPython only).

    Without it the collector runs only when an allocation fails, and by then short-lived
    frames and batches lie between the long-lived held readings: the heap is fragmented and a
    4 KB batch frame finds no room although half the heap is free. Measured with
    tests/mpy/fw_memory.py: a leader of 10 members (buffers 64/128) needs a 160k heap without
    it and runs in 120k with 16 KB.
    """
    if amount > 0 and hasattr(gc, "threshold"):
        gc.threshold(amount)


def _nonzero(counts):
    out = {}
    for key in sorted(counts):
        if counts[key]:
            out[key] = counts[key]
    return out


def wall_ms():
    """Wall-clock ms for readings' ``t_ms`` (the board's RTC; set by NTP when it has one)."""
    if hasattr(time, "time_ns"):
        return time.time_ns() // 1000000
    return int(time.time()) * 1000


class Runtime:
    def __init__(self, cfg, hw):
        self.cfg = cfg
        self.hw = hw
        self.clock = Clock()
        from app import config as app_config  # boot only: main() unloads it after

        boot = app_config.next_boot(cfg["boot_file"])
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
        self.group = udp_cfg.get("group", udp.MESH_GROUP)
        self.port = int(udp_cfg.get("port", udp.MESH_PORT))
        self.unicast_port = int(udp_cfg.get("unicast_port", self.port))
        self.ttl = int(udp_cfg.get("ttl", 1))
        self.gateway = app_config.host_port(cfg["gateway"].get("address", ""), udp.GATEWAY_PORT)
        self.mesh.gateway_known = self.gateway is not None
        self.transport = cfg["transport"]
        self.mqtt = None
        self.sockets = []
        self.send_errors = 0
        self.mdns = None
        self.mdns_sock = None
        self._announced = (None, 0, -MIN_ANNOUNCE_INTERVAL_MS)
        self._role = None
        self._stopping = False
        self.peak_heap = 0
        self.loop_errors = 0
        self.open_errors = 0
        self.ip = None
        self._rx_tasks = []
        self._next_network_check = 0
        self._resume_deadline = None

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
        try:
            if self.transport == "udp":
                if self.unicast_port == self.port:
                    self.sockets = [udp.open_multicast(self.group, self.port, ip, self.ttl)]
                else:
                    # Several nodes on one host (demos): unicast on its own port, group shared.
                    self.sockets = [
                        udp.open_unicast(ip, self.unicast_port),
                        udp.open_multicast(self.group, self.port, ip, self.ttl, bind_ip=self.group),
                    ]
            if self.cfg["discovery"].get("enabled", True):
                if self.mdns is None:
                    browse = [GATEWAY_TYPE, AGENT_TYPE]
                    if self.transport == "mqtt":
                        browse.append(BROKER_TYPE)
                    self.mdns = mdns.Mdns(
                        "%s-%s" % (self.cfg["mesh"], self.cfg["node_id"]),
                        AGENT_TYPE,
                        self.unicast_port,
                        ip,
                        self._txt(),
                        browse=browse,
                        host="meshelect-%s-%s" % (self.cfg["mesh"], self.cfg["node_id"]),
                    )
                else:
                    self.mdns.ip = ip
                    self.mdns.set_txt({}, 0)  # forces a re-announcement with the new address
                    self.mdns.set_txt(self._txt(), 0)
                self.mdns_sock = udp.open_multicast(mdns.MDNS_GROUP, mdns.MDNS_PORT, ip, 255)
        except OSError as e:
            self.open_errors += 1
            print("network: cannot open sockets on %s: %r" % (ip, e))
            self.close()
            self.ip = None  # try again at the next check
            return
        for sock in self.sockets:
            self._rx_tasks.append(asyncio.create_task(self.rx_mesh(sock)))
        if self.mdns_sock is not None:
            self._rx_tasks.append(asyncio.create_task(self.rx_mdns()))

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

    def _check_network(self, now):
        """Once a second: keep Wi-Fi up (board), reopen the sockets if the address moved."""
        if now < self._next_network_check:
            return
        self._next_network_check = now + 1000
        maintain = getattr(self.hw, "maintain", None)
        if maintain is not None:
            maintain(now)
        if self.hw.ip() != self.ip:
            self.open()

    def _txt(self):
        node = self.mesh.node
        return {
            "mesh": self.cfg["mesh"],
            "node": self.cfg["node_id"],
            "proto": PROTO,
            "role": self.mesh.role_name,
            "score": str(node.score),
        }

    # ---- sending -----------------------------------------------------------------------

    def flush(self):
        out = self.mesh.out
        if not out:
            return
        if self.transport == "mqtt":
            if self.mqtt is not None:
                self.mqtt.queue(out)
            del out[:]
            return
        if not self.sockets:
            self.send_errors += len(out)  # offline: the core and the data path resend
            del out[:]
            return
        sock = self.sockets[0]
        for dest, name, _kind, frame in out:
            if dest == DEST_MESH:
                ok = udp.send(sock, frame, self.group, self.port)
            elif dest == DEST_NODE:
                addr = self.mesh.address(name)
                ok = addr is not None and udp.send(sock, frame, addr[0], addr[1])
            elif dest == DEST_GATEWAY:
                gw = self.gateway
                ok = gw is not None and udp.send(sock, frame, gw[0], gw[1])
            else:
                ok = False
            if not ok:
                self.send_errors += 1
        del out[:]

    # ---- tasks -------------------------------------------------------------------------

    async def rx_mesh(self, sock):
        while True:
            try:
                data, addr = await udp.recv(sock, _RX_BYTES)
                self.mesh.frame(data, addr, self.clock.now())
                self.flush()
            except MemoryError:
                await self._out_of_memory()

    async def rx_mdns(self):
        while True:
            try:
                data, addr = await udp.recv(self.mdns_sock, 1500)
                self._mdns_send(self.mdns.receive(data, addr, self.clock.now()))
            except MemoryError:
                await self._out_of_memory()

    async def _out_of_memory(self):
        # A receiver out of heap: count it, let the other tasks run (and free), and go on
        # receiving: a dead receiver would be a deaf node. Senders resend.
        self.loop_errors += 1
        gc.collect()
        await _sleep_ms(_MAX_SLEEP_MS)

    def _mdns_send(self, packets):
        if self.mdns_sock is None:
            return
        for pkt, dest in packets:
            udp.send(self.mdns_sock, pkt, dest[0], dest[1])

    def on_mqtt_frame(self, data):
        msg = self.mesh.frame(data, None, self.clock.now())
        if msg is not None and self.clock.paused and msg.sender == self.mesh.node.leader:
            self._resume("leader heard")
        self.flush()

    def on_mqtt_connection(self, connected):
        """Broker pause, as the Pi agent does it (see ``Clock``)."""
        clock = self.clock
        if not connected:
            clock.pause()
            print("clock paused: broker unreachable")
        elif clock.paused:
            node = self.mesh.node
            if node.role == 3 or node.leader is None:
                self._resume("reconnected")
            else:
                # Give the leader time to come back too before we may suspect it.
                m = self.cfg["mqtt"]
                grace = int(m.get("reconnect_max_ms", 4000)) + 2 * self.cfg["heartbeat_ms"]
                self._resume_deadline = clock.real() + grace

    def _resume(self, why):
        self.clock.resume()
        self._resume_deadline = None
        print("clock resumed: %s" % why)

    async def main_loop(self, run_ms=0):
        cfg = self.cfg
        mesh = self.mesh
        if self.transport == "mqtt" and (self.mqtt is None or not self.mqtt.client.connected):
            self.clock.pause()  # nothing can be heard before the first connection
        now = self.clock.now()
        battery, link, mains = self.hw.power(now)
        mesh.set_power(battery, link, mains, cfg["eligible"])
        mesh.start(now)
        self.flush()
        next_sample = now
        next_power = now + cfg["heartbeat_ms"]
        next_status = now
        status_ms = int(cfg.get("status_ms", 1000))
        while not self._stopping:
            if self._resume_deadline is not None and self.clock.real() >= self._resume_deadline:
                self._resume("grace over")
            now = self.clock.now()
            if run_ms and now >= run_ms:
                break
            try:
                if now >= next_power:
                    next_power = now + cfg["heartbeat_ms"]
                    battery, link, mains = self.hw.power(now)
                    mesh.set_power(battery, link, mains, cfg["eligible"])
                if now >= next_sample:
                    next_sample = now + cfg["data"]["sample_ms"]
                    try:
                        metrics = self.hw.sample(now)
                    except Exception:
                        mesh.sample_errors += 1
                        metrics = None
                    if metrics:
                        mesh.sample(now, wall_ms(), metrics)
                mesh.tick(now)
                self.flush()
                self._check_network(now)
                self._discovery(now)
                self._role_change(now)
                self.hw.feed()
                self.hw.show(self._led_state(), now)
                if now >= next_status:
                    next_status = now + status_ms
                    self._status(now)
            except MemoryError:
                # Out of heap: count it, free what we can, go on with the next round (the
                # core and the data path resend what this one could not send).
                self.loop_errors += 1
                gc.collect()
            wait = mesh.wakeup - self.clock.now()
            wait = min(wait, next_sample - now, next_power - now, _MAX_SLEEP_MS)
            await _sleep_ms(wait if wait > 0 else 0)

    def _led_state(self):
        if self.transport == "udp" and not self.sockets:
            return "offline"
        return self.mesh.role_name

    def _discovery(self, now):
        m = self.mdns
        if m is None:
            return
        node = self.mesh.node
        role = self.mesh.role_name
        last_role, last_score, last_at = self._announced
        if role != last_role or (
            abs(node.score - last_score) >= SCORE_CHANGE_TO_ANNOUNCE
            and now - last_at >= MIN_ANNOUNCE_INTERVAL_MS
        ):
            self._announced = (role, node.score, now)
            m.set_txt(self._txt(), now)
        self._mdns_send(m.tick(now))
        if self.gateway is None or self.cfg["gateway"].get("address", "") == "":
            found = m.found(GATEWAY_TYPE, now)
            for svc in found:
                if svc.addr is not None and svc.port:
                    if self.gateway != (svc.addr, svc.port):
                        self.gateway = (svc.addr, svc.port)
                        print("gateway %s:%d (mdns)" % self.gateway)
                    self.mesh.gateway_known = True
                    break
        if self.mqtt is not None and self.mqtt.broker is None:
            for svc in m.found(BROKER_TYPE, now):
                if svc.addr is not None and svc.port:
                    self.mqtt.set_broker(svc.addr, svc.port)
                    break

    def _role_change(self, now):
        node = self.mesh.node
        view = (node.role, node.term, node.leader)
        if view != self._role:
            self._role = view
            print("role %s term %d leader %s" % (self.mesh.role_name, node.term, node.leader))
            if self.mqtt is not None and node.role == 3 and node.leader == self.mesh.id:
                self.mqtt.publish_leader(node.term, node.leader)

    def _status(self, now):
        """The node's view, in the Pi agent's status shape (``meshelect status`` reads both)."""
        gc.collect()  # live heap, not garbage waiting for the next collection
        used = gc.mem_alloc()
        if used > self.peak_heap:
            self.peak_heap = used
        mesh = self.mesh
        node = mesh.node
        buf = mesh.buffer
        col = mesh.collector
        drops = mesh.codec.drops
        status = {
            "node": mesh.id,
            "mesh": self.cfg["mesh"],
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
            "clock_paused": self.clock.paused,
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
            "drops": _nonzero(drops),
            "mdns_drops": _nonzero(self.mdns.drops) if self.mdns else {},
            "mdns_peers": self._mdns_peers(now),
            "send_errors": self.send_errors,
            "errors": mesh.errors + self.loop_errors,
            "last_error": mesh.last_error,
            "heap": used,
            "peak_heap": self.peak_heap,
            "gateway": "%s:%d" % self.gateway if self.gateway else None,
            "transport": self._transport_status(),
        }
        if self.cfg.get("print_status", True):
            print("status", json.dumps(status))
        path = self.cfg.get("status_file")
        if path:
            try:
                with open(path + ".tmp", "w") as f:
                    json.dump(status, f)  # streamed: no 2 KB string on the heap
                os.rename(path + ".tmp", path)  # readers never see half a file
            except OSError:
                pass

    def _mdns_peers(self, now):
        """Node ids of our mesh that mDNS found (as the Pi agent's status lists them)."""
        if self.mdns is None:
            return []
        peers = []
        for svc in self.mdns.found(AGENT_TYPE, now):
            txt = svc.txt
            if (
                txt.get("mesh") == self.cfg["mesh"]
                and txt.get("node")
                and txt.get("proto") == PROTO
            ):
                peers.append(txt["node"])
        return sorted(peers)

    def _transport_status(self):
        if self.mqtt is None:
            return {"transport": self.transport, "connected": bool(self.sockets)}
        client = self.mqtt.client
        return {
            "transport": "mqtt",
            "connected": client.connected,
            "connects": client.connects,
            "reconnects": client.reconnects,
            "sent": self.mqtt.sent,
            "queue_dropped": self.mqtt.queue_dropped,
            "drops": _nonzero(client.drops),
        }

    def stop(self):
        """Graceful: hand over, say goodbye on mDNS; sends synchronously (the loop is gone)."""
        self._stopping = True
        now = self.clock.now()
        self.mesh.stop(now)
        if self.transport == "udp":
            self.flush()
        if self.mdns is not None and self.mdns_sock is not None:
            udp.send(self.mdns_sock, self.mdns.goodbye(), mdns.MDNS_GROUP, mdns.MDNS_PORT)
        print("stopped")


async def _sleep_ms(ms):
    if hasattr(asyncio, "sleep_ms"):
        await asyncio.sleep_ms(ms)
    else:
        await asyncio.sleep(ms / 1000)


async def run(rt, run_ms=0):
    if rt.transport == "mqtt":
        rt.mesh.needs_address = False
        rt.mesh.gateway_known = True
    rt.open()
    tasks = []
    if rt.transport == "mqtt":
        from app.mqtt_transport import MqttTransport

        rt.mqtt = MqttTransport(rt.cfg, rt.on_mqtt_frame, rt.on_mqtt_connection)
        tasks.append(asyncio.create_task(rt.mqtt.run()))
    try:
        await rt.main_loop(run_ms)
    finally:
        for task in tasks:
            task.cancel()
        for task in rt._rx_tasks:
            task.cancel()


def main(path="config.json", hw=None):
    # Loading the code leaves garbage between the modules: collected now, what boot allocates
    # next (config, the node's long-lived buffers) fills those holes instead of the free end,
    # which stays in one piece. Without it a 128k heap has no room for the encode buffer.
    gc.collect()
    from app import config as app_config

    try:
        cfg = app_config.load(path)
    except app_config.ConfigError as e:
        print("config: %s" % e)
        sys.exit(2)
    set_gc_threshold(int(cfg.get("gc_threshold", GC_THRESHOLD)))
    if hw is None:
        import hw as hw_layers

        hw = hw_layers.load(cfg)
    rt = Runtime(cfg, hw)
    app_config = None
    if rt.transport != "mqtt":  # (the MQTT transport uses its host_port)
        _unload("app", "config")  # read once at boot: its code goes back to the heap
    crashed = False
    try:
        asyncio.run(run(rt, int(cfg.get("run_ms", 0))))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # a bug: say what it was, then (on a board) start over
        crashed = True
        if hasattr(sys, "print_exception"):
            sys.print_exception(e)
        else:
            print(repr(e))
    finally:
        try:
            rt.stop()
        finally:
            rt.close()
            hw.close()
    if crashed:
        _restart_board()


def _unload(package, name):
    """Forget module ``package.name`` so that the collector frees its code (nothing else may
    hold one of its functions); a later import loads it again."""
    sys.modules.pop(package + "." + name, None)
    parent = sys.modules.get(package)
    if parent is not None and hasattr(parent, name):
        delattr(parent, name)


def _restart_board():
    """A board left at the REPL is a dead node: reset it (the unix port just exits 1)."""
    if sys.platform in ("linux", "darwin"):
        sys.exit(1)
    import machine  # type: ignore[import-not-found]

    time.sleep(5)  # time to read the traceback on the serial console
    machine.reset()
