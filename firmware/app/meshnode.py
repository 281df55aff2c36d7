"""The firmware's glue between bytes and the shared core: election, wire codec, data path.

Sans-IO, like the core: ``frame(data, source, now)``, ``tick(now)`` and ``sample(now, t_ms,
metrics)`` put what must be sent in ``out`` as ``(dest, name, frame)``; the transport (UDP or
MQTT) empties it. Every election rule is the core's (``agent.core.node``), every data-path rule
is ``agent.core.datapath``'s; this file only wires them the way the Pi agent does:

- election messages from ``node.outbox`` go to the whole mesh (``DEST_MESH``);
- a member sends its unconfirmed readings to the leader (``DEST_NODE``, name = leader) and
  frees them on READINGS_ACK;
- the leader collects (its own readings too), sends batches to the gateway (``DEST_GATEWAY``)
  and, on BATCH_ACK OK, confirms to each member (``DEST_NODE``, name = member);
- a leader that loses leadership discards what it holds (members resend to the next leader).

A frame that does not decode is dropped and counted (``codec.drops``); one that decodes but is
not for us is counted in ``ignored``. Nothing received can raise out of ``frame()``.
"""

from agent.core import datapath
from agent.core.messages import (
    BATCH_ACK,
    CLAIM,
    F_LEADER,
    F_MAINS,
    HANDOFF,
    HEARTBEAT,
    LEAVE,
    READINGS,
    READINGS_ACK,
)
from agent.core.node import ROLE_LEADER, ROLE_NAMES, Node, make_config
from agent.core.wire import Codec, WireError

DEST_MESH = 0
DEST_NODE = 1
DEST_GATEWAY = 2

_ELECTION_KINDS = (HEARTBEAT, CLAIM, HANDOFF, LEAVE)
# The data path runs at most this often from tick(); frames in between are handled at once.
_DATA_EVERY_MS = 50
# Bounded table of where each node's authenticated frames came from (UDP unicast targets).
_MAX_ADDRESSES = 64
_MAX_ELECTIONS = 8
# Node ids and metric names that held readings share (a mesh of 48 nodes with 16 names).
_MAX_NAMES = 64
# Bounded outgoing queue: if the transport stalls, the oldest frames go (the core resends).
_MAX_OUT = 64
# Batches to the gateway fit one Wi-Fi datagram: no IP fragments, and no 4 KB block to find
# in a small, fragmented heap while the frame is encoded.
BATCH_FRAME_BYTES = 1400


