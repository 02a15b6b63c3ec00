"""The session trace: the one interface between the clinical twin and the technical world.

Per run, ``results/<scenario>/trace/`` holds (schema in docs/TRACE.md, checked by a test):

* ``sessions.parquet`` — every citizen session: when it started and was uploaded, who, which
  organisation and care team, its call sequence, its readings and answers, its triage colour;
* ``clinician_actions.parquet`` — every worklist item a nurse worked: triage of a red or yellow
  alert, or a block of routine review, with when it was raised, taken and finished;
* ``demand_per_minute.parquet`` — requests per endpoint per minute over the whole run, the
  demand the platform model and Locust replay;
* ``citizens.parquet`` and ``teams.parquet`` — the population (with each citizen's individual
  thresholds) and the care teams, what ``twin seed`` loads into the API;
* ``outages.parquet`` — the platform outages of the scenario (``start_time``, ``end_time``; no
  rows without one), what ``twin loadtest --window outage`` replays;
* ``call_sequences.csv`` — the endpoints each call sequence makes (from :mod:`twin.api_calls`).

Times are naive local timestamps (Europe/Copenhagen wall clock, no DST shift) at millisecond
resolution; the run starts at midnight of ``run.start_date``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from twin.api_calls import CALL_SEQUENCES, ENDPOINTS, ROUTINE_REVIEW_PER_CITIZEN, TRACE_ENDPOINTS
from twin.clinical.outage import in_outage, outage_windows_day
from twin.clinical.population import MEASURED_VITALS
from twin.model import RunResult

MS_PER_DAY = 86_400_000
TRACE_FILES = ("sessions.parquet", "clinician_actions.parquet", "demand_per_minute.parquet", "citizens.parquet",
               "teams.parquet", "call_sequences.csv")


def to_timestamp(start: pd.Timestamp, day: np.ndarray) -> np.ndarray:
    """Float days from the run start → datetime64[ms] (NaT for NaN)."""
    day = np.asarray(day, dtype=float)
    ms = np.where(np.isfinite(day), np.round(day * MS_PER_DAY), 0).astype("int64")
    out = np.datetime64(start, "ms") + ms.astype("timedelta64[ms]")
    return np.where(np.isfinite(day), out, np.datetime64("NaT"))


def session_table(result: RunResult) -> pd.DataFrame:
    s = result.sessions
    start = pd.Timestamp(result.scenario.run.start)
    readings = list(MEASURED_VITALS)
    n_obs = s[readings].notna().sum(axis=1).astype(np.int8)
    questions = [c for c in s.columns if c.startswith("q_")]
    out = pd.DataFrame({
        "session_id": s["session_id"].astype(np.int64),
        "citizen_id": s["citizen_id"].astype(np.int32),
        "cohort": s["cohort"].astype("category"),
        "org_code": s["org_code"].astype(np.int16),
        "team_id": s["team_id"].astype(np.int32),
        "kind": s["kind"],
        "start_time": to_timestamp(start, s["start_day"]),
        "upload_time": to_timestamp(start, s["upload_day"]),
        "intended_upload_time": to_timestamp(start, s["intended_upload_day"]),
        "upload_attempts": s["attempts"].astype(np.int8),
        "duplicate_time": to_timestamp(start, s["duplicate_day"]),
        "call_sequence": pd.Categorical(["citizen_submit"] * len(s), categories=list(CALL_SEQUENCES)),
        "n_observations": n_obs,
        "has_questionnaire": np.ones(len(s), dtype=bool) if questions else np.zeros(len(s), dtype=bool),
    })
    for v in readings:
        out[v] = s[v].astype(np.float32)
    out["spo2_repeats"] = s["spo2_repeats"].astype(np.int8)
    for q in questions:
        out[q] = s[q].fillna(False).astype(bool)
    out["colour"] = s["colour"]
    out["true_state"] = s["true_state"]
    return out


def clinician_action_table(result: RunResult, sessions: pd.DataFrame) -> pd.DataFrame:
    w = result.work
    start = pd.Timestamp(result.scenario.run.start)
    per_citizen_min = result.scenario.care.routine_review_min_per_citizen
    routine = (w["kind"] == "routine_review").to_numpy()
    reviewed = np.where(routine, np.ceil(w["service_min"].to_numpy() / per_citizen_min), 0).astype(np.int32)
    seq = np.where(routine, "clinician_routine_review",
                   np.where((w["kind"] == "triage_red").to_numpy(), "clinician_triage_red", "clinician_triage_yellow"))
    return pd.DataFrame({
        "action_id": w["item_id"].astype(np.int64),
        "team_id": w["team_id"].astype(np.int32),
        "nurse": w["nurse"].astype(np.int16),
        "kind": w["kind"],
        "session_id": w["session_id"].astype(np.int64),
        "citizen_id": w["citizen_id"].astype(np.int32),
        "raised_time": to_timestamp(start, w["release_day"]),
        "start_time": to_timestamp(start, w["start_day"]),
        "end_time": to_timestamp(start, w["end_day"]),
        "service_min": w["service_min"].astype(np.float32),
        "citizens_reviewed": reviewed,
        "call_sequence": pd.Categorical(seq, categories=list(CALL_SEQUENCES)),
    })


def demand_per_minute(result: RunResult) -> pd.DataFrame:
    """Requests per endpoint per minute of the run (sessions started, too)."""
    days = result.scenario.run.duration_days
    n_min = days * 1440
    s, w = result.sessions, result.work
    counts = {name: np.zeros(n_min, dtype=np.int64) for name in TRACE_ENDPOINTS}

    def add(endpoint: str, day: np.ndarray, weight: np.ndarray | None = None) -> None:
        day = np.asarray(day, dtype=float)
        ok = np.isfinite(day) & (day >= 0) & (day < days)
        minute = (day[ok] * 1440).astype(np.int64)
        counts[endpoint] += np.bincount(minute, weights=None if weight is None else weight[ok],
                                        minlength=n_min).astype(np.int64)[:n_min]

    start_day, upload_day = s["start_day"].to_numpy(), s["upload_day"].to_numpy()
    offline = in_outage(start_day, outage_windows_day(result.scenario))
    if offline.any():  # the app could not log in: it does so when it delivers the buffered submission
        start_day = np.where(offline, upload_day, start_day)
    phase_day = {"start": start_day, "upload": upload_day}
    for endpoint, phase in CALL_SEQUENCES["citizen_submit"]:
        add(endpoint, phase_day[phase])
    add("submit_measurement", s["duplicate_day"].to_numpy())  # the duplicate upload (idempotency case)
    for kind, seq in (("triage_red", "clinician_triage_red"), ("triage_yellow", "clinician_triage_yellow"),
                      ("routine_review", "clinician_routine_review")):
        ww = w[w["kind"] == kind]
        phase_day = {"start": ww["start_day"].to_numpy(), "end": ww["end_day"].to_numpy()}
        for endpoint, phase in CALL_SEQUENCES[seq]:
            add(endpoint, phase_day[phase])
        if kind == "routine_review":
            # One citizen after another, spread over the block's service time.
            reviewed = np.ceil(ww["service_min"].to_numpy() / result.scenario.care.routine_review_min_per_citizen)
            reviewed = np.nan_to_num(reviewed).astype(np.int64)
            first = np.repeat(np.cumsum(reviewed) - reviewed, reviewed)
            k = np.arange(reviewed.sum()) - first
            t0 = np.repeat(ww["start_day"].to_numpy(), reviewed)
            span = np.repeat((ww["end_day"] - ww["start_day"]).to_numpy(), reviewed)
            at = t0 + (k + 0.5) / np.repeat(reviewed, reviewed) * span
            for endpoint in ROUTINE_REVIEW_PER_CITIZEN:
                add(endpoint, at)
    sessions_started = np.bincount((s["start_day"].to_numpy() * 1440).astype(np.int64), minlength=n_min)[:n_min]
    out = pd.DataFrame({"minute": to_timestamp(pd.Timestamp(result.scenario.run.start), np.arange(n_min) / 1440),
                        "sessions_started": sessions_started.astype(np.int32)})
    for name, c in counts.items():
        out[name] = c.astype(np.int32)
    out["requests"] = out[list(TRACE_ENDPOINTS)].sum(axis=1).astype(np.int32)
    return out


def outage_table(result: RunResult) -> pd.DataFrame:
    """The scenario's outages: start_time, end_time (no rows without one)."""
    rows = sorted((o.start_datetime, o.end_datetime) for o in result.scenario.outages)
    return pd.DataFrame({"start_time": pd.Series([r[0] for r in rows], dtype="datetime64[ms]"),
                         "end_time": pd.Series([r[1] for r in rows], dtype="datetime64[ms]")})


