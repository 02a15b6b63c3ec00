"""Storage of FHIR resources on SQLite or PostgreSQL, behind one small async interface.

One ``resources`` table holds every resource as JSON, with the columns the service needs to find
and guard it: the access-control compartments (patient, episode of care, care team, organisation)
and a few search columns (status, code, effective time, priority, an idempotency identifier).
HAPI-based FUT servers index resources the same way, only with more index tables.

Beside it: ``outbox`` (work the service owes after answering — triage of a submission — written in
the same transaction as the data, so it survives a crash), ``audit`` (one compact row per patient
touched per request, turned into AuditEvents when read), ``accounts`` and ``memberships`` (who may
log in, and which care teams a practitioner may act for).

SQLite runs in-process with the stdlib driver, WAL journal and ``synchronous=NORMAL``: a committed
transaction survives a crash of the process. Its calls are synchronous and short, so they run on
the event loop itself; an ``asyncio.Lock`` keeps one transaction at a time per process, and SQLite
serialises writers across worker processes. PostgreSQL uses an ``asyncpg`` pool. Schema creation
is idempotent (``CREATE … IF NOT EXISTS``), safe to run at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from twin.server import audit_index, jsonfast

log = logging.getLogger("twin.server.storage")

GROUP_COMMIT_MAX = 32  # units of work per SQLite commit at most (bounds the wait of the first)
SLOW_COMMIT_S = 0.002  # a COMMIT longer than this is counted as slow (CommitTimes)
CHECKPOINT_EVERY_S = 0.01  # background checkpoint passes (see SqliteStorage._checkpoint_loop)
CHECKPOINT_IDLE_S = 0.1  # … and while nothing new was committed
WAL_AUTOCHECKPOINT_PAGES = 4000  # the writer completes a checkpoint when the WAL passes this (see open)
COLUMNS = ("type", "id", "version", "last_updated", "patient", "episode", "team", "org", "status", "code",
           "effective", "priority", "ident", "body")


@dataclass
class Row:
    """One stored resource; ``body`` is its JSON text."""

    type: str
    id: str
    version: int
    last_updated: str
    patient: str | None
    episode: str | None
    team: str | None
    org: str | None
    status: str | None
    code: str | None
    effective: str | None
    priority: int | None
    ident: str | None
    body: str

    def params(self) -> tuple:
        """The column values in COLUMNS order (dataclasses.astuple deep-copies: 10x slower here)."""
        return (self.type, self.id, self.version, self.last_updated, self.patient, self.episode, self.team, self.org,
                self.status, self.code, self.effective, self.priority, self.ident, self.body)


class OutboxItem(NamedTuple):
    """Work the service owes after answering (e.g. the triage of a submission), stored with the data."""

    id: str
    kind: str
    payload: str
    created: str


class AuditRecord(NamedTuple):
    """One audited request (``AUDIT_REQUEST_COLUMNS`` values) and the patients it touched."""

    request: tuple
    patients: list[str]


class Lookup(NamedTuple):
    """Resources of one type whose ``column`` (``id`` or ``ident``) is one of ``values``."""

    type: str
    column: str
    values: Sequence[str]


class Listed(NamedTuple):
    """A search hit with only what a page of results and its audit need. A full :class:`Row` makes
    fourteen Python values per hit; a worklist page of 50 Tasks and their 50 focus resources spent
    as long on the nine it never reads as on the rest of the two queries."""

    type: str
    id: str
    patient: str | None
    team: str | None
    body: str


LISTED_COLUMNS = Listed._fields


TEAM_SEARCHED = ("ClinicalImpression", "Communication", "EpisodeOfCare", "Task")
"""The resource types searched by care team (roster, worklist, team inbox, triage results)."""
TEAM_SEARCHED_SQL = f"type IN ({', '.join(repr(t) for t in TEAM_SEARCHED)})"

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS resources (
        type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, last_updated TEXT NOT NULL,
        patient TEXT, episode TEXT, team TEXT, org TEXT,
        status TEXT, code TEXT, effective TEXT, priority INTEGER, ident TEXT,
        body TEXT NOT NULL,
        PRIMARY KEY (type, id))""",
    "CREATE INDEX IF NOT EXISTS resources_patient ON resources (type, patient, effective)",
    "CREATE INDEX IF NOT EXISTS resources_episode ON resources (type, episode, effective)",
    # Every index costs each insert a B-tree update (a submission writes 6 rows), so there are few:
    # team searches and the worklist (a team's ready Tasks by -priority, oldest first, in index order)
    # share one, and the nightly job's scan by day is a partial index on the one QuestionnaireResponse
    # each session has. Indexes of earlier versions are dropped (migration is idempotent).
    "DROP INDEX IF EXISTS resources_team",
    "DROP INDEX IF EXISTS resources_effective",
    "DROP INDEX IF EXISTS resources_worklist",
    "DROP INDEX IF EXISTS resources_worklist_id",
    # id ends the key: the worklist's order (-priority, oldest first, then id for stable pages) is then
    # the index order, and a page needs no sort (30 % less per worklist query). Partial: only the
    # types searched by team are in it — a submission's six rows never are (7 % more submissions
    # a second); a team search names the predicate (see _where) so the planner may use it.
    f"CREATE INDEX IF NOT EXISTS resources_team_searched ON resources (type, team, status, priority DESC, last_updated, id) "
    f"WHERE {TEAM_SEARCHED_SQL}",
    # Business identifiers that must be unique (a CPR, a submission's key, a triage's key). Rows
    # without one are not in the index: a submission's Observations and QuestionnaireResponse carry
    # the client's random urn:uuids in their bodies only — six random keys per submission were six
    # B-tree leaves written whole at every COMMIT, half of a submission's commit cost; the
    # submission is keyed once, by its Provenance (twin.server.submission.submission_key).
    "DROP INDEX IF EXISTS resources_ident",
    "CREATE UNIQUE INDEX IF NOT EXISTS resources_ident_set ON resources (type, ident) WHERE ident IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS resources_session_day ON resources (effective) WHERE type = 'QuestionnaireResponse'",
    """CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, created TEXT NOT NULL)""",
    # the worker's next batch, oldest first, without scanning and sorting the whole backlog
    "CREATE INDEX IF NOT EXISTS outbox_kind_created ON outbox (kind, created)",
    """CREATE TABLE IF NOT EXISTS accounts (
        username TEXT PRIMARY KEY, realm TEXT NOT NULL, user_type TEXT NOT NULL, user_id TEXT NOT NULL,
        roles TEXT NOT NULL, password_hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS jobs (
        name TEXT NOT NULL, day TEXT NOT NULL, ran_at TEXT NOT NULL, PRIMARY KEY (name, day))""",
    """CREATE TABLE IF NOT EXISTS memberships (
        practitioner TEXT NOT NULL, care_team TEXT NOT NULL, org TEXT NOT NULL, role TEXT NOT NULL,
        PRIMARY KEY (practitioner, care_team, role))""",
]
class AddedColumn(NamedTuple):
    """A column added to a table after its first release (a step of the schema: Tx._migrate)."""

    table: str
    column: str
    type: str


