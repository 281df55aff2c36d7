"""Frames in and out of the gateway: one wire Codec per mesh, chosen by the frame's mesh hash.

A leader's BATCH frame names its mesh only by a 16-bit hash, so the gateway peeks at the hash
(before any full decode) and hands the frame to that mesh's :class:`agent.core.wire.Codec`,
which checks size, tag, fields and replay. Meshes with a configured key are always decoded
with the key. A frame of a mesh with no key is accepted only when open meshes are allowed:
then the mesh name is read from the batch (its ``mesh`` field), checked against the hash, and
a key-less codec is made for it.

The codecs check a batch with :class:`BatchReader`: the core's batch schema, with the
readings, aggregates and members checked and made into records in the same pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent import strict_cbor
from agent.core import batchcheck, wire
from agent.core.messages import BATCH, BATCH_ACK, Msg
from gateway.batch import Records, read_aggregates, read_members, read_readings
from gateway.ingest import Arrival

MAX_FRAME_BYTES = wire.MAX_FRAME_BYTES
# Open meshes are created from traffic; bound them so junk hashes cannot fill memory.
MAX_OPEN_MESHES = 256


# A frame as it arrived: (transport, bytes, the mesh its MQTT topic names or None).
Frame = tuple[str, bytes, "str | None"]
# One frame's result: its batch, or (transport, the reason it is dropped).
Decoded = Arrival | tuple[str, str]


class FrameDrop(Exception):
    """A frame the gateway does not ingest; ``reason`` is counted by the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BatchReader:
    """A codec's ``check_batch``: ``agent.core.batchcheck.check_batch``'s verdict, and the
    records of the last batch it passed (``records``), made while checking.

    When every row of the batch's readings, aggregates and members passes its reader in
    gateway/batch.py (each accepts what the schema accepts), the schema checks the rest of the
    batch with empty lists in their place: the same verdict, since those lists are fine and
    the schema names the first bad key. Otherwise the schema checks the whole batch and says
    why.
    """

    def __init__(self) -> None:
        self.records: Records | None = None

    def __call__(self, body: Any) -> str | None:
        self.records = None
        if type(body) is not dict or "readings" not in body:
            return batchcheck.check_batch(body)
        rest = dict(body)
        made: list[Any] = []
        for key, read in _READERS:
            if key not in rest:
                made.append([])
                continue
            records = read(rest[key])
            if records is None:
                return batchcheck.check_batch(body)
            made.append(records)
            rest[key] = []
        why: str | None = batchcheck.check_batch(rest)
        if why is None:
            self.records = Records(*made)
        return why


# The batch map's lists that the gateway reads into records as it checks them.
_READERS: tuple[tuple[str, Callable[[Any], list[Any] | None]], ...] = (
    ("readings", read_readings),
    ("agg", read_aggregates),
    ("members", read_members),
)


