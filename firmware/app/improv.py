"""Provisioning over the serial port with the Improv Wi-Fi serial protocol (what ESPHome's web
installer speaks), plus meshelect's own settings.

main.py (``start.py``) runs ``serve()`` when the board has no ``config.json`` (a new board, or
a wiped one): the code is loaded only then. Packets on the UART (stdin/stdout; a pty on the unix port):

    b"IMPROV" | version (1) | type (1) | length (1) | data | checksum (sum of the rest & 0xFF)

Types: 0x01 current state (0x02 ready, 0x03 provisioning, 0x04 provisioned), 0x02 error
state (0x00 none, 0x01 invalid RPC, 0x02 unknown command, 0x03 unable to connect), 0x03 RPC
command (command, data length, data), 0x04 RPC result (command, length, strings each with
its length byte). Commands: 0x01 Wi-Fi settings (SSID, password), 0x02 current state, 0x03
device info (firmware, version, chip, device name), 0x04 scan (one result per network, an
empty one last), and meshelect's 0x80: node id, mesh, mesh key, update key (hex; an empty
string leaves one unset), sent before the Wi-Fi settings. The Wi-Fi settings end it: the board
joins the network (the unix port has none to join), writes config.json and resets. Nothing
received is ever printed or echoed: the keys and the password go to config.json only.
"""

import json
import sys

_HEADER = b"IMPROV"
_VERSION = 1
_STATE = 1
_ERROR = 2
_RPC = 3
_RESULT = 4


def _packet(kind, data):
    body = _HEADER + bytes((_VERSION, kind, len(data))) + data
    return body + bytes((sum(body) & 0xFF,))


def _strings(data):
    out = []
    i = 0
    while i < len(data):
        n = data[i]
        out.append(bytes(data[i + 1 : i + 1 + n]).decode())
        i += 1 + n
    return out


def _result(command, strings):
    data = b""
    for s in strings:
        s = s.encode()
        data += bytes((len(s),)) + s
    return _packet(_RESULT, bytes((command, len(data))) + data)


def _read_packet(read):
    """The next packet (kind, data) from ``read(n)``; None at the end of the input."""
    window = b""
    while window != _HEADER:
        c = read(1)
        if not c:
            return None
        window = (window + c)[-6:]
    head = read(3)
    if len(head) < 3:
        return None
    data = read(head[2]) if head[2] else b""
    check = read(1)
    if len(data) < head[2] or not check or (sum(_HEADER + head + data) & 0xFF) != check[0]:
        return (0, b"")  # damaged: answered as an invalid packet
    return head[1], data


def _join(ssid, password):
    """True once joined (a board), or at once on the unix port (no Wi-Fi to join)."""
    try:
        import network  # type: ignore[import-not-found]
    except ImportError:
        return True
    import time

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    wlan.connect(ssid, password)
    for _ in range(150):
        if wlan.isconnected():
            return True
        time.sleep_ms(100)
    return False


def _scan():
    try:
        import network  # type: ignore[import-not-found]
    except ImportError:
        return []
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    found = []
    for net in wlan.scan():
        found.append([net[0].decode(), str(net[3]), "YES" if net[4] else "NO"])
    return found


def serve(path="config.json", read=None, write=None):
    """Answer Improv packets until the board is provisioned; returns True then."""
    if read is None:
        read = sys.stdin.buffer.read
    if write is None:
        out = sys.stdout.buffer

        def write(data):
            out.write(data)
            try:
                out.flush()
            except AttributeError:
                pass

    cfg = {}
    write(_packet(_STATE, b"\x02"))  # ready (no button to press: authorized)
    while True:
        got = _read_packet(read)
        if got is None:
            return False
        kind, data = got
        if kind != _RPC or len(data) < 2 or data[1] != len(data) - 2:
            write(_packet(_ERROR, b"\x01"))
            continue
        command = data[0]
        try:
            args = _strings(data[2:])
        except (IndexError, UnicodeError):
            write(_packet(_ERROR, b"\x01"))
            continue
        write(_packet(_ERROR, b"\x00"))
        if command == 2:
            write(_packet(_STATE, b"\x04" if cfg.get("wifi") else b"\x02"))
        elif command == 3:
            write(_result(3, ["meshelect", "1", sys.platform, cfg.get("node_id") or "meshelect"]))
        elif command == 4:
            for net in _scan():
                write(_result(4, net))
            write(_result(4, []))
        elif command == 0x80 and len(args) == 4:
            cfg["node_id"], cfg["mesh"] = args[0], args[1]
            if args[2]:
                cfg["mesh_key"] = args[2]
            if args[3]:
                cfg["update_key"] = args[3]
            write(_result(0x80, []))
        elif command == 1 and len(args) == 2:
            write(_packet(_STATE, b"\x03"))
            if not _join(args[0], args[1]):
                write(_packet(_ERROR, b"\x03"))
                write(_packet(_STATE, b"\x02"))
                continue
            cfg["wifi"] = {"ssid": args[0], "password": args[1]}
            with open(path + ".tmp", "w") as f:
                json.dump(cfg, f)
            import os

            os.rename(path + ".tmp", path)
            write(_packet(_STATE, b"\x04"))
            write(_result(1, []))
            return True
        else:
            write(_packet(_ERROR, b"\x02"))
