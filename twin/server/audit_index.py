"""The audit trail's by-patient index on SQLite, built behind the requests in a file of its own.

FUT wants one AuditEvent per patient a request touched, and an auditor asks for "every event of
this patient". Keys ordered by patient serve that question, but written per request they cost a
worklist page (50 patients) ~50 B-tree leaves spread over the whole tree, each written whole to
the WAL at COMMIT: measured, the read audit halved the worklist's throughput
(benchmarks/audit_layouts.py: 2.1 ms a request for patient-first keys, 0.22 ms for keys in request
order). So on SQLite a request writes its keys in *request* order — in its own ``audit_request``
row, as a JSON array (``patients``), in the request's own transaction: never lost for an answered
request, and one insert where one row per key cost a worklist page 160-200 µs against 29 — and
this module copies them into patient order in bulk, sorted, thousands of requests at a time, where
each leaf is written once for many keys.

The copy lives in ``<database>.audit-index``, a second SQLite file, so that its writes take their
own lock, not the service's: SQLite has one writer per file, and a bulk copy of thousands of keys
in the service's file would hold every request for tens of milliseconds. A thread with its own
connection does it (sqlite3 releases the GIL while a statement runs). The index is derived data:
its watermark (``upto``, the last request copied) is committed with the keys it covers, so a
crash leaves it consistent, and a lost file is rebuilt from the requests at the next start.
Readers take the index up to the watermark and the requests' keys above it (:data:`KEYS_SQL`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("twin.server.audit_index")

EVERY_S = 0.5  # a pass copies what the requests logged since the last one …
CHUNK_REQUESTS = 5000  # … in transactions of at most this many requests (~250,000 keys for worklists)
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit_patient (patient TEXT NOT NULL, at TEXT NOT NULL, request INTEGER NOT NULL,
        PRIMARY KEY (patient, at, request)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), upto INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO state (id, upto) VALUES (1, 0)",
]
# The keys each request holds (patient, at, request), from its JSON array of patients; ``{db}``:
# the schema holding audit_request ("" for the service's connection, "main_db." for the copier's).
_REQUEST_KEYS = ("SELECT k.value AS patient, r.at AS at, r.id AS request"
                 " FROM {db}audit_request r, json_each(r.patients) k")
REQUEST_KEYS_SQL = _REQUEST_KEYS.format(db="")
# The audit keys in patient order, on a connection that has the index attached as ``idx``: the
# index up to its watermark and the requests' keys above it (disjoint). SQLite pushes a WHERE on
# the outer query into both branches, so ``patient = ?`` uses the index's key, and the requests'
# part is the short range (of their primary key) not yet copied.
KEYS_SQL = ("(SELECT patient, at, request FROM idx.audit_patient"
            f" UNION ALL {REQUEST_KEYS_SQL} WHERE r.id > (SELECT upto FROM idx.state))")
# What copy_pending copies: the keys of the requests in (upto, until], in patient order.
COPIED_KEYS_SQL = _REQUEST_KEYS.format(db="main_db.") + " WHERE r.id > ? AND r.id <= ? ORDER BY patient, at, request"


def index_path(database_path: str) -> str:
    return f"{database_path}.audit-index"


def open_index(database_path: str) -> sqlite3.Connection:
    """A connection to the index file (created if missing) with the service's database attached
    as ``main_db``, for the copying."""
    conn = sqlite3.connect(index_path(database_path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.execute("ATTACH DATABASE ? AS main_db", (database_path,))
    return conn


def begin_copy(conn: sqlite3.Connection) -> None:
    """Start a copy: a transaction holding the *index's* write lock only. ``BEGIN IMMEDIATE`` would
    take the write lock of every attached database — the service's too, holding every request
    for the whole copy; a deferred transaction whose first statement writes the index locks the
    index alone and reads the service's database from a WAL snapshot, which blocks no writer.
    A second copier (another worker process) waits here for the first."""
    conn.execute("BEGIN")
    conn.execute("UPDATE state SET upto = upto")


def copy_pending(conn: sqlite3.Connection, chunk_requests: int = CHUNK_REQUESTS) -> int:
    """One transaction: the keys of the next ``chunk_requests`` audited requests above the
    watermark, copied in patient order, and the watermark moved past them. Returns how many
    requests it covered (0: nothing new). Safe beside another copier: the watermark is read
    under the index's write lock (:func:`begin_copy`)."""
    begin_copy(conn)
    try:
        upto = conn.execute("SELECT upto FROM state").fetchone()[0]
        last = conn.execute("SELECT MAX(id) FROM main_db.audit_request").fetchone()[0]
        if last is None or last <= upto:
            conn.execute("COMMIT")
            return 0
        until = min(last, upto + chunk_requests)
        conn.execute(f"INSERT OR IGNORE INTO audit_patient (patient, at, request) {COPIED_KEYS_SQL}", (upto, until))
        conn.execute("UPDATE state SET upto = ?", (until,))
        conn.execute("COMMIT")
        return until - upto
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class AuditIndexer:
    """The thread that keeps the index following the log (one per worker process)."""

    def __init__(self, database_path: str, every_s: float = EVERY_S) -> None:
        self.database_path, self.every_s = database_path, every_s
        self.copied_requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-audit-index", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        conn = None
        try:
            while not self._stop.wait(self.every_s):
                try:
                    conn = conn or open_index(self.database_path)
                    while (n := copy_pending(conn)) and not self._stop.is_set():
                        self.copied_requests += n
                except sqlite3.Error:  # the log not created yet (before migrate), or busy: next pass
                    log.debug("audit index pass failed", exc_info=True)
        finally:
            if conn is not None:
                conn.close()
