"""Reading a run directory for the report: its tables, the care teams, run.json and the scenario.

The report is made from result files only (STYLE.md habit 7), never from model objects, so a
report can be rebuilt from an archived ``results/<scenario>/`` directory years later. Every file is
optional here: a missing file leaves its table out, and the figure or section that needs it is
skipped rather than failing the whole report.

The simulated year rarely ends on a whole week (365 days = 52 weeks + 1 day), so the last week of the
weekly tables is short. When the resolved scenario gives the run length, each weekly table gets a
``days_in_week`` column and :func:`full_weeks` drops the short week from plots of weekly totals.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_FILES: dict[str, str] = {
    "weekly_events": "tables/weekly_events.csv",
    "nurse_work_per_team_week": "tables/nurse_work_per_team_week.csv",
    "alerts_per_team_week": "tables/alerts_per_team_week.csv",
    "response_times": "tables/response_times.parquet",
    "demand_per_hour_of_week": "tables/demand_per_hour_of_week.csv",
    "calibration": "tables/calibration.csv",
    "outcomes": "tables/outcomes.csv",
    "teams": "trace/teams.parquet",
}
WEEKLY_TABLES = ("weekly_events", "nurse_work_per_team_week", "alerts_per_team_week")
DAYS_PER_WEEK = 7


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


def load_run_info(run_dir: Path) -> dict:
    """``{"run": run.json, "scenario": scenario.toml}``, each ``{}`` when missing or unreadable."""
    run_dir = Path(run_dir)
    info: dict = {"run": {}, "scenario": {}}
    run_json = run_dir / "run.json"
    if run_json.is_file():
        try:
            info["run"] = json.loads(run_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info["run"] = {}
    scenario = run_dir / "scenario.toml"
    if scenario.is_file():
        try:
            with scenario.open("rb") as fh:
                info["scenario"] = tomllib.load(fh)
        except tomllib.TOMLDecodeError:
            info["scenario"] = {}
    return info


def duration_days(info: dict) -> float | None:
    days = info.get("scenario", {}).get("run", {}).get("duration_days")
    return float(days) if days is not None else None


def load_run_tables(run_dir: Path, days: float | None = None) -> dict[str, pd.DataFrame]:
    """Every table of :data:`TABLE_FILES` that exists, keyed by its short name.

    ``days`` is the run length; by default it is read from ``scenario.toml``.
    """
    run_dir = Path(run_dir)
    if days is None:
        days = duration_days(load_run_info(run_dir))
    tables = {name: _read(run_dir / rel) for name, rel in TABLE_FILES.items() if (run_dir / rel).is_file()}
    if days is not None:
        for name in WEEKLY_TABLES:
            if name in tables and "week" in tables[name]:
                week = tables[name]["week"].to_numpy()
                tables[name]["days_in_week"] = np.clip(days - DAYS_PER_WEEK * week, 0, DAYS_PER_WEEK)
    return tables


def full_weeks(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of whole weeks only (all rows when the run length is unknown)."""
    if "days_in_week" not in df:
        return df
    return df[df["days_in_week"] >= DAYS_PER_WEEK]


def weeks_in_run(tables: dict[str, pd.DataFrame], days: float | None = None) -> float:
    """The run length in weeks: from the scenario when known, else the weeks seen in the tables."""
    if days is not None:
        return days / DAYS_PER_WEEK
    for name in WEEKLY_TABLES:
        if name in tables and len(tables[name]):
            return float(tables[name]["week"].max() + 1)
    return math.nan


def team_summary(tables: dict[str, pd.DataFrame], days: float | None = None) -> pd.DataFrame:
    """One row per care team: alerts and nurse hours per week, utilisation, largest backlog.

    Per-week figures are yearly totals divided by the run length in weeks (as in ``outcomes.csv``),
    so the teams add up to the cohort's figures. Sorted by caseload at the start, largest first.
    """
    weeks = weeks_in_run(tables, days)
    parts = []
    if "alerts_per_team_week" in tables:
        a = tables["alerts_per_team_week"].groupby("team_id")[["red", "yellow"]].sum() / weeks
        parts.append(a.rename(columns={"red": "red_alerts_per_week", "yellow": "yellow_alerts_per_week"}))
    if "nurse_work_per_team_week" in tables:
        w = tables["nurse_work_per_team_week"]
        g = w.groupby("team_id")
        agg = pd.DataFrame({"nurse_hours_per_week": g["nurse_hours"].sum() / weeks})
        if "available_hours" in w:
            agg["available_hours_per_week"] = g["available_hours"].max()
        for col in ("backlog_work_h_max", "backlog_items_max"):
            if col in w:
                agg[col] = g[col].max()
        parts.append(agg)
    if "teams" in tables:
        t = tables["teams"].set_index("team_id")
        parts.insert(0, t[[c for c in ("name", "region", "org_kind", "caseload_at_start", "nurses", "fte") if c in t]])
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, axis=1).reset_index().rename(columns={"index": "team_id"})
    for col in ("red_alerts_per_week", "yellow_alerts_per_week", "nurse_hours_per_week"):
        if col in out:
            out[col] = out[col].fillna(0.0)  # a team with no alert (or no work) all year
    if "available_hours_per_week" in out:
        out["utilisation"] = out["nurse_hours_per_week"] / out["available_hours_per_week"]
    if "name" not in out:
        out["name"] = "team " + out["team_id"].astype(str)
    sort_by = "caseload_at_start" if "caseload_at_start" in out else (
        "nurse_hours_per_week" if "nurse_hours_per_week" in out else "team_id")
    return out.sort_values(sort_by, ascending=sort_by == "team_id", kind="stable").reset_index(drop=True)
