# The 32-bit unix-port stand-in for a board (scripts/micropython32.sh): asyncio, as every
# MicroPython image has it, plus the same frozen firmware as the ESP32 boards.
include("$(MPY_DIR)/extmod/asyncio")
include("../manifest.py")