# Columns added to a table after its first release, then the statements that need them.
# ``recipient`` is a message's addressee as ``Type/id`` (Communication rows only; NULL elsewhere):
# the inbox search's column. Both indexes are partial, so rows of other types (a submission's six)
# pay nothing: one finds an inbox, the other the messages whose recipient a writer left unset (they
# are filled when an inbox is searched: twin.server.routes_patient).
ADDED_COLUMNS = [AddedColumn("resources", "recipient", "TEXT")]
AFTER_ADDED_COLUMNS = [
    "CREATE INDEX IF NOT EXISTS resources_recipient ON resources (recipient, effective) WHERE recipient IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS resources_recipient_unset ON resources (type) "
    "WHERE type = 'Communication' AND recipient IS NULL",
]

# The audit trail: one ``audit_request`` row per audited request (who, when, what) and one small
# ``audit_patient`` row per patient it touched, which is FUT's "one AuditEvent per patient" (an
# event is a request joined with one of its patients). A nurse's worklist page touches 50 patients:
# as 50 full rows, each with its own patient-index entry, the audit cost 3x the search itself;
# as one request row plus 50 (patient, at, request) keys it is a third of that. On PostgreSQL the
# patient table is the index and ``audit_patient_request`` (appended at its right edge, as request
# ids grow) finds a request's patients. On SQLite a request writes its keys in request order
# (``audit_patient_log``: one or two B-tree pages per request instead of ~50 spread ones, each
# written whole to the WAL at COMMIT — the worklist's throughput went 304 → 523/s on the same
# machine), and twin.server.audit_index copies them into patient order behind, in bulk, in a
# file of its own. Since then the keys go into the request row itself (``patients``, a JSON array:
# one insert instead of 51 for a worklist page, 29 against 160-200 µs): the copier and the
# readers expand them with ``json_each``; the log only feeds the migration of older databases.
AUDIT_REQUEST_COLUMNS = ("at", "trace_id", "user_type", "user_id", "org", "action", "subtype", "resource_type",
                         "resource_id", "query")
AUDIT_COLUMNS = ("at", "trace_id", "user_type", "user_id", "org", "action", "subtype", "patient", "resource_type",
                 "resource_id", "query")
"""An audit event's fields, in the order AuditEvent reads take them (twin.server.routes_audit)."""
_AUDIT_REQUEST_BODY = """at TEXT NOT NULL, trace_id TEXT NOT NULL, user_type TEXT NOT NULL, user_id TEXT NOT NULL,
        org TEXT, action TEXT NOT NULL, subtype TEXT, resource_type TEXT, resource_id TEXT, query TEXT)"""
