"""`meshelect firmware image`: build a meshelect MicroPython image for an ESP32 board.

    meshelect firmware image --chip esp32s3 --micropython ~/micropython [--docker] [--dry-run]

The board definitions are ``firmware/boards/MESHELECT_*`` (the generic board of the chip, the
firmware frozen in, ESP-IDF's mDNS responder off, the OTA partition table). The build is
MicroPython's own ESP32 build, from a MicroPython source tree (a clone of the tag the firmware
is tested with, v1.28.0; ``make submodules`` fetches micropython-lib and the rest): with
ESP-IDF installed and exported (``. $IDF_PATH/export.sh``), or with ``--docker`` in
Espressif's ESP-IDF container image. The image is
``<tree>/ports/esp32/build-<BOARD>/firmware.bin``; flash it with ``meshelect firmware flash``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# chip (esptool's name, as `flash --chip`) -> board definition under firmware/boards
BOARDS = {
    "esp32": "MESHELECT_ESP32",
    "esp32s3": "MESHELECT_ESP32_S3",
    "esp32c3": "MESHELECT_ESP32_C3",
}
# The ESP-IDF MicroPython v1.28.0 recommends (ports/esp32/README.md).
IDF_IMAGE = "espressif/idf:v5.5.1"


def boards_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "firmware" / "boards"


def board_dir(chip: str) -> Path:
    if chip not in BOARDS:
        raise ValueError("no meshelect board for chip %r (one of %s)" % (chip, ", ".join(BOARDS)))
    return boards_dir() / BOARDS[chip]


def image_path(micropython: Path, chip: str) -> Path:
    return micropython / "ports" / "esp32" / ("build-%s" % BOARDS[chip]) / "firmware.bin"


def image_commands(micropython: Path, chip: str, docker: bool) -> list[list[str]]:
    """The commands, run in the MicroPython tree: mpy-cross, the submodules, the image."""
    tree = micropython.resolve()
    make = ["make", "-C", "ports/esp32", "BOARD_DIR=%s" % board_dir(chip)]
    steps = [["make", "-C", "mpy-cross"], [*make, "submodules"], make]
    if not docker:
        return steps
    # The tree and the checkout at the same paths inside, so the manifests' paths hold; as
    # the calling user, so the build folder stays theirs. (Espressif's entrypoint exports
    # ESP-IDF; `make submodules` needs git and the network inside the container.)
    root = boards_dir().parents[1]
    wrap = [
        "docker",
        "run",
        "--rm",
        "-u",
        "%d:%d" % (os.getuid(), os.getgid()),
        "-e",
        "HOME=/tmp",
        "-v",
        "%s:%s" % (tree, tree),
        "-v",
        "%s:%s" % (root, root),
        "-w",
        str(tree),
        IDF_IMAGE,
    ]
    return [[*wrap, *step] for step in steps]


def check_tree(micropython: Path, docker: bool) -> str | None:
    """What is missing to build (a one-line reason), or None."""
    if not (micropython / "ports" / "esp32" / "Makefile").is_file():
        return "%s is not a MicroPython source tree (no ports/esp32/Makefile)" % micropython
    if docker:
        if shutil.which("docker") is None:
            return "docker not found (install it, or install ESP-IDF and drop --docker)"
    elif shutil.which("idf.py") is None:
        return "ESP-IDF is not on PATH (. $IDF_PATH/export.sh), or use --docker"
    return None
