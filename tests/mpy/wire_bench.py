"""Heartbeat frame size and encode/decode time, on CPython or MicroPython. Prints figures only.

    .venv/bin/python tests/mpy/wire_bench.py [N]
    MICROPYPATH=.frozen:.:firmware/lib .venv/bin/micropython tests/mpy/wire_bench.py [N]

On CPython the Codec uses cbor2 (the default) and, for comparison, firmware/lib/cbor.py.
"""

import sys

try:
    from time import ticks_diff, ticks_us  # MicroPython

    def elapsed_us(start):
        return ticks_diff(ticks_us(), start)

    def clock():
        return ticks_us()

except ImportError:  # CPython
    from time import perf_counter_ns

    def clock():
        return perf_counter_ns()

    def elapsed_us(start):
        return (perf_counter_ns() - start) // 1000


if sys.implementation.name != "micropython":
    sys.path[:0] = [".", "firmware/lib"]  # run from the checkout root
import cbor

from agent.core.messages import HEARTBEAT, Msg
from agent.core.wire import Codec


def bench(label, key, dumps, loads, n):
    tx = Codec("greenhouse", key=key, dumps=dumps, loads=loads, boot=7)
    rx = Codec("greenhouse", key=key, dumps=dumps, loads=loads)
    msg = Msg(HEARTBEAT, "esp32-0123456789", term=12, flags=1, score=870, heard=3)
    msg.battery = 900
    msg.link = 800
    frames = [None] * n  # allocated once: a growing list fragments a small heap
    start = clock()
    for i in range(n):
        frames[i] = tx.encode(msg)
    enc = elapsed_us(start)
    start = clock()
    for i in range(n):
        rx.decode(frames[i], i)
    dec = elapsed_us(start)
    print(
        "%s key=%s: heartbeat %d bytes, encode %.1f us, decode %.1f us per frame (n=%d)"
        % (label, "yes" if key else "no", len(frames[0]), enc / n, dec / n, n)
    )


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runtime = sys.implementation.name
    if runtime != "micropython":
        for key in (None, b"mesh key"):
            bench("cpython/cbor2", key, None, None, n)
    for key in (None, b"mesh key"):
        bench("%s/firmware-cbor" % runtime, key, cbor.dumps, cbor.loads, n)


main()
