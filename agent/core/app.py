"""The node application: one sans-IO object per node, which every runtime drives.

The Pi agent (agent/runtime.py, asyncio on CPython) and the firmware (firmware/app/runtime.py,
asyncio on MicroPython) are shells around it, the way a sync and an async host both drive one
h11 ``Connection``: they own sockets, clocks, sensors, files and logs; this object owns what a
node does. Bytes and times go in; frames to send and events come out::

    app = NodeApp(node_id, mesh, key, boot, dumps, loads, config=make_config(250, ...))
    app.start(now)
    app.frame(data, source, now)     # a received frame (source: its address on UDP, else None)
    app.tick(now)                    # at or after app.wakeup
    app.sample(now, t_ms, metrics)   # a reading; t_ms: wall-clock ms, for the gateway
    app.set_power(battery, link, mains, eligible)
    app.connected(now, False)        # MQTT: the broker went; (now, True, listen_ms): it is back
    app.stop(now)                    # graceful: the goodbye frames are in out
    app.rebase(now, ms)              # a board set its clock back by ms (agent/core/rebase.py)
    for dest, name, kind, frame in app.out: ...       # then del app.out[:]
    for event in app.events: ...                      # then del app.events[:]
    app.status(now)                  # the status layout both runtimes print and write

``now`` is the runtime's monotonic clock in ms (it must not wrap). ``out`` holds encoded frames
(``kind``: the message kind) with where they go: ``DEST_MESH`` (every node; ``name`` is the
successor a HANDOFF names, else None), ``DEST_NODE`` (the node ``name``: data, a PROBE and a leader's answer; ``address(name)`` is
where its frames came from) and ``DEST_GATEWAY`` (``name`` is the batch id). ``events`` holds
tuples whose first item says what happened:

    ("role", role, term, leader, lead_reason, was)   the role or leader changed (the core's)
    ("term", role, term, leader, lead_reason, was)   only the term changed (the core's)
    ("clock_paused", paused, why)        the election clock stopped or went on (below)
    ("confirmed", count)                 the gateway stored this many of our readings
    ("batch_ack", batch_id, status, highest_term)    the gateway answered one of our batches
    ("max_term", term)                   the highest term seen rose: persist it, give it back
                                         as ``term`` at the next boot (the first claim is above)
    ("dropped", reason, source, error)   a frame was dropped (error: the WireError, or None)
    ("error", what, error, msg)          "frame", "encode": a bug caught; "sample": bad input

(The kinds are strings that name the status figure they move: on a board, a new name costs
heap for the process's life.) Both lists are bounded, the oldest going first, for callers that
never empty them. Nothing received raises out of ``frame``: a bad frame is dropped and
counted, and an exception around the core is caught and counted in ``errors``.

What it does with the core (the rules are agent/core/node.py's and agent/core/datapath.py's):
election messages go to the node and its outbox to the mesh; the node's view events set the
data path going (collect as leader, resend to a new leader) and record elections for the
gateway; a member sends its unconfirmed readings to the leader and frees them on
READINGS_ACK; the leader collects (its own readings too), sends batches to the gateway once
``gateway_known`` and, on BATCH_ACK OK, confirms to each member; a leader that stops leading
discards what it holds (the members resend it to the next one). ``backlog`` (optional, the Pi
agent's readings of earlier boots) travels with the readings: anything with ``items``,
``due(now, leader, term)`` and ``confirm(ranges)``.

The election clock. Over MQTT nobody hears anybody while the broker is unreachable; if the
election timed out then, every node would claim and all would merge when the broker returns.
So ``connected(now, False)`` stops the clock the core and the data path run on (timers, ages,
resends), and ``connected(now, True, listen_ms)`` starts it again: at once if we lead or know
no leader, else when our leader is heard again, or ``listen_ms`` (how long the leader's own
reconnection may take) plus two heartbeats after ours, so a leader that died meanwhile is
still replaced. ``wakeup`` and every ``now`` are on the runtime's clock; the app takes the
time spent stopped out (``clock_ms(now)``). ``clock_paused=True`` starts it stopped (MQTT: no
broker yet).

The defaults suit a board (one-datagram batches, one batch in flight, no batch checker: a node
never reads a batch, and its Collector builds them within the gateway's bounds, which the
CPython tests check); the Pi agent passes its own.
"""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython
    from agent.core._compat import const
