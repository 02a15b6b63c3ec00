"""Storage growth: database and audit bytes per submission, measured, extrapolated per population.

The bytes are measured on the real API's SQLite file: the size of every table and index (SQLite's
``dbstat`` virtual table, pages actually used) before and after the load test's replays, divided by
the submissions triaged in between (the server's ``/health`` counter: one triage per stored
submission). Audit tables (``audit_*``) are counted apart from the clinical data. Everything the
replays wrote is included (logins audit too, clinician writes), so the figure is "bytes the
platform grows by per submission, at the trace's mix of work". Per population: bytes per
submission × submissions per citizen-year (from the trace) × citizens.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from twin.server.audit_index import index_path

GB = 1e9


def table_bytes(db_path: str | Path) -> dict[str, int]:
    """Bytes used per table/index of an SQLite database (``dbstat``), grouped ``audit`` / ``data``;
    the audit trail's by-patient index file beside it (twin.server.audit_index) counts as audit."""
    with sqlite3.connect(f"file:{Path(db_path)}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall()
        # an index belongs to its table's group
        owner = dict(con.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
    out = {"audit": 0, "data": 0}
    for name, size in rows:
        table = owner.get(name, name)
        out["audit" if table.startswith("audit") else "data"] += int(size or 0)
    index = Path(index_path(str(db_path)))
    if index.is_file():
        with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as con:
            out["audit"] += int(con.execute("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat").fetchone()[0])
    return out


def bytes_per_submission(before: dict[str, int], after: dict[str, int], submissions: int) -> dict[str, float]:
    if submissions <= 0:
        raise ValueError("no submissions between the two measurements: cannot divide the growth")
    return {k: (after[k] - before[k]) / submissions for k in ("data", "audit")}


def submissions_per_citizen_year(sessions: pd.DataFrame, citizens: pd.DataFrame, duration_days: float) -> float:
    """Stored submissions (uploads that got through, plus duplicates) per citizen-year of follow-up."""
    uploads = int(sessions["upload_time"].notna().sum())
    enrol = citizens["enrol_day"].clip(lower=0, upper=duration_days)
    exit_ = citizens["exit_day"].clip(lower=0, upper=duration_days)
    citizen_years = float((exit_ - enrol).clip(lower=0).sum()) / 365.25
    if citizen_years <= 0:
        raise ValueError("the trace holds no citizen-time")
    return uploads / citizen_years


def storage_table(per_submission: dict[str, float], submissions_per_citizen_year: float,
                  populations: Sequence[int]) -> pd.DataFrame:
    """One row per population: submissions per year, database and audit growth per year (GB)."""
    rows = []
    for n in populations:
        subs = submissions_per_citizen_year * n
        data_gb, audit_gb = subs * per_submission["data"] / GB, subs * per_submission["audit"] / GB
        rows.append({"citizens": int(n), "submissions_per_year": subs, "data_bytes_per_submission": per_submission["data"],
                     "audit_bytes_per_submission": per_submission["audit"], "data_gb_per_year": data_gb,
                     "audit_gb_per_year": audit_gb, "total_gb_per_year": data_gb + audit_gb})
    return pd.DataFrame(rows)
