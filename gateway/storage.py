"""Where the gateway keeps what it learns: an interface, and its SQLite implementation
(PostgreSQL's is gateway/pgstorage.py).

The interface (:class:`Storage`) does not assume one gateway process. Fencing is a conditional
upsert of the mesh's highest term and dedup is the readings table's primary key, both checked
inside the same write transaction, so several gateways sharing one database (or a server
database behind the same interface) still store every reading once and never take a batch from a
deposed leader.

All times are integer milliseconds passed in by the caller (the storage reads no clock).

When the database itself fails (a full disk, an I/O error, a lock held too long) every method
raises :class:`StorageError` and leaves nothing half-written: the caller keeps what it could not
store, retries later, and never acknowledges what is not stored.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, NamedTuple, ParamSpec, Protocol, TypeVar

from agent.core.messages import ACK_FENCED, ACK_OK, ACK_REJECTED
from gateway import fence
from gateway.batch import Batch, Member


class StorageError(Exception):
    """The database failed (full disk, I/O error, busy for too long): retry later."""


class IngestOutcome(NamedTuple):
    # The BATCH_ACK status: ACK_OK; ACK_FENCED (a higher term is stored); ACK_REJECTED (a term
    # jump from a sender never seen in the mesh, gateway/fence.py).
    status: int
    highest_term: int  # the mesh's fence (highest accepted term) after this batch
    inserted: int  # readings stored now
    duplicates: int  # readings already stored before (dedup hits)
    new_batch: bool  # False when this exact batch (mesh, leader, term, id) was stored before
    # Readings whose (mesh, node, boot, seq) was stored before with other content (a node
    # that lost its boot counter and has no valid clock): stored apart now, not dropped.
    reused: int = 0
    reused_nodes: tuple[str, ...] = ()  # their nodes, sorted


class Purged(NamedTuple):
    """What one retention purge deleted."""

    raw: int  # raw readings
    aggregates: int
    elections: int  # election records (the newest of each mesh is always kept)
    alerts: int  # cleared alerts (an open alert is never deleted)


# One batch's result in a group commit: its outcome, or the error that made the storage roll
# back that batch alone (a bug, not a database failure: those fail the whole group).
GroupResult = IngestOutcome | Exception


class Storage(Protocol):
    """What the gateway needs from a database. Implementations must be safe for many writers."""

    def next_boot(self) -> int: ...

    def ingest(self, term: int, batch: Batch, now_ms: int) -> IngestOutcome: ...

    def ingest_many(self, items: Sequence[tuple[int, Batch]], now_ms: int) -> list[GroupResult]: ...

    def add_election(self, mesh: str, term: int, leader: str, reason: str, at_ms: int) -> bool: ...

    def raise_alert(
        self, mesh: str, kind: str, node: str, message: str, now_ms: int
    ) -> dict[str, Any]:
        """The open alert for (mesh, kind, node): the one raised now (``new`` True), or one
        another gateway process sharing the database raised before (``new`` False)."""
        ...

    def clear_alert(self, alert_id: int, now_ms: int) -> bool:
        """False if it was cleared already (by another gateway process, say)."""
        ...

    def purge(self, now_ms: int, agg_now_ms: int | None = None) -> Purged: ...

    def retention_state(self) -> tuple[int | None, int | None]: ...

    def reset_fence(
        self, mesh: str, term: int, source: str, now_ms: int
    ) -> dict[str, Any] | None: ...

    def fence_resets(self, mesh: str | None, after_id: int, limit: int) -> list[dict[str, Any]]: ...

    def probe(self, now_ms: int) -> None: ...

    def checkpoint(self) -> bool: ...

    def wal_bytes(self) -> int: ...

    def meshes(self) -> list[dict[str, Any]]: ...

    def nodes(self, mesh: str) -> list[dict[str, Any]]: ...

    def readings(
        self, mesh: str, node: str | None, since_ms: int, until_ms: int, limit: int
    ) -> list[dict[str, Any]]: ...

    def aggregates(
        self, mesh: str, since_ms: int, until_ms: int, limit: int
    ) -> list[dict[str, Any]]: ...

    def elections(self, mesh: str | None, limit: int) -> list[dict[str, Any]]: ...

    def alerts(self, mesh: str | None, active_only: bool, limit: int) -> list[dict[str, Any]]: ...

    def reading_count(self) -> int: ...

    def reused_readings(self, mesh: str, node: str | None, limit: int) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


# Each entry moves the schema one version up; the index + 1 is the version it produces.
# Never edit a released entry: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE meshes (
        name TEXT PRIMARY KEY,
        term INTEGER NOT NULL,
        leader TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE readings (
        mesh TEXT NOT NULL,
        node TEXT NOT NULL,
        boot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        t_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (mesh, node, boot, seq)
    ) WITHOUT ROWID;
    CREATE INDEX readings_by_time ON readings (mesh, received_ms);
    CREATE TABLE batches (
        mesh TEXT NOT NULL,
        leader TEXT NOT NULL,
        term INTEGER NOT NULL,
        batch_id INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        PRIMARY KEY (mesh, leader, term, batch_id)
    ) WITHOUT ROWID;
    CREATE TABLE aggregates (
        mesh TEXT NOT NULL,
        leader TEXT NOT NULL,
        term INTEGER NOT NULL,
        node TEXT NOT NULL,
        metric TEXT NOT NULL,
        count INTEGER NOT NULL,
        min INTEGER NOT NULL,
        max INTEGER NOT NULL,
        mean INTEGER NOT NULL,
        received_ms INTEGER NOT NULL
    );
    CREATE INDEX aggregates_by_time ON aggregates (mesh, received_ms);
    CREATE TABLE nodes (
        mesh TEXT NOT NULL,
        node TEXT NOT NULL,
        score INTEGER NOT NULL,
        battery INTEGER NOT NULL,
        link INTEGER NOT NULL,
        flags INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        dropped INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (mesh, node)
    );
    CREATE TABLE elections (
        id INTEGER PRIMARY KEY,
        mesh TEXT NOT NULL,
        term INTEGER NOT NULL,
        leader TEXT NOT NULL,
        reason TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        UNIQUE (mesh, term, leader)
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        mesh TEXT NOT NULL,
        kind TEXT NOT NULL,
        node TEXT NOT NULL,
        message TEXT NOT NULL,
        raised_ms INTEGER NOT NULL,
        cleared_ms INTEGER
    );
    CREATE INDEX alerts_active ON alerts (cleared_ms);
    """,
    """
    CREATE TABLE fence_resets (
        id INTEGER PRIMARY KEY,
        mesh TEXT NOT NULL,
        from_term INTEGER NOT NULL,
        to_term INTEGER NOT NULL,
        source TEXT NOT NULL,
        at_ms INTEGER NOT NULL
    );
    """,
    """
    CREATE TABLE reading_conflicts (
        mesh TEXT NOT NULL,
        node TEXT NOT NULL,
        boot INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        t_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (mesh, node, boot, seq, t_ms, metrics)
    ) WITHOUT ROWID;
    CREATE INDEX reading_conflicts_by_time ON reading_conflicts (mesh, received_ms);
    """,
]