from agent.core import datapath
from agent.core.messages import (
    BATCH_ACK,
    F_LEADER,
    F_MAINS,
    F_SLEEPY,
    HANDOFF,
    HEARTBEAT,
    PROBE,
    READINGS,
    READINGS_ACK,
)
from agent.core.node import ROLE_LEADER, ROLE_NAMES, Config, Node, make_config  # noqa: F401
from agent.core.wire import Codec, WireError

DEST_MESH = const(0)
DEST_NODE = const(1)
DEST_GATEWAY = const(2)

# A board's batches fit one Wi-Fi datagram: no IP fragments, and no 4 KB block to find in a
# small, fragmented heap while the frame is encoded (the default ``max_frame_bytes``).
_DATAGRAM_BYTES = const(1400)

# The election's kinds are HEARTBEAT..PROBE (1..5, messages.py): a range check, not a tuple
# global (whose name would be interned on MicroPython).
# When the data path runs again: a leader polls its collector (batches go every BATCH_MS,
# 1 s); a member runs at its buffer's next resend, at least once a second; a view change, a
# reading and a confirmation run it at once. A member that waits for its leader's address
# (UDP: learned from the leader's frames) looks again shortly.
_LEADER_DATA_MS = const(200)
_IDLE_DATA_MS = const(1000)
_ADDRESS_WAIT_MS = const(50)
_MAX_ELECTIONS = const(8)  # elections not yet reported (no gateway for a long time)
# Sleepy members a leader keeps in its mesh view while they sleep (agent/core/sleepy.py), and
# how long: until they missed this many wakes.
_MAX_SLEEPERS = const(16)
_SLEEPER_WAKES = const(3)
_MAX_U32 = const(0xFFFFFFFF)  # a wake interval's bound: the wire's uint32
_SLEEP_METRIC = const("_sleep_ms")  # the reading that carries it (datapath.py sends it)
# Node ids and metric names that held readings share (a mesh of 48 nodes with 16 names).
_MAX_NAMES = const(64)
# The shells empty both lists after every call; one call makes at most a batch's acks (a
# batch holds up to 64 members' readings) and a few election frames.
_MAX_OUT = const(128)
_MAX_EVENTS = const(16)
_NO_TIME = const(1 << 62)  # "no deadline" (as the core's)
# The election clock's state, one list (``_ms``): runtime now - election now; the election
# time while it is stopped (-1: it runs); the runtime time at which a reconnection's grace ends.
_SHIFT = const(0)
_PAUSED_AT = const(1)
_RESUME_AT = const(2)


def nonzero(drops):
    """The counters of ``drops`` that are not 0 (a status lists only what happened)."""
    out = {}
    for key in drops:
        if drops[key]:
            out[key] = drops[key]
    return out


