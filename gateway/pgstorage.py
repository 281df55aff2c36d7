"""The storage on PostgreSQL (psycopg 3): the same interface, fencing and dedup as SQLite's.

Chosen by ``--db postgresql://...``. Several gateway processes may share one database: a
group's transaction first takes an advisory lock on each of its meshes, in one order for every
process (a mesh row that does not exist yet cannot be locked with SELECT ... FOR UPDATE), so
batches of one mesh are fenced one at a time across every process, and readings go in with ON CONFLICT DO NOTHING on their primary
key, so each is stored once. Readings go in as one INSERT ... SELECT FROM unnest(arrays) per
batch: COPY cannot skip duplicates.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg
from psycopg.rows import dict_row

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway import fence, pgnotify
from gateway.batch import Batch
from gateway.storage import (
    PURGE_ALERTS,
    PURGE_ELECTIONS,
    GroupResult,
    IngestOutcome,
    Purged,
    SqlReads,
    StorageError,
    alert_record,
)

_DAY_MS = 86_400_000

# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
    CREATE TABLE meshes (
        name TEXT PRIMARY KEY, term BIGINT NOT NULL, leader TEXT NOT NULL,
        updated_ms BIGINT NOT NULL
    );
    CREATE TABLE readings (
        mesh TEXT NOT NULL, node TEXT NOT NULL, boot BIGINT NOT NULL, seq BIGINT NOT NULL,
        t_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL, metrics TEXT NOT NULL,
        PRIMARY KEY (mesh, node, boot, seq)
    );
    CREATE INDEX readings_by_time ON readings (mesh, received_ms);
    CREATE TABLE batches (
        mesh TEXT NOT NULL, leader TEXT NOT NULL, term BIGINT NOT NULL, batch_id TEXT NOT NULL,
        received_ms BIGINT NOT NULL, readings INTEGER NOT NULL,
        PRIMARY KEY (mesh, leader, term, batch_id)
    );
    CREATE TABLE aggregates (
        id BIGSERIAL PRIMARY KEY, mesh TEXT NOT NULL, leader TEXT NOT NULL,
        term BIGINT NOT NULL, node TEXT NOT NULL, metric TEXT NOT NULL, count BIGINT NOT NULL,
        min BIGINT NOT NULL, max BIGINT NOT NULL, mean BIGINT NOT NULL,
        received_ms BIGINT NOT NULL
    );
    CREATE INDEX aggregates_by_time ON aggregates (mesh, received_ms);
    CREATE TABLE nodes (
        mesh TEXT NOT NULL, node TEXT NOT NULL, score BIGINT NOT NULL, battery BIGINT NOT NULL,
        link BIGINT NOT NULL, flags BIGINT NOT NULL, last_seen_ms BIGINT NOT NULL,
        dropped BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (mesh, node)
    );
    CREATE TABLE elections (
        id BIGSERIAL PRIMARY KEY, mesh TEXT NOT NULL, term BIGINT NOT NULL,
        leader TEXT NOT NULL, reason TEXT NOT NULL, at_ms BIGINT NOT NULL,
        UNIQUE (mesh, term, leader)
    );
    CREATE TABLE alerts (
        id BIGSERIAL PRIMARY KEY, mesh TEXT NOT NULL, kind TEXT NOT NULL, node TEXT NOT NULL,
        message TEXT NOT NULL, raised_ms BIGINT NOT NULL, cleared_ms BIGINT
    );
    CREATE INDEX alerts_active ON alerts (cleared_ms);
    CREATE TABLE fence_resets (
        id BIGSERIAL PRIMARY KEY, mesh TEXT NOT NULL, from_term BIGINT NOT NULL,
        to_term BIGINT NOT NULL, source TEXT NOT NULL, at_ms BIGINT NOT NULL
    );
    """,
    # One open alert per (mesh, kind, node): replicas that notice the same silent node raise
    # one alert between them. Older duplicates (from replicas before this) are closed first.
    """
    UPDATE alerts SET cleared_ms = raised_ms WHERE cleared_ms IS NULL AND id NOT IN (
        SELECT MIN(id) FROM alerts WHERE cleared_ms IS NULL GROUP BY mesh, kind, node
    );
    CREATE UNIQUE INDEX alerts_open_once ON alerts (mesh, kind, node) WHERE cleared_ms IS NULL;
    """,
    """
    CREATE TABLE reading_conflicts (
        mesh TEXT NOT NULL, node TEXT NOT NULL, boot BIGINT NOT NULL, seq BIGINT NOT NULL,
        t_ms BIGINT NOT NULL, received_ms BIGINT NOT NULL, metrics TEXT NOT NULL,
        PRIMARY KEY (mesh, node, boot, seq, t_ms, metrics)
    );
    CREATE INDEX reading_conflicts_by_time ON reading_conflicts (mesh, received_ms);
    """,
]

