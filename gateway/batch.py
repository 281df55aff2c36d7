"""A leader's BATCH body, converted into plain typed records.

The batch map's schema is the core's, ``agent.core.batchcheck.check_batch`` (docs/wire.md
lists it): the gateway's codec has applied it to every BATCH frame before the body gets here,
and :func:`parse_batch` applies it once more, since :class:`gateway.ingest.Ingest` may also be
driven directly. Nothing here checks a field again: it converts what the schema accepted, whose
bounds fit the storage (integers within SQLite's int64). The one check of its own is against
the frame: a batch that names a mesh or a leader must name the frame's. Anything refused
raises :class:`BatchError` with a short ``reason`` that the caller counts; nothing else.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from agent.core.batchcheck import check_batch

# The schema's bounds (agent/core/wire.py and batchcheck.py keep them private, as consts;
# tests/test_gateway_batch.py checks that these agree with them).
_MAX_ID_BYTES = 16  # node ids
_MAX_NAME_BYTES = 32  # metric names
_MAX_ITEMS = 256  # readings in a batch
_MAX_METRICS = 16  # metrics in a reading
_U32 = 0xFFFFFFFF
_I64_MIN = -0x8000000000000000
_I64_MAX = 0x7FFFFFFFFFFFFFFF
# A member row's (agent/core/datapath.py): score, battery, link, flags.
_I32_MIN = -0x80000000
_I32_MAX = 0x7FFFFFFF
_U16 = 0xFFFF
_U8 = 0xFF

# Readings of a mesh repeat the same metric names: per set of names (in the map's order), a
# %-template of the stored JSON text, with a function that takes the values in the template's
# order (about twice as fast as the encoder), only for sets of names the batch schema
# accepts; and the node ids and metric names it accepts: what the readers below need not
# check again.
_TEMPLATES_MAX = 1024
_checked_names: dict[tuple[str, ...], tuple[Callable[[dict[str, Any]], tuple[Any, ...]], str]] = {}
_checked_nodes: set[str] = set()
_checked_metrics: set[str] = set()
_NAMES_MAX = 4096
_new = tuple.__new__
_Row = TypeVar("_Row", bound=tuple[Any, ...])


def _template(names: tuple[str, ...]) -> str:
    """The stored text of metrics with these (sorted) names, as ``json.dumps(metrics,
    separators=(",", ":"), sort_keys=True)`` writes it, with ``%d`` for each value (ints, by
    the schema: a bool or a float would be written without its kind)."""
    return "{%s}" % ",".join(json.dumps(name).replace("%", "%%") + ":%d" for name in names)


def read_readings(rows: Any) -> list[Reading] | None:
    """A batch's ``readings`` list as records with their stored metrics text, in one pass, if
    every reading passes the batch schema (``agent.core.batchcheck``); else None, and the
    schema's own check says why.

    The gateway's codecs check a frame's readings with this (gateway/frames.py): one pass
    instead of the schema's, the text's and the records' (about a third of a batch's CPU time
    outside SQLite). It accepts exactly what the schema's reading check accepts
    (tests/test_gateway_batch.py holds them side by side); node ids and sets of metric names
    that passed once are remembered, since a mesh repeats them in every batch.
    """
    if type(rows) is not list or len(rows) > _MAX_ITEMS:
        return None
    nodes, names_known = _checked_nodes, _checked_names
    u32, i64_min, i64_max = _U32, _I64_MIN, _I64_MAX
    out: list[Reading] = []
    for row in rows:
        if type(row) is not list or len(row) != 5:
            return None
        node, boot, seq, t_ms, metrics = row
        if type(node) is not str or (
            node not in nodes and not _checked(node, nodes, _MAX_ID_BYTES)
        ):
            return None
        if (
            type(boot) is not int
            or not 0 <= boot <= u32
            or type(seq) is not int
            or not 0 <= seq <= u32
            or type(t_ms) is not int
            or not 0 <= t_ms <= i64_max
            or type(metrics) is not dict
            or len(metrics) > _MAX_METRICS
        ):
            return None
        known = names_known.get(tuple(metrics))
        if known is None:
            for name in metrics:
                if type(name) is not str or not 0 < len(name.encode()) <= _MAX_NAME_BYTES:
                    return None  # not remembered: a set of names is, once it passed
            if len(names_known) >= _TEMPLATES_MAX:
                names_known.clear()
            names = tuple(sorted(metrics))
            known = names_known[tuple(metrics)] = (_values_of(names), _template(names))
        values_of, template = known
        values = values_of(metrics)
        for value in values:
            if type(value) is not int or not i64_min <= value <= i64_max:
                return None
        out.append(_new(Reading, (node, boot, seq, t_ms, metrics, template % values)))
    return out


def read_aggregates(rows: Any) -> list[Aggregate] | None:
    """A batch's ``agg`` list as records if every row passes the batch schema, else None (as
    :func:`read_readings`)."""
    return _read_rows(rows, _aggregate_fits, Aggregate)


def read_members(rows: Any) -> list[Member] | None:
    """A batch's ``members`` list as records if every row passes the batch schema, else None
    (as :func:`read_readings`)."""
    if type(rows) is not list or len(rows) > _MAX_ITEMS:
        return None
    out = []
    for row in rows:
        # Six fields, or seven for a sleepy member (its wake interval, u32).
        if type(row) is not list or not 6 <= len(row) <= 7 or not _member_fits(*row[:6]):
            return None
        if len(row) == 6:
            out.append(_new(Member, (*row, 0)))
        elif type(row[6]) is int and 0 <= row[6] <= _U32:
            out.append(_new(Member, row))
        else:
            return None
    return out


def _read_rows(rows: Any, fits: Callable[..., bool], record: type[_Row]) -> list[_Row] | None:
    # Rows of six fields each (an aggregate's) that ``fits`` accepts, as records.
    if type(rows) is not list or len(rows) > _MAX_ITEMS:
        return None
    out = []
    for row in rows:
        if type(row) is not list or len(row) != 6 or not fits(*row):
            return None
        out.append(_new(record, row))
    return out


def _aggregate_fits(node: Any, metric: Any, count: Any, low: Any, high: Any, mean: Any) -> bool:
    return (
        type(node) is str
        and (node in _checked_nodes or _checked(node, _checked_nodes, _MAX_ID_BYTES))
        and type(metric) is str
        and (metric in _checked_metrics or _checked(metric, _checked_metrics, _MAX_NAME_BYTES))
        and type(count) is int
        and 0 <= count <= _I64_MAX
        and type(low) is int
        and _I64_MIN <= low <= _I64_MAX
        and type(high) is int
        and _I64_MIN <= high <= _I64_MAX
        and type(mean) is int
        and _I64_MIN <= mean <= _I64_MAX
    )


def _member_fits(node: Any, score: Any, battery: Any, link: Any, flags: Any, age_ms: Any) -> bool:
    return (
        type(node) is str
        and (node in _checked_nodes or _checked(node, _checked_nodes, _MAX_ID_BYTES))
        and type(score) is int
        and _I32_MIN <= score <= _I32_MAX
        and type(battery) is int
        and 0 <= battery <= _U16
        and type(link) is int
        and 0 <= link <= _U16
        and type(flags) is int
        and 0 <= flags <= _U8
        and type(age_ms) is int
        and 0 <= age_ms <= _I64_MAX
    )


def _checked(name: str, known: set[str], most: int) -> bool:
    """Is ``name`` 1..``most`` bytes of UTF-8 (the schema's rule for ids and names)? Remember
    it if so."""
    if not 0 < len(name) <= most or len(name.encode()) > most:
        return False
    if len(known) >= _NAMES_MAX:
        known.clear()
    known.add(name)
    return True


def _values_of(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function that takes the values of ``names`` out of a metrics map, as a tuple."""
    if len(names) > 1:
        return operator.itemgetter(*names)
    return lambda metrics: tuple([metrics[name] for name in names])


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
    # The metrics as the storage writes them (compact JSON, keys sorted), when the frame
    # decoder made that text already (read_readings); "" if not.
    metrics_json: str = ""


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
    sleep_ms: int = 0  # a sleepy member's wake interval (0: an awake node)


class ReportedElection(NamedTuple):
    term: int
    leader: str
    reason: str


class Records(NamedTuple):
    """A batch's lists as records, made while its frame's codec checked them
    (gateway/frames.py: ``read_readings``, ``read_aggregates``, ``read_members``)."""

    readings: list[Reading]
    aggregates: list[Aggregate]
    members: list[Member]


class Batch(NamedTuple):
    batch_id: int | str  # leaders number their batches; the wire also allows a short text id
    mesh: str
    leader: str
    readings: list[Reading]
    aggregates: list[Aggregate]
    members: list[Member]
    dropped: list[tuple[str, int]]
    elections: list[ReportedElection]
    # The readings as the batch map has them ([node, boot, seq, t_ms, metrics] each), and its
    # aggregates ([node, metric, count, min, max, mean]): the live feed's batch event shows
    # these, without a copy.
    rows: Sequence[Any] = ()
    agg_rows: Sequence[Any] = ()


def parse_batch(
    body: Any, mesh: str, leader: str, checked: bool = False, records: Records | None = None
) -> Batch:
    """The records of a batch map; raise :class:`BatchError` for one the schema refuses.

    ``checked``: the gateway's codec has applied the schema already (a decoded frame), so it
    is not applied twice; the checks against the frame are made all the same.

    ``mesh`` and ``leader`` come from the frame (its mesh hash and sender); the batch may
    repeat them, and then they must agree. The reasons are ``check_batch``'s, and
    ``mesh_mismatch`` or ``leader_mismatch``.

    ``records``: the batch's readings (with their stored metrics text), aggregates and members
    as records, made by the frame decoder (gateway/frames.py) so that they are not made again.
    """
    why = None if checked else check_batch(body)
    if why is not None:
        raise BatchError(why)
    if body.get("mesh", mesh) != mesh:
        raise BatchError("mesh_mismatch")
    if body.get("leader", leader) != leader:
        raise BatchError("leader_mismatch")
    return Batch(
        body["id"],
        mesh,
        leader,
        [Reading(*row) for row in body["readings"]] if records is None else records.readings,
        [Aggregate(*row) for row in body.get("agg", ())] if records is None else records.aggregates,
        [Member(*row) for row in body.get("members", ())] if records is None else records.members,
        [(node, count) for node, count in body.get("dropped", ())],
        [_election(*row) for row in body.get("elections", ())],
        body["readings"],
        body.get("agg", ()),
    )


def _election(term: int, leader: str | None, reason: str | int) -> ReportedElection:
    # The schema allows "no leader" (a term that ended leaderless), stored as "", and numeric
    # reason codes, stored as text.
    return ReportedElection(
        term, leader or "", reason if isinstance(reason, str) else "code %d" % reason
    )
