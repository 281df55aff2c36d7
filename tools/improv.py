"""`meshelect firmware provision --port PORT`: a new board's Wi-Fi, name and keys over its
serial port, with the Improv Wi-Fi serial protocol (the board's side: firmware/app/improv.py,
which documents the packets; meshelect's settings are its RPC command 0x80).

    meshelect firmware provision --port /dev/ttyUSB0 --ssid greenhouse --node-id gh-7 \\
        --mesh greenhouse --mesh-key-file mesh.key [--update-key-file update.key]

The Wi-Fi password comes from ``MESHELECT_WIFI_PASSWORD`` or a prompt, never the command line
(which other users of the machine can read); nothing secret is printed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

HEADER = b"IMPROV"
VERSION = 1
STATE, ERROR, RPC, RESULT = 1, 2, 3, 4
WIFI, GET_STATE, DEVICE_INFO, SCAN, MESHELECT = 1, 2, 3, 4, 0x80
STATES = {2: "ready", 3: "provisioning", 4: "provisioned"}
ERRORS = {1: "invalid RPC packet", 2: "unknown RPC command", 3: "unable to connect", 255: "unknown"}


class ImprovError(Exception):
    pass


def packet(kind: int, data: bytes) -> bytes:
    body = HEADER + bytes((VERSION, kind, len(data))) + data
    return body + bytes((sum(body) & 0xFF,))


def rpc(command: int, strings: list[str]) -> bytes:
    data = b""
    for s in strings:
        raw = s.encode()
        if len(raw) > 255:
            raise ImprovError("a setting is longer than 255 bytes")
        data += bytes((len(raw),)) + raw
    return packet(RPC, bytes((command, len(data))) + data)


class Client:
    """Improv over a byte stream: ``read(n)`` (b"" on timeout) and ``write(data)``."""

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], Any]) -> None:
        self.read = read
        self.write = write
        self.state = 0

    def next_packet(self) -> tuple[int, bytes]:
        window = b""
        while window != HEADER:
            c = self.read(1)
            if not c:
                raise ImprovError("the board did not answer (is it unprovisioned, at its REPL?)")
            window = (window + c)[-6:]  # (boot messages and REPL text come before packets)
        head = self.read(3)
        data = self.read(head[2]) if len(head) == 3 and head[2] else b""
        check = self.read(1)
        if len(head) < 3 or not check or (sum(HEADER + head + data) & 0xFF) != check[0]:
            raise ImprovError("a damaged packet from the board")
        if head[1] == STATE and data:
            self.state = data[0]
        return head[1], data

    def call(self, command: int, strings: list[str]) -> list[list[str]]:
        """Send an RPC; returns its results (one list of strings each)."""
        self.write(rpc(command, strings))
        results: list[list[str]] = []
        while True:
            kind, data = self.next_packet()
            if kind == ERROR and data and data[0]:
                raise ImprovError("the board says: %s" % ERRORS.get(data[0], data[0]))
            if kind == RESULT and data and data[0] == command:
                found = _strings(data[2:])
                if command != SCAN:
                    return [found]
                if not found:  # a scan ends with an empty result
                    return results
                results.append(found)
            if kind == STATE and command == GET_STATE:
                return [[STATES.get(self.state, str(self.state))]]


def _strings(data: bytes) -> list[str]:
    out, i = [], 0
    while i < len(data):
        n = data[i]
        out.append(data[i + 1 : i + 1 + n].decode(errors="replace"))
        i += 1 + n
    return out


def provision(
    client: Client,
    ssid: str,
    password: str,
    node_id: str,
    mesh: str,
    mesh_key: str = "",
    update_key: str = "",
    log: Callable[[str], None] = print,
) -> list[str]:
    """Give a board its settings; returns its device info."""
    state = client.call(GET_STATE, [])[0][0]
    if state != "ready":
        raise ImprovError("the board is %s, not ready to be provisioned" % state)
    info = client.call(DEVICE_INFO, [])[0]
    log("board: %s" % " ".join(info))
    client.call(MESHELECT, [node_id, mesh, mesh_key, update_key])
    client.call(WIFI, [ssid, password])
    if client.state != 4:
        raise ImprovError("the board did not say it is provisioned")
    log("provisioned %s in mesh %s on Wi-Fi %s" % (node_id, mesh, ssid))
    return info


def serial_client(port: str, timeout: float = 20.0) -> tuple[Client, Any]:
    import serial  # pyserial, which esptool brings (meshelect[micropython])

    link = serial.Serial(port, 115200, timeout=timeout)
    return Client(link.read, link.write), link
