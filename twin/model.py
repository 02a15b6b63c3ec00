"""One replication of the clinical twin: wires the components together, returns tidy tables.

Per cohort, vectorised with numpy: citizens → exacerbations, deaths and dropout (a day-by-day
hazard loop) → bad spells → sessions → readings and answers → triage with the shared rules. Then,
for all cohorts together, the care teams work the alerts and the routine review in SimPy.

Nothing here writes files: :mod:`twin.trace` writes the tables, :mod:`twin.outcomes` summarises
them, :mod:`twin.report` draws them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from twin.care.calendar import MINUTES_PER_DAY, ShiftCalendar
from twin.care.nurse_work import WORK_KINDS, WorkItems, simulate_nurse_work
from twin.care.teams import active_caseload, build_teams, build_work_items
from twin.clinical.bad_spells import simulate_bad_spells
from twin.clinical.exacerbations import EXIT_REASONS, simulate_exacerbations
from twin.clinical.outage import RetryPolicy, outage_windows_day, retry_through_outages
from twin.clinical.physiology import take_readings
from twin.clinical.population import MEASURED_VITALS, sample_citizens
from twin.clinical.sessions import SESSION_KINDS, Sessions, admitted_grid, schedule_sessions, symptomatic_grid
from twin.organisations import load_organisations
from twin.rng import Streams
from twin.rules.triage import COLOURS, classify_answers, classify_values
from twin.scenario import WEEKDAYS, Scenario

STATES = ("stable", "bad_spell", "exacerbation")


@dataclass
class RunResult:
    """The tidy tables of one replication (times in days from the run start)."""

    scenario: Scenario
    citizens: pd.DataFrame
    episodes: pd.DataFrame
    spells: pd.DataFrame
    sessions: pd.DataFrame
    work: pd.DataFrame
    backlog: pd.DataFrame
    teams: pd.DataFrame
    scheduled_due: int
    timings_s: dict[str, float] = field(default_factory=dict)
    # With outages: the alerts' nurse work had there been no outage (same seed, same draws):
    # session_id, kind, release_day, start_day, end_day. None without outages.
    counterfactual_work: pd.DataFrame | None = None


def _weekday_string(bits: np.ndarray) -> np.ndarray:
    names = np.array(["+".join(d for w, d in enumerate(WEEKDAYS) if b >> w & 1) for b in range(128)], dtype=object)
    return names[bits]


def simulate(scenario: Scenario, progress: Callable[[str], None] | None = None) -> RunResult:
    """Run one replication of ``scenario`` with its seed."""
    step = progress or (lambda _name: None)
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now
        step(name)

    run = scenario.run
    start = run.start.date()
    days = run.duration_days
    streams = Streams(run.seed)
    orgs = load_organisations()
    outages = outage_windows_day(scenario)  # (k, 2) days; empty without outages

    per_cohort = []
    for k, cohort in enumerate(scenario.cohorts):
        disease, regime, rules = scenario.diseases[cohort.disease], scenario.regimes[cohort.regime], scenario.rules[cohort.rules]
        s = lambda name, c=cohort.name: streams.get(f"{c}/{name}")  # noqa: E731 - one stream per process
        citizens = sample_citizens(cohort, disease, regime, rules, scenario.devices, orgs, days, s("population"))
        episodes, exits = simulate_exacerbations(citizens, disease, start, days, s("exacerbation-days"),
                                                 s("exacerbation-events"), s("exits"))
        spells = simulate_bad_spells(citizens.enrol_day, exits.exit_day, disease.bad_spells, days, s("bad-spells"))
        lap("events")
        symptomatic = symptomatic_grid(len(citizens), days, episodes, spells)
        admitted = admitted_grid(len(citizens), days, episodes)
        sessions = schedule_sessions(citizens, exits.exit_day, regime, scenario.uploads, start, days, symptomatic,
                                     admitted, s("sessions"))
        del symptomatic, admitted
        intended_upload_day = sessions.upload_day
        if len(outages):
            sessions = _through_outages(sessions, outages, RetryPolicy.from_uploads(scenario.uploads),
                                        s("outage-retries"))
        lap("sessions")
        readings = take_readings(citizens, sessions.citizen, sessions.start_day, episodes, spells, disease, regime,
                                 scenario.devices, s("readings"))
        lap("readings")
        level = classify_answers(readings.answers, rules.question_rules())
        for v in MEASURED_VITALS:
            if v in citizens.thresholds:
                th = {b: arr[sessions.citizen] for b, arr in citizens.thresholds[v].items()}
                level = np.maximum(level, classify_values(readings.values[v], th["red_low"], th["yellow_low"],
                                                          th["yellow_high"], th["red_high"]))
        lap("triage")
        per_cohort.append((k, cohort, citizens, episodes, exits, spells, sessions, readings, level,
                           intended_upload_day))

    # Care teams across cohorts.
    active0 = [(c.enrol_day <= 0) & (ex.exit_day > 0) for _, _, c, _, ex, *_ in per_cohort]
    teams, team_of = build_teams([c.name for c in scenario.cohorts], [c.org for _, _, c, *_ in per_cohort],
                                 active0, scenario.care, orgs)

    # Tables, with global ids.
    cit_frames, ep_frames, sp_frames, se_frames = [], [], [], []
    offset = 0
    session_offset = 0
    scheduled_due = 0
    cohort_names = [c.name for c in scenario.cohorts]
    for team in team_of:
        # Pop each cohort's arrays as its frames are built, so the big ones are not held twice.
        _k, cohort, c, ep, ex, sp, se, rd, level, intended = per_cohort.pop(0)
        scheduled_due += se.scheduled_due
        n = len(c)
        ids = np.arange(offset, offset + n)
        frame = {
            "citizen_id": ids, "cohort": cohort.name, "disease": cohort.disease,  # few rows: plain strings
            "enrol_day": c.enrol_day, "exit_day": np.where(ex.exit_day < days, ex.exit_day, np.inf),
            "exit_reason": np.where(ex.exit_day < days, np.array(EXIT_REASONS, dtype=object)[ex.reason], "none"),
            "age_years": c.age_years, "female": c.female,
            "severity": np.array(list(scenario.diseases[cohort.disease].population.severity_shares), dtype=object)[c.severity],
            "frailty": c.frailty, "rate_ratio": c.rate_ratio,
            "org_code": orgs.code[c.org], "org_kind": orgs.kind[c.org], "region": orgs.region[c.org],
            "municipality_code": orgs.code[c.municipality], "team_id": team,
            "sessions_per_week": c.sessions_per_week, "weekdays": _weekday_string(c.weekday_bits),
            "adherence": c.adherence, "habit_min_of_day": c.habit_min_of_day, "measures_bp": c.measures_bp,
        }
        for v in MEASURED_VITALS:
            frame[f"baseline_{v}"] = c.baseline[v]
            frame[f"device_bias_{v}"] = c.device_bias[v]
        for v, th in c.thresholds.items():
            for bound, arr in th.items():
                frame[f"{v}_{bound}"] = arr
        cit_frames.append(pd.DataFrame(frame))
        ep_frames.append(pd.DataFrame({
            "citizen_id": ids[ep.citizen], "onset_day": ep.onset_day, "severe": ep.severe, "sudden": ep.sudden,
            "prodrome_days": ep.prodrome_days, "symptom_lead_days": ep.symptom_lead_days,
            "recovery_days": ep.recovery_days, "admission_days": ep.admission_days, "clustered": ep.clustered,
            **{f"peak_{v}": a for v, a in ep.peak.items()},
        }))
        sp_frames.append(pd.DataFrame({"citizen_id": ids[sp.citizen], "start_day": sp.start_day,
                                       "duration_days": sp.duration_days}))
        m = len(se)
        sess = {
            "session_id": np.arange(session_offset, session_offset + m), "citizen_id": ids[se.citizen],
            "cohort": pd.Categorical.from_codes(np.full(m, cohort_names.index(cohort.name), dtype=np.int8), cohort_names),
            "team_id": team[se.citizen].astype(np.int32), "org_code": orgs.code[c.org[se.citizen]].astype(np.int16),
            "kind": pd.Categorical.from_codes(se.kind, SESSION_KINDS),
            "start_day": se.start_day, "upload_day": se.upload_day, "attempts": se.attempts,
            "duplicate_day": se.duplicate_day, "intended_upload_day": intended,
        }
        for v in MEASURED_VITALS:
            sess[v] = rd.values[v].astype(np.float32)
        sess["spo2_repeats"] = rd.spo2_repeats
        for q, a in rd.answers.items():
            sess[f"q_{q}"] = a
        sess["colour"] = pd.Categorical.from_codes(level, COLOURS)
        sess["true_state"] = pd.Categorical.from_codes(rd.state, STATES)
        sess["true_dev_spo2"] = rd.deviation["spo2"].astype(np.float32)
        sess["true_dev_pulse"] = rd.deviation["pulse"].astype(np.float32)
        se_frames.append(pd.DataFrame(sess))
        del sess, se, rd, level
        offset += n
        session_offset += m
    citizens_df = pd.concat(cit_frames, ignore_index=True)
    episodes_df = pd.concat(ep_frames, ignore_index=True)
    spells_df = pd.concat(sp_frames, ignore_index=True)
    sessions_df = pd.concat(se_frames, ignore_index=True)
    del se_frames
    if len(scenario.cohorts) > 1:  # each cohort is already in time order
        sessions_df = sessions_df.sort_values("start_day", kind="stable", ignore_index=True)
    lap("tables")

    # Nurse work (SimPy).
    care = scenario.care
    calendar = ShiftCalendar(start, care.shift_start_hour, care.shift_end_hour, care.working_days)
    flagged = sessions_df[sessions_df["colour"] != "green"]
    caseload = active_caseload(citizens_df["team_id"].to_numpy(), citizens_df["enrol_day"].to_numpy(),
                               citizens_df["exit_day"].to_numpy(), len(teams), days)
    items, source, review_day = _work_items(flagged, "upload_day", caseload, care, calendar, streams)
    # nurses cannot open their worklists while the infrastructure is down (outages in minutes)
    done = simulate_nurse_work(items, teams.fte, calendar, horizon_min=days * MINUTES_PER_DAY,
                               outages_min=outages * MINUTES_PER_DAY if len(outages) else None)
    counterfactual = None
    if len(outages):  # the same alerts at their intended upload times: what the outage cost the nurses
        cf_items, cf_source, _ = _work_items(flagged, "intended_upload_day", caseload, care, calendar, streams)
        cf_done = simulate_nurse_work(cf_items, teams.fte, calendar, horizon_min=days * MINUTES_PER_DAY)
        alert = cf_source >= 0
        counterfactual = pd.DataFrame({
            "session_id": flagged["session_id"].to_numpy()[cf_source[alert]],
            "kind": pd.Categorical.from_codes(cf_items.priority[alert], WORK_KINDS),
            "release_day": cf_items.release_min[alert] / MINUTES_PER_DAY,
            "start_day": cf_done.start_min[alert] / MINUTES_PER_DAY,
            "end_day": cf_done.end_min[alert] / MINUTES_PER_DAY})
    is_alert = source >= 0
    alert_rows = flagged.iloc[np.where(is_alert, source, 0)]
    work_df = pd.DataFrame({
        "item_id": np.arange(len(items)), "team_id": items.team,
        "kind": pd.Categorical.from_codes(items.priority, WORK_KINDS),
        "session_id": np.where(is_alert, alert_rows["session_id"].to_numpy(), -1),
        "citizen_id": np.where(is_alert, alert_rows["citizen_id"].to_numpy(), -1),
        "review_day": review_day,
        "release_day": items.release_min / MINUTES_PER_DAY, "start_day": done.start_min / MINUTES_PER_DAY,
        "end_day": done.end_min / MINUTES_PER_DAY, "service_min": items.service_min, "nurse": done.nurse,
    })
    backlog_df = pd.DataFrame({"team_id": done.backlog_team, "day": done.backlog_min / MINUTES_PER_DAY,
                               "items_waiting": done.backlog_items, "work_min_waiting": done.backlog_work_min})
    teams_df = pd.DataFrame({"team_id": np.arange(len(teams)), "name": teams.name,
                             "cohort": np.array([c.name for c in scenario.cohorts], dtype=object)[teams.cohort],
                             "org_code": orgs.code[teams.org], "org_name": orgs.name[teams.org],
                             "org_kind": orgs.kind[teams.org], "region": orgs.region[teams.org],
                             "nurses": teams.nurses, "fte": teams.fte, "caseload_at_start": teams.caseload_at_start})
    lap("nurse_work")
    return RunResult(scenario, citizens_df, episodes_df, spells_df, sessions_df, work_df, backlog_df, teams_df,
                     scheduled_due, timings, counterfactual)


def _through_outages(sessions: Sessions, outages: np.ndarray, policy: RetryPolicy,
                     rng: np.random.Generator) -> Sessions:
    """The sessions with uploads that fell in an outage moved to the app's first attempt after it."""
    r = retry_through_outages(sessions.upload_day, outages, policy, rng)
    delivered = np.isfinite(r.upload_day)
    # attempts: the earlier (D9) failures, the failed attempts in the outage, and the one that got through.
    attempts = np.where(r.buffered, sessions.attempts.astype(np.int64) - 1 + r.failed_attempts + delivered,
                        sessions.attempts)
    return Sessions(sessions.citizen, sessions.start_day, sessions.kind, r.upload_day,
                    np.clip(attempts, 0, np.iinfo(np.int8).max).astype(np.int8),
                    sessions.duplicate_day + (r.upload_day - sessions.upload_day), sessions.scheduled_due)


def _work_items(flagged: pd.DataFrame, upload_column: str, caseload: np.ndarray, care, calendar: ShiftCalendar,
                streams: Streams):
    """Alerts (at ``upload_column``) and routine review as nurse work items; a lost submission
    (NaN upload) raises no alert. Its service time is still drawn, so every other alert keeps its own."""
    items, source, review_day = build_work_items(
        flagged["team_id"].to_numpy(), flagged[upload_column].to_numpy() * MINUTES_PER_DAY,
        flagged["colour"].cat.codes.to_numpy(), caseload, care, calendar, streams.get("nurse-work"))
    keep = np.isfinite(items.release_min)
    if not keep.all():
        items = WorkItems(items.team[keep], items.release_min[keep], items.priority[keep], items.service_min[keep])
        source, review_day = source[keep], review_day[keep]
    return items, source, review_day
