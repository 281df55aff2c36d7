"""The batch schema: the one check of a BATCH frame's body, the batch map of docs/wire.md.

Every reader of batches applies this and nothing else: a ``wire.Codec`` given it as its
``check_batch`` (on decode, and on encode, so a node never sends a batch its gateway refuses),
and the gateway's ``parse_batch``, which only converts what passed. Its bounds are the
gateway's storage: integers the schema calls unsigned 64-bit stop at 2**63 - 1, what SQLite
holds.

Apart from ``wire.py`` because only a codec's user that decodes batches (the gateway, a test)
or has its own checked before they go out (a Pi agent) needs it, and passes it in; the
firmware's codec is given none, so a board never loads this module. The two rows a leader's
data path also checks (members, elections) are in ``datapath.py``, which every leader loads.
Runs on CPython and MicroPython.
"""

try:
    from micropython import const  # built in on a board: no _compat module to load
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core.datapath import _election_row, _member_row
from agent.core.wire import _int, _list, _metrics, _text, _uint

# wire.py's bounds: an underscored const is not a module attribute on MicroPython, so they
# are repeated here (tests/test_wire.py checks that they agree).
_MAX_ID_BYTES = const(16)  # node ids
_MAX_NAME_BYTES = const(32)  # metric names, batch ids given as text
_U32 = const(0xFFFFFFFF)
_I64_MIN = const(-0x8000000000000000)
_I64_MAX = const(0x7FFFFFFFFFFFFFFF)  # also the bound of every unsigned 64-bit field

MAX_MESH_BYTES = 64  # the mesh name inside a batch (the gateway reads it before decoding)


def _batch_reading(r):
    # [node, boot, seq, t_ms, {metric: value}]
    return (
        _list(r, 5)
        and _text(r[0], _MAX_ID_BYTES)
        and _uint(r[1], _U32)
        and _uint(r[2], _U32)
        and _uint(r[3], _I64_MAX)
        and _metrics(r[4])
    )


def _batch_agg(a):
    # [node, metric, count, min, max, mean]
    return (
        _list(a, 6)
        and _text(a[0], _MAX_ID_BYTES)
        and _text(a[1], _MAX_NAME_BYTES)
        and _uint(a[2], _I64_MAX)
        and _int(a[3], _I64_MIN, _I64_MAX)
        and _int(a[4], _I64_MIN, _I64_MAX)
        and _int(a[5], _I64_MIN, _I64_MAX)
    )


def _batch_dropped(d):
    # [node, count]
    return _list(d, 2) and _text(d[0], _MAX_ID_BYTES) and _uint(d[1], _I64_MAX)


# Optional list-valued batch keys and the check for each of their items.
_BATCH_LISTS = {
    "readings": _batch_reading,
    "agg": _batch_agg,
    "members": _member_row,
    "dropped": _batch_dropped,
    "elections": _election_row,
}


def check_batch(batch):
    """None if ``batch`` is a valid batch map, else why not, as a short name.

    The name is the key whose value is bad (``"readings"``, ``"id"``, ...), or ``"not_map"``,
    ``"unknown_key"`` (a key the schema does not list), ``"no_id"``, ``"no_readings"`` (the
    two required keys). Every other key is optional.
    """
    # items(), and the type check before any ==, keep str and bytes keys from ever being
    # compared (MicroPython prints a warning for that).
    if type(batch) is not dict:
        return "not_map"
    for key, value in batch.items():
        if type(key) is not str:
            return "unknown_key"
        if key == "id":
            # The same rule as the batch id of a BATCH_ACK (wire.py), within the storage's int64.
            ok = _uint(value, _I64_MAX) or _text(value, _MAX_NAME_BYTES)
        elif key == "mesh":
            ok = _text(value, MAX_MESH_BYTES)
        elif key == "leader":
            ok = _text(value, _MAX_ID_BYTES)
        else:
            check = _BATCH_LISTS.get(key)
            if check is None:
                return "unknown_key"
            ok = _list(value)
            if ok:
                for item in value:
                    if not check(item):
                        ok = False
                        break
        if not ok:
            return key
    # Every key is a str by now: these lookups compare no bytes.
    if "id" not in batch:
        return "no_id"
    if "readings" not in batch:
        return "no_readings"
    return None