AUDIT_SCHEMA = {
    "sqlite": [
        # (``patients``: the request's patients as a JSON array, its keys in request order)
        "CREATE TABLE IF NOT EXISTS audit_request (id INTEGER PRIMARY KEY, patients TEXT, " + _AUDIT_REQUEST_BODY,
        """CREATE TABLE IF NOT EXISTS audit_patient (patient TEXT NOT NULL, at TEXT NOT NULL, request INTEGER NOT NULL,
            PRIMARY KEY (patient, at, request)) WITHOUT ROWID""",
        # Older versions: a log of one key per row (then the keys of versions before it, in
        # audit_patient) — into the log, and from the log into the requests' arrays, once
        """CREATE TABLE IF NOT EXISTS audit_patient_log (request INTEGER NOT NULL, patient TEXT NOT NULL,
            at TEXT NOT NULL, PRIMARY KEY (request, patient)) WITHOUT ROWID""",
        "INSERT OR IGNORE INTO audit_patient_log (request, patient, at) SELECT request, patient, at FROM audit_patient",
        "DELETE FROM audit_patient",
        AddedColumn("audit_request", "patients", "TEXT"),
        """UPDATE audit_request SET patients = (SELECT json_group_array(l.patient) FROM
            (SELECT patient FROM audit_patient_log WHERE request = audit_request.id ORDER BY patient) l)
            WHERE id IN (SELECT request FROM audit_patient_log)""",
        "DELETE FROM audit_patient_log",
    ],
    "postgresql": [
        "CREATE TABLE IF NOT EXISTS audit_request (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        + _AUDIT_REQUEST_BODY,
        """CREATE TABLE IF NOT EXISTS audit_patient (patient TEXT NOT NULL, at TEXT NOT NULL, request BIGINT NOT NULL,
            PRIMARY KEY (patient, at, request))""",
    ],
}
AUDIT_AFTER = ["CREATE INDEX IF NOT EXISTS audit_patient_request ON audit_patient (request)"]
AUDIT_SOURCES = {  # what Storage.fetch_audit puts in an audit search's SQL
    "postgresql": {"by_patient": "audit_patient", "by_request": "audit_patient",
                   "requests_with_patients": "audit_request r LEFT JOIN audit_patient p ON p.request = r.id",
                   "request_patient": "p.patient"},
    "sqlite": {"by_patient": audit_index.KEYS_SQL, "by_request": f"({audit_index.REQUEST_KEYS_SQL})",
               "requests_with_patients": "audit_request r LEFT JOIN json_each(r.patients) p",
               "request_patient": "p.value"},
}
ALLOWED_FILTER_COLUMNS = (set(COLUMNS) - {"body"}) | {"recipient"}


@dataclass(frozen=True)
class Filter:
    """``column op value``; op is one of = != < <= > >= in."""

    column: str
    op: str
    value: Any

    def __post_init__(self) -> None:
        if self.column not in ALLOWED_FILTER_COLUMNS or self.op not in ("=", "!=", "<", "<=", ">", ">=", "in"):
            raise ValueError(f"bad filter {self.column} {self.op}")  # programming error: columns are never user text


RESOURCE_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")


def _type_is(type_: str) -> str:
    """``type = 'Task'``: the resource type as a literal, not a parameter. Types are the server's
    own names (routes and stored references are checked against the known types long before), so
    a literal is safe — and it matters to SQLite: with ``type = ?`` its planner looks at the bound
    value to decide whether a partial index applies (``resources_session_day`` is for
    QuestionnaireResponses only), and a statement whose plan depends on a bound value is prepared
    again at every execution — 40-60 µs of planning for each team, patient or episode search
    (tests/unit/test_team_index.py counts the preparations). With the literal, once per type."""
    if not RESOURCE_TYPE_NAME.fullmatch(type_):
        raise ValueError(f"not a resource type name: {type_!r}")  # programming error: never user text
    return f"type = '{type_}'"


def _where(type_: str, filters: Sequence[Filter]) -> tuple[str, list]:
    sql, params = [_type_is(type_)], []
    if any(f.column == "team" for f in filters):
        if type_ not in TEAM_SEARCHED:  # programming error: it would scan every row of the type
            raise ValueError(f"{type_} is not searched by team: add it to TEAM_SEARCHED")
        # The team index is partial; a planner uses it only where the query's terms imply its
        # predicate, which ``type = 'Task'`` does not to SQLite (it proves no IN-list): the
        # predicate itself, verbatim, does.
        sql.append(TEAM_SEARCHED_SQL)
    for f in filters:
        if f.op == "in":
            values = list(f.value)
            if not values:
                sql.append("1 = 0")
                continue
            sql.append(f"{f.column} IN ({', '.join('?' for _ in values)})")
            params += values
        else:
            sql.append(f"{f.column} {f.op} ?")
            params.append(f.value)
    return " AND ".join(sql), params


