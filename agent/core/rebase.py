"""Setting a node application's clock back, and every time it holds with it.

A board does it (firmware/app/runtime.py, every 3.1 days) so that its times stay small ints: a
32-bit board's end at 2**30 ms, 12.4 days, and a long int costs heap at every step. So this is
loaded only then (``NodeApp.rebase``), and the board unloads it after: its code takes no heap
the rest of the time. Every time that the app, its node, the peers, the buffer, the collector
and the codec hold is listed here, in one place; tests/test_core_rebase.py checks that a mesh
on rebased clocks sends the same frames, events and stored readings as on plain ones, so a
time field this list misses shows there.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const

# NodeApp._ms (agent/core/app.py): runtime now - election now; the election time while the
# clock stands still (-1: it runs); the runtime time at which a reconnection's grace ends.
_SHIFT = const(0)
_PAUSED_AT = const(1)
_RESUME_AT = const(2)
_NO_TIME = const(1 << 62)  # "no deadline" (app.py's and node.py's)


def rebased(t, ms):
    """Time ``t`` on a clock set back by ``ms``. A time more than ``ms`` ago becomes 0: every
    timeout of the core is far shorter than ``ms``, so it stays long ago. None and the
    sentinels (below 0, or "no deadline" from 2**62 up) stay as they are."""
    if t is None or t < 0 or t >= _NO_TIME:
        return t
    return t - ms if t > ms else 0


def rebase(app, now, ms):
    """``app``'s runtime clock goes back by ``ms`` at ``now`` (``NodeApp.rebase``). An election
    clock that is not that far along (it stood still for a long time, MQTT) stays where it
    is: only its lag behind the runtime's clock shrinks. (Not the ``backlog``'s times: the Pi
    agent's, whose clock never needs it.)"""
    m = app._ms
    if m[_RESUME_AT] != _NO_TIME:
        m[_RESUME_AT] -= ms  # runtime time
    t = m[_PAUSED_AT] if m[_PAUSED_AT] >= 0 else now - m[_SHIFT]
    if t <= ms:
        m[_SHIFT] -= ms
        return
    if m[_PAUSED_AT] >= 0:
        m[_PAUSED_AT] -= ms
    app._data_at = rebased(app._data_at, ms)
    for entry in app.addresses.values():
        entry[1] = rebased(entry[1], ms)
    node = app.node
    # Node's times (agent/core/node.py): deadlines, and when something was last heard or
    # done. (A constant here, not a module global: one interned name less on a board.)
    for name in (
        "wakeup",
        "_ev_time",
        "_direct",
        "_listen_until",
        "_claim_at",
        "_cand_until",
        "_cand_since",
        "_cand_deadline",
        "_quorum_lost_at",
        "_extra_at",
        "_leaving_deadline",
        "_next_hb",
    ):
        setattr(node, name, rebased(getattr(node, name), ms))
    peers = node.peers
    peers.oldest = rebased(peers.oldest, ms)  # (a lower bound of the heard below: still one)
    for p in peers.by_id.values():
        p.heard = rebased(p.heard, ms)
    buf = app.buffer
    sent_at = buf._sent_at
    for i in range(buf.capacity):
        sent_at[i] = rebased(sent_at[i], ms)
    buf.wakeup = rebased(buf.wakeup, ms)
    col = app.collector
    col._last_batch_at = rebased(col._last_batch_at, ms)
    col.last_ack_at = rebased(col.last_ack_at, ms)
    for record in col._in_flight:
        record[2] = rebased(record[2], ms)
    for entry in app.codec._senders.values():
        entry[3] = rebased(entry[3], ms)
