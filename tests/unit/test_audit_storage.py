"""The audit trail's storage: one request row plus one key per patient, and the migration from the
one-table audit of earlier versions (SQLite; the server tests cover PostgreSQL through the API)."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.unit.sqlite_storage import migrated_sqlite
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
            patients = await tx.fetch("SELECT patient, at, request FROM audit_patient ORDER BY request, patient")
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
                by_patient = await tx.fetch("SELECT patient, COUNT(*) FROM audit_patient GROUP BY patient ORDER BY 1")
            return n_requests, by_patient

    n_requests, by_patient = _run(go())
    assert n_requests == 2
    assert by_patient == [("p-1", 2), ("p-2", 1), ("p-3", 1)]
