"""Over-the-air updates of the MicroPython image (``image`` in a bundle, firmware/app/ota.py)
on the unix port and the 32-bit stand-in, the board's ``esp32`` being the test-only stand-in
(testkit/esp32.py: two OTA app slots over files, ESP-IDF's boot states and rollback, its
bootloader step run before every start by the supervisor, testkit/fwboard.py).

The stand-in's image bytes do not run: what this shows is the board's half (the slot found,
written in 4096-byte blocks as the image comes, read back and checked, ``set_boot`` after
``pending``, the trial's commit with ``mark_app_valid_cancel_rollback``) against the partition
calls' ESP-IDF semantics; a real image booting, and ESP-IDF's own bootloader rolling it back,
need a board (firmware/README.md, "Over-the-air updates").
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.cli import main
from testkit.fwboard import otadata
from testkit.netns import Lab
from tests.test_firmware_ota import (
    UPDATE_KEY,
    WAIT_S,
    Rig,
    open_rig,
    send_half,
    variant,
    wait_for,
)
from tools import ota

IMAGE_SIZE = 100_000  # 25 blocks, the last one partly


def fake_image(path: Path, seed: int) -> Path:
    """Bytes with an ESP32 app image's header marks (the image magic and the app description's
    magic word), the rest a pattern of ``seed``: all the stand-in's ``set_boot`` checks."""
    body = bytes((seed * 7 + i * 13) & 0xFF for i in range(IMAGE_SIZE))
    path.write_bytes(b"\xe9" + body[1:32] + ota.APP_DESC_MAGIC + body[36:])
    return path


class StallHandler(ota.Handler):
    """Sends the headers and half of the image, then nothing until the test lets it go."""

    halfway = threading.Event()
    release = threading.Event()

    def do_GET(self) -> None:  # (http.server's name)
        if not self.path.endswith(ota.IMAGE_FILE):
            return super().do_GET()
        send_half(self)
        StallHandler.halfway.set()
        StallHandler.release.wait(WAIT_S)  # (the board is reset meanwhile)
        return None


@pytest.fixture
def rig(
    lab_factory: Callable[..., Lab], tmp_path: Path, mpy_exe: str, mpy_bits: int
) -> Iterator[Rig]:
    lab = lab_factory(prefix="mp-", subnet="10.99.0.0/24", hosts=3)
    yield from open_rig(lab, tmp_path, mpy_exe, mpy_bits, esp32=True)


