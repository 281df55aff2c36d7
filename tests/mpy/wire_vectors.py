"""Decode and re-encode CBOR vectors with firmware/lib/cbor.py (run under MicroPython).

stdin: one vector per line, as hex. stdout: one line per vector, ``OK <hex of dumps(loads(v))>``
or ``ERR <message>`` when ``loads`` raised ``CBORDecodeError``. Any other exception escapes
(exit status 1), which the test counts as a failure. Run by tests/test_cbor_firmware.py.
"""

import sys
from binascii import hexlify, unhexlify

import cbor


def main():
    count = 0
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        line = line.strip()
        data = unhexlify(line)
        try:
            value = cbor.loads(data)
        except cbor.CBORDecodeError as e:
            print("ERR %s" % e)
        else:
            print("OK %s" % hexlify(cbor.dumps(value)).decode())
        count += 1
    print("END %d" % count)


main()
