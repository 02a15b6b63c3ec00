"""What FUT's audit rule costs SQLite, by the layout of the per-patient audit keys.

    python benchmarks/audit_layouts.py [--requests 6000] [--patients-per-request 50] [--group 16]

A nurse's worklist page touches 50 patients, and FUT wants one AuditEvent per patient touched:
the service writes one ``audit_request`` row and one ``audit_patient`` key per patient
(twin/server/storage.py). This replays that write pattern — 20 teams of 50 patients, a worklist
request of a random team at a time, group commits of ``--group`` requests as the service makes
under load — in a fresh WAL database (``synchronous=NORMAL``), for each key layout:

* ``patient_first`` — the service's: ``(patient, at, request)``, plus an index on ``request``;
* ``patient_first_no_request_index`` — the same without the request index;
* ``request_first`` — ``(request, patient)``: every key appended at the B-tree's right edge.

Patient-first keys land on ~50 leaf pages per request, spread over the tree, and every COMMIT
writes each page it dirtied to the WAL whole (4 KiB for a 50-byte key); request-first keys share
one or two pages. The layout the auditor's "all events of this patient" search needs is the
expensive one. Prints microseconds per request (and the COMMITs' part) and the WAL file's size at
the end (SQLite's automatic checkpoints restart it, so it is a floor of what was written).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = {
    "patient_first": [
        "CREATE TABLE audit_patient (patient TEXT NOT NULL, at TEXT NOT NULL, request INTEGER NOT NULL, "
        "PRIMARY KEY (patient, at, request)) WITHOUT ROWID",
        "CREATE INDEX audit_patient_request ON audit_patient (request)"],
    "patient_first_no_request_index": [
        "CREATE TABLE audit_patient (patient TEXT NOT NULL, at TEXT NOT NULL, request INTEGER NOT NULL, "
        "PRIMARY KEY (patient, at, request)) WITHOUT ROWID"],
    "request_first": [
        "CREATE TABLE audit_patient (request INTEGER NOT NULL, patient TEXT NOT NULL, at TEXT NOT NULL, "
        "PRIMARY KEY (request, patient)) WITHOUT ROWID"],
}
AUDIT_REQUEST = ("CREATE TABLE audit_request (id INTEGER PRIMARY KEY, at TEXT, trace_id TEXT, user_type TEXT, "
                 "user_id TEXT, org TEXT, action TEXT, subtype TEXT, resource_type TEXT, resource_id TEXT, query TEXT)")
TEAMS = 20


def run(layout: str, requests: int, per_request: int, group: int, folder: Path) -> dict:
    path = folder / f"{layout}.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute(AUDIT_REQUEST)
    for statement in LAYOUTS[layout]:
        conn.execute(statement)
    team_patients = [sorted(f"p-{random.Random(t).randrange(100_000)}-{k}" for k in range(per_request))
                     for t in range(TEAMS)]
    rng = random.Random(1)
    started, commit_s = time.perf_counter(), 0.0
    for first in range(0, requests, group):
        conn.execute("BEGIN IMMEDIATE")
        for r in range(first, first + group):
            at = f"2026-11-26T10:{(r // 6000) % 60:02d}:{(r // 100) % 60:02d}.{r % 1000:03d}Z"
            request_id = conn.execute(
                "INSERT INTO audit_request (at, trace_id, user_type, user_id, org, action, subtype, resource_type, "
                "resource_id, query) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (at, "0" * 32, "PRACTITIONER", "nurse-1", "org-1", "R", "search-type", "Task", None,
                 "responsible=CareTeam/ct-1&status=ready")).fetchall()[0][0]
            patients = team_patients[rng.randrange(TEAMS)]
            if layout == "request_first":
                conn.executemany("INSERT INTO audit_patient (request, patient, at) VALUES (?, ?, ?)",
                                 [(request_id, p, at) for p in patients])
            else:
                conn.executemany("INSERT INTO audit_patient (patient, at, request) VALUES (?, ?, ?)",
                                 [(p, at, request_id) for p in patients])
        t = time.perf_counter()
        conn.execute("COMMIT")
        commit_s += time.perf_counter() - t
    total_s = time.perf_counter() - started
    wal_bytes = os.path.getsize(f"{path}-wal") if os.path.exists(f"{path}-wal") else 0
    conn.close()
    return {"layout": layout, "us_per_request": 1e6 * total_s / requests, "commit_us_per_request": 1e6 * commit_s / requests,
            "wal_mb": wal_bytes / 1e6}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=6000)
    p.add_argument("--patients-per-request", type=int, default=50)
    p.add_argument("--group", type=int, default=16, help="requests per COMMIT (the service's group commit)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(layout, args.requests, args.patients_per_request, args.group, Path(tmp)) for layout in LAYOUTS]
    base = rows[0]["us_per_request"]
    for r in rows:
        print(f"  {r['layout']:32s} {r['us_per_request']:8.1f} us/request (COMMIT {r['commit_us_per_request']:7.1f})"
              f"  {r['us_per_request'] / base:5.2f} x the service's layout   WAL file {r['wal_mb']:5.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
