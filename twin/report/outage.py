"""The report's outage section: the catch-up surge, the recovery time, buffered and lost submissions,
and the nurses' extra alert delay. Present only when the run's trace holds an outage.

Read from result files only: ``trace/outages.parquet``, ``trace/sessions.parquet`` (``upload_time``
and ``intended_upload_time``, the no-outage counterfactual with common random numbers),
``trace/demand_per_minute.parquet``, ``tables/outcomes.csv`` (the ``outage_*`` figures, with 95 %
intervals when replicated) and, when a Locust replay of the outage window was run, its
``summary.json`` (``<run>/loadtest/`` or ``<run>-loadtest/``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from twin.clinical.outage import catch_up_minutes, uploads_per_minute  # noqa: E402
from twin.report.figures import BLUE, GREY, RED, _save  # noqa: E402
from twin.report.metrics import fmt_interval, fmt_number  # noqa: E402

BEFORE_H = 2.0  # the figure starts this long before the outage
AFTER_MIN_H = 2.0  # ... and ends at least this long after the recovery

ROWS = (  # metric, label, unit
    ("outage_buffered", "Submissions buffered by the apps", "sessions"),
    ("outage_lost", "Submissions lost (held longer than the app keeps them)", "sessions"),
    ("outage_retry_attempts", "Failed upload attempts during the outage (never reach the server)", "attempts"),
    ("outage_peak_uploads_per_min", "Peak uploads per minute after the recovery", "per minute"),
    ("outage_peak_counterfactual_per_min", "… the same hour without the outage, busiest minute", "per minute"),
    ("outage_catch_up_min", "Catch-up time: recovery until uploads are back within 10 % of the no-outage run",
     "minutes"),
    ("outage_backlog_drained_min", "Last buffered submission delivered, after the recovery", "minutes"),
    ("outage_alerts_delayed", "Red and yellow alerts delayed by the outage", "alerts"),
    ("outage_alerts_lost", "Red and yellow alerts lost", "alerts"),
    ("outage_alert_delay_h_median", "Delayed alerts: intended upload → a nurse takes the Task, median", "hours"),
    ("outage_alert_delay_h_p95", "… 95th percentile", "hours"),
    ("outage_alert_delay_cf_h_median", "The same alerts without the outage, median", "hours"),
    ("outage_alert_delay_cf_h_p95", "… 95th percentile", "hours"),
    ("outage_alert_extra_delay_h_median", "Extra wait for the nurses' attention, median", "hours"),
    ("outage_alert_extra_delay_h_p95", "… 95th percentile", "hours"),
)


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def outage_figure(run_dir: Path, out_dir: Path) -> tuple[Path, dict] | None:
    """Uploads (and all requests) per minute around the longest outage, with the counterfactual."""
    trace = Path(run_dir) / "trace"
    if not (trace / "outages.parquet").is_file():
        return None
    outages = pd.read_parquet(trace / "outages.parquet")
    if outages.empty:
        return None
    try:
        s = pd.read_parquet(trace / "sessions.parquet", columns=["upload_time", "intended_upload_time"])
    except (KeyError, ValueError):
        return None  # a trace from before intended_upload_time
    o = outages.assign(length=outages["end_time"] - outages["start_time"]).sort_values("length").iloc[-1]
    start, end = pd.Timestamp(o["start_time"]), pd.Timestamp(o["end_time"])
    t0 = start - pd.Timedelta(hours=BEFORE_H)
    days = lambda col: ((s[col] - t0) / pd.Timedelta(days=1)).to_numpy(dtype=float)  # noqa: E731
    horizon_h = 48.0
    per_min = uploads_per_minute(days("upload_time"), days("intended_upload_time"), 0.0,
                                 (end - t0) / pd.Timedelta(days=1) + horizon_h / 24)
    rec = int(round((end - t0) / pd.Timedelta(minutes=1)))
    catch_up = catch_up_minutes(per_min["uploads"].to_numpy(), per_min["counterfactual"].to_numpy(), rec)
    shown_after_min = max(AFTER_MIN_H * 60, (catch_up if _finite(catch_up) else 0) + 60)
    p = per_min.iloc[:int(rec + shown_after_min)]
    minutes = t0 + pd.to_timedelta(p["minute"], unit="min")

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for a in (ax, bx):
        a.axvspan(start, end, color=GREY, alpha=0.18, lw=0, label="platform unreachable" if a is ax else None)
        a.axvline(end, color="black", lw=0.8)
    ax.plot(minutes, p["counterfactual"], color=GREY, lw=1.0, label="without the outage (same seed)")
    ax.plot(minutes, p["uploads"], color=BLUE, lw=1.0, label="with the outage")
    if _finite(catch_up):
        ax.axvline(end + pd.Timedelta(minutes=catch_up), color=RED, lw=1.0, ls="--",
                   label=f"caught up after {catch_up:.0f} min")
    ax.set_ylabel("uploads per minute")
    ax.set_title("(a) Measurement uploads reaching the platform")
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    demand_path = trace / "demand_per_minute.parquet"
    if demand_path.is_file():
        d = pd.read_parquet(demand_path, columns=["minute", "requests"])
        d = d[(d["minute"] >= minutes.iloc[0]) & (d["minute"] <= minutes.iloc[-1])]
        bx.plot(d["minute"], d["requests"], color=BLUE, lw=1.0)
    bx.set_ylabel("requests per minute")
    bx.set_title("(b) All API requests (citizens' apps and nurses' worklists), with the outage")
    bx.set_xlabel(f"{start:%A %d %B %Y}")
    bx.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    fig.tight_layout()
    png = _save(fig, out_dir, "outage_catch_up")
    first = {"catch_up_min": catch_up, "peak": int(p["uploads"].iloc[rec:].max()) if len(p) > rec else 0,
             "start": start, "end": end}
    return png, first


def _loadtest_summary(run_dir: Path) -> dict | None:
    run_dir = Path(run_dir)
    for cand in (run_dir / "loadtest" / "summary.json", run_dir.parent / f"{run_dir.name}-loadtest" / "summary.json"):
        if cand.is_file():
            try:
                s = json.loads(cand.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            if (s.get("window") or {}).get("name") == "outage":
                by = {e["endpoint"]: e for e in s.get("endpoints", [])}
                total, submit = by.get("Aggregated", {}), by.get("submit_measurement", {})
                return {"requests": total.get("requests", 0), "failures": total.get("failures", 0),
                        "uploads": submit.get("requests", 0), "upload_failures": submit.get("failures", 0),
                        "p95_ms": submit.get("p95_ms"), "speedup": (s.get("settings") or {}).get("speedup"),
                        "start": s["window"].get("start"), "end": s["window"].get("end"),
                        "late_events": s.get("late_events", 0)}
    return None


def outage_context(run_dir: Path, outcomes: pd.DataFrame | None, data_uri) -> dict | None:
    """The section's numbers and figure, or None when the run had no outage."""
    drawn = outage_figure(run_dir, Path(run_dir) / "figures")
    if drawn is None:
        return None
    png, first = drawn
    outages = pd.read_parquet(Path(run_dir) / "trace" / "outages.parquet")
    rows = []
    if outcomes is not None and "metric" in outcomes:
        by = outcomes.set_index("metric")
        for key, label, unit in ROWS:
            if key in by.index and _finite(by.at[key, "value"]):
                r = by.loc[key]
                rows.append({"label": label, "unit": unit, "value": fmt_number(r["value"]),
                             "ci": fmt_interval(r.get("ci_lo"), r.get("ci_hi"))})
    return {"windows": [f"{a:%a %d %b %Y %H:%M} – {b:%H:%M}" if a.date() == b.date() else f"{a} – {b}"
                        for a, b in zip(outages["start_time"], outages["end_time"], strict=True)],
            "rows": rows, "uri": data_uri(png), "catch_up_min": first["catch_up_min"], "peak": first["peak"],
            "loadtest": _loadtest_summary(run_dir)}
