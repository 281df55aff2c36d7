"""A stand-in for MicroPython's ``esp32`` module on the unix port: ``Partition``'s OTA calls over
files, for tests of the firmware image update (firmware/app/ota.py). Test-only: a test copies
it into a board's folder as ``esp32.py`` (testkit/fwboard.py), nothing else imports it.

What it models, after ESP-IDF with ``CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE``:

- two app slots, ``ota_0`` and ``ota_1``, files of ``SLOT_SIZE`` bytes under ``flash/`` (made
  on first use, erased: 0xFF), and ``flash/otadata`` (JSON, written atomically) with the slot
  to boot, the one running, and each slot's ``ota_state``;
- ``readblocks``/``writeblocks``/``ioctl`` in 4096-byte blocks as MicroPython's: a write
  without an offset erases its blocks first, one with an offset only clears bits (NOR flash);
  a buffer that is not whole blocks, a block past the end, or a write into the running slot
  (ESP-IDF aborts a "dangerous write") raise OSError;
- ``get_next_update()``: the other slot; ``set_boot()``: checks the image's header (the first
  byte 0xE9 and the app description's magic word: the part of ``esp_image_verify`` a stand-in
  can do), marks the slot ``new`` and makes it the boot slot, which takes effect at a reset;
- ``bootloader()``: what the second-stage bootloader does at a reset (the board's supervisor
  runs it before each start): a ``new`` slot boots as ``pending-verify``; a slot still
  ``pending-verify`` at the next reset was not confirmed: it becomes ``aborted`` and the other
  slot boots (the rollback);
- ``Partition.mark_app_valid_cancel_rollback()``: the running slot becomes ``valid``.

Not modelled: the image's checksum and appended SHA-256, secure boot, flash encryption, the
bootloader and partition table themselves, and what the image is: its bytes do not run (the
unix port keeps running the same interpreter), so a test sees the switch in ``otadata`` and in
``Partition(Partition.RUNNING)``, not in new code.
"""

import json
import os

SLOT_SIZE = 64 * 4096
_BLOCK = 4096
_SLOTS = ("ota_0", "ota_1")
_DIR = "flash"
_OTADATA = _DIR + "/otadata"
_APP_DESC_MAGIC = b"\x32\x54\xcd\xab"  # ESP_APP_DESC_MAGIC_WORD, little-endian, at byte 32
_EINVAL = 22
_ENOENT = 2
_EIO = 5


def _read():
    try:
        with open(_OTADATA) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"boot": _SLOTS[0], "running": _SLOTS[0], "states": {_SLOTS[0]: "valid"}}


def _mkdir():
    try:
        os.mkdir(_DIR)
    except OSError:
        pass  # (there already)


def _write(data):
    _mkdir()
    with open(_OTADATA + ".tmp", "w") as f:
        json.dump(data, f)
    os.rename(_OTADATA + ".tmp", _OTADATA)


def _other(label):
    return _SLOTS[1] if label == _SLOTS[0] else _SLOTS[0]


def bootloader():
    """A reset: choose the slot to run (with the rollback), print it."""
    data = _read()
    states = data["states"]
    slot = data["boot"]
    state = states.get(slot, "undefined")
    if state == "new":
        states[slot] = "pending-verify"
    elif state == "pending-verify":
        states[slot] = "aborted"
        slot = _other(slot)
        data["boot"] = slot
    elif state in ("aborted", "invalid"):
        slot = _other(slot)
        data["boot"] = slot
    data["running"] = slot
    _write(data)
    print("bootloader: %s (%s)" % (slot, states.get(slot, "undefined")))


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0

    def __init__(self, id, block_size=_BLOCK):
        if block_size != _BLOCK:
            raise ValueError("block_size")  # (MicroPython allows others; this stand-in not)
        if id == Partition.RUNNING:
            id = _read()["running"]
        elif id == Partition.BOOT:
            id = _read()["boot"]
        if id not in _SLOTS:
            raise OSError(_ENOENT)
        self.label = id
        self.path = _DIR + "/" + id

    def __repr__(self):
        return "<Partition label=%s (stand-in)>" % self.label

    def info(self):
        return (0, 0x10 + _SLOTS.index(self.label), 0, SLOT_SIZE, self.label, False)

    def _seek(self, f, block, n, offset, erase=False):
        if (erase and n % _BLOCK) or block < 0 or block * _BLOCK + offset + n > SLOT_SIZE:
            raise OSError(_EINVAL)
        f.seek(block * _BLOCK + offset)

    def _open(self):
        try:
            os.stat(self.path)
        except OSError:
            _mkdir()
            with open(self.path, "wb") as f:
                for _ in range(SLOT_SIZE // _BLOCK):
                    f.write(b"\xff" * _BLOCK)  # erased flash
        return open(self.path, "r+b")

    def readblocks(self, block, buf, offset=0):
        with self._open() as f:
            self._seek(f, block, len(buf), offset)
            f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        if self.label == _read()["running"]:
            raise OSError(_EIO)  # ESP-IDF aborts a write into the running app
        with self._open() as f:
            self._seek(f, block, len(buf), offset or 0, offset is None)
            if offset is not None:  # no erase: NOR flash only clears bits
                old = f.read(len(buf))
                f.seek(block * _BLOCK + offset)
                buf = bytes(a & b for a, b in zip(old, buf))
            f.write(buf)

    def ioctl(self, cmd, arg):
        if cmd == 4:
            return SLOT_SIZE // _BLOCK
        if cmd == 5:
            return _BLOCK
        if cmd == 6:
            self.writeblocks(arg, b"\xff" * _BLOCK)
            return 0
        return 0 if cmd in (1, 2, 3) else None

    def get_next_update(self):
        return Partition(_other(self.label))

    def set_boot(self):
        head = bytearray(36)
        self.readblocks(0, head)
        if head[0] != 0xE9 or bytes(head[32:36]) != _APP_DESC_MAGIC:
            raise OSError(-0x1503)  # ESP_ERR_OTA_VALIDATE_FAILED
        data = _read()
        data["boot"] = self.label
        data["states"][self.label] = "new"
        _write(data)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        data = _read()
        data["states"][data["running"]] = "valid"
        _write(data)