@pytest.mark.netns
@pytest.mark.micropython
@pytest.mark.slow
def test_an_image_update_is_refused_rolled_back_or_committed_in_the_other_slot(
    rig: Rig, tmp_path: Path
) -> None:
    assert wait_for(rig.joined), rig.logs()
    folder = rig.folders["fw-a"]
    assert otadata(folder) == {"boot": "ota_0", "running": "ota_0", "states": {"ota_0": "valid"}}
    original = rig.app_file()

    # A board without esp32 refuses an image, with a reason, before it downloads anything.
    outcome = rig.push(
        rig.bundle(None, "no-esp32", image=fake_image(tmp_path / "a.bin", 1)), node="fw-b"
    )
    assert (outcome["state"], outcome["reason"]) == (
        "failed",
        "no esp32: image updates need an ESP32",
    ), outcome
    # (the status file is rewritten every status_ms: it shows the failure a moment after)
    assert wait_for(lambda: rig.status("fw-b").get("ota", {}).get("state") == "failed")
    assert rig.joined()

    # An image changed after signing: written, then refused by its sha256; never set to boot.
    tampered = rig.bundle(None, "tampered", image=fake_image(tmp_path / "b.bin", 2))
    data = bytearray((tampered / ota.IMAGE_FILE).read_bytes())
    data[50_000] ^= 1
    (tampered / ota.IMAGE_FILE).write_bytes(bytes(data))
    outcome = rig.push(tampered)
    assert (outcome["state"], outcome["reason"]) == ("failed", "sha256 micropython.bin"), outcome
    assert otadata(folder)["boot"] == "ota_0" and rig.resets() == 0

    # A reset halfway through the image: the running slot boots again, the update failed.
    cut = rig.bundle(None, "cut", image=fake_image(tmp_path / "c.bin", 3))
    reports = ota.Reports()
    server = rig.serve(reports, StallHandler)
    try:
        rig.notify(ota.notice(UPDATE_KEY, rig.url(server, cut), rig.serial, "fw-a"))
        assert StallHandler.halfway.wait(WAIT_S), rig.log()
        # (the image is most of the bundle: its progress is reported as it comes)
        assert reports.wait(lambda got: got.get("fw-a", {}).get("pct", 0) >= 25, WAIT_S)
        os.kill(int((folder / "mpy.pid").read_text()), signal.SIGKILL)
        assert reports.wait(lambda got: got.get("fw-a", {}).get("state") == "failed", WAIT_S)
    finally:
        StallHandler.release.set()
        server.close()
    assert reports.latest["fw-a"]["reason"] == "interrupted", reports.latest
    state = otadata(folder)
    assert (state["boot"], state["running"]) == ("ota_0", "ota_0"), state
    assert "ota_1" not in state["states"], state
    assert wait_for(rig.joined), rig.logs()

    # An image whose app never joins its mesh (image and app in one bundle): not committed in
    # its trial, so the bootloader goes back to ota_0 and otaboot to the old app.
    deaf = variant(
        rig.build,
        tmp_path / "deaf",
        "    def send(self, out):\n",
        "    def send(self, out):\n        return\n",
    )
    outcome = rig.push(rig.bundle(deaf, "deaf", image=fake_image(tmp_path / "d.bin", 4)))
    assert (outcome["state"], outcome["reason"]) == ("rolled-back", "no join"), outcome
    log = rig.log()
    assert "bootloader: ota_1 (pending-verify)" in log and "ota: trying deaf" in log, log
    state = otadata(folder)
    assert (state["running"], state["states"]["ota_1"]) == ("ota_0", "aborted"), state
    assert log.rindex("bootloader: ota_0 (valid)") > log.index("bootloader: ota_1"), log
    assert rig.app_file() == original
    assert wait_for(rig.joined), rig.logs()

    # A good image: written to ota_1, booted on trial, committed; it stays after a reset.
    image = fake_image(tmp_path / "e.bin", 5)
    outcome = rig.push(rig.bundle(None, "good", image=image))
    assert (outcome["state"], outcome["version"]) == ("idle", "good"), outcome
    state = otadata(folder)
    assert (state["boot"], state["running"], state["states"]["ota_1"]) == (
        "ota_1",
        "ota_1",
        "valid",
    ), state
    slot = (folder / "flash" / "ota_1").read_bytes()
    assert slot[:IMAGE_SIZE] == image.read_bytes() and slot[IMAGE_SIZE:] == b"\xff" * (
        len(slot) - IMAGE_SIZE
    )
    assert rig.app_file() == original  # (an image alone leaves the app as it was)
    resets = rig.resets()
    os.kill(int((folder / "mpy.pid").read_text()), signal.SIGKILL)
    assert wait_for(
        lambda: (
            rig.resets() > resets
            and rig.joined()
            and rig.status().get("ota", {}).get("version") == "good"
        )
    ), rig.logs()
    assert otadata(folder)["running"] == "ota_1"


def test_the_bundle_command_signs_an_image_and_refuses_a_combined_flash_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "update.key"
    key.write_text(UPDATE_KEY.hex())
    image = fake_image(tmp_path / "micropython.bin", 6)
    args = ["firmware", "ota", "bundle", "--key-file", str(key), "--version", "img"]
    assert main([*args, "--image", str(image), "--out", str(tmp_path / "b")]) == 0
    manifest = ota.read_manifest(tmp_path / "b", UPDATE_KEY)  # (checks the signature)
    assert (manifest["dirs"], manifest["files"]) == ([], [])
    assert manifest["image"] == {
        "path": "micropython.bin",
        "sha256": hashlib.sha256(image.read_bytes()).hexdigest(),
        "size": IMAGE_SIZE,
    }
    assert (tmp_path / "b" / "micropython.bin").read_bytes() == image.read_bytes()
    # A MicroPython build's firmware.bin starts with the bootloader (also 0xE9, no app
    # description): refused, no bundle written.
    combined = tmp_path / "firmware.bin"
    combined.write_bytes(b"\xe9" + bytes(IMAGE_SIZE))
    assert main([*args, "--image", str(combined), "--out", str(tmp_path / "c")]) == 2
    assert "not an ESP32 app image" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
