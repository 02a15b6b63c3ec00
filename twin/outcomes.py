"""Outcomes of one replication, computed from its tidy tables only.

Two families of figures:

* **calibration figures** C1–C20 of ``docs/calibration-targets.md`` (mortality, exacerbation
  rates, seasonality, physiology, adherence, sessions, flags, nurse FTE), each with its target
  band from ``twin/defaults/calibration_targets.toml``;
* **clinical outcomes** that are reported, not tuned: sensitivity of alerts for exacerbations,
  positive predictive value of a red alert, admissions, response times, utilisation, FTE needed.

Everything is computed over the run window [0, duration) and, for the calibration figures, over
the first cohort (the COPD cohort in every shipped scenario).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from twin.care.calendar import MINUTES_PER_DAY, ShiftCalendar
from twin.clinical.outage import CATCH_UP_HORIZON_H, catch_up_minutes, outage_windows_day, uploads_per_minute
from twin.clinical.physiology import neighbours
from twin.model import RunResult

TARGETS_PATH = Path(__file__).parent / "defaults" / "calibration_targets.toml"
FTE_HOURS_PER_WEEK = 37.0  # C20: one full-time nurse, the Danish 37-hour week (the default shift is 7.4 h x 5)
DAYS_PER_YEAR = 365.25
CONTROL_SHIFT_DAYS = 60.0  # the control window for chance-level flags sits this far before the detection window


def load_targets() -> dict[str, dict]:
    with TARGETS_PATH.open("rb") as fh:
        return tomllib.load(fh)["targets"]


def _follow_up_days(cit: pd.DataFrame, days: int) -> np.ndarray:
    t0 = np.clip(cit["enrol_day"].to_numpy(), 0, days)
    t1 = np.clip(cit["exit_day"].to_numpy(), 0, days)
    return np.clip(t1 - t0, 0, None)


def _in_exacerbation_days(ep: pd.DataFrame, days: int) -> float:
    a = np.clip(ep["onset_day"].to_numpy(), 0, days)
    b = np.clip((ep["onset_day"] + ep["recovery_days"]).to_numpy(), 0, days)
    return float(np.clip(b - a, 0, None).sum())


def _stable_stats(ses: pd.DataFrame, vital: str) -> pd.DataFrame:
    """Per citizen: mean and SD of readings taken in a stable state (no episode deviation)."""
    stable = ses[(ses["true_state"] == "stable") & (ses["true_dev_spo2"].abs() < 0.05)
                 & (ses["true_dev_pulse"].abs() < 0.2) & ses[vital].notna()]
    g = stable.groupby("citizen_id", observed=True)[vital].agg(["mean", "std", "count"])
    return g[g["count"] >= 5]


def calibration_figures(result: RunResult) -> dict[str, float]:
    """The C1–C20 figures of the first cohort. Keys are ``C<n>`` or ``C<n>_<part>``."""
    sc = result.scenario
    days = sc.run.duration_days
    cohort = sc.cohorts[0].name
    cit = result.citizens[result.citizens["cohort"] == cohort]
    ids = cit["citizen_id"].to_numpy()
    ep = result.episodes[result.episodes["citizen_id"].isin(ids)]
    ep_in = ep[(ep["onset_day"] >= 0) & (ep["onset_day"] < days)]
    ses = result.sessions[result.sessions["cohort"] == cohort]
    follow = _follow_up_days(cit, days)
    pyears = follow.sum() / DAYS_PER_YEAR
    exit_in = (cit["exit_day"] >= 0) & (cit["exit_day"] < days)
    f: dict[str, float] = {}

    f["C1_age"] = float(cit["age_years"].mean())
    f["C1_female"] = float(cit["female"].mean())
    f["C2"] = float(((cit["exit_reason"] == "death") & exit_in).sum() / pyears)
    f["C3"] = float(((cit["exit_reason"] == "dropout") & exit_in).sum() / pyears)
    at_risk_years = (follow.sum() - _in_exacerbation_days(ep, days)) / DAYS_PER_YEAR
    f["C4"] = float(len(ep_in) / at_risk_years)
    f["C5"] = float(ep_in["severe"].sum() / pyears)

    # C6: rate per person-day in Dec-Feb over Jun-Aug.
    start = sc.run.start
    month_of_day = pd.DatetimeIndex(start + pd.to_timedelta(np.arange(days), unit="D")).month.to_numpy()
    t0 = np.clip(np.ceil(cit["enrol_day"].to_numpy()), 0, days).astype(int)
    t1 = np.clip(np.ceil(cit["exit_day"].to_numpy()), 0, days).astype(int)
    diff = np.zeros(days + 1)
    np.add.at(diff, t0, 1)
    np.add.at(diff, t1, -1)
    active = np.cumsum(diff)[:days]
    onset_month = month_of_day[np.clip(ep_in["onset_day"].to_numpy().astype(int), 0, days - 1)]
    winter, summer = np.isin(month_of_day, [12, 1, 2]), np.isin(month_of_day, [6, 7, 8])
    if active[winter].sum() > 0 and active[summer].sum() > 0 and np.isin(onset_month, [6, 7, 8]).any():
        f["C6"] = float((np.isin(onset_month, [12, 1, 2]).sum() / active[winter].sum())
                        / (np.isin(onset_month, [6, 7, 8]).sum() / active[summer].sum()))
    else:
        f["C6"] = float("nan")  # the run does not cover both seasons (e.g. the winter scenario)

    # C7: first exacerbation of the run followed by another within 8 weeks of recovery.
    window = sc.diseases[sc.cohorts[0].disease].exacerbations.cluster_window_days
    ep_sorted = ep.sort_values(["citizen_id", "onset_day"])
    nxt = ep_sorted.groupby("citizen_id")["onset_day"].shift(-1)
    firsts = ep_sorted.assign(next_onset=nxt)
    firsts = firsts[firsts["onset_day"] >= 0].groupby("citizen_id").head(1)
    window_end = firsts["onset_day"] + firsts["recovery_days"] + window
    exit_of = cit.set_index("citizen_id")["exit_day"]
    observable = (window_end < days) & (exit_of.reindex(firsts["citizen_id"]).to_numpy() > window_end.to_numpy())
    firsts = firsts[observable]
    f["C7"] = float((firsts["next_onset"] <= firsts["onset_day"] + firsts["recovery_days"] + window).mean())

    # C8: dispersion of yearly counts among citizens followed the whole run.
    full = cit[(cit["enrol_day"] <= 0) & (cit["exit_day"] >= days)]["citizen_id"]
    counts = ep_in["citizen_id"].value_counts().reindex(full, fill_value=0)
    f["C8"] = float(counts.var() / counts.mean())
    f["C9"] = float(ep_in["recovery_days"].median())
    spells = result.spells[result.spells["citizen_id"].isin(ids)]
    f["C10"] = float(((spells["start_day"] >= 0) & (spells["start_day"] < days)).sum() / pyears)

    spo2, pulse = _stable_stats(ses, "spo2"), _stable_stats(ses, "pulse")
    f["C11_mean"], f["C11_daily_sd"] = float(spo2["mean"].mean()), float(spo2["std"].mean())
    f["C12_mean"], f["C12_daily_sd"] = float(pulse["mean"].mean()), float(pulse["std"].mean())

    # C13: change from the citizen's stable mean on days 0..+3 of a moderate exacerbation.
    epc = ep_sorted.reset_index(drop=True)
    s_cit, s_t = ses["citizen_id"].to_numpy(), ses["start_day"].to_numpy()
    prev, _ = neighbours(epc["citizen_id"].to_numpy(), epc["onset_day"].to_numpy(), s_cit, s_t)
    ok = prev >= 0
    tau = np.full(len(ses), np.nan)
    tau[ok] = s_t[ok] - epc["onset_day"].to_numpy()[prev[ok]]
    moderate = np.zeros(len(ses), bool)
    moderate[ok] = ~epc["severe"].to_numpy()[prev[ok]]
    sel = ok & moderate & (tau >= 0) & (tau < 4)
    for vital, key, stats in (("spo2", "C13_spo2", spo2), ("pulse", "C13_pulse", pulse)):
        base = stats["mean"].reindex(s_cit[sel]).to_numpy()
        f[key] = float(np.nanmean(ses[vital].to_numpy()[sel] - base))

    planned = ses["kind"].isin(["run_in", "scheduled"]).sum()
    f["C14"] = float(planned / result.scheduled_due) if result.scheduled_due else float("nan")
    f["C15"] = float(len(ses) / (days / 7))
    hour = (ses["start_day"].to_numpy() % 1) * 24
    f["C16"] = float(((hour >= 7) & (hour < 12)).mean())
    spw = cit.set_index("citizen_id")["sessions_per_week"]
    twice = ses[(spw.reindex(ses["citizen_id"]).to_numpy() == 2) & (ses["kind"] != "run_in")]
    f["C17"] = float((twice["colour"] != "green").mean())
    flagged = ses[ses["colour"] != "green"]
    f["C18"] = float((flagged["colour"] == "red").mean())
    f["C19"] = float(len(flagged) / (follow.sum() / 7))

    work = result.work
    team_ids = result.teams.loc[result.teams["cohort"] == cohort, "team_id"]
    w = work[work["team_id"].isin(team_ids) & work["start_day"].notna()]
    f["C20"] = float(w["service_min"].sum() / 60 / (days / 7) / FTE_HOURS_PER_WEEK)
    return f


def calibration_table(figures: dict[str, float]) -> pd.DataFrame:
    """One row per calibration figure with its target band and whether it lands inside it."""
    rows = []
    for key, t in load_targets().items():
        value = figures.get(key, float("nan"))
        rows.append({"id": key, "figure": t["figure"], "value": value, "target": t["target"], "lo": t["lo"],
                     "hi": t["hi"], "inside": bool(t["lo"] <= value <= t["hi"]), "source": t["source"]})
    return pd.DataFrame(rows)


def clinical_outcomes(result: RunResult) -> dict[str, float]:
    """Reported, not tuned: sensitivity, PPV, admissions, response times, FTE, utilisation."""
    sc = result.scenario
    days = sc.run.duration_days
    oc = sc.outcomes
    cit, ses, ep, work = result.citizens, result.sessions, result.episodes, result.work
    follow = _follow_up_days(cit, days)
    pyears = follow.sum() / DAYS_PER_YEAR
    out: dict[str, float] = {}
    ep_in = ep[(ep["onset_day"] >= 0) & (ep["onset_day"] < days)]
    flagged = ses[ses["colour"] != "green"]
    red = ses[ses["colour"] == "red"]

    # Sensitivity: an exacerbation preceded by a flag in [onset - before, onset + after]. A
    # submission lost in an outage (no upload) raised no flag.
    delivered = flagged[flagged["upload_day"].notna()]
    f_cit, f_t = delivered["citizen_id"].to_numpy(), delivered["upload_day"].to_numpy()
    order = np.lexsort((f_t, f_cit))
    f_cit, f_t = f_cit[order], f_t[order]
    lo_key = ep_in["citizen_id"].to_numpy() * 1e4 + ep_in["onset_day"].to_numpy() - oc.detection_window_before_onset_days
    hi_key = ep_in["citizen_id"].to_numpy() * 1e4 + ep_in["onset_day"].to_numpy() + oc.detection_window_after_onset_days
    keys = f_cit * 1e4 + f_t
    detected = np.searchsorted(keys, hi_key, side="right") > np.searchsorted(keys, lo_key, side="left")
    out["sensitivity"] = float(detected.mean()) if len(ep_in) else float("nan")
    out["sensitivity_severe"] = float(detected[ep_in["severe"].to_numpy()].mean()) if ep_in["severe"].any() else float("nan")
    # The same window CONTROL_SHIFT_DAYS earlier in the same citizens: how often a flag falls in a
    # window of that length by chance. Sensitivity means little unless it is well above this.
    enrol = cit.set_index("citizen_id")["enrol_day"].reindex(ep_in["citizen_id"]).to_numpy()
    ctrl_lo, ctrl_hi = lo_key - CONTROL_SHIFT_DAYS, hi_key - CONTROL_SHIFT_DAYS
    observable = (ep_in["onset_day"].to_numpy() - CONTROL_SHIFT_DAYS - oc.detection_window_before_onset_days
                  >= np.maximum(enrol, 0))
    chance = np.searchsorted(keys, ctrl_hi, side="right") > np.searchsorted(keys, ctrl_lo, side="left")
    out["flag_in_control_window"] = float(chance[observable].mean()) if observable.any() else float("nan")

    # PPV of red: an exacerbation starts within the window after the alert, or is under way.
    r = red[red["upload_day"] < days - oc.red_ppv_window_days]
    epc = ep.sort_values(["citizen_id", "onset_day"]).reset_index(drop=True)
    prev, nxt = neighbours(epc["citizen_id"].to_numpy(), epc["onset_day"].to_numpy(), r["citizen_id"].to_numpy(),
                            r["upload_day"].to_numpy())
    t = r["upload_day"].to_numpy()
    onset, rec = epc["onset_day"].to_numpy(), epc["recovery_days"].to_numpy()
    upcoming = (nxt >= 0) & (onset[np.clip(nxt, 0, None)] - t <= oc.red_ppv_window_days)
    ongoing = (prev >= 0) & (t <= onset[np.clip(prev, 0, None)] + rec[np.clip(prev, 0, None)])
    out["red_ppv"] = float((upcoming | ongoing).mean()) if len(r) else float("nan")
    out["red_ppv_new_onset"] = float(upcoming.mean()) if len(r) else float("nan")

    out["exacerbations_per_patient_year"] = float(len(ep_in) / pyears)
    out["admissions_per_patient_year"] = float(ep_in["severe"].sum() / pyears)
    out["admissions"] = float(ep_in["severe"].sum())
    out["sessions_flagged_share"] = float(len(flagged) / len(ses)) if len(ses) else float("nan")
    out["red_alerts_per_week"] = float(len(red) / (days / 7))
    out["yellow_alerts_per_week"] = float((ses["colour"] == "yellow").sum() / (days / 7))

    care = sc.care
    calendar = ShiftCalendar(sc.run.start.date(), care.shift_start_hour, care.shift_end_hour, care.working_days)
    for kind, colour in (("triage_red", "red"), ("triage_yellow", "yellow")):
        w = work[(work["kind"] == kind)]
        handled = w[w["end_day"].notna()]
        resp_h = (handled["end_day"] - handled["release_day"]).to_numpy() * 24
        out[f"response_h_median_{colour}"] = float(np.median(resp_h)) if len(resp_h) else float("nan")
        out[f"response_h_p90_{colour}"] = float(np.percentile(resp_h, 90)) if len(resp_h) else float("nan")
        working = (calendar.working_minutes_until(handled["end_day"].to_numpy() * MINUTES_PER_DAY)
                   - calendar.working_minutes_until(handled["release_day"].to_numpy() * MINUTES_PER_DAY)) / 60
        target = care.response_target_working_hours[colour]
        # Alerts still open at the end count as misses once they have waited longer than the target.
        open_items = w[w["end_day"].isna()]
        waited = (calendar.working_minutes_until(np.full(len(open_items), days * MINUTES_PER_DAY))
                  - calendar.working_minutes_until(open_items["release_day"].to_numpy() * MINUTES_PER_DAY)) / 60
        judged = len(working) + int((waited > target).sum())
        out[f"within_target_share_{colour}"] = float((working <= target).sum() / judged) if judged else float("nan")
        out[f"unhandled_at_end_{colour}"] = float(w["end_day"].isna().sum())
    started = work[work["start_day"].notna()]
    weeks = days / 7
    out["nurse_hours_per_week"] = float(started["service_min"].sum() / 60 / weeks)
    out["nurse_fte_needed"] = out["nurse_hours_per_week"] / FTE_HOURS_PER_WEEK
    available_h_per_week = result.teams["fte"].sum() * care.shift_hours * len(care.working_days)
    out["nurses_staffed"] = float(result.teams["nurses"].sum())
    out["fte_staffed"] = float(result.teams["fte"].sum())
    out["utilisation"] = out["nurse_hours_per_week"] / available_h_per_week
    if sc.outages:
        out.update(outage_figures(result))
    return out


# ------------------------------------------------------------------------------------- outages
def outage_figures(result: RunResult) -> dict[str, float]:
    """What the outages did: submissions buffered and lost, the catch-up surge and its length, and
    the nurses' extra alert delay (against the same run without the outage: common random numbers).

    Catch-up, peak and delays are for the longest outage; counts are over all outages."""
    sc = result.scenario
    windows = outage_windows_day(sc)
    ses = result.sessions
    upload, intended = ses["upload_day"].to_numpy(), ses["intended_upload_day"].to_numpy()
    buffered = np.isfinite(intended) & (upload != intended)  # NaN != x: lost ones are buffered too
    lost = buffered & ~np.isfinite(upload)
    out: dict[str, float] = {
        "outage_hours": float((windows[:, 1] - windows[:, 0]).sum() * 24),
        "outage_buffered": float(buffered.sum()),
        "outage_lost": float(lost.sum()),
        "outage_retry_attempts": float(np.clip(ses["attempts"].to_numpy()[buffered].astype(np.int64) - 1, 0, None).sum()),
    }
    k = int(np.argmax(windows[:, 1] - windows[:, 0]))
    start, end = windows[k]
    per_min = uploads_per_minute(upload, intended, start, end + CATCH_UP_HORIZON_H / 24)
    rec = int(round((end - start) * MINUTES_PER_DAY))
    after = per_min.iloc[rec:]
    first_hour = after.iloc[:60]
    out["outage_peak_uploads_per_min"] = float(after["uploads"].max())
    out["outage_peak_counterfactual_per_min"] = float(first_hour["counterfactual"].max())
    out["outage_catch_up_uploads_first_hour"] = float(first_hour["uploads"].sum())
    out["outage_counterfactual_uploads_first_hour"] = float(first_hour["counterfactual"].sum())
    out["outage_catch_up_min"] = catch_up_minutes(per_min["uploads"].to_numpy(), per_min["counterfactual"].to_numpy(), rec)
    here = buffered & (intended >= start) & (intended < end) & np.isfinite(upload)
    out["outage_backlog_drained_min"] = float((upload[here].max() - end) * MINUTES_PER_DAY) if here.any() else 0.0

    # Alerts: intended upload -> a nurse takes the Task, with and without the outage.
    flagged = ses["colour"].to_numpy() != "green"
    out["outage_alerts_lost"] = float((flagged & lost).sum())
    late = ses.loc[flagged & buffered & np.isfinite(upload), ["session_id", "intended_upload_day"]]
    out["outage_alerts_delayed"] = float(len(late))
    w = result.work
    seen = w[w["session_id"] >= 0].set_index("session_id")["start_day"].reindex(late["session_id"]).to_numpy()
    cf = result.counterfactual_work
    cf_seen = (cf.set_index("session_id")["start_day"].reindex(late["session_id"]).to_numpy() if cf is not None
               else np.full(len(late), np.nan))
    t0 = late["intended_upload_day"].to_numpy()
    for name, hours in (("outage_alert_delay_h", (seen - t0) * 24), ("outage_alert_delay_cf_h", (cf_seen - t0) * 24),
                        ("outage_alert_extra_delay_h", (seen - cf_seen) * 24)):
        h = hours[np.isfinite(hours)]
        out[f"{name}_median"] = float(np.median(h)) if h.size else float("nan")
        out[f"{name}_p95"] = float(np.percentile(h, 95)) if h.size else float("nan")
    return out
