"""Over-the-air update, the bundle's half: the notice, fetch, verify, stage, and the trial.

Imported only when an update starts (a notice arrives) or a boot has one to finish (trial,
a rollback or failure to report): a node that is not updating carries none of this code.
The other half, the switch and the rollback at boot, is ``otaboot.py`` beside main.py,
which no bundle replaces.

1. **Notice**: a datagram to the node's unicast port, or the same bytes on its MQTT topic
   ``P/<mesh>/update/<node>`` (app/mqtt_transport.py), ``b"U"`` + a 16-byte tag + JSON
   ``{"url": "http://host:port/path/", "serial": n, "node": id or "*"}``, the tag being the
   first 16 bytes of HMAC-SHA256 under the update key (``update_key`` in config.json; not the
   mesh key). A bad tag, another node's notice, or a serial below one this node has tried is
   refused (counted in ``refused``): a replayed notice never brings an older app back. The
   serial tried last again is the same notice repeated (sent until the node reports, or
   retained on the broker): dropped, not counted, and it never retries an update that failed
   or rolled back.
2. **Fetch**: ``url + "manifest"`` (a line with the hex HMAC-SHA256 of the rest, then JSON:
   version, serial, trial_ms, dirs, files with sha256 and size), then every file, each by an
   HTTP/1.0 GET on a socket of its own, 1 KB at a time into ``app.new/``, hashed as it comes.
   A manifest's ``image`` (a MicroPython image, ESP32 only) is written as it comes into the
   OTA app slot that is not running (``esp32.Partition``, 4096-byte blocks, erased as each is
   written); a board without ``esp32``, or without OTA slots, refuses the update first.
3. **Verify**: the manifest's tag; every file's size and sha256, again read back from flash
   (the image from its slot).
4. **Pending**: ``ota.json`` says ``pending``. The node stops sampling, waits (at most
   ``_DRAIN_MS``) until the gateway confirmed what it holds, and stops gracefully (a leader
   hands over first), then resets: ``otaboot`` switches the folders and starts the trial.
   With an image, ``set_boot()`` (after ``pending``) makes the bootloader start it at that
   reset, in ESP-IDF's pending-verify state.
5. **Trial**: the new app commits once it has joined its mesh (it follows a leader, or leads
   with members) and the gateway confirmed one of its readings; if not within ``trial_ms``
   it resets, and the boot rolls back. A crash or a watchdog reset does the same. An image
   commits with ``mark_app_valid_cancel_rollback()``; one that did not is rolled back by the
   bootloader at that reset (ESP-IDF's app rollback), as ``otaboot`` rolls back the folders.

Each state change is reported to the server that served the bundle (``report``: a GET of
``url + "report?node=..&state=.."``, best effort), which is how the host tool and the
gateway's dashboard follow an update. MicroPython only (``asyncio.wait_for_ms``).
"""

import hashlib
import io
import json
import os

try:
    import asyncio
except ImportError:
    import uasyncio as asyncio  # type: ignore[no-redef]

import otaboot
from micropython import const  # type: ignore[import-not-found]

from agent.core.auth import Key

_CHUNK = const(1024)
_BLOCK = const(4096)  # esp32.Partition's block
_TIMEOUT_MS = const(10000)
_DRAIN_MS = const(15000)
_TAG = const(16)
_BUSY = ("downloading", "verifying", "pending")


def _key(rt):
    text = rt.cfg.get("update_key")
    return Key(bytes.fromhex(text)) if text else None


def frame(rt, data):
    """A datagram that starts with ``U`` (an update notice) arrived on the mesh's unicast
    socket, or a message on the node's update topic. (The runtime's two entry points are
    named ``frame`` and ``run``: names the process has interned already, see
    firmware/README.md "Memory".)"""
    ota = rt.ota
    key = _key(rt)
    seen = ota.get("seen", ota.get("serial", 0))
    try:
        if key is None or not key.verify(data[1 + _TAG :], data[1 : 1 + _TAG]):
            raise ValueError
        msg = json.loads(data[1 + _TAG :])
        serial = msg["serial"]
        if msg["node"] not in (rt.cfg["node_id"], "*") or not isinstance(serial, int):
            raise ValueError
        if serial < seen:
            raise ValueError  # a replayed notice of an older bundle
    except (ValueError, KeyError, TypeError):
        ota["refused"] = ota.get("refused", 0) + 1
        return
    if ota.get("state") in _BUSY or serial == seen:
        return  # (a notice is sent again until the node reports: not a refusal)
    ota["seen"] = serial
    asyncio.create_task(update(rt, key, msg["url"], serial))


