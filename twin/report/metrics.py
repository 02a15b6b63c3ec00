"""What the report's numbers mean: labels, units and one-line explanations for a clinician.

The model's tables name their figures in code (``red_ppv``, ``response_h_p90_red``); a nurse or a
physician reading the report should not have to decode them. This module is the one place where a
metric key becomes a plain-language label, a unit and a sentence saying what was counted, and where
numbers are formatted (shares as %, hours with one decimal, intervals as "lo–hi").

It also holds the tiny Student-t helper the comparison and what-if reports use to summarise
replications, so the report never imports the model (STYLE.md habit 7: reports read result files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    explanation: str
    share: bool = False  # a proportion 0..1, shown as %
    decimals: int | None = None  # fixed decimals (e.g. hours); None = three significant digits


def key_metrics(windows: dict | None = None, targets: dict | None = None, fte_hours_per_week: float = 37.0
                ) -> list[Metric]:
    """The "Key figures" of a run, in reading order.

    ``windows`` (the scenario's ``[outcomes]``) and ``targets`` (``[care.response_target_working_hours]``)
    put the scenario's own definitions into the explanations when they are known.
    """
    w = windows or {}
    before = fmt_number(w.get("detection_window_before_onset_days", 7.0))
    after = fmt_number(w.get("detection_window_after_onset_days", 1.0))
    ppv_days = fmt_number(w.get("red_ppv_window_days", 14.0))
    t = targets or {}
    red_t = f"{fmt_number(t['red'])} working hours" if "red" in t else "the same working day"
    yellow_t = f"{fmt_number(t['yellow'])} working hours" if "yellow" in t else "two working days"
    return [
        Metric("red_alerts_per_week", "Red alerts", "alerts per week",
               "Sessions the triage rules coloured red, all care teams together."),
        Metric("yellow_alerts_per_week", "Yellow alerts", "alerts per week",
               "Sessions the triage rules coloured yellow, all care teams together."),
        Metric("sessions_flagged_share", "Sessions flagged", "% of sessions",
               "Share of all completed sessions flagged yellow or red for a nurse to look at.", share=True),
        Metric("sensitivity", "Exacerbations caught early (sensitivity)", "% of exacerbations",
               f"Share of exacerbations preceded by a yellow or red alert in the {before} days before onset "
               f"up to {after} day after.", share=True),
        Metric("sensitivity_severe", "Hospitalised exacerbations caught early", "% of admissions",
               "The same, counting only exacerbations that led to hospital admission (admitted citizens do "
               "not measure at home, so only the prodrome can raise the alert).", share=True),
        Metric("flag_in_control_window", "An alert in a window of that length by chance", "% of windows",
               "The same window 60 days earlier in the same citizens: how often an alert falls in it anyway. "
               "Sensitivity means little unless it is well above this.", share=True),
        Metric("red_ppv", "Red alerts followed by an exacerbation (PPV)", "% of red alerts",
               f"Share of red alerts where an exacerbation starts within {ppv_days} days or is already under way.",
               share=True),
        Metric("red_ppv_new_onset", "Red alerts announcing a new exacerbation", "% of red alerts",
               f"Share of red alerts followed by the onset of an exacerbation within {ppv_days} days (not one "
               "already under way).", share=True),
        Metric("exacerbations_per_patient_year", "Exacerbations", "per patient-year",
               "Treated exacerbations (moderate and severe) starting during the year, per year of follow-up."),
        Metric("admissions_per_patient_year", "Hospital admissions for exacerbation", "per patient-year",
               "Severe exacerbations needing admission, per year of follow-up."),
        Metric("nurse_hours_per_week", "Nurse time on telemonitoring", "hours per week",
               "Triage of red and yellow alerts (incl. phone call and documentation) plus routine review of "
               "green data, all teams."),
        Metric("nurse_fte_needed", "Nurses needed", f"full-time equivalents ({fmt_number(fte_hours_per_week)} h/week)",
               f"Nurse hours per week divided by a {fmt_number(fte_hours_per_week)}-hour working week."),
        Metric("fte_staffed", "Nurses staffed", "full-time equivalents",
               "Telemedicine staffing across the care teams (a small team's nurse may be on telemedicine "
               "duty only part of each day)."),
        Metric("nurses_staffed", "Nurses with telemedicine duty", "people",
               "Head count: whole-time nurses plus each team's part-timer."),
        Metric("utilisation", "Nurse utilisation", "% of staffed hours",
               "Share of the staffed weekday shift hours spent on telemonitoring work.", share=True),
        Metric("response_h_median_red", "Red alerts: median response time", "hours",
               "Clock hours from the alert being raised to a nurse finishing its triage (nights and weekends "
               "included).", decimals=1),
        Metric("response_h_p90_red", "Red alerts: 90th-percentile response time", "hours",
               "Nine in ten red alerts are handled within this time; the rest wait over a night or a weekend.", decimals=1),
        Metric("within_target_share_red", "Red alerts handled within target", "% of handled red alerts",
               f"Target: handled within {red_t} of being raised (the same working day).", share=True),
        Metric("response_h_median_yellow", "Yellow alerts: median response time", "hours",
               "Clock hours from the alert being raised to a nurse finishing its triage.", decimals=1),
        Metric("response_h_p90_yellow", "Yellow alerts: 90th-percentile response time", "hours",
               "Nine in ten yellow alerts are handled within this time.", decimals=1),
        Metric("within_target_share_yellow", "Yellow alerts handled within target", "% of handled yellow alerts",
               f"Target: handled within {yellow_t} of being raised (two working days).", share=True),
    ]


# Metrics shown in the comparison forest plot and the what-if tables, with short labels.
SHORT_LABELS: dict[str, str] = {
    "red_alerts_per_week": "red alerts / week",
    "yellow_alerts_per_week": "yellow alerts / week",
    "alerts_per_week": "red + yellow alerts / week",
    "sessions_flagged_share": "sessions flagged (%)",
    "sensitivity": "sensitivity (%)",
    "sensitivity_severe": "sensitivity, admissions (%)",
    "red_ppv": "red-alert PPV (%)",
    "red_ppv_new_onset": "red alert before a new onset (%)",
    "flag_in_control_window": "alert in a control window (%)",
    "fte_staffed": "nurse FTE staffed",
    "exacerbations_per_patient_year": "exacerbations / patient-year",
    "admissions_per_patient_year": "admissions / patient-year",
    "nurse_hours_per_week": "nurse hours / week",
    "nurse_fte_needed": "nurse FTE needed",
    "utilisation": "nurse utilisation (%)",
    "response_h_median_red": "red: median response (h)",
    "response_h_p90_red": "red: p90 response (h)",
    "within_target_share_red": "red: within target (%)",
    "response_h_median_yellow": "yellow: median response (h)",
    "response_h_p90_yellow": "yellow: p90 response (h)",
    "within_target_share_yellow": "yellow: within target (%)",
}


def fmt_number(v: float) -> str:
    """A number with as many digits as a reader needs (3 significant, thousands separated, true minus)."""
    return _plain_number(v).replace("-", "\u2212")


def _plain_number(v: float) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    v = float(v)
    a = abs(v)
    if v == round(v):
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}".rstrip("0")
    return f"{v:.3g}"


def fmt(v: float, share: bool = False, decimals: int | None = None) -> str:
    """Format one value; shares as percentages with one decimal."""
    if v is None or not math.isfinite(float(v)):
        return "–"
    if share:
        return f"{100 * float(v):.1f} %"
    return f"{float(v):,.{decimals}f}" if decimals is not None else fmt_number(v)


def fmt_duration_h(hours: float) -> str:
    """Hours in words a reader takes in at a glance: '35 minutes', '44 hours'."""
    return f"{hours * 60:.0f} minutes" if hours < 1 else f"{hours:.0f} hours" if hours >= 10 else f"{hours:.1f} hours"


def fmt_interval(lo: float | None, hi: float | None, share: bool = False, decimals: int | None = None) -> str:
    """'lo–hi' or '' when the interval is missing (a run without replications)."""
    if lo is None or hi is None or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return ""
    if share:
        return f"{100 * float(lo):.1f}–{100 * float(hi):.1f} %"
    return f"{fmt(lo, decimals=decimals)}–{fmt(hi, decimals=decimals)}"


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over replications (NaN interval for fewer than two)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


SHARE_METRICS = {m.key for m in key_metrics() if m.share}


def is_share(metric: str) -> bool:
    """Whether a metric is a proportion 0..1 (shown as %)."""
    return metric in SHARE_METRICS or metric.endswith("_share")