class Tx:
    """Operations inside one transaction (subclasses bind them to a driver)."""

    dialect: str  # "sqlite" or "postgresql": the few statements that differ (AUDIT_SCHEMA)

    async def _execute(self, sql: str, params: Sequence = ()) -> None:
        raise NotImplementedError

    async def _fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    async def insert(self, rows: Sequence[Row]) -> None:
        for row in rows:
            await self._execute(f"INSERT INTO resources ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                                row.params())

    async def update(self, row: Row) -> int:
        """Store a new version (``row.version`` is the new one, the stored one must be one less).

        Returns the number of rows changed: 0 when the row is gone or another writer stored a new
        version first (the caller turns that into a 404 or 409/412 instead of a silent no-op)."""
        cols = [c for c in COLUMNS if c not in ("type", "id")]
        return len(await self._fetch(f"UPDATE resources SET {', '.join(f'{c} = ?' for c in cols)} "
                                     "WHERE type = ? AND id = ? AND version = ? RETURNING id",
                                     [getattr(row, c) for c in cols] + [row.type, row.id, row.version - 1]))

    async def get(self, type_: str, id_: str) -> Row | None:
        rows = await self._fetch(f"SELECT {', '.join(COLUMNS)} FROM resources WHERE type = ? AND id = ?", (type_, id_))
        return Row(*rows[0]) if rows else None

    async def get_by_ident(self, type_: str, idents: Sequence[str]) -> list[Row]:
        # First the ids alone, from the ident index: the usual answer is "none" (a new submission,
        # a new citizen), and a query naming 14 columns costs twice one naming 1 even when it
        # finds nothing (the driver describes every column of every statement it runs).
        ids = [r[0] for r in await self.search_columns(("id",), type_, [Filter("ident", "in", list(idents))],
                                                       len(idents) + 1)]
        return await self.search(type_, [Filter("id", "in", ids)], limit=len(ids)) if ids else []

    async def lookup(self, columns: Sequence[str], lookups: Sequence[Lookup]) -> list[list[tuple]]:
        """Several lookups by key in one statement: one round trip on PostgreSQL instead of one per
        lookup (a submission's check needs its episode, its ServiceRequests and whether it was
        stored before). For each lookup, its rows' ``columns`` as tuples."""
        if not set(columns) <= set(COLUMNS) or any(k.column not in ("id", "ident") for k in lookups):
            raise ValueError(f"bad lookup {columns} {lookups}")  # programming error: never user text
        parts, params = [], []
        for k, key in enumerate(lookups):
            where, where_params = _where(key.type, [Filter(key.column, "in", list(key.values))])
            parts.append(f"SELECT {k} AS part, {', '.join(columns)} FROM resources WHERE {where}")
            params += where_params
        found: list[list[tuple]] = [[] for _ in lookups]
        for row in await self._fetch(" UNION ALL ".join(parts), params) if parts else []:
            found[row[0]].append(tuple(row[1:]))
        return found

    async def search_columns(self, columns: Sequence[str], type_: str, filters: Sequence[Filter] = (),
                             limit: int = 50) -> list[tuple]:
        """As :meth:`search`, with only the given columns (names from ``COLUMNS``), as tuples."""
        if not set(columns) <= set(COLUMNS):
            raise ValueError(f"bad columns {columns}")  # programming error: columns are never user text
        return await self._select(columns, type_, filters, (), limit, 0)

    async def search(self, type_: str, filters: Sequence[Filter] = (), order: Sequence[tuple[str, bool]] = (),
                     limit: int = 50, offset: int = 0) -> list[Row]:
        return [Row(*r) for r in await self._select(COLUMNS, type_, filters, order, limit, offset)]

    async def search_listed(self, type_: str, filters: Sequence[Filter] = (), order: Sequence[tuple[str, bool]] = (),
                            limit: int = 50, offset: int = 0) -> list[Listed]:
        """As :meth:`search`, with only the columns of :class:`Listed`."""
        return [Listed(*r) for r in await self._select(LISTED_COLUMNS, type_, filters, order, limit, offset)]

    async def _select(self, columns: Sequence[str], type_: str, filters: Sequence[Filter],
                      order: Sequence[tuple[str, bool]], limit: int, offset: int) -> list[tuple]:
        where, params = _where(type_, filters)
        order_sql = ", ".join(f"{c} {'DESC' if desc else 'ASC'}" for c, desc in order if c in ALLOWED_FILTER_COLUMNS)
        sql = (f"SELECT {', '.join(columns)} FROM resources WHERE {where}"
               + (f" ORDER BY {order_sql}" if order_sql else "") + " LIMIT ? OFFSET ?")
        return await self._fetch(sql, [*params, int(limit), int(offset)])

    async def count(self, type_: str, filters: Sequence[Filter] = ()) -> int:
        where, params = _where(type_, filters)
        return int((await self._fetch(f"SELECT COUNT(*) FROM resources WHERE {where}", params))[0][0])

    async def store(self, rows: Sequence[Row], outbox: OutboxItem | None = None,
                    audit: AuditRecord | None = None) -> None:
        """New resources with the outbox item and the audit record that go with them: the writes of
        a submission. Here as separate statements; PostgreSQL makes them one (see _PgTx.store)."""
        await self.insert(rows)
        if outbox is not None:
            await self.outbox_put(*outbox)
        if audit is not None:
            await self.audit(*audit)

    async def outbox_put(self, id_: str, kind: str, payload: str, created: str) -> None:
        await self._execute("INSERT INTO outbox (id, kind, payload, created) VALUES (?, ?, ?, ?)",
                            (id_, kind, payload, created))

    async def outbox_pending(self, kind: str, limit: int) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await self._fetch(
            "SELECT id, payload FROM outbox WHERE kind = ? ORDER BY created LIMIT ?", (kind, limit))]

    async def outbox_claim(self, ids: Sequence[str]) -> set[str]:
        """Delete the items; returns those deleted here (not those another worker got first)."""
        if not ids:
            return set()
        return {r[0] for r in await self._fetch(f"DELETE FROM outbox WHERE id IN ({', '.join('?' * len(ids))}) "
                                                "RETURNING id", ids)}

    async def audit(self, request: Sequence, patients: Sequence[str]) -> None:
        """One audited request (``AUDIT_REQUEST_COLUMNS`` values) and the patients it touched."""
        rows = await self._fetch(f"INSERT INTO audit_request ({', '.join(AUDIT_REQUEST_COLUMNS)}) VALUES "
                                 f"({', '.join('?' * len(AUDIT_REQUEST_COLUMNS))}) RETURNING id", request)
        if patients:
            request_id, at = rows[0][0], request[0]
            await self._executemany("INSERT INTO audit_patient (patient, at, request) VALUES (?, ?, ?)",
                                    [(p, at, request_id) for p in patients])

    async def _executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        for r in rows:
            await self._execute(sql, r)

    async def fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Raw query for the few places that need one (accounts, memberships, audit reads)."""
        return await self._fetch(sql, params)

    async def execute(self, sql: str, params: Sequence = ()) -> None:
        await self._execute(sql, params)

    async def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        await self._executemany(sql, rows)

    async def has_column(self, table: str, column: str) -> bool:
        raise NotImplementedError

    async def _migrate(self, step: str | AddedColumn) -> None:
        """One step of the schema: a statement that is safe to repeat, or a column added after its
        table's first release — ALTER TABLE … ADD COLUMN where it is missing (neither driver's ALTER
        is idempotent on its own)."""
        if isinstance(step, AddedColumn):
            if not await self.has_column(step.table, step.column):
                await self._execute(f"ALTER TABLE {step.table} ADD COLUMN {step.column} {step.type}")
        else:
            await self._execute(step)

    async def migrate_schema(self) -> None:
        """Create what is missing (safe to repeat on an existing database)."""
        for statement in SCHEMA:
            await self._execute(statement)
        for step in [*ADDED_COLUMNS, *AFTER_ADDED_COLUMNS, *AUDIT_SCHEMA[self.dialect], *AUDIT_AFTER]:
            await self._migrate(step)
        if await self.has_column("audit", "patient"):  # the one-table audit of earlier versions
            await self._migrate_audit_table()

    async def _migrate_audit_table(self) -> None:
        """Move the rows of the old one-row-per-patient ``audit`` table into the two new tables."""
        old = await self._fetch(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit ORDER BY at")
        by_request: dict[tuple, list[str]] = {}
        for row in old:
            values = dict(zip(AUDIT_COLUMNS, row, strict=True))
            key = tuple(values[c] for c in AUDIT_REQUEST_COLUMNS)
            by_request.setdefault(key, [])
            if values["patient"] is not None:
                by_request[key].append(values["patient"])
        for request, patients in by_request.items():
            await self.audit(request, sorted(set(patients)))
        await self._execute("DROP TABLE audit")


class Storage:
    """A database the service stores into; ``Storage.connect(url)`` picks the driver."""

    url: str

    @staticmethod
    def connect(url: str) -> Storage:
        if url.startswith(("postgresql://", "postgres://")):
            return PostgresStorage(url)
        if url.startswith("sqlite:///"):
            return SqliteStorage(url.removeprefix("sqlite:///"))
        raise ValueError(f"database URL {url!r}: use sqlite:///path/to/file.db or postgresql://user@host:port/db")

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def transaction(self, one_write: bool = False) -> contextlib.AbstractAsyncContextManager[Tx]:
        """One unit of work, atomic and durable when the block ends.

        ``one_write``: the caller promises the block writes with one statement at most (reads
        first, then e.g. one :meth:`Tx.store`). A database that commits a single statement on its
        own may then skip the transaction around it: on PostgreSQL, whose reads see committed data
        statement by statement anyway (READ COMMITTED), that saves BEGIN and COMMIT — two of a
        submission's round trips. A second write in such a block raises."""
        raise NotImplementedError

    async def migrate(self) -> None:
        async with self.transaction() as tx:
            await tx.migrate_schema()

    async def fetch_audit(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """An audit search. In ``sql``, ``{by_patient}`` and ``{by_request}`` stand for the (patient,
        at, request) keys, ordered for a search by patient and by request; ``{requests_with_patients}``
        for the requests (``r``) each joined with its patients, none included (a LEFT JOIN), and
        ``{request_patient}`` for the patient's column in that join."""
        async with self.transaction() as tx:
            return await tx.fetch(sql.format(**AUDIT_SOURCES[tx.dialect]), params)

    async def audit_index_stats(self) -> dict | None:
        """SQLite's by-patient audit index: requests copied by this process, requests logged but
        not copied yet (twin.server.audit_index); None where there is no such index."""
        return None

    def commit_stats(self) -> dict | None:
        """How the database's COMMITs held the event loop (SQLite's run on it); None where they don't."""
        return None

    async def analyze(self) -> None:
        """Refresh the query planner's statistics (after a bulk load such as the seed)."""
        async with self.transaction() as tx:
            await tx.execute("ANALYZE")


# ---------------------------------------------------------------------------------------- SQLite
_SQLITE_AUDIT_REQUEST = (f"INSERT INTO audit_request ({', '.join(AUDIT_REQUEST_COLUMNS)}, patients) VALUES "
                         f"({', '.join('?' * (len(AUDIT_REQUEST_COLUMNS) + 1))})")


class _SqliteTx(Tx):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def _executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self.conn.executemany(sql, rows)

    async def _execute(self, sql: str, params: Sequence = ()) -> None:
        self.conn.execute(sql, tuple(params))

    async def _fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    async def has_column(self, table: str, column: str) -> bool:
        return bool(self.conn.execute("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, column)).fetchall())

    async def audit(self, request: Sequence, patients: Sequence[str]) -> None:
        """The request row with its patients' keys in it, as a JSON array (the by-patient order is
        copied behind, in bulk: twin.server.audit_index)."""
        self.conn.execute(_SQLITE_AUDIT_REQUEST, (*request, jsonfast.dumps(list(patients)) if patients else None))

    async def insert(self, rows: Sequence[Row]) -> None:  # one executemany: the hot path of a submission
        self.conn.executemany(f"INSERT INTO resources ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                              [r.params() for r in rows])


@dataclass
class CommitTimes:
    """How long the SQLite COMMITs held the event loop: count, units of work, total, the longest and
    how many took over ``SLOW_COMMIT_S``. A COMMIT writes the transaction's pages to the WAL; one
    that also completes a checkpoint copies and fsyncs — the slow ones, and a stall for every
    request waiting on the loop (``/health`` shows them). (On a thread of its own a COMMIT left the
    loop free only under saturation; at light load the hand-off cost the loop more than the COMMIT.)"""

    count: int = 0
    units: int = 0
    busy_s: float = 0.0
    longest_s: float = 0.0
    slow: int = 0

    def add(self, took_s: float, units: int) -> None:
        self.count += 1
        self.units += units
        self.busy_s += took_s
        self.longest_s = max(self.longest_s, took_s)
        self.slow += took_s > SLOW_COMMIT_S

    def stats(self) -> dict:
        return {"commits": self.count, "units": self.units, "busy_s": round(self.busy_s, 6),
                "longest_ms": round(1000.0 * self.longest_s, 3), "over_2ms": self.slow}


class SqliteStorage(Storage):
    def __init__(self, path: str) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.conn: sqlite3.Connection | None = None
        self.lock = asyncio.Lock()
        self.waiting = 0  # transactions queued for the lock
        self.batch: list[asyncio.Future] | None = None  # units of work in the open write transaction
        self.commit_scheduled = False
        self.commits = CommitTimes()

    def commit_stats(self) -> dict:
        return self.commits.stats()

    async def open(self) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. Autocommit reads see committed data.
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; fsync at checkpoints
        self.conn.execute("PRAGMA busy_timeout=30000")
        # Checkpoints (copying WAL pages into the database file, then fsync) cost half of a COMMIT's
        # time under load, and a 10,000-page one stalled the event loop and every request queued on
        # it for ~35 ms. A thread with its own connection does that copying off the event loop
        # (sqlite3 releases the GIL while it works). The writer still checkpoints every 1,000 pages,
        # but then only copies the few pages the thread has not yet: that completes the checkpoint,
        # which lets the next transaction start the WAL over (the thread alone never catches a
        # moment with nothing left to copy under steady writes, and the WAL would grow without end).
        # That completing checkpoint also fsyncs the database file, on the loop: every 4,000 pages
        # (a WAL of 16 MB at most), not SQLite's 1,000 — at 1,000 a sixth of the COMMITs under full
        # submission load took over 2 ms (up to 16); at 4,000: submissions +3 %, p95 33 -> 29 ms.
        self.conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self.conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: the indexes of a year's data stay in memory
        self.conn.execute("PRAGMA mmap_size=268435456")
        self.conn.execute("PRAGMA temp_store=MEMORY")
        self.conn.execute("PRAGMA foreign_keys=OFF")
        # Keep the planner's statistics fresh: without them SQLite scans the primary key (type, id)
        # instead of the patient / team indexes, 100x slower on a seeded database.
        self.conn.execute("PRAGMA optimize=0x10002")
        self._stop_checkpoints = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="sqlite-checkpoint", daemon=True)
        self._checkpointer.start()
        self.audit_indexer = audit_index.AuditIndexer(self.path)
        self.audit_indexer.start()
        self._audit_reader: sqlite3.Connection | None = None

    def _checkpoint_loop(self) -> None:
        """Copy committed WAL pages into the database file, every ``CHECKPOINT_EVERY_S`` while there is
        something to copy. PASSIVE never waits for readers or writers: it copies what it can.
        With ``synchronous=NORMAL`` this is also where the database file is fsynced."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        pause_s = CHECKPOINT_IDLE_S
        try:
            while not self._stop_checkpoints.wait(pause_s):
                try:
                    _busy, wal_pages, copied_pages = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                except sqlite3.Error:  # e.g. busy; the next pass tries again
                    log.debug("checkpoint pass failed", exc_info=True)
                    continue
                pause_s = CHECKPOINT_EVERY_S if copied_pages > 0 or wal_pages > 0 else CHECKPOINT_IDLE_S
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()  # at shutdown: leave a small WAL behind
        except sqlite3.Error:
            log.warning("final checkpoint failed", exc_info=True)
        finally:
            conn.close()

    async def audit_index_stats(self) -> dict:
        behind = (await self.fetch_audit("SELECT COALESCE((SELECT MAX(id) FROM audit_request), 0) "
                                         "- (SELECT upto FROM idx.state)"))[0][0]
        return {"copied_requests": self.audit_indexer.copied_requests, "behind_requests": max(int(behind), 0)}

    async def fetch_audit(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """An audit search (see Storage.fetch_audit): by patient from the index up to its watermark
        and the requests' own keys above it, by request from the requests' keys. Runs on a reading
        connection of its own with the index file attached: attached to the service's connection,
        the index would join its write transactions and wait for the copier's."""
        if self._audit_reader is None:
            reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            audit_index.open_index(self.path).close()  # the index file and its tables exist
            reader.execute("ATTACH DATABASE ? AS idx", (audit_index.index_path(self.path),))
            self._audit_reader = reader
        return self._audit_reader.execute(sql.format(**AUDIT_SOURCES["sqlite"]), tuple(params)).fetchall()

    async def close(self) -> None:
        if self.conn is not None:
            await asyncio.to_thread(self.audit_indexer.stop)
            if self._audit_reader is not None:
                self._audit_reader.close()
                self._audit_reader = None
            self._stop_checkpoints.set()
            if self._checkpointer.is_alive():
                await asyncio.to_thread(self._checkpointer.join, 30)
            self.conn.close()
            self.conn = None

    @contextlib.asynccontextmanager
    async def transaction(self, one_write: bool = False) -> AsyncIterator[Tx]:
        """One unit of work, committed before the caller goes on — possibly together with others
        (``one_write`` changes nothing here: the unit is a savepoint of a group commit anyway).

        Group commit: a COMMIT costs ~0.3 ms (the WAL pages it writes), more than a submission's own
        statements. Units that queue for the connection while one runs join the same database
        transaction, each in its own SAVEPOINT (a failing unit rolls back alone); the last unit of a
        burst, or the GROUP_COMMIT_MAX-th, commits for all, and every unit waits for that commit
        before it returns — so an answered request is always durable."""
        assert self.conn is not None, "storage not open"
        failed: BaseException | None = None
        done: asyncio.Future | None = None
        self.waiting += 1
        async with self.lock:
            self.waiting -= 1
            if self.batch is None:
                self.conn.execute("BEGIN IMMEDIATE")
                self.batch = []
            self.conn.execute("SAVEPOINT unit")
            try:
                yield _SqliteTx(self.conn)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the lock is released
                self.conn.execute("ROLLBACK TO unit")
                self.conn.execute("RELEASE unit")
                failed = exc
            else:
                self.conn.execute("RELEASE unit")
                done = asyncio.get_running_loop().create_future()
                self.batch.append(done)
            if len(self.batch) >= GROUP_COMMIT_MAX:
                self._commit_batch()
            elif not self.commit_scheduled:
                # Commit once the coroutines that are ready to run now have had their turn: requests
                # whose bodies arrived in the same loop iteration join this transaction.
                self.commit_scheduled = True
                asyncio.get_running_loop().call_soon(self._commit_batch)
        if failed is not None:
            raise failed
        if done is not None:
            # shielded: a request cancelled while it waits (its client went away, the server stops)
            # must not cancel the batch's future — the commit still happens, for the others too
            await asyncio.shield(done)

    def _commit_batch(self) -> None:
        self.commit_scheduled = False
        if self.batch is None:
            return  # committed already (the batch filled up before this scheduled call ran)
        batch, self.batch = self.batch, None
        started = time.perf_counter()
        try:
            self.conn.execute("COMMIT")
            self.commits.add(time.perf_counter() - started, len(batch))
        except Exception as exc:  # the whole group is lost: every unit of it fails, none is answered as stored
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            for f in batch:
                if not f.done():
                    f.set_exception(exc)
            return
        for f in batch:
            if not f.done():  # every unit is answered, whatever happened to one of them
                f.set_result(None)


# ------------------------------------------------------------------------------------ PostgreSQL
_PLACEHOLDER = re.compile(r"\?")


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    """``?`` placeholders → PostgreSQL's ``$1, $2 …`` (cached: the service's statements are few)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


def _pg_audit(first: int) -> tuple[str, str]:
    """The audit record in PostgreSQL, parameters from ``$first`` (the request's columns, ``at``
    first, then the patients as one array): the request row as a data-modifying CTE ``r`` and the
    statement that adds its patients' keys — one round trip for both, also inside :func:`_pg_store`."""
    n = len(AUDIT_REQUEST_COLUMNS)
    request = ", ".join(f"${first + k}" for k in range(n))
    return (f"r AS (INSERT INTO audit_request ({', '.join(AUDIT_REQUEST_COLUMNS)}) VALUES ({request}) RETURNING id)",
            f"INSERT INTO audit_patient (patient, at, request) SELECT p, ${first}, r.id FROM r, "
            f"unnest(${first + n}::text[]) AS p")


_PG_AUDIT = "WITH {} {}".format(*_pg_audit(1))
_PG_COLUMN_TYPES = {"version": "int", "priority": "int"}  # the rest are text


@functools.lru_cache(maxsize=4)
def _pg_store(with_outbox: bool, with_audit: bool) -> str:
    """One statement for :meth:`Tx.store`: the rows from arrays (one per column), the outbox item
    and the audit record as data-modifying CTEs, which PostgreSQL always runs to completion."""
    n = len(COLUMNS)
    arrays = ", ".join(f"${k + 1}::{_PG_COLUMN_TYPES.get(c, 'text')}[]" for k, c in enumerate(COLUMNS))
    ctes = [f"stored AS (INSERT INTO resources ({', '.join(COLUMNS)}) SELECT * FROM unnest({arrays}))"]
    if with_outbox:
        ctes.append(f"queued AS (INSERT INTO outbox (id, kind, payload, created) VALUES "
                    f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}))")
        n += 4
    if not with_audit:
        return f"WITH {', '.join(ctes)} SELECT 1"
    audit_cte, audit_patients = _pg_audit(n + 1)
    return f"WITH {', '.join([*ctes, audit_cte])} {audit_patients}"


class _PgTx(Tx):
    """Statements on one pooled connection: inside a transaction, or — ``one_write`` — each on its
    own, for a unit whose only write is one statement (atomic by itself; see Storage.transaction)."""

    dialect = "postgresql"

    def __init__(self, conn, one_write: bool = False) -> None:
        self.conn = conn
        self.one_write = one_write
        self.wrote = False

    def _writing(self, sql: str = "") -> None:
        """Refuse a second write in a ``one_write`` unit: it would commit apart from the first."""
        if not self.one_write or sql.lstrip()[:6].upper() == "SELECT":
            return
        if self.wrote:
            raise RuntimeError("a one_write transaction made a second write; use a plain transaction()")
        self.wrote = True

    async def _executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self._writing(sql)
        await self.conn.executemany(_pg(sql), rows)

    async def _execute(self, sql: str, params: Sequence = ()) -> None:
        self._writing(sql)
        await self.conn.execute(_pg(sql), *params)

    async def _fetch(self, sql: str, params: Sequence = ()) -> list[tuple]:
        self._writing(sql)
        return [tuple(r) for r in await self.conn.fetch(_pg(sql), *params)]

    async def store(self, rows: Sequence[Row], outbox: OutboxItem | None = None,
                    audit: AuditRecord | None = None) -> None:
        # One round trip instead of three (and, in a one_write unit, no BEGIN and COMMIT either).
        self._writing()
        params: list = [list(column) for column in zip(*(r.params() for r in rows), strict=True)] if rows else \
            [[] for _ in COLUMNS]
        if outbox is not None:
            params += outbox
        if audit is not None:
            params += [*audit.request, list(audit.patients)]
        await self.conn.execute(_pg_store(outbox is not None, audit is not None), *params)

    async def has_column(self, table: str, column: str) -> bool:
        return bool(await self.conn.fetch("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                                          "current_schema() AND table_name = $1 AND column_name = $2", table, column))

    async def audit(self, request: Sequence, patients: Sequence[str]) -> None:
        # One round trip instead of two: the request row and its patients' keys in one statement
        # (a data-modifying CTE always runs, also when there are no patients).
        self._writing()
        await self.conn.execute(_PG_AUDIT, *request, list(patients))

    async def insert(self, rows: Sequence[Row]) -> None:
        self._writing()
        await self.conn.executemany(_pg(f"INSERT INTO resources ({', '.join(COLUMNS)}) VALUES "
                                        f"({', '.join('?' * len(COLUMNS))})"), [r.params() for r in rows])


async def _keep_session(conn) -> None:
    """What the pool does to a connection it takes back, besides rolling back a transaction left
    open (asyncpg always does that): nothing. asyncpg's default sends ``RESET ALL; CLOSE ALL;
    UNLISTEN *; SELECT pg_advisory_unlock_all()`` — a round trip per request, as many as a read's
    own work — to undo session state this server never creates: it sets no session variables,
    declares no cursors outside a transaction, listens to nothing, and takes advisory locks only
    for a transaction (``pg_advisory_xact_lock``). A test checks that a released connection comes
    back clean (tests/server/test_storage_store.py)."""


class PostgresStorage(Storage):
    def __init__(self, url: str, pool_size: int = 8) -> None:
        self.url = url
        self.pool_size = pool_size
        self.pool = None
        self._turns: asyncio.Semaphore | None = None  # the pool's connections, first come first served (open)

    async def open(self) -> None:
        import asyncpg

        # Generic plans: every statement here is a keyed lookup or a short index range whose best
        # plan does not depend on the values (the resource type, on which the partial indexes
        # depend, is a literal: _type_is). PostgreSQL's default plans a prepared statement afresh
        # at each execution while it judges a generic plan no cheaper — with a table's statistics
        # behind its growth, always: 160 µs of planning for the worklist's 80 µs of execution.
        self.pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size, reset=_keep_session,
                                              server_settings={"plan_cache_mode": "force_generic_plan"})
        # Connections are handed out first come, first served. The pool's own queue lets a newcomer
        # take a connection just released to a waiter, and the waiter then queues again at the back:
        # with 32 requests on 8 connections some waited 10 times the median (p99 289 ms at p50 12).
        # asyncio.Semaphore hands a released permit to its longest waiter.
        self._turns = asyncio.Semaphore(self.pool_size)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @contextlib.asynccontextmanager
    async def transaction(self, one_write: bool = False) -> AsyncIterator[Tx]:
        assert self.pool is not None, "storage not open"
        if one_write:
            async with self._turns, self.pool.acquire() as conn:
                yield _PgTx(conn, one_write=True)
            return
        async with self._turns, self.pool.acquire() as conn, conn.transaction():
            yield _PgTx(conn)

    async def migrate(self) -> None:
        # Serialise concurrent migrations of several workers with an advisory lock.
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(20261126)")
            await tx.migrate_schema()


_last_id_us = [0]
# Ids need uniqueness, not secrecy: a fast PRNG (secrets.randbits is an os.urandom syscall per id),
# seeded per process from the OS and re-seeded in a forked child so that worker processes differ.
_id_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _id_random.seed(os.urandom(16)))


_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_LETTER_PAIRS = [a + b for a in _LETTERS for b in _LETTERS]  # 0..675 as two letters


def _base26(n: int, width: int) -> str:
    """``n`` in ``width`` letters a-z, most significant first (fixed width, so text order = number order).
    Two letters per step (a submission makes eight ids: letter by letter they were 2.5 % of its CPU)."""
    out = []
    for _ in range(width // 2):
        n, r = divmod(n, 676)
        out.append(_LETTER_PAIRS[r])
    if width % 2:
        out.append(_LETTERS[n % 26])
    return "".join(reversed(out))


def new_id() -> str:
    """A new resource id that sorts by creation time (like UUIDv7): 11 letters of microseconds since
    1970, then 8 random letters. Inserts then land at the right edge of the primary-key B-tree
    instead of a random page, which keeps each commit's written pages few. Letters only: an id must
    never contain a run of digits that looks like a CPR number (audit masking would mangle it)."""
    now_us = max(time.time_ns() // 1000, _last_id_us[0] + 1)
    _last_id_us[0] = now_us
    return f"{_base26(now_us, 11)}-{_base26(_id_random.getrandbits(37), 8)}"


def _integrity_errors() -> tuple[type[Exception], ...]:
    errors: list[type[Exception]] = [sqlite3.IntegrityError]
    try:
        import asyncpg

        errors.append(asyncpg.UniqueViolationError)
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(errors)


INTEGRITY_ERRORS = _integrity_errors()
"""Unique-index violations of either driver: a concurrent writer got there first."""
