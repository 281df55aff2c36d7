"""The per-device config (``config.json``, written by ``meshelect firmware deploy``) and the
persisted boot counter.

JSON because MicroPython reads it with no extra library. Keys are the Pi agent's TOML keys
(``node_id``, ``mesh``, ``mesh_key`` in hex, ``heartbeat_ms``, ``eligible``, ``transport``,
``udp``, ``mqtt``, ``gateway``, ``discovery``, ``election``, ``score``, ``data``, ``energy``,
``sleep``) plus ``wifi``, ``hw`` (the board), ``update_key`` (hex: over-the-air updates,
``app/ota.py``) and a few runtime settings (``status_ms``, ``status_file``, ``boot_file``,
``clock_wait_ms``, ``run_ms``). A problem raises ``ConfigError`` naming the key. The settings the
shared core takes (``node_id``, ``mesh``, ``heartbeat_ms``, ``[election]``, ``[score]``) are
checked by the core's own rules (``agent.core.node.make_config``; ``energy`` and ``sleep`` by
``agent.core.energyreport``'s check of their tables), the same as the Pi agent's
and ``meshelect firmware deploy``'s, which runs this check on the host before it copies.

Everything here runs once at boot (``boot`` also builds the hardware layer, ``runtime`` the
runtime's node application and link): on UDP, ``app.runtime.main`` unloads the module
afterwards, so its code goes back to the heap.
"""

import json
import os
import time

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython: meshelect firmware deploy checks a config with check()

    def const(x):
        return x


# The encode buffer, allocated once at boot: as long as the app's longest frame (a batch, one
# datagram: NodeApp's default max_frame_bytes).
_ENCODE_BYTES = const(1400)


class ConfigError(ValueError):
    pass


def load(path="config.json"):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError:
        raise ConfigError("%s: cannot read" % path)
    except ValueError:
        raise ConfigError("%s: not valid JSON" % path)
    return check(data)