class FrameRouter:
    """Decodes BATCH frames of many meshes and encodes the BATCH_ACKs that answer them.

    Not thread-safe: the codecs hold replay state; the gateway calls this from its worker.
    """

    def __init__(
        self,
        keys: dict[str, bytes],
        open_meshes: bool,
        node_id: str,
        boot: int,
    ) -> None:
        self.node_id = node_id
        self.boot = boot
        self.open_meshes = open_meshes
        self._codecs: dict[int, wire.Codec] = {}
        self._keyed: set[int] = set()
        self._reader = BatchReader()  # every codec's, so it holds the last frame's records
        for mesh in sorted(keys):
            codec = self._codec(mesh, keys[mesh])
            if codec.mesh_hash in self._codecs:
                raise ValueError(
                    "meshes %r and %r share a mesh hash"
                    % (self._codecs[codec.mesh_hash].mesh, mesh)
                )
            self._codecs[codec.mesh_hash] = codec
            self._keyed.add(codec.mesh_hash)

    def decode(self, data: bytes, now_ms: int) -> tuple[str, Msg]:
        """(mesh name, BATCH Msg) of a frame; raises :class:`FrameDrop`. The records of its
        batch are in ``self.records`` until the next call."""
        if len(data) > MAX_FRAME_BYTES:
            raise FrameDrop(wire.TOO_BIG)  # before anything is read
        hash_ = _peek_mesh_hash(data)
        if hash_ is None:
            raise FrameDrop(wire.MALFORMED)
        codec = self._codecs.get(hash_)
        if codec is None:
            codec = self._open_codec(hash_, data)
        self._reader.records = None
        try:
            msg = codec.decode(data, now_ms)
        except wire.WireError as exc:
            raise FrameDrop(exc.reason) from None
        if msg.kind != BATCH:
            raise FrameDrop("not_batch")
        return codec.mesh, msg

    @property
    def records(self) -> Records | None:
        return self._reader.records

    def decode_many(self, frames: list[Frame], now_ms: int) -> list[Decoded]:
        """Each frame's batch as an :class:`Arrival` for the ingest path, or (transport, why
        it is dropped), with its batch's records (the readings with their stored metrics text),
        made as the codec checked them."""
        out: list[Decoded] = []
        for transport, data, topic_mesh in frames:
            try:
                mesh, msg = self.decode(data, now_ms)
            except FrameDrop as drop:
                out.append((transport, drop.reason))
                continue
            if topic_mesh is not None and topic_mesh != mesh:
                out.append((transport, "topic_mismatch"))
                continue
            out.append(Arrival(transport, mesh, msg.sender, msg.term, msg.body, True, self.records))
        return out

    def encode_ack(
        self, mesh: str, leader: str, term: int, batch_id: Any, status: int, highest_term: int
    ) -> bytes:
        """The BATCH_ACK frame. Its codec only counts the frames sent: the one that read the
        batch may be in another process (gateway/decoder.py)."""
        codec = self._codecs.get(wire.mesh_hash(mesh))
        if codec is None:  # an open mesh that another router decoded
            codec = self._codecs[wire.mesh_hash(mesh)] = self._codec(mesh, None)
        ack = Msg(BATCH_ACK, self.node_id, term=term, target=leader)
        ack.body = [batch_id, status, highest_term]
        return bytes(codec.encode(ack))

    def keyed(self, mesh: str) -> bool:
        return wire.mesh_hash(mesh) in self._keyed

    def _open_codec(self, hash_: int, data: bytes) -> wire.Codec:
        if not self.open_meshes:
            raise FrameDrop("unknown_mesh")
        if len(self._codecs) - len(self._keyed) >= MAX_OPEN_MESHES:
            raise FrameDrop("too_many_meshes")
        name = _peek_batch_mesh(data)
        if name is None or wire.mesh_hash(name) != hash_:
            raise FrameDrop("unknown_mesh")
        codec = self._codec(name, None)
        self._codecs[hash_] = codec
        return codec

    def _codec(self, mesh: str, key: bytes | None) -> wire.Codec:
        """A codec that reads BATCH frames: strict CBOR, and the batch schema's check."""
        return wire.Codec(
            mesh,
            key,
            strict_cbor.dumps,
            strict_cbor.loads,
            boot=self.boot,
            check_batch=self._reader,
        )


def _peek_mesh_hash(data: bytes) -> int | None:
    """The mesh hash: the second item of the frame's CBOR array (head, vk, hash)."""
    size = len(data)
    if size < 3 or not 0x80 <= data[0] < 0x98:
        return None
    pos = 1
    value = 0
    for _ in range(2):  # vk, then mesh_hash: small unsigned ints (at most 16 bits)
        if pos >= size:
            return None
        head = data[pos]
        if head < 24:
            value, pos = head, pos + 1
        elif head in (24, 25):
            width = 1 << (head - 24)
            if pos + 1 + width > size:
                return None
            value = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            return None
    return value


def _peek_batch_mesh(data: bytes) -> str | None:
    """The ``mesh`` field of an unauthenticated BATCH frame, or None."""
    try:
        value = strict_cbor.loads(data)  # a frame of an open mesh has no tag after its CBOR
    except Exception:  # any decoder error means "not a frame we can route"
        return None
    if type(value) is not list or len(value) != 7 or value[0] != wire.VERSION * 16 + BATCH:
        return None
    batch = value[6]
    name = batch.get("mesh") if isinstance(batch, dict) else None
    return (
        name
        if isinstance(name, str) and 0 < len(name.encode()) <= batchcheck.MAX_MESH_BYTES
        else None
    )
