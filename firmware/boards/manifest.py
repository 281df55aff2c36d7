# The meshelect firmware frozen into a MicroPython image: the app, the hardware layers, the
# libraries and the part of agent/ the firmware imports, compiled like `meshelect firmware
# build` (-O3). Included by every board's manifest here (ESP32 boards and the unix stand-in).
# Relative paths are relative to this file. boot.py, main.py and config.json stay files on the
# board's filesystem (boot and main run by name).

package("app", base_path="..", opt=3)
module("otaboot.py", base_path="..", opt=3)  # the update's switch and rollback (start.py)
module("start.py", base_path="..", opt=3)  # what main.py does before the app
package("hw", base_path="..", opt=3)
freeze("../lib", opt=3)
# Must list what tools/firmware.py's agent_closure() finds (tests/test_firmware_boards.py).
package(
    "agent",
    files=(
        "__init__.py",
        "core/__init__.py",
        "core/_compat.py",
        "core/app.py",
        "core/auth.py",
        "core/datapath.py",
        "core/energy.py",
        "core/energyreport.py",
        "core/messages.py",
        "core/node.py",
        "core/peers.py",
        "core/prng.py",
        "core/rebase.py",
        "core/score.py",
        "core/sleepy.py",
        "core/topics.py",
        "core/wire.py",
    ),
    base_path="../..",
    opt=3,
)
