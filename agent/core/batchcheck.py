"""The check of a BATCH frame's body: the batch map of docs/design.md ("The data path").

Split from ``wire.py`` because only a node that decodes batches (the gateway, a Pi agent, a
test) or wants its own batches checked before they go out needs it. ``wire.Codec`` imports
this module on first use; a codec made with ``check_batches=False`` (the firmware's) never
does, so the ESP32 does not hold this code in its heap. Runs on CPython and MicroPython.
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.wire import _int, _list, _metrics, _text, _uint

# The same bounds as in wire.py (tests/test_wire.py checks that they agree).
_MAX_ID_BYTES = const(16)  # node ids
_MAX_NAME_BYTES = const(32)  # metric names, election reasons, batch ids given as text
_U8 = const(0xFF)
_U16 = const(0xFFFF)
_U32 = const(0xFFFFFFFF)
_U64 = const(0xFFFFFFFFFFFFFFFF)
_I32_MIN = const(-0x80000000)
_I32_MAX = const(0x7FFFFFFF)
_I64_MIN = const(-0x8000000000000000)
_I64_MAX = const(0x7FFFFFFFFFFFFFFF)

MAX_MESH_BYTES = 64  # the mesh name inside a batch (the gateway reads it before decoding)


def _batch_reading(r):
    # [node, boot, seq, t_ms, {metric: value}]
    return (
        _list(r, 5)
        and _text(r[0], _MAX_ID_BYTES)
        and _uint(r[1], _U32)
        and _uint(r[2], _U32)
        and _uint(r[3], _U64)
        and _metrics(r[4])
    )


def _batch_agg(a):
    # [node, metric, count, min, max, mean]
    return (
        _list(a, 6)
        and _text(a[0], _MAX_ID_BYTES)
        and _text(a[1], _MAX_NAME_BYTES)
        and _uint(a[2], _U64)
        and _int(a[3], _I64_MIN, _I64_MAX)
        and _int(a[4], _I64_MIN, _I64_MAX)
        and _int(a[5], _I64_MIN, _I64_MAX)
    )


def _batch_member(m):
    # [node, score, battery, link, flags, age_ms]
    return (
        _list(m, 6)
        and _text(m[0], _MAX_ID_BYTES)
        and _int(m[1], _I32_MIN, _I32_MAX)
        and _uint(m[2], _U16)
        and _uint(m[3], _U16)
        and _uint(m[4], _U8)
        and _uint(m[5], _U64)
    )


def _batch_dropped(d):
    # [node, count]
    return _list(d, 2) and _text(d[0], _MAX_ID_BYTES) and _uint(d[1], _U64)


def _batch_election(e):
    # [term, leader or null, reason (text or int code)]
    return (
        _list(e, 3)
        and _uint(e[0], _U32)
        and (e[1] is None or _text(e[1], _MAX_ID_BYTES))
        and (_uint(e[2], _U32) or _text(e[2], _MAX_NAME_BYTES))
    )


# Optional list-valued batch keys and the check for each of their items.
_BATCH_LISTS = {
    "readings": _batch_reading,
    "agg": _batch_agg,
    "members": _batch_member,
    "dropped": _batch_dropped,
    "elections": _batch_election,
}


def check_batch(batch):
    """None if ``batch`` is a valid batch map, else ``"batch"`` (the name of the bad field).

    "id" and "readings" are required; every other known key is optional; an unknown key is
    refused (the code is the spec).
    """
    # items(), and the type check before any ==, keep str and bytes keys from ever being
    # compared (MicroPython prints a warning for that).
    if type(batch) is not dict:
        return "batch"
    required = 0
    for key, value in batch.items():
        if type(key) is not str:
            return "batch"
        if key == "id":
            # The same rule as the batch id of a BATCH_ACK (wire.py).
            ok = _uint(value, _U64) or _text(value, _MAX_NAME_BYTES)
            required += 1
        elif key == "mesh":
            ok = _text(value, MAX_MESH_BYTES)
        elif key == "leader":
            ok = _text(value, _MAX_ID_BYTES)
        else:
            check = _BATCH_LISTS.get(key)
            if check is None or not _list(value):
                return "batch"
            if key == "readings":
                required += 1
            ok = True
            for item in value:
                if not check(item):
                    ok = False
                    break
        if not ok:
            return "batch"
    return None if required == 2 else "batch"
