"""Tidy summary tables of one replication, the inputs of the figures and the report.

Each function takes the run's tables and returns one long-format table (one row per team-week,
per hour of the week …), so a figure never recomputes the model's logic.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twin.model import RunResult


def _week(day: pd.Series) -> pd.Series:
    return (day // 7).astype("int64")


def alerts_per_team_week(result: RunResult) -> pd.DataFrame:
    s = result.sessions
    flagged = s[s["colour"] != "green"]
    g = (flagged.assign(week=_week(flagged["upload_day"]), colour=flagged["colour"].astype(str))
         .groupby(["team_id", "week", "colour"]).size().unstack("colour", fill_value=0))
    for c in ("red", "yellow"):
        if c not in g:
            g[c] = 0
    return g[["red", "yellow"]].reset_index()


def nurse_work_per_team_week(result: RunResult) -> pd.DataFrame:
    w = result.work[result.work["start_day"].notna()]
    hours = (w.assign(week=_week(w["start_day"]), kind=w["kind"].astype(str))
             .groupby(["team_id", "week", "kind"])["service_min"].sum().div(60).unstack("kind", fill_value=0.0))
    hours.columns = [f"hours_{c}" for c in hours.columns]
    hours["nurse_hours"] = hours.sum(axis=1)
    b = result.backlog.assign(week=_week(result.backlog["day"]))
    backlog = b.groupby(["team_id", "week"]).agg(backlog_items_max=("items_waiting", "max"),
                                                 backlog_work_h_max=("work_min_waiting", "max"))
    backlog["backlog_work_h_max"] /= 60
    out = hours.join(backlog, how="outer").fillna(0).reset_index()
    fte = result.teams.set_index("team_id")["fte"]
    care = result.scenario.care
    out["available_hours"] = fte.reindex(out["team_id"]).to_numpy() * care.shift_hours * len(care.working_days)
    out["utilisation"] = out["nurse_hours"] / out["available_hours"]
    return out


def response_times(result: RunResult) -> pd.DataFrame:
    w = result.work[result.work["kind"] != "routine_review"]
    return pd.DataFrame({
        "team_id": w["team_id"], "colour": w["kind"].astype(str).str.removeprefix("triage_"),
        "raised_day": w["release_day"], "handled_day": w["end_day"],
        "response_h": (w["end_day"] - w["release_day"]) * 24,
    })


def demand_per_hour_of_week(demand: pd.DataFrame) -> pd.DataFrame:
    """Mean requests and sessions per clock hour of the week (Monday 00-01 = hour 0)."""
    minute = pd.DatetimeIndex(demand["minute"])
    hour_of_week = minute.day_of_week * 24 + minute.hour
    per_hour = demand.drop(columns="minute").groupby([minute.floor("h")]).sum()
    how = pd.DatetimeIndex(per_hour.index).day_of_week * 24 + pd.DatetimeIndex(per_hour.index).hour
    out = per_hour.groupby(how).mean()
    out.index.name = "hour_of_week"
    peak_per_min = demand.drop(columns="minute").groupby(np.asarray(hour_of_week))["requests"].max()
    out["requests_peak_minute"] = peak_per_min
    return out.reset_index()


def weekly_events(result: RunResult) -> pd.DataFrame:
    """Per week: exacerbation onsets, admissions, red and yellow alerts, sessions, citizens active."""
    days = result.scenario.run.duration_days
    ep = result.episodes[(result.episodes["onset_day"] >= 0) & (result.episodes["onset_day"] < days)]
    s = result.sessions
    weeks = pd.RangeIndex(0, int(np.ceil(days / 7)), name="week")
    out = pd.DataFrame(index=weeks)
    out["exacerbations"] = ep.groupby(_week(ep["onset_day"])).size().reindex(weeks, fill_value=0)
    out["admissions"] = ep[ep["severe"]].groupby(_week(ep["onset_day"])).size().reindex(weeks, fill_value=0)
    for colour in ("red", "yellow"):
        sel = s[s["colour"] == colour]
        out[f"{colour}_alerts"] = sel.groupby(_week(sel["upload_day"])).size().reindex(weeks, fill_value=0)
    out["sessions"] = s.groupby(_week(s["start_day"])).size().reindex(weeks, fill_value=0)
    week_start = pd.Timestamp(result.scenario.run.start) + pd.to_timedelta(weeks.to_numpy() * 7, unit="D")
    out.insert(0, "week_start", week_start)
    return out.reset_index()