class NodeApp:
    def __init__(
        self,
        node_id,
        mesh,
        key,
        boot,
        dumps,
        loads,
        config=None,
        seed=0,
        buffer_size=64,
        collector_size=None,
        max_frame_bytes=_DATAGRAM_BYTES,
        max_in_flight=1,
        check_batch=None,
        clock_paused=False,
        term=0,
        token=None,
    ):
        self.id = node_id
        self.mesh = mesh
        self.boot = boot
        self.node = Node(node_id, config, boot, seed, term)
        self.max_term = self.node.max_seen  # the highest term reported (event "max_term")
        self.codec = Codec(mesh, key or None, dumps, loads, boot=boot, check_batch=check_batch)
        self.buffer = datapath.ReadingBuffer(node_id, boot, buffer_size)
        # The leader holds up to a full batch per member; bounded all the same.
        self.collector = datapath.Collector(
            node_id,
            mesh,
            collector_size or buffer_size * 2,
            max_frame_bytes=max_frame_bytes,
            max_in_flight=max_in_flight,
            token=token,
        )
        self.backlog = None
        # Optional: agent/core/energy.py's Energy, which the runtime sets (frames and roles
        # are counted here); sleep_ms: a sleepy member's wake interval (agent/core/sleepy.py).
        self.energy = None
        self.sleep_ms = 0
        # A leader's sleepy members: node -> [wake interval ms, heard, score, battery, link, flags]
        self.sleepers = {}
        # node -> [source, learned_at]: where its authenticated frames came from (bounded as
        # the peer table is).
        self.addresses = {}
        self.out = []
        self.events = []
        self.out_dropped = 0
        self.ignored = 0  # decoded frames not for us (readings to a leader we are not, ...)
        self.errors = 0  # exceptions caught around the core: bugs, so they should stay 0
        self.last_error = None
        self.sample_errors = 0  # readings refused (the runtime adds sensors that failed)
        self.gateway_known = False  # the shell sets it: batches wait until a gateway is known
        self.needs_address = True  # UDP: readings go to a learned address; MQTT: to a topic
        self._data_at = 0  # when the data path runs next, on the election clock
        self._elections = []
        self._names = {}  # node id or metric name -> the one str held readings share
        self._ms = [0, 0 if clock_paused else -1, _NO_TIME]  # the election clock (_SHIFT, ...)

    # ---- what the runtime calls ------------------------------------------------------

    def start(self, now):
        t = self.clock_ms(now)
        self.node.start(t)
        self._after(t)

    def stop(self, now):
        """Graceful: a leader hands over to its successor, anyone else says goodbye. The
        frame is in ``out`` twice, encoded twice (a copy of the first would be a replay): a
        datagram may be lost, and a shell may space the two."""
        t = self.clock_ms(now)
        node = self.node
        node.stop(t)
        goodbye = node.outbox[:]
        self._after(t)
        for msg in goodbye:
            self._send(DEST_MESH, msg.target, msg)

    def frame(self, data, source, now):
        """One received frame; returns its Msg, or None if it was dropped."""
        t = self.clock_ms(now)
        if self.energy is not None:
            self.energy.frame(False, len(data))  # the radio received it, whatever it holds
        try:
            msg = self.codec.decode(data, t)
        except WireError as e:
            self._event(("dropped", e.reason, source, e))
            return None
        except Exception as e:
            self._error("frame", e, None)
            return None
        if msg.sender == self.id:
            # Our own multicast looped back (a board), or another node with our id (the Pi
            # agent's transports drop their own frames before this).
            self._event(("dropped", "own_id", source, None))
            return None
        if source is not None:
            self._learn(msg.sender, source, t)
        if (
            self._ms[_PAUSED_AT] >= 0
            and HEARTBEAT <= msg.kind <= PROBE
            and msg.sender == self.node.leader
        ):
            self._resume(now, "leader heard")
        try:
            self._dispatch(msg, t)
        except Exception as e:
            self._error("frame", e, msg)
        self._after(t)
        return msg

    def tick(self, now):
        t = self.clock_ms(now)
        if self._ms[_PAUSED_AT] < 0:  # stopped: nothing is heard, no timer runs, nothing sent
            self.node.tick(t)
            self._after(t)

    def sample(self, now, t_ms, metrics):
        """Store one reading taken at wall-clock ``t_ms``; returns its seq, or None if the
        reading is refused (counted in ``sample_errors``)."""
        t = self.clock_ms(now)
        try:
            seq = self.buffer.add(t_ms, metrics)
        except ValueError as e:
            self.sample_errors += 1
            self._event(("error", "sample", e, None))
            return None
        self._data_at = t  # send it now
        self._after(t)
        return seq

    def set_power(self, battery, link, mains, eligible=True):
        self.node.set_power(battery, link, mains, eligible)

    def connected(self, now, value, listen_ms=0):
        """MQTT: the broker went (``value`` False: the election clock stops) or came back
        (True; ``listen_ms``: how long our leader's own reconnection may take). See the module
        docstring."""
        ms = self._ms
        if not value:
            ms[_RESUME_AT] = _NO_TIME
            if ms[_PAUSED_AT] < 0:
                ms[_PAUSED_AT] = now - ms[_SHIFT]
                self._event(("clock_paused", True, "broker unreachable"))
        elif ms[_PAUSED_AT] >= 0:
            node = self.node
            if node.role == ROLE_LEADER or node.leader is None:
                self._resume(now, "reconnected")
            else:
                ms[_RESUME_AT] = now + listen_ms + 2 * node.config.heartbeat_ms

    def rebase(self, now, ms):
        """The runtime sets its clock back by ``ms`` at ``now`` (its time before the step;
        ``now >= 2 * ms``), so that its times stay small ints: a 32-bit board's end at 2**30
        ms, 12.4 days. Every time the app holds goes back with it, and what the node does does
        not change: ``agent/core/rebase.py``, loaded for this only (a board unloads it)."""
        from agent.core import rebase

        rebase.rebase(self, now, ms)

    def clock_ms(self, now):
        """The election clock at runtime time ``now`` (when a reconnection's grace is over, it
        goes on)."""
        ms = self._ms
        if ms[_PAUSED_AT] >= 0:
            if now < ms[_RESUME_AT]:
                return ms[_PAUSED_AT]
            self._resume(now, "grace period over")
        return now - ms[_SHIFT]

    @property
    def clock_paused(self):
        return self._ms[_PAUSED_AT] >= 0

    @property
    def wakeup(self):
        """Next runtime time at which ``tick`` has work; the runtime may sleep until then."""
        ms = self._ms
        if ms[_PAUSED_AT] >= 0:
            return ms[_RESUME_AT]
        w = self.node.wakeup
        if self._data_at < w:
            w = self._data_at
        if ms[_SHIFT]:
            w += ms[_SHIFT]  # (no big int on a board unless the clock was ever stopped)
        return w

    def address(self, node_id):
        """Where ``node_id``'s authenticated frames came from (UDP), or None."""
        entry = self.addresses.get(node_id)
        return entry[0] if entry is not None else None

    def status(self, now, detail=True):
        """The node's view as a dict, the same layout on every runtime (``meshelect status``
        reads it); each runtime adds its own keys (transport, heap, mDNS, ...). ``peers`` is
        a row per peer, or without ``detail`` (a board: ~2 KB less heap) the sorted peer ids.
        ``stale_peers`` lists, sorted, the peers this node has not heard for longer than the suspect
        time: what they last said (a leader's flag, a term) is old news. (A leader may still be
        followed on the evidence of peers that hear it; the table says what this node heard.)"""
        t = self.clock_ms(now)
        node = self.node
        buf = self.buffer
        col = self.collector
        table = node.peers.by_id
        peers = sorted(table)
        suspect_ms = node.config.suspect_ms
        stale = []
        for i in range(len(peers)):
            p = table[peers[i]]
            age = t - p.heard if t > p.heard else 0
            if age > suspect_ms:
                stale.append(p.id)
            if detail:
                peers[i] = {
                    "id": p.id,
                    "score": p.score,
                    "battery": p.battery,
                    "link": p.link,
                    "term": p.term,
                    "flags": p.flags,
                    "age_ms": age,
                }
        return {
            "node": self.id,
            "mesh": self.mesh,
            "boot": self.boot,
            "clock_ms": t,
            "clock_paused": self._ms[_PAUSED_AT] >= 0,
            "role": ROLE_NAMES[node.role],
            "term": node.term,
            "max_term": self.max_term,
            "leader": node.leader,
            "lead_reason": node.lead_reason,
            "score": node.score,
            "battery": node.battery,
            "link": node.link,
            "mains": node.mains,
            "peers": peers,
            # 11 characters: a name over 10 is not interned on a board (one more interned name
            # can cost a new string pool, ~7 KB on the firmware's 128 KB heap).
            "stale_peers": stale,
            "stats": {
                "sent": node.sent,
                "terms_started": node.stats_terms_started,
                "suspicions": node.suspicions,
                "handoffs": node.handoffs,
                "term_jumps": node.term_jumps,
            },
            "buffer": {
                "depth": buf.depth,
                "taken": buf.taken,
                "dropped": buf.dropped,
                "sent": buf.sent,
                "resent": buf.resent,
                "confirmed": buf.confirmed,
                "foreign_acks": buf.foreign_acks,
                "unconfirmed_from": buf.unconfirmed()[0] if buf.depth else None,
            },
            "collector": {
                "held": col.held,
                "received": col.received,
                "overflow": col.overflow,
                "duplicates": col.duplicates,
                "batches_sent": col.batches_sent,
                "batches_acked": col.batches_acked,
                "batches_fenced": col.batches_fenced,
                "discarded": col.discarded,
                "stale_acks": col.stale_acks,
            },
            "drops": nonzero(self.codec.drops),
            "ignored": self.ignored,
            "sample_errors": self.sample_errors,
            "errors": self.errors,
            "last_error": self.last_error,
        }

    # ---- frames in ---------------------------------------------------------------------

    def _dispatch(self, msg, now):
        kind = msg.kind
        node = self.node
        if HEARTBEAT <= kind <= PROBE:
            node.receive(msg, now)
        elif kind == READINGS:
            if msg.target == self.id and node.role == ROLE_LEADER:
                msg.sender = self._share(msg.sender)
                self._share_names(msg.body, msg.sender, now)
                self.collector.add(msg)
            else:
                self.ignored += 1  # to a leader we are not (any more): the member resends
        elif kind == READINGS_ACK:
            # Taken only from the leader (and term) our readings went to; the buffer counts
            # the others in foreign_acks.
            count = self.buffer.on_ack(msg) if msg.target == self.id else -1
            if count >= 0:
                self._confirmed(count, msg.body)
            else:
                self.ignored += 1
        elif kind == BATCH_ACK and msg.target == self.id and node.role == ROLE_LEADER:
            collector = self.collector
            stale = collector.stale_acks
            fence = collector.fenced_term
            acks = datapath.make_ack_messages(self.id, node.term, collector.on_ack_msg(msg, now))
            if collector.stale_acks != stale:
                return  # not the id of a batch in flight: a forged or a late ack (counted)
            body = msg.body
            if isinstance(body, list) and len(body) == 3:
                self._event(("batch_ack", body[0], body[1], body[2]))
            if collector.fenced_term != fence:
                # FENCED for a batch of ours: lead in a term above the gateway's at once.
                node.fenced(now, collector.fenced_term)
            self._data_at = now  # the batch slot is free: what waits may go at once
            for ack in acks:
                if ack.target == self.id:
                    self._confirmed(self.buffer.confirm(ack.body), ack.body)
                else:
                    self._send(DEST_NODE, ack.target, ack)
        else:
            self.ignored += 1  # BATCH (for the gateway), or a BATCH_ACK for someone else

    def _confirmed(self, count, ranges):
        """``count`` of our readings are confirmed (``ranges``: what the ack said)."""
        if self.backlog is not None:
            self.backlog.confirm(ranges)
        if count:
            self._event(("confirmed", count))

    def _learn(self, sender, source, now):
        entry = self.addresses.get(sender)
        if entry is not None:
            entry[0] = source
            entry[1] = now
            return
        if len(self.addresses) >= self.node.config.max_peers:
            victim = None
            oldest = 0
            for node_id in self.addresses:
                e = self.addresses[node_id]
                if victim is None or e[1] < oldest or (e[1] == oldest and node_id < victim):
                    victim = node_id
                    oldest = e[1]
            del self.addresses[victim]
        self.addresses[sender] = [source, now]

    def _share_names(self, readings, sender, now):
        """Make held readings share one str per metric name and node id; take a sleepy
        member's wake interval (the reserved metric ``_sleep_ms``) out of them.

        Every decoded frame brings fresh copies of the same few names; a leader holds up to
        ``collector_size`` readings, so sharing them saves about 48 bytes per name per reading
        (64-bit unix port; about half on the ESP32). Bounded: past ``_MAX_NAMES`` distinct
        names, new ones are kept as they come.
        """
        if not isinstance(readings, list):
            return
        sleepers = self.sleepers
        for reading in readings:
            if not isinstance(reading, list) or len(reading) != 4:
                continue  # malformed: the collector counts it
            metrics = reading[3]
            if not isinstance(metrics, dict):
                continue
            shared = {}
            for name in metrics:
                if name == _SLEEP_METRIC:
                    # A sleepy member's wake interval: kept (bounded) for the mesh view.
                    # (Inline: a method's name is one more interned name on MicroPython.)
                    sleep_ms = metrics[name]
                    if type(sleep_ms) is not int or not 0 < sleep_ms <= _MAX_U32:
                        continue
                    row = sleepers.get(sender)
                    if row is None:
                        if len(sleepers) >= _MAX_SLEEPERS:
                            continue  # bounded; the gateway still hears of it while awake
                        row = sleepers[sender] = [0, 0, -1, 0, 0, F_SLEEPY]
                    row[0] = sleep_ms
                    row[1] = now
                else:
                    shared[self._share(name)] = metrics[name]
            reading[3] = shared

    def _share(self, name):
        """The one str held for ``name`` (a node id or a metric name; bounded table)."""
        names = self._names
        key = names.get(name)
        if key is None:
            key = name
            if len(names) < _MAX_NAMES and type(name) is str:
                names[name] = name
        return key

    # ---- after every call: the core's output, the data path --------------------------

    def _after(self, now):
        node = self.node
        outbox = node.outbox
        if outbox:
            for msg in outbox:
                if self.sleep_ms and msg.kind == HEARTBEAT:
                    msg.flags |= F_SLEEPY
                # A probe, or a leader's answer to one, goes to the node it names; a handoff
                # names the successor, but the whole mesh hears it.
                if msg.target is None or msg.kind == HANDOFF:
                    self._send(DEST_MESH, msg.target, msg)
                else:
                    self._send(DEST_NODE, msg.target, msg)
            del outbox[:]
        events = node.events
        if events:
            for event in events:
                role = event[1]
                was = event[5]
                if self.energy is not None:
                    self.energy.tick(now, role == ROLE_LEADER)
                self._data_at = now  # resend to the new leader, start or stop collecting
                if was == ROLE_LEADER and role != ROLE_LEADER:
                    self.collector.lost_leadership()
                    self._elections = []
                elif role == ROLE_LEADER and (was != ROLE_LEADER or event[0] == "term"):
                    if len(self._elections) >= _MAX_ELECTIONS:
                        self._elections.pop(0)  # no gateway for a long time: keep the latest
                    self._elections.append([event[2], self.id, event[4] or "start"])
                self._event(event)
            del events[:]
        if node.max_seen > self.max_term:
            self.max_term = node.max_seen
            self._event(("max_term", self.max_term))  # the runtimes persist it
        if self._ms[_PAUSED_AT] < 0 and now >= self._data_at:
            self._data_path(now)
            # When it runs next (see _LEADER_DATA_MS).
            leader = node.leader
            if node.role == ROLE_LEADER:
                now += _LEADER_DATA_MS
            elif leader is None:
                now += _IDLE_DATA_MS
            elif self.needs_address and leader not in self.addresses:
                now += _ADDRESS_WAIT_MS
            else:  # a member: at its buffer's next resend, within a second, not now again
                w = self.buffer.wakeup
                if w > now + _IDLE_DATA_MS:
                    w = now + _IDLE_DATA_MS
                now = w if w > now else now + 1
            self._data_at = now

    def _data_path(self, now):
        node = self.node
        leader = node.leader
        if leader is None:
            return
        term = node.term
        backlog = self.backlog
        if leader != self.id:
            if self.needs_address and leader not in self.addresses:
                return  # UDP: its address comes with its next frame
            # (Called at every run, so that the buffer knows whose acks to take.)
            for msg in self.buffer.due_messages(now, leader, term):
                self._send(DEST_NODE, leader, msg)
            if backlog is not None and backlog.items:
                readings = backlog.due(now, leader, term)
                for msg in datapath.make_messages(self.id, leader, term, readings):
                    self._send(DEST_NODE, leader, msg)
            return
        collector = self.collector
        collector.pull_own(self.buffer, now, term)
        if backlog is not None and backlog.items:
            collector.add(backlog.due(now, self.id, term), self.id)
        if not self.gateway_known:
            return  # batches wait (bounded) until a gateway is configured or found
        elections = self._elections
        if elections:
            self._elections = []
        for _ in range(collector.max_in_flight + 1):
            # The mesh view is built only if a new batch is made.
            batch = collector.due_batch(now, term, self._members, elections)
            elections = None
            if batch is None:
                break
            self._send(DEST_GATEWAY, batch["id"], datapath.batch_message(self.id, term, batch))

    def _members(self, now):
        """The mesh view a batch carries: this node, then every live peer, sorted; a sleepy
        member also while it sleeps (until it missed its wakes), with its wake interval."""
        node = self.node
        flags = F_LEADER | (F_MAINS if node.mains else 0)  # only a leader makes batches
        rows = [[self.id, node.score, node.battery, node.link, flags, 0]]
        since = now - node.config.live_ms
        table = node.peers.by_id
        sleepers = self.sleepers
        for peer_id in sorted(table):
            p = table[peer_id]
            if p.heard >= since:
                row = [p.id, p.score, p.battery, p.link, p.flags, now - p.heard]
                s = sleepers.get(peer_id)
                if s is not None:
                    s[1:] = [p.heard, p.score, p.battery, p.link, p.flags]
                    row.append(s[0])
                rows.append(row)
        if sleepers:
            for peer_id in sorted(sleepers):
                s = sleepers[peer_id]
                if now - s[1] > _SLEEPER_WAKES * s[0]:
                    del sleepers[peer_id]  # missed its wakes: the gateway says it is silent
                elif s[1] < since:  # asleep
                    rows.append([peer_id, s[2], s[3], s[4], s[5], now - s[1], s[0]])
        return rows  # (the collector sorts them)

    # ---- frames and events out ---------------------------------------------------------

    def _send(self, dest, name, msg):
        try:
            frame = self.codec.encode(msg)
        except WireError as e:
            self._error("encode", e, msg)
            return
        if self.energy is not None:
            self.energy.frame(True, len(frame))
        if len(self.out) >= _MAX_OUT:
            self.out.pop(0)
            self.out_dropped += 1
        self.out.append((dest, name, msg.kind, frame))

    def _event(self, event):
        if len(self.events) >= _MAX_EVENTS:
            self.events.pop(0)
        self.events.append(event)

    def _error(self, kind, e, msg):
        self.errors += 1
        self.last_error = repr(e)  # for the status: these should never happen
        self._event(("error", kind, e, msg))

    def _resume(self, now, detail):
        ms = self._ms
        ms[_SHIFT] = now - ms[_PAUSED_AT]  # the election clock goes on from where it stopped
        ms[_PAUSED_AT] = -1
        ms[_RESUME_AT] = _NO_TIME
        self._event(("clock_paused", False, detail))
