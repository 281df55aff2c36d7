"""The board definitions under firmware/boards: the frozen manifest holds exactly what the
firmware build compiles (so a board image and a deployed build run the same modules), and the
32-bit stand-in built from it behaves like an ESP32 where the tests rely on it."""

from __future__ import annotations

import re

import pytest

from testkit.mpy import run_micropython
from tests.paths import REPO_ROOT
from tools import firmware as firmware_tool

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