class MeshNode:
    def __init__(
        self,
        node_id,
        mesh,
        key,
        boot,
        dumps,
        loads,
        buffer_size=64,
        heartbeat_ms=250,
        election=None,
        score=None,
        seed=0,
        collector_size=None,
        max_frame_bytes=BATCH_FRAME_BYTES,
        max_in_flight=1,
    ):
        # [election] and [score] of the config, by the core's rules (as the Pi agent's).
        self.node = Node(node_id, make_config(heartbeat_ms, election, score), boot, seed)
        self.id = node_id
        self.mesh = mesh
        # A node never receives batches (they go to the gateway), and its Collector builds
        # them within the gateway's bounds (checked on CPython): no batch checker on board.
        self.codec = Codec(mesh, key or None, dumps, loads, boot=boot)
        self.buffer = datapath.ReadingBuffer(node_id, boot, buffer_size)
        # The leader holds up to a full batch per member; bounded all the same.
        self.collector = datapath.Collector(
            node_id,
            mesh,
            collector_size or buffer_size * 2,
            max_frame_bytes=max_frame_bytes,
            max_in_flight=max_in_flight,
        )
        self.addresses = {}  # node -> [source, learned_at]
        self.out = []
        self.out_dropped = 0
        self.ignored = 0
        self.errors = 0  # unexpected exceptions caught around the core (should stay 0)
        self.last_error = None
        self.sample_errors = 0
        self.gateway_known = False  # the transport sets it: UDP once an address is known
        self.needs_address = True  # UDP: readings go to a learned address; MQTT: to a topic
        self._was_leader = False
        self._data_at = -_DATA_EVERY_MS
        self._elections = []
        self._names = {}  # node id or metric name -> the one str held readings share

    # ---- the three entry points ----------------------------------------------------------

    def start(self, now):
        self.node.start(now)
        self._after(now)

    def stop(self, now):
        """Graceful: a leader hands over to its successor; the frames go out in ``out``."""
        self.node.stop(now)
        self._flush_outbox()

    def frame(self, data, source, now):
        """One received frame. ``source``: where it came from (UDP) or None (MQTT)."""
        try:
            msg = self.codec.decode(data, now)
        except WireError:
            return None
        except Exception as e:
            self._error(e)
            return None
        if msg.sender == self.id:
            return None  # our own multicast, looped back
        if source is not None:
            self._learn(msg.sender, source, now)
        try:
            self._dispatch(msg, now)
        except Exception as e:
            self._error(e)
        return msg

    def tick(self, now):
        self.node.tick(now)
        self._after(now)

    def sample(self, now, t_ms, metrics):
        """Store one reading (taken at wall-clock ``t_ms``); the data path sends it later."""
        try:
            self.buffer.add(t_ms, metrics)
        except ValueError:
            self.sample_errors += 1
            return
        self._data_at = -_DATA_EVERY_MS  # send it at the next tick

    def set_power(self, battery, link, mains, eligible=True):
        self.node.set_power(battery, link, mains, eligible)

    @property
    def role_name(self):
        return ROLE_NAMES[self.node.role]

    @property
    def wakeup(self):
        """Next time (ms) ``tick`` has work; the runtime may sleep until then."""
        w = self.node.wakeup
        if self.buffer.depth:
            w = min(w, self._data_at + _DATA_EVERY_MS)
        if self.node.role == ROLE_LEADER:
            w = min(w, self._data_at + _DATA_EVERY_MS * 4)
        return w

    def address(self, node_id):
        entry = self.addresses.get(node_id)
        return entry[0] if entry is not None else None

    # ---- internals ---------------------------------------------------------------------

    def _error(self, e):
        self.errors += 1
        self.last_error = repr(e)  # for the status line: these should never happen

    def _dispatch(self, msg, now):
        kind = msg.kind
        if kind in _ELECTION_KINDS:
            self.node.receive(msg, now)
            self._after(now)
        elif kind == READINGS:
            if msg.target == self.id and self.node.role == ROLE_LEADER:
                msg.sender = self._share(msg.sender)
                self._share_names(msg.body)
                self.collector.add(msg)
            else:
                self.ignored += 1
        elif kind == READINGS_ACK:
            if msg.target == self.id:
                self.buffer.on_ack(msg)
            else:
                self.ignored += 1
        elif kind == BATCH_ACK:
            if msg.target == self.id and self.node.role == ROLE_LEADER:
                confirmations = self.collector.on_ack_msg(msg, now, self.buffer)
                for ack in datapath.make_ack_messages(self.id, self.node.term, confirmations):
                    self._send(DEST_NODE, ack.target, ack)
            else:
                self.ignored += 1
        else:
            self.ignored += 1  # BATCH: for the gateway

    def _after(self, now):
        """After every core call: send its outbox, follow role changes, run the data path."""
        self._flush_outbox()
        node = self.node
        leading = node.role == ROLE_LEADER
        if self._was_leader and not leading:
            self.collector.lost_leadership()
            self._elections = []
        elif leading and not self._was_leader:
            if len(self._elections) >= _MAX_ELECTIONS:
                self._elections.pop(0)  # no gateway for a long time: keep the latest
            self._elections.append([node.term, self.id, node.lead_reason or "start"])
        self._was_leader = leading
        if now - self._data_at >= _DATA_EVERY_MS:
            self._data_at = now
            self._data_path(now)

    def _data_path(self, now):
        node = self.node
        leader = node.leader
        if leader is None:
            return
        if leader != self.id:
            if (
                self.buffer.depth
                and now >= self.buffer.wakeup
                and (leader in self.addresses or not self.needs_address)
            ):
                for msg in self.buffer.due_messages(now, leader, node.term):
                    self._send(DEST_NODE, leader, msg)
            return
        collector = self.collector
        collector.pull_own(self.buffer, now, node.term)
        if not self.gateway_known:
            return  # batches wait (bounded) until a gateway is configured or found
        elections = self._elections
        self._elections = []
        for _ in range(collector.max_in_flight + 1):
            # The mesh view is built only if a new batch is made (this runs every 50 ms).
            batch = collector.due_batch(now, node.term, self._members, elections)
            elections = None
            if batch is None:
                break
            self._send(DEST_GATEWAY, None, datapath.batch_message(self.id, node.term, batch))

    def _share_names(self, readings):
        """Make held readings share one str per metric name and node id.

        Every decoded frame brings fresh copies of the same few names; a leader holds up to
        ``collector_size`` readings, so sharing them saves about 48 bytes per name per reading
        (64-bit unix port; about half on the ESP32). Bounded: past ``_MAX_NAMES`` distinct
        names, new ones are kept as they come.
        """
        if not isinstance(readings, list):
            return
        for reading in readings:
            if not isinstance(reading, list) or len(reading) != 4:
                continue  # malformed: the collector counts it
            metrics = reading[3]
            if not isinstance(metrics, dict):
                continue
            shared = {}
            for name in metrics:
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

    def _members(self, now):
        node = self.node
        flags = F_LEADER | (F_MAINS if node.mains else 0)
        rows = [[self.id, node.score, node.battery, node.link, flags, 0]]
        since = now - node.config.live_ms
        for peer_id in sorted(node.peers.by_id):
            peer = node.peers.by_id[peer_id]
            if peer.heard >= since:
                rows.append(
                    [peer.id, peer.score, peer.battery, peer.link, peer.flags, now - peer.heard]
                )
        return rows

    def _flush_outbox(self):
        outbox = self.node.outbox
        if outbox:
            for msg in outbox:
                self._send(DEST_MESH, None, msg)
            del outbox[:]

    def _send(self, dest, name, msg):
        try:
            frame = self.codec.encode(msg)
        except WireError as e:
            self._error(e)
            return
        if len(self.out) >= _MAX_OUT:
            self.out.pop(0)
            self.out_dropped += 1
        self.out.append((dest, name, msg.kind, frame))

    def _learn(self, sender, source, now):
        entry = self.addresses.get(sender)
        if entry is not None:
            entry[0] = source
            entry[1] = now
            return
        if len(self.addresses) >= _MAX_ADDRESSES:
            victim = None
            oldest = 0
            for node_id in self.addresses:
                e = self.addresses[node_id]
                if victim is None or e[1] < oldest or (e[1] == oldest and node_id < victim):
                    victim = node_id
                    oldest = e[1]
            del self.addresses[victim]
        self.addresses[sender] = [source, now]
