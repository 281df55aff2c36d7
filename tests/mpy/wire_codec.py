"""The wire Codec on MicroPython with firmware/lib/cbor.py (run by tests/test_cbor_firmware.py).

    micropython wire_codec.py decode MESH KEYHEX   # stdin: frames (hex), one per line
    micropython wire_codec.py encode MESH KEYHEX BOOT  # stdin: messages (JSON), one per line

decode prints, per frame, ``MSG <json [kind, sender, boot, counter, term, flags, score,
heard, battery, link, target, body]>`` or ``DROP <reason>``; encode reads
``[kind, sender, term, flags, score, heard, battery, link, target, body]`` and prints
``FRAME <hex>``. KEYHEX ``-`` means no key. Frames are decoded at now = 1000 * line number.
"""

import json
import sys
from binascii import hexlify, unhexlify

import cbor

from agent.core.batchcheck import check_batch
from agent.core.messages import Msg
from agent.core.wire import Codec, WireError


def codec(mesh, keyhex, boot=0):
    key = None if keyhex == "-" else unhexlify(keyhex)
    return Codec(mesh, key, cbor.dumps, cbor.loads, boot=boot, check_batch=check_batch)


def decode(c):
    n = 0
    while True:
        line = sys.stdin.readline().strip()
        if not line:
            break
        n += 1
        try:
            m = c.decode(unhexlify(line), 1000 * n)
        except WireError as e:
            print("DROP %s" % e.reason)
            continue
        fields = [m.kind, m.sender, m.boot, m.counter, m.term, m.flags, m.score]
        fields += [m.heard, m.battery, m.link, m.target, m.body]
        print("MSG %s" % json.dumps(fields))


def encode(c):
    while True:
        line = sys.stdin.readline().strip()
        if not line:
            break
        f = json.loads(line)
        m = Msg(f[0], f[1], term=f[2], flags=f[3], score=f[4], heard=f[5], battery=f[6])
        m.link = f[7]
        m.target = f[8]
        m.body = f[9]
        print("FRAME %s" % hexlify(c.encode(m)).decode())


def main():
    mode = sys.argv[1]
    if mode == "decode":
        decode(codec(sys.argv[2], sys.argv[3]))
    else:
        encode(codec(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    print("END")


main()