# Retention of the history tables, shared by both backends (placeholders in psycopg's style).
PURGE_ELECTIONS = (
    "DELETE FROM elections WHERE at_ms < %s "
    "AND id NOT IN (SELECT MAX(id) FROM elections GROUP BY mesh)"
)
PURGE_ALERTS = "DELETE FROM alerts WHERE cleared_ms IS NOT NULL AND cleared_ms < %s"

# Metrics as stored: compact, keys sorted. One encoder for every reading (json.dumps builds one
# per call). The frame decoder makes this text already (Reading.metrics_json, the same text).
_to_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode

_DAY_MS = 86_400_000
_BUSY_TIMEOUT_MS = 10_000
# A checkpoint that has to wait for readers gives up quickly and is tried again later, rather
# than holding up the ingest worker.
_CHECKPOINT_BUSY_MS = 200

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _guarded(
    method: Callable[Concatenate[SqliteStorage, _P], _R],
) -> Callable[Concatenate[SqliteStorage, _P], _R]:
    """Turn SQLite's failures of the database itself into :class:`StorageError`.

    Constraint and programming errors stay what they are: they are bugs, not a full disk.
    """

    @functools.wraps(method)
    def wrapper(self: SqliteStorage, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _database_failure(exc):  # IntegrityError, ProgrammingError...
                raise
            raise StorageError(str(exc)) from exc  # e.g. "database disk image is malformed"

    return wrapper


def _insert_rows(
    db: sqlite3.Connection, head: str, width: int, values: list[Any], tail: str
) -> None:
    """``head`` + one ``VALUES`` row of ``width`` placeholders per row + ``tail``, with the
    rows' ``values`` one after another: one statement, not ``executemany``'s one step per row.

    SQLite runs the rows in order, as if inserted one by one (a later row's ``OR IGNORE`` or
    ``ON CONFLICT`` sees the earlier ones), at about four fifths of the CPU time, and Python
    releases the interpreter lock once for all of them rather than once per row.
    """
    if values:
        db.execute(_rows_sql(head, width, len(values) // width, tail), values)


@functools.lru_cache(maxsize=1024)
def _rows_sql(head: str, width: int, rows: int, tail: str) -> str:
    row = "(%s)" % ", ".join("?" * width)
    return head + ", ".join([row] * rows) + tail


def _database_failure(exc: BaseException) -> bool:
    """Is this SQLite error a failure of the database itself (full disk, I/O, busy, corrupt)?"""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


class SqlReads:
    """The read queries both backends share; ``P`` is the driver's placeholder."""

    P = "?"
    AGGREGATE_ORDER = "rowid"  # the insertion order of the aggregates table

    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        raise NotImplementedError

    def meshes(self) -> list[dict[str, Any]]:
        return self._rows("SELECT name, term, leader, updated_ms FROM meshes ORDER BY name")

    def nodes(self, mesh: str) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT node, score, battery, link, flags, last_seen_ms, dropped FROM nodes "
            "WHERE mesh = %s ORDER BY node".replace("%s", self.P),
            (mesh,),
        )

    def reused_readings(self, mesh: str, node: str | None, limit: int) -> list[dict[str, Any]]:
        """Readings stored apart because their id was already taken by another reading."""
        return self._reading_rows(
            "reading_conflicts", "", [mesh], node, "received_ms, node, boot, seq", limit
        )

    def readings(
        self, mesh: str, node: str | None, since_ms: int, until_ms: int, limit: int
    ) -> list[dict[str, Any]]:
        """Newest ``limit`` readings received in [since, until), returned oldest first."""
        rows = self._reading_rows(
            "readings",
            " AND received_ms >= %s AND received_ms < %s",
            [mesh, since_ms, until_ms],
            node,
            "received_ms DESC, node DESC, boot DESC, seq DESC",
            limit,
        )
        return rows[::-1]

    def _reading_rows(
        self, table: str, where: str, args: list[Any], node: str | None, order: str, limit: int
    ) -> list[dict[str, Any]]:
        """Rows of a readings-shaped table of one mesh (``args[0]``), metrics decoded."""
        query = "SELECT node, boot, seq, t_ms, received_ms, metrics FROM %s WHERE mesh = %%s%s" % (
            table,
            where,
        )
        if node is not None:
            query += " AND node = %s"
            args.append(node)
        query += " ORDER BY %s LIMIT %%s" % order
        args.append(limit)
        rows = self._rows(query.replace("%s", self.P), args)
        for row in rows:
            row["metrics"] = json.loads(row["metrics"])
        return rows

    def aggregates(
        self, mesh: str, since_ms: int, until_ms: int, limit: int
    ) -> list[dict[str, Any]]:
        rows = self._rows(
            (
                "SELECT leader, term, node, metric, count, min, max, mean, received_ms "
                "FROM aggregates WHERE mesh = %s AND received_ms >= %s AND received_ms < %s "
                "ORDER BY received_ms DESC, " + self.AGGREGATE_ORDER + " DESC LIMIT %s"
            ).replace("%s", self.P),
            (mesh, since_ms, until_ms, limit),
        )
        return rows[::-1]

    def elections(self, mesh: str | None, limit: int) -> list[dict[str, Any]]:
        query = "SELECT mesh, term, leader, reason, at_ms FROM elections"
        args: list[Any] = []
        if mesh is not None:
            query += " WHERE mesh = %s"
            args.append(mesh)
        query += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        return self._rows(query.replace("%s", self.P), args)[::-1]

    def alerts(self, mesh: str | None, active_only: bool, limit: int) -> list[dict[str, Any]]:
        query = "SELECT id, mesh, kind, node, message, raised_ms, cleared_ms FROM alerts WHERE 1=1"
        args: list[Any] = []
        if mesh is not None:
            query += " AND mesh = %s"
            args.append(mesh)
        if active_only:
            query += " AND cleared_ms IS NULL"
        query += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        return self._rows(query.replace("%s", self.P), args)

    def fence_resets(self, mesh: str | None, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Fence resets with an id above ``after_id``, oldest first."""
        query = "SELECT id, mesh, from_term, to_term, source, at_ms FROM fence_resets WHERE id > %s"
        args: list[Any] = [after_id]
        if mesh is not None:
            query += " AND mesh = %s"
            args.append(mesh)
        query += " ORDER BY id LIMIT %s"
        args.append(limit)
        return self._rows(query.replace("%s", self.P), args)


def alert_record(
    alert_id: int, mesh: str, kind: str, node: str, message: str, now_ms: int, new: bool = True
) -> dict[str, Any]:
    """An open alert as the storage's raise_alert returns it."""
    return {
        "id": alert_id,
        "mesh": mesh,
        "kind": kind,
        "node": node,
        "message": message,
        "raised_ms": now_ms,
        "cleared_ms": None,
        "new": new,
    }


class SqliteStorage(SqlReads):
    """SQLite in WAL mode; one write transaction per group of batches (group commit).

    Not thread-safe by itself: the gateway calls it from one worker thread. Several processes
    may open the same file; SQLite's locking plus the constraints keep them consistent.
    """

    @_guarded
    def __init__(
        self,
        path: str,
        raw_retention_ms: int = 7 * _DAY_MS,
        aggregate_retention_ms: int = 365 * _DAY_MS,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
            raise ValueError("synchronous must be OFF, NORMAL or FULL")
        self.path = path
        self.raw_retention_ms = raw_retention_ms
        self.aggregate_retention_ms = aggregate_retention_ms
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one batch is one transaction.
        # Statements are kept for every row count of a multi-row insert (_insert_rows).
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, cached_statements=1024
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = %d" % _BUSY_TIMEOUT_MS)
        # Each batch of a group has its savepoint, and SQLite keeps the old images of the
        # pages a savepoint changes in a sub-journal: in memory (a group's pages at most)
        # rather than in a temporary file that is created, written and deleted for every
        # group, which cost a fifth of the ingest worker's CPU time. Nothing stored changes;
        # the few sorts and groupings the read queries need are small.
        self._db.execute("PRAGMA temp_store = MEMORY")
        if path != ":memory:":
            self._db.execute("PRAGMA journal_mode = WAL")
        # An ack promises the batch is stored, so FULL (one fsync per batch) is the default;
        # NORMAL in WAL mode still survives a crash of the process, not a power cut.
        self._db.execute("PRAGMA synchronous = %s" % synchronous.upper())
        self._migrate()

    # -- schema -----------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any error, whatever SQLite already undid.

        SQLite may roll a transaction back by itself on a full disk or an I/O error; a ROLLBACK
        then would fail and hide the real error, so it is issued only if one is still open.
        """
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    @_guarded
    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (0)")
                version = 0
            else:
                version = int(row[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    "database schema %d is newer than this gateway (%d)"
                    % (version, len(MIGRATIONS))
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("UPDATE schema_version SET version = ?", (number + 1,))

    @_guarded
    def next_boot(self) -> int:
        """Count this gateway start; the ack frames' boot field must grow across restarts."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('boot', 1) "
                "ON CONFLICT(key) DO UPDATE SET value = value + 1"
            )
            return int(db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0])

    # -- writes ------------------------------------------------------------------------------

    def ingest(self, term: int, batch: Batch, now_ms: int) -> IngestOutcome:
        """Fence, then store the batch's readings once each, all in one transaction."""
        result = self.ingest_many([(term, batch)], now_ms)[0]
        if isinstance(result, Exception):
            raise result
        return result

    @_guarded
    def ingest_many(self, items: Sequence[tuple[int, Batch]], now_ms: int) -> list[GroupResult]:
        """Group commit: fence and store each (term, batch) in order, all in one transaction.

        Each batch is fenced and deduplicated as if it came alone (later batches see what the
        earlier ones wrote). A batch that raises anything but a failure of the database is
        rolled back to its savepoint and its error returned in its place: it does not spoil the
        others. A failure of the database (StorageError) fails the whole group, so nothing is
        acknowledged that is not durable. One commit (one fsync) for the whole group.
        """
        results: list[GroupResult] = []
        with self._transaction() as db:
            for term, batch in items:
                db.execute("SAVEPOINT batch")
                try:
                    results.append(self._ingest_one(db, term, batch, now_ms))
                except Exception as exc:
                    if _database_failure(exc):
                        raise
                    db.execute("ROLLBACK TO batch")
                    results.append(exc)
                db.execute("RELEASE batch")
        return results

    def _ingest_one(
        self, db: sqlite3.Connection, term: int, batch: Batch, now_ms: int
    ) -> IngestOutcome:
        mesh = batch.mesh
        row = db.execute("SELECT term, leader FROM meshes WHERE name = ?", (mesh,)).fetchone()
        stored = None if row is None else int(row[0])
        verdict = fence.decide(
            stored,
            term,
            lambda: (row is not None and row[1] == batch.leader) or self._known(mesh, batch.leader),
        )
        if verdict != fence.ACCEPT:
            # Nothing was written for this batch.
            status = ACK_FENCED if verdict == fence.FENCED else ACK_REJECTED
            return IngestOutcome(status, stored or 0, 0, 0, False)
        # Conditional upsert: only a term at least as high as the stored one moves it (the
        # write lock is held since BEGIN IMMEDIATE; this keeps the rule in the data too).
        db.execute(
            "INSERT INTO meshes (name, term, leader, updated_ms) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET term = excluded.term, leader = excluded.leader, "
            "updated_ms = excluded.updated_ms WHERE excluded.term >= meshes.term",
            (mesh, term, batch.leader, now_ms),
        )
        before = db.total_changes
        db.execute(
            "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?)",
            (mesh, batch.leader, term, batch.batch_id, now_ms, len(batch.readings)),
        )
        new_batch = db.total_changes > before
        inserted, reused, reused_nodes = self._insert_readings(db, mesh, batch, now_ms)
        if new_batch and batch.aggregates:
            # A resent batch carries the same aggregates: store them with the first copy only.
            leader = batch.leader
            _insert_rows(
                db,
                "INSERT INTO aggregates VALUES ",
                10,
                [value for a in batch.aggregates for value in (mesh, leader, term, *a, now_ms)],
                "",
            )
        if batch.members:
            self._upsert_members(mesh, batch.members, now_ms)
        if batch.dropped:
            db.executemany(
                "UPDATE nodes SET dropped = ? WHERE mesh = ? AND node = ?",
                [(count, mesh, node) for node, count in batch.dropped],
            )
        return IngestOutcome(
            ACK_OK,
            max(term, stored or 0),
            inserted,
            len(batch.readings) - inserted - reused,
            new_batch,
            reused,
            tuple(sorted(reused_nodes)),
        )

    @staticmethod
    def _insert_readings(
        db: sqlite3.Connection, mesh: str, batch: Batch, now_ms: int
    ) -> tuple[int, int, set[str]]:
        """Store each reading once: (stored, stored apart as reused ids, their nodes).

        A reading whose id is taken is a duplicate only if it is the same reading (time and
        metrics); else its node reused a (boot, seq) (lost its boot counter without a valid
        clock), and it goes to ``reading_conflicts``, once (a resend of it is a duplicate).
        """
        values = [
            value
            for node, boot, seq, t_ms, metrics, text in batch.readings
            for value in (mesh, node, boot, seq, t_ms, now_ms, text or _to_json(metrics))
        ]
        before = db.total_changes
        _insert_rows(db, "INSERT OR IGNORE INTO readings VALUES ", 7, values, "")
        inserted = db.total_changes - before
        reused = 0
        nodes: set[str] = set()
        if inserted == len(batch.readings):
            return inserted, reused, nodes
        for node, boot, seq, t_ms, metrics, text in batch.readings:
            text = text or _to_json(metrics)
            stored = db.execute(
                "SELECT t_ms, metrics FROM readings "
                "WHERE mesh = ? AND node = ? AND boot = ? AND seq = ?",
                (mesh, node, boot, seq),
            ).fetchone()
            if stored is None or (stored[0], stored[1]) == (t_ms, text):
                continue  # the same reading (or this very batch stored it just now)
            cursor = db.execute(
                "INSERT OR IGNORE INTO reading_conflicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mesh, node, boot, seq, t_ms, now_ms, text),
            )
            if cursor.rowcount > 0:
                reused += 1
                nodes.add(node)
        return inserted, reused, nodes

    def _known(self, mesh: str, node: str) -> bool:
        """Was ``node`` seen in ``mesh`` before: in a member view, or as a leader?"""
        row = self._db.execute(
            "SELECT 1 FROM nodes WHERE mesh = ? AND node = ? "
            "UNION ALL SELECT 1 FROM batches WHERE mesh = ? AND leader = ? "
            "UNION ALL SELECT 1 FROM elections WHERE mesh = ? AND leader = ? LIMIT 1",
            (mesh, node, mesh, node, mesh, node),
        ).fetchone()
        return row is not None

    def _upsert_members(self, mesh: str, members: list[Member], now_ms: int) -> None:
        _insert_rows(
            self._db,
            "INSERT INTO nodes (mesh, node, score, battery, link, flags, last_seen_ms) VALUES ",
            7,
            [
                value
                for m in members
                for value in (mesh, m.node, m.score, m.battery, m.link, m.flags, now_ms - m.age_ms)
            ],
            " ON CONFLICT(mesh, node) DO UPDATE SET "
            "score = excluded.score, battery = excluded.battery, link = excluded.link, "
            "flags = excluded.flags, last_seen_ms = excluded.last_seen_ms",
        )

    @_guarded
    def add_election(self, mesh: str, term: int, leader: str, reason: str, at_ms: int) -> bool:
        """Record who led from ``term`` and why; False if it was already recorded."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO elections (mesh, term, leader, reason, at_ms) "
            "VALUES (?, ?, ?, ?, ?)",
            (mesh, term, leader, reason, at_ms),
        )
        return cursor.rowcount > 0

    @_guarded
    def raise_alert(
        self, mesh: str, kind: str, node: str, message: str, now_ms: int
    ) -> dict[str, Any]:
        cursor = self._db.execute(
            "INSERT INTO alerts (mesh, kind, node, message, raised_ms) VALUES (?, ?, ?, ?, ?)",
            (mesh, kind, node, message, now_ms),
        )
        return alert_record(cursor.lastrowid or 0, mesh, kind, node, message, now_ms)

    @_guarded
    def clear_alert(self, alert_id: int, now_ms: int) -> bool:
        cursor = self._db.execute(
            "UPDATE alerts SET cleared_ms = ? WHERE id = ? AND cleared_ms IS NULL",
            (now_ms, alert_id),
        )
        return cursor.rowcount > 0

    @_guarded
    def purge(self, now_ms: int, agg_now_ms: int | None = None) -> Purged:
        """Apply retention; returns what was deleted.

        Raw readings (and batch records) received before ``now_ms - raw retention`` go;
        aggregates, election records and cleared alerts from before ``agg_now_ms - aggregate
        retention`` (``agg_now_ms`` defaults to ``now_ms``) go too, except each mesh's newest
        election (it names the current leader, which the fence knows by it) and open alerts.
        Both reference times are kept, in the same transaction, so a restart goes on from them
        (:meth:`retention_state`, gateway/retention.py).
        """
        agg_now = now_ms if agg_now_ms is None else agg_now_ms
        raw_cutoff = now_ms - self.raw_retention_ms
        history_cutoff = agg_now - self.aggregate_retention_ms
        with self._transaction() as db:
            raw = db.execute("DELETE FROM readings WHERE received_ms < ?", (raw_cutoff,)).rowcount
            db.execute("DELETE FROM batches WHERE received_ms < ?", (raw_cutoff,))
            db.execute("DELETE FROM reading_conflicts WHERE received_ms < ?", (raw_cutoff,))
            agg = db.execute(
                "DELETE FROM aggregates WHERE received_ms < ?", (history_cutoff,)
            ).rowcount
            elections = db.execute(PURGE_ELECTIONS.replace("%s", "?"), (history_cutoff,)).rowcount
            alerts = db.execute(PURGE_ALERTS.replace("%s", "?"), (history_cutoff,)).rowcount
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [("retention_raw_now", now_ms), ("retention_agg_now", agg_now)],
            )
        return Purged(raw, agg, elections, alerts)

    @_guarded
    def retention_state(self) -> tuple[int | None, int | None]:
        """The reference times of the last purge (raw, aggregates); None before the first."""
        rows = dict(
            self._db.execute(
                "SELECT key, value FROM meta "
                "WHERE key IN ('retention_raw_now', 'retention_agg_now')"
            ).fetchall()
        )
        return rows.get("retention_raw_now"), rows.get("retention_agg_now")

    @_guarded
    def reset_fence(self, mesh: str, term: int, source: str, now_ms: int) -> dict[str, Any] | None:
        """Set ``mesh``'s fence to ``term`` (an operator's decision) and record that; None if
        the mesh is unknown. Later batches are fenced against ``term`` by the usual rule."""
        if not 0 <= term <= fence.MAX_TERM:
            raise ValueError("term must be between 0 and %d" % fence.MAX_TERM)
        with self._transaction() as db:
            row = db.execute("SELECT term FROM meshes WHERE name = ?", (mesh,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE meshes SET term = ? WHERE name = ?", (term, mesh))
            cursor = db.execute(
                "INSERT INTO fence_resets (mesh, from_term, to_term, source, at_ms) "
                "VALUES (?, ?, ?, ?, ?)",
                (mesh, int(row[0]), term, source, now_ms),
            )
        return {
            "id": cursor.lastrowid,
            "mesh": mesh,
            "from_term": int(row[0]),
            "to_term": term,
            "source": source,
            "at_ms": now_ms,
        }

    @_guarded
    def probe(self, now_ms: int) -> None:
        """One small write transaction: does the database take writes (again)?"""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (now_ms,),
            )

    @_guarded
    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and truncate the log to zero bytes.

        This gives the log's disk space back: SQLite reuses a log but never shrinks it. False
        when a reader kept it from completing (try again later).
        """
        if self.path == ":memory:":
            return True
        db = self._db
        db.execute("PRAGMA busy_timeout = %d" % _CHECKPOINT_BUSY_MS)
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            db.execute("PRAGMA busy_timeout = %d" % _BUSY_TIMEOUT_MS)
        return int(busy) == 0

    def wal_bytes(self) -> int:
        """Size of the write-ahead log file (0 if there is none)."""
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    # -- reads (the rest are SqlReads') ----------------------------------------------------

    @_guarded
    def _rows(self, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self._db.execute(query, args).fetchall()]

    @_guarded
    def reading_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM readings").fetchone()[0])

    def close(self) -> None:
        self._db.close()