async def update(rt, key, url, serial):
    ota = rt.ota
    ota["url"] = url
    ota.pop("reason", None)
    ota.pop("image", None)
    try:
        await _step(rt, "downloading", 0)
        host, port, base = _split(url)
        text = io.BytesIO()
        await _get(host, port, base + "manifest", text, None)
        text = text.getvalue()
        if text[64:65] != b"\n" or not key.verify(text[65:], bytes.fromhex(text[:64])):
            raise ValueError("signature")
        man = json.loads(text[65:])
        text = None
        if man["serial"] != serial:
            raise ValueError("serial")
        files = man["files"]
        image = man.get("image")
        slot = _slot(image) if image else None  # (refused before any download)
        total = 1 + (image["size"] if image else 0)
        for entry in files:
            total += entry["size"]
        otaboot.rmtree(otaboot.NEW)
        done = 0
        for entry in files:
            path = otaboot.NEW + "/" + entry["path"]
            _makedirs(path)
            h = hashlib.sha256()
            with open(path, "wb") as f:
                done += await _get(host, port, base + entry["path"], f, h)
            _check(entry, h)
            await _progress(rt, done * 100 // total)
        if image:
            h = hashlib.sha256()
            blocks = _Blocks(slot)
            await _get(
                host,
                port,
                base + image["path"],
                blocks,
                h,
                lambda n: _progress(rt, (done + n) * 100 // total),  # (as the image comes)
            )
            blocks.flush()
            blocks = None  # (its 4 KB back before the read-back's)
            _check(image, h)
        await _step(rt, "verifying", 100)
        if image:
            _check(image, _read_back(slot, image["size"]))
        buf = bytearray(_CHUNK)
        for entry in files:  # read back: what the flash holds, not what was sent
            h = hashlib.sha256()
            with open(otaboot.NEW + "/" + entry["path"], "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(memoryview(buf)[:n])
            _check(entry, h)
        dirs = man["dirs"]
        had = []
        for name in dirs:
            if otaboot.exists(name):
                had.append(name)
        otaboot.rmtree(otaboot.OLD)
        os.mkdir(otaboot.OLD)
        ota["new"] = man["version"]
        ota["new_serial"] = serial
        ota["dirs"] = dirs
        ota["had"] = had
        ota["trial_ms"] = man.get("trial_ms", 120000)
        if image:
            ota["image"] = slot.info()[4]  # the slot the trial must run from
        await _step(rt, "pending", 100)
        if image:  # (after "pending": a cut between the two fails the trial)
            try:
                slot.set_boot()
            except OSError:  # ESP-IDF's own check of the image (esp_image_verify)
                raise ValueError("image not bootable")
    except Exception as e:  # any failure leaves the running app as it is
        otaboot.rmtree(otaboot.NEW)
        ota["reason"] = e.args[0] if isinstance(e, ValueError) and e.args else repr(e)[:40]
        await _step(rt, "failed", ota.get("pct", 0))
        return
    # Stop sampling, let the gateway confirm what this node holds, then reset into the trial.
    rt.cfg["data"]["sample_ms"] = 1 << 29
    start = rt.now()
    while rt.app.buffer.depth and rt.now() - start < _DRAIN_MS:
        await asyncio.sleep_ms(100)
    rt.reboot = True


def _check(entry, h):
    if _hex(h.digest()) != entry["sha256"]:
        raise ValueError("sha256 " + entry["path"])


def _esp32():
    try:
        import esp32  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError("no esp32: image updates need an ESP32")
    return esp32


def _slot(image):
    """The OTA app slot the image goes to (not the running one), erased as it is written."""
    esp32 = _esp32()
    try:
        slot = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    except OSError:
        raise ValueError("no ota slot: flash a meshelect image first")
    if image["size"] > slot.ioctl(4, 0) * _BLOCK:
        raise ValueError("image larger than its slot")
    return slot


class _Blocks:
    """A file-like ``write`` into a partition: gathers one block, writes it whole (erased
    first). The slot was not running, nor boots, until ``set_boot``: a cut leaves it unused."""

    def __init__(self, slot):
        self.slot = slot
        self.buf = bytearray(_BLOCK)
        self.n = 0
        self.block = 0

    def write(self, data):
        i = 0
        while i < len(data):
            k = min(_BLOCK - self.n, len(data) - i)
            self.buf[self.n : self.n + k] = data[i : i + k]
            self.n += k
            i += k
            if self.n == _BLOCK:
                self.flush()

    def flush(self):
        if self.n:
            for j in range(self.n, _BLOCK):
                self.buf[j] = 0xFF  # (erased flash)
            self.slot.writeblocks(self.block, self.buf)
            self.block += 1
            self.n = 0


def _read_back(slot, size):
    """The sha256 of the first ``size`` bytes the slot holds."""
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    block = 0
    while size > 0:
        slot.readblocks(block, buf)
        h.update(memoryview(buf)[: min(size, _BLOCK)])
        size -= _BLOCK
        block += 1
    return h


def _hex(data):
    return "".join("%02x" % b for b in data)


def _makedirs(path):
    parts = path.split("/")
    for i in range(1, len(parts)):
        folder = "/".join(parts[:i])
        if not otaboot.exists(folder):
            os.mkdir(folder)


def _split(url):
    """``http://host:port/path/`` -> (host, port, "/path/")."""
    if not url.startswith("http://"):
        raise ValueError("url")
    rest = url[7:]
    slash = rest.find("/")
    if slash < 0:
        rest += "/"
        slash = len(rest) - 1
    host = rest[:slash]
    port = 80
    if ":" in host:
        host, port = host.split(":")
        port = int(port)
    return host, port, rest[slash:]


async def _get(host, port, path, out, h, tick=None):
    """GET ``path`` into ``out`` (a file, or BytesIO), 1 KB at a time; returns its length.
    ``tick(n)``: a coroutine awaited after each KB, ``n`` the bytes so far."""
    reader, writer = await asyncio.wait_for_ms(asyncio.open_connection(host, port), _TIMEOUT_MS)
    try:
        writer.write(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (path, host)).encode())
        await writer.drain()
        line = await asyncio.wait_for_ms(reader.readline(), _TIMEOUT_MS)
        if line[9:12] != b"200":
            raise ValueError("http %s" % line[9:12].decode())
        length = -1
        while True:
            line = await asyncio.wait_for_ms(reader.readline(), _TIMEOUT_MS)
            if len(line) <= 2:
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        n = 0
        while True:
            k = await asyncio.wait_for_ms(reader.readinto(buf), _TIMEOUT_MS)
            if not k:
                break
            out.write(view[:k])
            if h is not None:
                h.update(view[:k])
            n += k
            if tick:
                await tick(n)
        if n != length:
            raise ValueError("cut")  # the server or the network went away halfway
        return n
    finally:
        writer.close()


async def _progress(rt, pct):
    """Report the download at every 25 %."""
    if pct // 25 != rt.ota["pct"] // 25:
        await _step(rt, "downloading", pct)
    rt.ota["pct"] = pct


async def _step(rt, state, pct):
    ota = rt.ota
    ota["state"] = state
    ota["pct"] = pct
    otaboot.write(ota)  # a reset now finishes (pending) or undoes (the rest) this update
    print("ota: %s %d%%%s" % (state, pct, " " + ota["reason"] if "reason" in ota else ""))
    await report(rt)


def _quote(text):
    out = ""
    for c in str(text):
        out += c if c.isalpha() or c.isdigit() or c in "-._" else "%%%02X" % ord(c)
    return out


async def report(rt):
    """Tell the server that served the bundle where this node's update stands (best effort)."""
    ota = rt.ota
    url = ota.get("url")
    if not url:
        return
    query = "node=%s&state=%s&pct=%d&version=%s&new=%s&reason=%s" % (
        _quote(rt.cfg["node_id"]),
        _quote(ota.get("state", "idle")),
        ota.get("pct", 0),
        _quote(ota.get("version", "")),
        _quote(ota.get("new", "")),
        _quote(ota.get("reason", "")),
    )
    try:
        host, port, base = _split(url)
        await _get(host, port, base + "report?" + query, io.BytesIO(), None)
    except Exception:  # the server may be gone: the update does not need it
        pass


def _fail_trial(rt, reason):
    ota = rt.ota
    ota["reason"] = reason
    otaboot.write(ota)  # still "trial": the boot rolls back (and the bootloader, an image)
    print("ota: %s did not commit: %s" % (ota.get("new"), reason))
    rt.reboot = True


async def run(rt):
    """At start, when ``ota.json`` says anything but idle: report a rollback or a failure
    once, or run the trial: commit when joined, else reset (and the boot rolls back)."""
    ota = rt.ota
    if ota.get("state") != "trial":
        if ota.get("told") != ota.get("seen"):
            ota["told"] = ota.get("seen")
            otaboot.write(ota)
            await report(rt)
        return
    await report(rt)
    app = rt.app
    node = app.node
    start = rt.now()
    image = ota.get("image")
    if image:
        esp32 = _esp32()
        if esp32.Partition(esp32.Partition.RUNNING).info()[4] != image:
            return _fail_trial(rt, "image not booted")  # (a cut between "pending" and set_boot)
    while True:
        await asyncio.sleep_ms(500)
        if (
            node.leader is not None
            and (node.leader != app.id or node.peers)
            and app.buffer.confirmed
        ):
            break
        if rt.now() - start >= ota.get("trial_ms", 120000):
            return _fail_trial(rt, "no join")
    try:
        import machine  # type: ignore[import-not-found]

        machine.Timer(0).deinit()  # otaboot's hard end of the trial
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    if image:
        try:  # the bootloader keeps the new image from now on
            esp32.Partition.mark_app_valid_cancel_rollback()
        except OSError:
            pass  # a bootloader without rollback: the image stays anyway
    otaboot.rmtree(otaboot.OLD)
    ota["version"] = ota.pop("new")
    ota["serial"] = ota.pop("new_serial")
    for name in ("dirs", "had", "trial_ms", "reason", "image"):
        ota.pop(name, None)
    ota["state"] = "idle"
    ota["told"] = ota.get("seen")
    otaboot.write(ota)
    print("ota: committed %s" % ota["version"])
    await report(rt)