_to_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode
# Serialises migrations of several gateways starting at once (an advisory lock's key).
_MIGRATION_LOCK = 0x6D657368

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _database_failure(exc: BaseException) -> bool:
    """A failure of the server or the connection (full disk, gone, read-only), not a bug."""
    return isinstance(exc, (psycopg.OperationalError, psycopg.InternalError))


def _guarded(
    method: Callable[Concatenate[PostgresStorage, _P], _R],
) -> Callable[Concatenate[PostgresStorage, _P], _R]:
    @functools.wraps(method)
    def wrapper(self: PostgresStorage, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as exc:
            if not _database_failure(exc):
                raise
            raise StorageError(str(exc)) from exc

    return wrapper


class PostgresStorage(SqlReads):
    """One connection, used by the gateway's worker thread."""

    P = "%s"
    AGGREGATE_ORDER = "id"

    @_guarded
    def __init__(
        self,
        url: str,
        raw_retention_ms: int = 7 * _DAY_MS,
        aggregate_retention_ms: int = 365 * _DAY_MS,
    ) -> None:
        self.url = url
        self.raw_retention_ms = raw_retention_ms
        self.aggregate_retention_ms = aggregate_retention_ms
        self._db = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        # This session's notifications come back to its own listener: that is how it knows them.
        self.backend_pid = self._db.info.backend_pid
        self._migrate()

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row["version"]) if row else 0

    def _migrate(self) -> None:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INT NOT NULL)")
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version VALUES (0)")
                version = 0
            else:
                version = int(row["version"])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    "database schema %d is newer than this gateway (%d)"
                    % (version, len(MIGRATIONS))
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._db.execute(statement.encode())
                self._db.execute("UPDATE schema_version SET version = %s", (number + 1,))

    @_guarded
    def next_boot(self) -> int:
        row = self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('boot', 1) ON CONFLICT (key) "
            "DO UPDATE SET value = meta.value + 1 RETURNING value"
        ).fetchone()
        assert row is not None
        return int(row["value"])

    # -- writes ------------------------------------------------------------------------------

    def ingest(self, term: int, batch: Batch, now_ms: int) -> IngestOutcome:
        result = self.ingest_many([(term, batch)], now_ms)[0]
        if isinstance(result, Exception):
            raise result
        return result

    @_guarded
    def ingest_many(self, items: Sequence[tuple[int, Batch]], now_ms: int) -> list[GroupResult]:
        """Group commit, as SqliteStorage.ingest_many: one transaction, a savepoint a batch.

        The other replicas hear of each stored or fenced batch by a NOTIFY in the same
        transaction (gateway/pgnotify.py), one statement for the group.
        """
        results: list[GroupResult] = []
        notes: list[str] = []
        with self._db.transaction():
            self._lock_meshes(sorted({batch.mesh for _, batch in items}))
            for term, batch in items:
                try:
                    with self._db.transaction():  # a savepoint
                        outcome = self._ingest_one(term, batch, now_ms)
                except Exception as exc:
                    if _database_failure(exc):
                        raise
                    results.append(exc)
                    continue
                results.append(outcome)
                if outcome.status != ACK_REJECTED:
                    notes.append(
                        pgnotify.batch_note(
                            batch.mesh,
                            batch.leader,
                            term,
                            outcome.status,
                            outcome.inserted,
                            outcome.duplicates,
                            now_ms,
                        )
                    )
            if notes:
                self._db.execute(
                    "SELECT pg_notify(%s, note) FROM unnest(%s::text[]) AS u(note)",
                    (pgnotify.CHANNEL, notes),
                )
        return results

    def _lock_meshes(self, meshes: list[str]) -> None:
        """Take the group's mesh locks (transaction-level advisory locks), so that batches of
        one mesh are fenced one at a time across every gateway sharing the database. All of
        them first, in the order of their keys: two replicas whose groups share meshes would
        otherwise each hold one lock and wait for the other's (a deadlock, which fails both)."""
        keys = self._db.execute(
            "SELECT DISTINCT hashtext(m) AS k FROM unnest(%s::text[]) AS u(m) ORDER BY k",
            (meshes,),
        ).fetchall()
        for row in keys:
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (row["k"],))

    def _ingest_one(self, term: int, batch: Batch, now_ms: int) -> IngestOutcome:
        db, mesh = self._db, batch.mesh  # its mesh is locked (_lock_meshes)
        row = db.execute("SELECT term, leader FROM meshes WHERE name = %s", (mesh,)).fetchone()
        stored = None if row is None else int(row["term"])
        verdict = fence.decide(
            stored,
            term,
            lambda: (
                (row is not None and row["leader"] == batch.leader)
                or self._known(mesh, batch.leader)
            ),
        )
        if verdict != fence.ACCEPT:
            status = ACK_FENCED if verdict == fence.FENCED else ACK_REJECTED
            return IngestOutcome(status, stored or 0, 0, 0, False)
        db.execute(
            "INSERT INTO meshes (name, term, leader, updated_ms) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET term = excluded.term, leader = excluded.leader, "
            "updated_ms = excluded.updated_ms WHERE excluded.term >= meshes.term",
            (mesh, term, batch.leader, now_ms),
        )
        new_batch = (
            db.execute(
                "INSERT INTO batches VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (mesh, batch.leader, term, str(batch.batch_id), now_ms, len(batch.readings)),
            ).rowcount
            > 0
        )
        inserted, reused, reused_nodes = self._insert_readings(mesh, batch, now_ms)
        if new_batch and batch.aggregates:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO aggregates (mesh, leader, term, node, metric, count, min, max, "
                    "mean, received_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        (
                            mesh,
                            batch.leader,
                            term,
                            a.node,
                            a.metric,
                            a.samples,
                            a.min,
                            a.max,
                            a.mean,
                            now_ms,
                        )
                        for a in batch.aggregates
                    ],
                )
        if batch.members:
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO nodes (mesh, node, score, battery, link, flags, last_seen_ms) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (mesh, node) DO UPDATE SET "
                    "score = excluded.score, battery = excluded.battery, link = excluded.link, "
                    "flags = excluded.flags, last_seen_ms = excluded.last_seen_ms",
                    [
                        (mesh, m.node, m.score, m.battery, m.link, m.flags, now_ms - m.age_ms)
                        for m in batch.members
                    ],
                )
        if batch.dropped:
            with db.cursor() as cur:
                cur.executemany(
                    "UPDATE nodes SET dropped = %s WHERE mesh = %s AND node = %s",
                    [(count, mesh, node) for node, count in batch.dropped],
                )
        return IngestOutcome(
            ACK_OK,
            max(term, stored or 0),
            inserted,
            len(batch.readings) - inserted - reused,
            new_batch,
            reused,
            reused_nodes,
        )

    def _insert_readings(
        self, mesh: str, batch: Batch, now_ms: int
    ) -> tuple[int, int, tuple[str, ...]]:
        """All of a batch's readings in one statement: (stored, stored apart, their nodes).

        As SqliteStorage: a reading whose id is taken by other content (a node that lost its
        boot counter without a valid clock) goes to ``reading_conflicts``, once.
        """
        rs = batch.readings
        columns = (
            [r.node for r in rs],
            [r.boot for r in rs],
            [r.seq for r in rs],
            [r.t_ms for r in rs],
            [r.metrics_json or _to_json(r.metrics) for r in rs],
        )
        cursor = self._db.execute(
            "INSERT INTO readings (mesh, node, boot, seq, t_ms, received_ms, metrics) "
            "SELECT %s, n, b, s, t, %s, m FROM unnest("
            "%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS u(n, b, s, t, m) "
            "ON CONFLICT DO NOTHING",
            (mesh, now_ms, *columns),
        )
        inserted = max(cursor.rowcount, 0)
        if inserted == len(rs):
            return inserted, 0, ()
        # Some ids were taken: those whose stored reading differs are reused ids.
        rows = self._db.execute(
            "INSERT INTO reading_conflicts (mesh, node, boot, seq, t_ms, received_ms, metrics) "
            "SELECT %s, u.n, u.b, u.s, u.t, %s, u.m FROM unnest("
            "%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[]) AS u(n, b, s, t, m) "
            "JOIN readings r ON r.mesh = %s AND r.node = u.n AND r.boot = u.b AND r.seq = u.s "
            "WHERE r.t_ms <> u.t OR r.metrics <> u.m "
            "ON CONFLICT DO NOTHING RETURNING node",
            (mesh, now_ms, *columns, mesh),
        ).fetchall()
        return inserted, len(rows), tuple(sorted({row["node"] for row in rows}))

    def _known(self, mesh: str, node: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM nodes WHERE mesh = %s AND node = %s "
            "UNION ALL SELECT 1 FROM batches WHERE mesh = %s AND leader = %s "
            "UNION ALL SELECT 1 FROM elections WHERE mesh = %s AND leader = %s LIMIT 1",
            (mesh, node, mesh, node, mesh, node),
        ).fetchone()
        return row is not None

    @_guarded
    def add_election(self, mesh: str, term: int, leader: str, reason: str, at_ms: int) -> bool:
        """As SqliteStorage's; a new record is announced to the other replicas."""
        cursor = self._db.execute(
            "WITH added AS (INSERT INTO elections (mesh, term, leader, reason, at_ms) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id) "
            "SELECT pg_notify(%s, %s) FROM added",
            (
                mesh,
                term,
                leader,
                reason,
                at_ms,
                pgnotify.CHANNEL,
                pgnotify.election_note(mesh, term, leader, reason, at_ms),
            ),
        )
        return cursor.rowcount > 0

    @_guarded
    def raise_alert(
        self, mesh: str, kind: str, node: str, message: str, now_ms: int
    ) -> dict[str, Any]:
        """As SqliteStorage's, raised once across replicas: while (mesh, kind, node) has an
        open alert (a unique index), that one is returned, with ``new`` False."""
        db = self._db
        for _ in range(3):  # the open one may be cleared between the two statements
            row = db.execute(
                "WITH raised AS (INSERT INTO alerts (mesh, kind, node, message, raised_ms) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (mesh, kind, node) "
                "WHERE cleared_ms IS NULL DO NOTHING RETURNING *) "
                "SELECT id, pg_notify(%s, " + pgnotify.ALERT_NOTE_SQL + ") FROM raised",
                (mesh, kind, node, message, now_ms, pgnotify.CHANNEL, "a"),
            ).fetchone()
            if row is not None:
                return alert_record(row["id"], mesh, kind, node, message, now_ms)
            row = db.execute(
                "SELECT id, message, raised_ms FROM alerts WHERE mesh = %s AND kind = %s "
                "AND node = %s AND cleared_ms IS NULL",
                (mesh, kind, node),
            ).fetchone()
            if row is not None:
                return alert_record(
                    row["id"], mesh, kind, node, row["message"], row["raised_ms"], new=False
                )
        raise StorageError("alert %s/%s/%s raised and cleared too fast" % (mesh, kind, node))

    @_guarded
    def clear_alert(self, alert_id: int, now_ms: int) -> bool:
        """As SqliteStorage's; the clear is announced to the other replicas."""
        cursor = self._db.execute(
            "WITH cleared AS (UPDATE alerts SET cleared_ms = %s "
            "WHERE id = %s AND cleared_ms IS NULL RETURNING *) "
            "SELECT pg_notify(%s, " + pgnotify.ALERT_NOTE_SQL + ") FROM cleared",
            (now_ms, alert_id, pgnotify.CHANNEL, "c"),
        )
        return cursor.rowcount > 0

    @_guarded
    def purge(self, now_ms: int, agg_now_ms: int | None = None) -> Purged:
        """As SqliteStorage.purge."""
        agg_now = now_ms if agg_now_ms is None else agg_now_ms
        raw_cutoff = now_ms - self.raw_retention_ms
        history_cutoff = agg_now - self.aggregate_retention_ms
        db = self._db
        with db.transaction():
            raw = db.execute("DELETE FROM readings WHERE received_ms < %s", (raw_cutoff,))
            db.execute("DELETE FROM reading_conflicts WHERE received_ms < %s", (raw_cutoff,))
            db.execute("DELETE FROM batches WHERE received_ms < %s", (raw_cutoff,))
            agg = db.execute("DELETE FROM aggregates WHERE received_ms < %s", (history_cutoff,))
            elections = db.execute(PURGE_ELECTIONS, (history_cutoff,))
            alerts = db.execute(PURGE_ALERTS, (history_cutoff,))
            for key, value in (("retention_raw_now", now_ms), ("retention_agg_now", agg_now)):
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
        return Purged(raw.rowcount, agg.rowcount, elections.rowcount, alerts.rowcount)

    @_guarded
    def retention_state(self) -> tuple[int | None, int | None]:
        rows = {
            r["key"]: int(r["value"])
            for r in self._db.execute(
                "SELECT key, value FROM meta "
                "WHERE key IN ('retention_raw_now', 'retention_agg_now')"
            ).fetchall()
        }
        return rows.get("retention_raw_now"), rows.get("retention_agg_now")

    @_guarded
    def reset_fence(self, mesh: str, term: int, source: str, now_ms: int) -> dict[str, Any] | None:
        if not 0 <= term <= fence.MAX_TERM:
            raise ValueError("term must be between 0 and %d" % fence.MAX_TERM)
        db = self._db
        with db.transaction():
            self._lock_meshes([mesh])
            row = db.execute("SELECT term FROM meshes WHERE name = %s", (mesh,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE meshes SET term = %s WHERE name = %s", (term, mesh))
            record = db.execute(
                "INSERT INTO fence_resets (mesh, from_term, to_term, source, at_ms) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id, mesh, from_term, to_term, source, at_ms",
                (mesh, int(row["term"]), term, source, now_ms),
            ).fetchone()
        return dict(record) if record is not None else None

    @_guarded
    def probe(self, now_ms: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('probe', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (now_ms,),
        )

    def checkpoint(self) -> bool:
        return True  # the server manages its own write-ahead log

    def wal_bytes(self) -> int:
        return 0

    # -- reads (the rest are SqlReads') ----------------------------------------------------

    @_guarded
    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute(query.encode(), args).fetchall()]

    @_guarded
    def reading_count(self) -> int:
        row = self._db.execute("SELECT COUNT(*) AS n FROM readings").fetchone()
        return int(row["n"]) if row else 0

    def close(self) -> None:
        self._db.close()
