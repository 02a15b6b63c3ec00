"""The audit trail's storage: one request row plus one key per patient, and the migration from the
one-table audit of earlier versions (SQLite; the server tests cover PostgreSQL through the API)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3

from tests.unit.sqlite_storage import migrated_sqlite
from twin.server import audit_index
from twin.server.storage import Storage

OLD_AUDIT = """CREATE TABLE audit (
    at TEXT NOT NULL, trace_id TEXT NOT NULL, user_type TEXT NOT NULL, user_id TEXT NOT NULL,
    org TEXT, action TEXT NOT NULL, subtype TEXT, patient TEXT, resource_type TEXT, resource_id TEXT, query TEXT)"""


def _run(coro):
    return asyncio.run(coro)


async def _migrate_and_read(path: str) -> tuple[list, list]:
    storage = Storage.connect(f"sqlite:///{path}")
    await storage.open()
    try:
        await storage.migrate()
        await storage.migrate()  # safe to repeat
        async with storage.transaction() as tx:
            requests = await tx.fetch("SELECT id, at, trace_id, action, resource_type FROM audit_request ORDER BY id")
        patients = await storage.fetch_audit("SELECT patient, at, request FROM {by_request} p ORDER BY request, patient")
        return requests, patients
    finally:
        await storage.close()


def test_old_one_row_per_patient_audit_is_moved_into_requests_and_patient_keys(tmp_path):
    path = str(tmp_path / "old.db")
    with sqlite3.connect(path) as conn:
        conn.execute(OLD_AUDIT)
        conn.executemany("INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?)", [
            # one search over two patients: two old rows, one request
            ("2026-01-01T08:00:00.000+00:00", "t1", "PRACTITIONER", "pr-0-0", "org-1", "R", "search", "p-1", "Task",
             None, "status=ready"),
            ("2026-01-01T08:00:00.000+00:00", "t1", "PRACTITIONER", "pr-0-0", "org-1", "R", "search", "p-2", "Task",
             None, "status=ready"),
            # user management: no patient
            ("2026-01-01T09:00:00.000+00:00", "t2", "PRACTITIONER", "pr-admin-1", "org-1", "C", "create", None,
             "PractitionerRole", "x", None),
        ])
    requests, patients = _run(_migrate_and_read(path))
    assert [(r[2], r[3]) for r in requests] == [("t1", "R"), ("t2", "C")]
    assert [(p, at) for p, at, _ in patients] == [("p-1", "2026-01-01T08:00:00.000+00:00"),
                                                  ("p-2", "2026-01-01T08:00:00.000+00:00")]
    assert {req for _, _, req in patients} == {requests[0][0]}
    with sqlite3.connect(path) as conn:
        assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'audit'").fetchall()


def test_audit_writes_one_request_row_and_one_key_per_patient(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "new.db") as storage:
            async with storage.transaction() as tx:
                await tx.audit(("2026-01-01T08:00:00.000+00:00", "t1", "PRACTITIONER", "pr-0-0", "org-1", "R",
                                "search", "Task", None, "q"), ["p-1", "p-2", "p-3"])
                await tx.audit(("2026-01-01T08:00:01.000+00:00", "t2", "PATIENT", "p-1", None, "C",
                                "$submit-measurement", "Bundle", None, None), ["p-1"])
            async with storage.transaction() as tx:
                n_requests = (await tx.fetch("SELECT COUNT(*) FROM audit_request"))[0][0]
            by_patient = await storage.fetch_audit("SELECT patient, COUNT(*) FROM {by_patient} p GROUP BY patient ORDER BY 1")
            return n_requests, by_patient

    n_requests, by_patient = _run(go())
    assert n_requests == 2
    assert by_patient == [("p-1", 2), ("p-2", 1), ("p-3", 1)]


@contextlib.asynccontextmanager
async def _copied_by_hand(path):
    """A migrated SQLite storage whose copier thread is stopped: the test copies when it says."""
    async with migrated_sqlite(path) as storage:
        storage.audit_indexer.stop()
        yield storage


def _copy(path) -> int:
    """One copy_pending pass on a fresh connection to the index; the requests it covered."""
    conn = audit_index.open_index(str(path))
    try:
        return audit_index.copy_pending(conn)
    finally:
        conn.close()


def _audit(tx, n: int, patients: list[str]):
    return tx.audit((f"2026-01-01T08:00:{n:02d}.000+00:00", f"t{n}", "PRACTITIONER", "pr-0-0", "org-1", "R", "search",
                     "Task", None, "q"), patients)


def test_by_patient_index_is_copied_in_bulk_and_reads_see_what_it_has_not_copied_yet(tmp_path):
    async def go():
        async with _copied_by_hand(tmp_path / "idx.db") as storage:
            for n in range(3):
                async with storage.transaction() as tx:
                    await _audit(tx, n, ["p-1", f"p-{n + 2}"])
            read = lambda: storage.fetch_audit(  # noqa: E731
                "SELECT p.patient, r.trace_id FROM {by_patient} p JOIN audit_request r ON r.id = p.request "
                "WHERE p.patient = ? ORDER BY p.at", ["p-1"])
            before = await read()  # nothing copied: all from the log
            conn = audit_index.open_index(storage.path)
            try:
                assert audit_index.copy_pending(conn, chunk_requests=2) == 2  # chunked: two requests …
                middle = await read()  # … two from the index, one from the log
                assert audit_index.copy_pending(conn) == 1
                assert audit_index.copy_pending(conn) == 0  # nothing new
                copied = conn.execute("SELECT patient, request FROM audit_patient ORDER BY patient, request").fetchall()
            finally:
                conn.close()
            after = await read()
            assert (await storage.audit_index_stats())["behind_requests"] == 0
            async with storage.transaction() as tx:
                await _audit(tx, 9, ["p-1"])
            assert (await storage.audit_index_stats())["behind_requests"] == 1
            newest = await read()
            return before, middle, after, copied, newest

    before, middle, after, copied, newest = _run(go())
    assert before == middle == after == [("p-1", "t0"), ("p-1", "t1"), ("p-1", "t2")]
    assert [p for p, _ in copied] == ["p-1", "p-1", "p-1", "p-2", "p-3", "p-4"]  # each key once, patient order
    assert newest == after + [("p-1", "t9")]  # logged after the last copy: read from the log


def test_a_lost_index_file_is_rebuilt_from_the_log(tmp_path):
    async def go():
        path = tmp_path / "lost.db"
        async with _copied_by_hand(path) as storage:
            async with storage.transaction() as tx:
                await _audit(tx, 1, ["p-1", "p-2"])
            _copy(path)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(audit_index.index_path(str(path)) + suffix):
                os.remove(audit_index.index_path(str(path)) + suffix)
        async with _copied_by_hand(path) as storage:
            rebuilt = _copy(path)
            keys = await storage.fetch_audit("SELECT patient FROM {by_patient} p ORDER BY patient")
        return rebuilt, keys

    rebuilt, keys = _run(go())
    assert rebuilt == 1 and keys == [("p-1",), ("p-2",)]


def test_copying_never_takes_the_service_databases_write_lock(tmp_path):
    async def go():
        path = tmp_path / "lock.db"
        async with _copied_by_hand(path) as storage, storage.transaction() as tx:
            await _audit(tx, 1, ["p-1"])
        conn = audit_index.open_index(str(path))
        try:
            audit_index.begin_copy(conn)  # what copy_pending holds while it copies
            conn.execute(f"INSERT OR IGNORE INTO audit_patient {audit_index.COPIED_KEYS_SQL}", (0, 10))
            service = sqlite3.connect(path, isolation_level=None, timeout=0)
            service.execute("BEGIN IMMEDIATE")  # the service can still write: no "database is locked"
            service.execute("ROLLBACK")
            service.close()
            second = sqlite3.connect(audit_index.index_path(str(path)), isolation_level=None, timeout=0)
            try:
                second.execute("BEGIN IMMEDIATE")  # but a second copier waits for the first
                raise AssertionError("a second copier got the index's write lock")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)
            finally:
                second.close()
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    _run(go())


def test_a_database_of_the_one_row_per_key_log_gets_its_keys_into_the_requests(tmp_path):
    """Before the requests held their keys, SQLite logged one row per key (audit_patient_log): a
    migration packs each request's keys into it, and every read finds them as before."""
    path = str(tmp_path / "log.db")
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE audit_request (id INTEGER PRIMARY KEY, at TEXT NOT NULL, trace_id TEXT NOT NULL, "
                     "user_type TEXT NOT NULL, user_id TEXT NOT NULL, org TEXT, action TEXT NOT NULL, subtype TEXT, "
                     "resource_type TEXT, resource_id TEXT, query TEXT)")
        conn.execute("CREATE TABLE audit_patient_log (request INTEGER NOT NULL, patient TEXT NOT NULL, "
                     "at TEXT NOT NULL, PRIMARY KEY (request, patient)) WITHOUT ROWID")
        at = "2026-01-01T08:00:00.000+00:00"
        conn.executemany("INSERT INTO audit_request VALUES (?, ?, ?, 'PRACTITIONER', 'pr-0-0', 'org-1', 'R', "
                         "'search', 'Task', NULL, 'q')", [(1, at, "t1"), (2, at, "t2"), (3, at, "t3")])
        conn.executemany("INSERT INTO audit_patient_log VALUES (?, ?, ?)",
                         [(1, "p-2", at), (1, "p-1", at), (2, "p-1", at)])  # t3: user management, no patient

    async def go():
        async with _copied_by_hand(tmp_path / "log.db") as storage:
            by_request = await storage.fetch_audit("SELECT request, patient FROM {by_request} p ORDER BY 1, 2")
            joined = await storage.fetch_audit("SELECT r.trace_id, {request_patient} FROM {requests_with_patients} "
                                               "ORDER BY 1, 2")
            by_patient = await storage.fetch_audit("SELECT patient, request FROM {by_patient} p ORDER BY 1, 2")
            copied = _copy(tmp_path / "log.db")
            after_copy = await storage.fetch_audit("SELECT patient, request FROM {by_patient} p ORDER BY 1, 2")
            async with storage.transaction() as tx:
                left = (await tx.fetch("SELECT COUNT(*) FROM audit_patient_log"))[0][0]
        await _migrate_and_read(path)  # again: nothing changes
        return by_request, joined, by_patient, copied, after_copy, left

    by_request, joined, by_patient, copied, after_copy, left = _run(go())
    assert by_request == [(1, "p-1"), (1, "p-2"), (2, "p-1")]
    assert joined == [("t1", "p-1"), ("t1", "p-2"), ("t2", "p-1"), ("t3", None)]  # a request without patients too
    assert by_patient == after_copy == [("p-1", 1), ("p-1", 2), ("p-2", 1)]
    assert copied == 3 and left == 0
