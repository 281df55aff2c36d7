"""The board definitions under firmware/boards: the frozen manifest holds exactly what the
firmware build compiles (so a board image and a deployed build run the same modules), and the
32-bit stand-in built from it behaves like an ESP32 where the tests rely on it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from testkit.mpy import install_firmware, run_micropython
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool
from tools import firmware_image

BOARDS = REPO_ROOT / "firmware" / "boards"


def frozen_agent_modules() -> list[str]:
    text = (BOARDS / "manifest.py").read_text()
    block = text.split('package(\n    "agent",')[1]
    files = re.findall(r'"([\w/]+)\.py"', block)
    return sorted(("agent/" + f).removesuffix("/__init__").replace("/", ".") for f in files)


def test_the_manifest_freezes_what_the_build_compiles() -> None:
    source = REPO_ROOT / "firmware"
    sources = [source / rel for rel in firmware_tool.firmware_files(source)]
    assert frozen_agent_modules() == firmware_tool.agent_closure(sources, REPO_ROOT)
    assert not any("boards" in str(p) for p in sources)


@pytest.mark.micropython
def test_the_stand_in_is_32_bit_with_the_firmware_frozen() -> None:
    code = (
        "import sys, time, agent.core.app, app.runtime, cbor\n"
        "print(sys.maxsize, time.ticks_add(0, -1), agent.core.app.__file__, cbor.__file__)"
    )
    rc, out = run_micropython(code=code, bits=32, cwd="/")
    assert rc == 0, out
    # Small ints and ticks_ms end at 2**30 as on an ESP32; the modules come from the image.
    assert out.split() == [str(2**31 - 1), str(2**30 - 1), "agent/core/app.py", "cbor.py"], out


@pytest.mark.micropython
def test_a_frozen_board_folder_runs_the_frozen_code(tmp_path: Path) -> None:
    # The unix port puts the resolved script's folder first on sys.path: a main.py symlinked
    # into the build folder would load the build's .mpy into the heap, not the frozen code.
    build = tmp_path / "build"
    firmware_tool.build(build)
    folder = tmp_path / "board"
    install_firmware(build, folder, frozen=True)
    assert sorted(p.name for p in folder.iterdir()) == ["boot.py", "main.py"]
    assert (folder / "main.py").resolve().parent == folder.resolve()
    (folder / "probe.py").write_text("import app.runtime\nprint(app.runtime.__file__)\n")
    rc, out = run_micropython(folder / "probe.py", bits=32, cwd=folder)
    assert rc == 0, out
    assert out.split() == ["app/runtime.py"], out  # (a loaded build would say app/runtime.mpy)


@pytest.mark.parametrize("chip", sorted(firmware_image.BOARDS))
def test_every_board_freezes_the_firmware_without_idf_mdns_and_with_ota(chip: str) -> None:
    board = firmware_image.board_dir(chip)
    cmake = (board / "mpconfigboard.cmake").read_text()
    assert "set(IDF_TARGET %s)" % chip in cmake
    assert "${MICROPY_BOARD_DIR}/../sdkconfig.meshelect" in cmake
    assert "MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py" in cmake
    assert 'include("../manifest.py")' in (board / "manifest.py").read_text()
    assert '#include "../mpconfigboard_common.h"' in (board / "mpconfigboard.h").read_text()
    common = (BOARDS / "mpconfigboard_common.h").read_text()
    assert "MICROPY_HW_ENABLE_MDNS_RESPONDER (0)" in common
    sdkconfig = (BOARDS / "sdkconfig.meshelect").read_text()
    assert "partitions-4MiB-ota.csv" in sdkconfig
    # An image updated over the air runs on trial: the bootloader rolls back one not committed.
    assert "\nCONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y\n" in sdkconfig


def test_image_dry_run_prints_the_esp32_build_in_the_idf_container(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["image", "--chip", "esp32c3", "--micropython", str(tmp_path), "--docker"]
    assert firmware_tool.cli([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("+ docker run")]
    assert len(lines) == 3 and all(firmware_image.IDF_IMAGE in line for line in lines)
    assert lines[1].endswith("BOARD_DIR=%s submodules" % (BOARDS / "MESHELECT_ESP32_C3"))
    assert "build-MESHELECT_ESP32_C3/firmware.bin" in out
    # Without the dry run: no MicroPython tree there, said in one line, nothing run.
    assert firmware_tool.cli(argv) == 1
    assert "not a MicroPython source tree" in capsys.readouterr().err


def test_flash_without_an_image_says_where_images_come_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert firmware_tool.cli(["flash", "--port", "/dev/ttyUSB0"]) == 2
    err = capsys.readouterr().err
    assert "meshelect firmware image --chip CHIP --micropython DIR" in err
    assert "stock MicroPython image" in err