def call_sequence_table() -> pd.DataFrame:
    rows = []
    for seq, calls in CALL_SEQUENCES.items():
        for order, (endpoint, phase) in enumerate(calls):
            e = ENDPOINTS[endpoint]
            rows.append({"call_sequence": seq, "order": order, "endpoint": endpoint, "phase": phase,
                         "method": e.method, "service": e.service, "path": e.path})
    for order, endpoint in enumerate(ROUTINE_REVIEW_PER_CITIZEN):
        e = ENDPOINTS[endpoint]
        rows.append({"call_sequence": "clinician_routine_review_per_citizen", "order": order, "endpoint": endpoint,
                     "phase": "start", "method": e.method, "service": e.service, "path": e.path})
    return pd.DataFrame(rows)


def write_trace(result: RunResult, out_dir: Path) -> dict[str, pd.DataFrame]:
    """Write the trace files into ``out_dir`` and return the tables written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sessions = session_table(result)
    tables = {
        "sessions": sessions,
        "clinician_actions": clinician_action_table(result, sessions),
        "demand_per_minute": demand_per_minute(result),
        "citizens": result.citizens,
        "teams": result.teams,
        "outages": outage_table(result),
    }
    for name, df in tables.items():
        df.to_parquet(out_dir / f"{name}.parquet", index=False, compression="zstd")
    call_sequence_table().to_csv(out_dir / "call_sequences.csv", index=False)
    return tables


def read_trace(trace_dir: Path) -> dict[str, pd.DataFrame]:
    """Read a run's trace back (the interface the platform model and Locust consume)."""
    trace_dir = Path(trace_dir)
    missing = [f for f in TRACE_FILES if not (trace_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{trace_dir}: not a complete trace, missing {', '.join(missing)}")
    tables = {f.removesuffix(".parquet"): pd.read_parquet(trace_dir / f) for f in TRACE_FILES if f.endswith(".parquet")}
    tables["call_sequences"] = pd.read_csv(trace_dir / "call_sequences.csv")
    outages = trace_dir / "outages.parquet"  # written since the outage scenario; absent in older traces
    tables["outages"] = pd.read_parquet(outages) if outages.exists() else outage_table_empty()
    return tables


def outage_table_empty() -> pd.DataFrame:
    return pd.DataFrame({"start_time": pd.Series([], dtype="datetime64[ms]"),
                         "end_time": pd.Series([], dtype="datetime64[ms]")})