def check(data):
    """Fill defaults and check types; returns a new dict."""
    # The tables are locals, not module globals: this module is unloaded after boot, but a
    # global's name would stay interned for the node's life.
    defaults = {
        "mesh": "default",
        "mesh_key": "",
        "heartbeat_ms": 250,
        "eligible": True,
        "transport": "udp",
        "boot_file": "boot_count",
        "udp": {},
        "mqtt": {},
        "gateway": {},
        "discovery": {},
        "election": {},
        "score": {},
        "data": {},
        "wifi": {},
        "hw": {},
        "energy": {},
    }
    # [data] defaults: smaller than the Pi agent's 1024/1024, sized for an ESP32 without PSRAM.
    data_defaults = {"sample_ms": 1000, "buffer_capacity": 64, "collector_capacity": 128}
    # The core's rules (a node loads these modules anyway).
    from agent.core.datapath import MAX_MESH_BYTES
    from agent.core.node import MAX_NODE_ID_BYTES, make_config

    if not isinstance(data, dict):
        raise ConfigError("config: expected an object")
    cfg = {}
    for key in defaults:
        default = defaults[key]
        cfg[key] = dict(default) if isinstance(default, dict) else default
    for key in data:
        cfg[key] = data[key]
    node = cfg.get("node_id")
    if not isinstance(node, str) or not 1 <= len(node.encode()) <= MAX_NODE_ID_BYTES:
        raise ConfigError(
            "node_id: must be 1..%d bytes of UTF-8, got %r" % (MAX_NODE_ID_BYTES, node)
        )
    mesh = cfg["mesh"]
    if not isinstance(mesh, str) or not 1 <= len(mesh.encode()) <= MAX_MESH_BYTES:
        raise ConfigError("mesh: must be 1..%d bytes of UTF-8" % MAX_MESH_BYTES)
    if cfg["transport"] not in ("udp", "mqtt"):
        raise ConfigError("transport: expected udp or mqtt")
    for key in (
        "udp",
        "mqtt",
        "gateway",
        "discovery",
        "election",
        "score",
        "data",
        "wifi",
        "hw",
        "energy",
    ):
        if not isinstance(cfg[key], dict):
            raise ConfigError("%s: expected an object" % key)
    data = dict(data_defaults)
    for key in cfg["data"]:
        if key not in data_defaults:
            raise ConfigError("data.%s: unknown key" % key)
        value = cfg["data"][key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError("data.%s: expected a positive integer" % key)
        data[key] = value
    cfg["data"] = data
    if cfg["wifi"].get("power_save", "modem") not in ("none", "modem"):
        raise ConfigError("wifi.power_save: expected none or modem")
    try:
        make_config(cfg["heartbeat_ms"], cfg["election"], cfg["score"])
        # [energy] and [sleep]: their tables' own check (agent/core/energyreport.py), which
        # the runtime unloads after boot; the modules' classes are not loaded for it.
        from agent.core import energyreport

        energyreport.check("energy", energyreport.SETTINGS, cfg["energy"])
        if "sleep" in cfg:  # a sleepy member: never eligible (agent/core/sleepy.py)
            if not isinstance(cfg["sleep"], dict):
                raise ConfigError("sleep: expected an object")
            from agent.core import sleepy  # (a local: its module name interned only if used)

            energyreport.check("sleep", sleepy.SETTINGS, cfg["sleep"])
            cfg["eligible"] = False
    except ValueError as e:
        raise ConfigError(str(e))  # "election.suspect_intervals: must be ...", as it is
    try:
        cfg["key_bytes"] = bytes.fromhex(cfg["mesh_key"]) if cfg["mesh_key"] else b""
    except (ValueError, TypeError):
        raise ConfigError("mesh_key: expected hex")
    # The key over-the-air updates are signed with (app/ota.py): not the mesh key, which
    # every node holds. None: this board takes no update over the air.
    try:
        if len(bytes.fromhex(cfg.get("update_key") or "")) not in (0, 16, 32):
            raise ValueError
    except (ValueError, TypeError):
        raise ConfigError("update_key: expected 16 or 32 bytes in hex")
    return cfg


def next_boot(path, hw, ms=0):
    """Read, grow and persist the boot counter (replay protection needs it to grow).

    ``wire.next_boot`` makes it at least the seconds since 2024 when the wall clock
    (``hw.wall_s()``, set by NTP) is valid, so a flashed board's new boot ids are above its
    old ones. So with no boot id stored (a flashed board, wiped files) and no valid clock yet,
    it first waits up to ``ms`` for Wi-Fi and NTP to set the clock: the hardware layer
    keeps joining and asking NTP, the watchdog is fed, and a Ctrl-C (``meshelect firmware
    deploy``'s interrupt) ends it as KeyboardInterrupt. Still no clock: boot 1, flagged.
    """
    from agent.core.wire import next_boot as grow

    stored = 0
    try:
        with open(path) as f:
            stored = int(f.read().strip() or 0)
    except (OSError, ValueError):
        pass
    if not stored and ms > 0 and grow(0, hw.wall_s()) == 1:
        print("boot: no stored boot id: waiting up to %d ms for the clock (NTP)" % ms)
        start = time.ticks_ms()
        waited = 0
        while waited < ms and grow(0, hw.wall_s()) == 1:
            hw.maintain(waited)
            hw.feed()
            time.sleep_ms(100)
            waited = time.ticks_diff(time.ticks_ms(), start)
        print("boot: waited %d ms for the clock" % waited)
    boot = grow(stored, hw.wall_s())
    if not stored and boot == 1:
        # Nothing stored and no valid clock: this boot id may have been used before. Peers
        # take it after REPLAY_FORGET_MS; the gateway stores the readings as a boot reuse.
        print("boot: no stored boot and no valid clock: boot ids may repeat")
    try:
        with open(path, "w") as f:
            f.write("%d\n" % boot)
    except OSError:
        pass  # read-only filesystem: peers forget us after REPLAY_FORGET_MS anyway
    return boot


def host_port(text, port):
    """``"host:port"`` or ``"host"`` (then ``port``) -> (host, port); empty -> None."""
    if not text:
        return None
    if ":" in text:
        host, number = text.rsplit(":", 1)
        try:
            return host, int(number)
        except ValueError:
            raise ConfigError("address %r: bad port" % text)
    return text, port


def boot(path="config.json"):
    """Everything the runtime takes once at boot: the checked config and the hardware layer
    that ``hw.kind`` names (default: the board we run on), with the collector's threshold
    set. A bad config ends the program (exit 2).

    ``gc_threshold`` (default 4 KB; 0: off): collect after every this many bytes allocated.
    Without it the collector runs only when an allocation fails, and by then short-lived
    frames and batches lie between the long-lived held readings: the heap is fragmented and a
    batch frame finds no room although half the heap is free. Measured with
    tests/mpy/fw_memory.py: a leader of 10 members (buffers 64/128) needs a 192k heap without
    it and runs in 112k with 16 KB. The whole firmware process leading 10 members
    (tests/test_firmware_memory_live.py, 64-bit, 117 KB live in 128k) ran out of heap in 3 of
    4 runs with 16 KB, in none of 3 with 8 KB. With OTA, sleepy members and energy
    accounting (about 120 KB live) 8 KB failed: the leader made no batch for the rest of the
    run (thousands of MemoryErrors, batches of 30 readings need about 20 KB in one piece on
    the 64-bit port); 4 KB passed 3 runs alone and 2 on a loaded machine. Each halving is
    about twice the collections (each a few ms on an ESP32) for a heap that stays in one
    piece.
    """
    import gc
    import sys

    try:
        cfg = load(path)
        # (The module by its computed name: the layer a node does not run adds no interned
        # module name; firmware/README.md, "Memory".)
        kinds = ("esp32", "unix")
        kind = cfg["hw"].get("kind")
        if not kind:
            kind = kinds[1] if sys.platform in ("linux", "darwin") else kinds[0]
        if kind not in kinds:
            raise ConfigError("hw.kind: unknown %r (esp32 or unix)" % (kind,))
        layer = __import__("hw." + kind, None, None, (kind,)).Hardware
    except ConfigError as e:
        print("config: %s" % e)
        sys.exit(2)
    threshold = int(cfg.get("gc_threshold", 4096))
    if threshold > 0:
        gc.threshold(threshold)
    return cfg, layer(cfg)


def runtime(self, cfg, hw, link):
    """The state of ``self``, an ``app.runtime.Runtime`` whose clock is set (its ``__init__``
    calls this: ``self`` as there, a name interned already): the boot id, the node application
    with its energy accounting, the gateway, the link, the update's state."""
    import cbor
    import udp

    from agent.core.app import NodeApp, make_config
    from agent.core.energy import Energy

    self.cfg = cfg
    self.hw = hw
    # A sleepy member (app/sleep.py, loaded only for one) woken from deep sleep goes on in
    # the boot it kept; anything else starts a new boot. A flashed board has no boot id
    # stored: it waits (bounded) for NTP, so that the clock gives one above its old ids
    # (firmware/README.md, "Boot ids after a reflash").
    self.sleeper = None
    if "sleep" in cfg:
        from app import sleep  # (a local: "app.sleep" is interned only when imported)

        self.sleeper = sleep.Sleeper(cfg, hw)
    boot = (self.sleeper and self.sleeper.boot) or next_boot(
        cfg["boot_file"], hw, int(cfg.get("clock_wait_ms", 10000))
    )
    self._clock[1] = time.ticks_ms()  # the runtime's clock starts after that wait
    self.boot = boot
    # Beside the boot counter: the highest term seen, so that after a power cut the first
    # claim goes above the gateway's fence. Written only when it rises (flash wear is one
    # small write per election).
    term = 0
    try:
        # ("." and "term" are interned names already; ".term" would be one more, and the
        # process is at the edge of a new qstr pool: firmware/README.md, "Memory".)
        with open(cfg["boot_file"] + "." + "term") as f:
            term = int(f.read())
    except (OSError, ValueError):
        pass
    app = self.app = NodeApp(
        cfg["node_id"],
        cfg["mesh"],
        cfg["key_bytes"],
        boot,
        # One reused encode buffer: no growing copies per frame.
        cbor.Encoder(_ENCODE_BYTES).dumps,
        cbor.loads,
        config=make_config(cfg["heartbeat_ms"], cfg["election"], cfg["score"]),
        seed=boot,
        buffer_size=cfg["data"]["buffer_capacity"],
        collector_size=cfg["data"]["collector_capacity"],
        clock_paused=link.clock_paused,
        term=term,  # (the core ignores one out of range)
        # Seeds the random part of every batch id, which the gateway's ack must echo.
        token=int.from_bytes(os.urandom(4), "big"),
    )  # (the rest: NodeApp's defaults are a board's)
    # Energy accounting: the app counts frames and role time; the radio idles in modem
    # sleep unless Wi-Fi's power save is off (boot.py sets it).
    app.energy = Energy(
        self.now(),
        cfg["energy"],
        cfg["wifi"].get("power_save") != "none",  # (modem sleep: the default)
        self.sleeper is not None,
    )
    if self.sleeper is not None:
        self.sleeper.restore(app, self.wall_ms())
    udp_cfg = cfg["udp"]
    # Where our unicast frames arrive (UDP); mDNS advertises it on either link.
    self.unicast_port = int(udp_cfg.get("unicast_port", udp_cfg.get("port", udp.MESH_PORT)))
    self.gateway = host_port(cfg["gateway"].get("address", ""), udp.GATEWAY_PORT)
    app.gateway_known = self.gateway is not None
    self.link = link(self)
    self.mdns = None
    self.mdns_sock = None
    self._mdns_heard = False  # a packet came in since the last look at what mDNS found
    self.peak_heap = 0
    self.loop_errors = 0
    self.ip = None
    self._rx_tasks = []
    # The over-the-air update's state (app/ota.py, otaboot.py; {} when none ever ran).
    try:
        with open("ota.json") as f:
            self.ota = json.load(f)
    except (OSError, ValueError):
        self.ota = {}
    self.reboot = False  # set by app/ota.py: stop gracefully, then reset
