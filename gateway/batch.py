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
from collections.abc import Sequence
from typing import Any, NamedTuple

from agent.core.batchcheck import check_batch

# Readings of a mesh repeat the same metric names: per set of names, a %-template of the JSON
# text, filled with the values (ints, by the schema): about twice as fast as the encoder.
_TEMPLATES_MAX = 1024
_templates: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {}


def metrics_text(metrics: dict[str, int]) -> str:
    """A checked reading's ``metrics`` as stored: the same text as ``json.dumps(metrics,
    separators=(",", ":"), sort_keys=True)``. Only for metrics the batch schema accepted: the
    values must be ints (a bool or a float would be written as a number without its kind)."""
    known = _templates.get(tuple(metrics))
    if known is None:
        names = tuple(sorted(metrics))
        # A key is written as json writes any string.
        template = "{%s}" % ",".join(json.dumps(name).replace("%", "%%") + ":%d" for name in names)
        if len(_templates) >= _TEMPLATES_MAX:
            _templates.clear()
        known = _templates[tuple(metrics)] = (names, template)
    names, template = known
    return template % tuple([metrics[name] for name in names])


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
    # decoder made that text already (off the storage's thread); "" if not.
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
    # The readings as the batch map has them ([node, boot, seq, t_ms, metrics] each): the live
    # feed's batch event shows these, without a copy.
    rows: Sequence[Any] = ()


def parse_batch(
    body: Any, mesh: str, leader: str, checked: bool = False, metrics_json: list[str] | None = None
) -> Batch:
    """The records of a batch map; raise :class:`BatchError` for one the schema refuses.

    ``checked``: the gateway's codec has applied the schema already (a decoded frame), so it
    is not applied twice; the checks against the frame are made all the same.

    ``mesh`` and ``leader`` come from the frame (its mesh hash and sender); the batch may
    repeat them, and then they must agree. The reasons are ``check_batch``'s, and
    ``mesh_mismatch`` or ``leader_mismatch``.

    ``metrics_json``: each reading's metrics as stored (:func:`metrics_text`), in order, made
    by the frame decoder (gateway/frames.py) so that the storage does not encode them again.
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
        (
            [Reading(*row) for row in body["readings"]]
            if metrics_json is None
            else [
                Reading(r[0], r[1], r[2], r[3], r[4], text)
                for r, text in zip(body["readings"], metrics_json, strict=True)
            ]
        ),
        [Aggregate(*row) for row in body.get("agg", ())],
        [Member(*row) for row in body.get("members", ())],
        [(node, count) for node, count in body.get("dropped", ())],
        [_election(*row) for row in body.get("elections", ())],
        body["readings"],
    )


def _election(term: int, leader: str | None, reason: str | int) -> ReportedElection:
    # The schema allows "no leader" (a term that ended leaderless), stored as "", and numeric
    # reason codes, stored as text.
    return ReportedElection(
        term, leader or "", reason if isinstance(reason, str) else "code %d" % reason
    )
