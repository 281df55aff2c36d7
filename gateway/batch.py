"""Validate a leader's BATCH body into plain typed records.

The batch map arrives from the network (see docs/design.md, "The data path"). Nothing in it is
trusted: every field is type- and range-checked here, and anything malformed raises
:class:`BatchError` with a short ``reason`` that the caller counts. Nothing else is raised.
"""

from __future__ import annotations

from typing import Any, NamedTuple

# Bounds on what one batch may carry. A frame is at most 4096 bytes, so real batches stay far
# below these; they guard the MQTT path, where the broker could carry a bigger payload.
MAX_ITEMS = 4096
MAX_METRICS_PER_READING = 32
MAX_NAME_BYTES = 32  # metric names, reasons, text batch ids
MAX_MESH_BYTES = 64
# Values are integers in milli-units; SQLite stores signed 64-bit integers.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1


class BatchError(Exception):
    """A batch body that does not match the data-path schema."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reading(NamedTuple):
    node: str
    boot: int
    seq: int
    t_ms: int
    metrics: dict[str, int]


class Aggregate(NamedTuple):
    node: str
    metric: str
    samples: int  # "count" in the wire map (a NamedTuple cannot name a field count)
    min: int
    max: int
    mean: int


class Member(NamedTuple):
    node: str
    score: int
    battery: int
    link: int
    flags: int
    age_ms: int


class ReportedElection(NamedTuple):
    term: int
    leader: str
    reason: str


class Batch(NamedTuple):
    batch_id: int | str  # leaders number their batches; the wire also allows a short text id
    mesh: str
    leader: str
    readings: list[Reading]
    aggregates: list[Aggregate]
    members: list[Member]
    dropped: list[tuple[str, int]]
    elections: list[ReportedElection]


def parse_batch(body: Any, mesh: str, leader: str) -> Batch:
    """Check a decoded batch map and return it as records; raise :class:`BatchError`.

    ``mesh`` and ``leader`` come from the frame (its mesh hash and sender); the batch may
    repeat them, and then they must agree.
    """
    if not isinstance(body, dict):
        raise BatchError("not_map")
    batch_id = body.get("id")
    if isinstance(batch_id, str):
        batch_id = _name(batch_id, "batch_id")
    else:
        batch_id = _uint(batch_id, "batch_id")
    if body.get("mesh", mesh) != mesh:
        raise BatchError("mesh_mismatch")
    if body.get("leader", leader) != leader:
        raise BatchError("leader_mismatch")
    mesh = _name(mesh, "mesh", MAX_MESH_BYTES)
    leader = _name(leader, "leader")
    readings = [_reading(item) for item in _items(body.get("readings", []), "readings")]
    aggregates = [_aggregate(item) for item in _items(body.get("agg", []), "agg")]
    members = [_member(item) for item in _items(body.get("members", []), "members")]
    dropped = [_dropped(item) for item in _items(body.get("dropped", []), "dropped")]
    elections = [_election(item) for item in _items(body.get("elections", []), "elections")]
    if "readings" not in body:
        raise BatchError("no_readings")
    return Batch(batch_id, mesh, leader, readings, aggregates, members, dropped, elections)


def _items(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BatchError("bad_" + what)
    if len(value) > MAX_ITEMS:
        raise BatchError("too_many_" + what)
    return value


def _row(item: Any, size: int, what: str) -> list[Any]:
    if not isinstance(item, list) or len(item) != size:
        raise BatchError("bad_" + what)
    return item


def _int(value: Any, what: str) -> int:
    # bool is an int subclass; a true/false where a number belongs is a malformed batch.
    if type(value) is not int or not _INT_MIN <= value <= _INT_MAX:
        raise BatchError("bad_" + what)
    return value


def _uint(value: Any, what: str) -> int:
    number = _int(value, what)
    if number < 0:
        raise BatchError("bad_" + what)
    return number


def _name(value: Any, what: str, limit: int = MAX_NAME_BYTES) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > limit:
        raise BatchError("bad_" + what)
    return value


def _reading(item: Any) -> Reading:
    node, boot, seq, t_ms, metrics = _row(item, 5, "reading")
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS_PER_READING:
        raise BatchError("bad_metrics")
    checked = {_name(key, "metric"): _int(value, "metric_value") for key, value in metrics.items()}
    return Reading(
        _name(node, "node"), _uint(boot, "boot"), _uint(seq, "seq"), _int(t_ms, "t_ms"), checked
    )


def _aggregate(item: Any) -> Aggregate:
    node, metric, count, low, high, mean = _row(item, 6, "agg")
    return Aggregate(
        _name(node, "node"),
        _name(metric, "metric"),
        _uint(count, "agg_count"),
        _int(low, "agg_min"),
        _int(high, "agg_max"),
        _int(mean, "agg_mean"),
    )


def _member(item: Any) -> Member:
    node, score, battery, link, flags, age_ms = _row(item, 6, "member")
    return Member(
        _name(node, "node"),
        _int(score, "score"),
        _int(battery, "battery"),
        _int(link, "link"),
        _uint(flags, "flags"),
        _uint(age_ms, "age"),
    )


def _dropped(item: Any) -> tuple[str, int]:
    node, count = _row(item, 2, "dropped")
    return _name(node, "node"), _uint(count, "dropped_count")


def _election(item: Any) -> ReportedElection:
    term, leader, reason = _row(item, 3, "election")
    if type(reason) is int and reason >= 0:
        reason = "code %d" % reason  # the wire allows numeric reason codes
    if not isinstance(reason, str) or len(reason.encode()) > MAX_NAME_BYTES:
        raise BatchError("bad_election_reason")
    # The wire allows "no leader" (a term that ended leaderless): kept as "".
    leader = "" if leader is None else _name(leader, "leader")
    return ReportedElection(_uint(term, "term"), leader, reason)
