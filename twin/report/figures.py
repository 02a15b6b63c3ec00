"""The figures of a run report, drawn from the run's tables only.

Each figure answers one question a clinician or a service owner asks of a simulated year:

1. :func:`alerts_per_week` — how many red and yellow alerts arrive each week, and when in the year?
2. :func:`nurse_work` — how many nurse hours does the work take, and where does it pile up?
3. :func:`response_times` — how long does an alert wait for a nurse? (No weekend cover: long tails.)
4. :func:`demand_per_hour_of_week` — when in the week do citizens and nurses load the platform?
5. :func:`exacerbations_vs_alerts` — do red alerts follow the exacerbation season?
6. :func:`calibration` — does the simulated year land inside the published target bands C1–C20?

Every function takes ``tables`` (short name → DataFrame, as from
:func:`twin.report.runfiles.load_run_tables`) and an output directory, writes one PNG and returns its
path. :func:`make_run_figures` draws every figure whose input tables are present.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twin.report.metrics import fmt_number  # noqa: E402
from twin.report.runfiles import full_weeks, load_run_tables  # noqa: E402

DPI = 110
RED, YELLOW, GREEN, GREY, BLUE = "#c0392b", "#e0a800", "#2e8b57", "#7f8c8d", "#2c6fbb"
COLOURS = {"red": RED, "yellow": YELLOW}
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HOURS_PER_WEEK = 168
WORK_KIND_LABELS = {
    "routine_review": "routine review of green data",
    "triage_red": "triage of red alerts",
    "triage_yellow": "triage of yellow alerts",
}
WORK_KIND_COLOURS = {"routine_review": GREEN, "triage_red": RED, "triage_yellow": YELLOW}
TOP_TEAMS = 10

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False})


def _save(fig: plt.Figure, out_dir: Path, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _date_axis(ax: plt.Axes) -> None:
    ax.xaxis.set_major_locator(mdates.MonthLocator())
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%b"))


def _week_dates(tables: dict[str, pd.DataFrame], weeks: pd.Series) -> tuple[pd.Series, bool]:
    """Week numbers → week start dates when ``weekly_events`` knows them (else the numbers)."""
    we = tables.get("weekly_events")
    if we is None or "week_start" not in we:
        return weeks, False
    starts = pd.Series(pd.to_datetime(we["week_start"]).to_numpy(), index=we["week"])
    return pd.Series(starts.reindex(weeks).to_numpy(), index=weeks.index), True


# ------------------------------------------------------------------------------------- 1. alerts


def alerts_per_week(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Red and yellow alerts per week over the year, all teams, stacked."""
    we = full_weeks(tables["weekly_events"])
    x = pd.to_datetime(we["week_start"])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x, we["red_alerts"], width=6, align="edge", color=RED, label="red alerts")
    ax.bar(x, we["yellow_alerts"], width=6, align="edge", bottom=we["red_alerts"], color=YELLOW,
           label="yellow alerts")
    _date_axis(ax)
    ax.set_ylabel("alerts per week (all care teams)")
    ax.set_xlabel("week starting (month)")
    ax.set_title("Red and yellow alerts per week over the year (stacked)")
    ax.legend(loc="upper center", ncols=2, frameon=False)
    ax.margins(x=0.01)
    return _save(fig, out_dir, "alerts_per_week")


# ----------------------------------------------------------------------------------- 2. nurse work


def nurse_work(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """(a) Nurse hours per week by kind of work; (b) largest backlog per week in the biggest teams."""
    w = full_weeks(tables["nurse_work_per_team_week"])
    kinds = [c.removeprefix("hours_") for c in w.columns if c.startswith("hours_")]
    per_week = w.groupby("week")[[f"hours_{k}" for k in kinds]].sum()
    x, dated = _week_dates(tables, pd.Series(per_week.index, index=per_week.index))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True)
    bottom = np.zeros(len(per_week))
    for k in kinds:
        ax1.bar(x, per_week[f"hours_{k}"], width=6 if dated else 0.9, align="edge" if dated else "center",
                bottom=bottom, color=WORK_KIND_COLOURS.get(k, GREY), label=WORK_KIND_LABELS.get(k, k))
        bottom += per_week[f"hours_{k}"].to_numpy()
    title = "(a) Nurse hours per week by kind of work"
    if "available_hours" in w:
        staffed = w.groupby("week")["available_hours"].sum().median()
        title += f"\nstaffed: {staffed:,.0f} nurse hours per week; the work uses ≈ {np.median(bottom) / staffed:.0%} of them"
    ax1.set_ylabel("nurse hours per week (all teams)")
    ax1.set_title(title)
    ax1.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))

    teams = tables.get("teams")
    if teams is not None and "caseload_at_start" in teams:
        top = teams.sort_values("caseload_at_start", ascending=False).head(TOP_TEAMS)
        label = top["org_name"] if "org_name" in top else top["name"]
        if "org_kind" in top:
            label = label.where(top["org_kind"] != "region", label + " (region)")
        names = dict(zip(top["team_id"], label, strict=True))
    else:
        load = w.groupby("team_id")["nurse_hours"].sum().sort_values(ascending=False).head(TOP_TEAMS)
        names = {t: f"team {t}" for t in load.index}
    cmap = plt.get_cmap("tab10")
    for i, (team_id, name) in enumerate(names.items()):
        tw = w[w["team_id"] == team_id].sort_values("week")
        tx, _ = _week_dates(tables, tw["week"])
        ax2.plot(tx, tw["backlog_work_h_max"], color=cmap(i % 10), lw=1.4, label=name)
    ax2.set_yscale("symlog", linthresh=10)
    ax2.set_ylabel("largest backlog in the week\n(hours of nurse work waiting;\nlog scale above 10 h)")
    ax2.set_title(f"(b) Backlog per week in the {len(names)} teams with the largest caseload")
    ax2.legend(fontsize=7.5, ncols=2, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if dated:
        _date_axis(ax2)
        ax2.set_xlabel("week starting (month)")
    else:
        ax2.set_xlabel("week of the run")
    return _save(fig, out_dir, "nurse_work")


# ------------------------------------------------------------------------------- 3. response times


def response_times(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Distribution of alert raised → handled (hours, log axis) by colour, median and p90 marked."""
    rt = tables["response_times"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    handled_h = rt["response_h"].dropna()
    lo = max(float(handled_h[handled_h > 0].min()) if (handled_h > 0).any() else 0.01, 0.01)
    hi = max(float(handled_h.max()) if len(handled_h) else 1.0, lo * 10)
    bins = np.geomspace(lo, hi * 1.01, 60)
    for colour in ("red", "yellow"):
        sel = rt[rt["colour"] == colour]
        if sel.empty:
            continue
        h = sel["response_h"].dropna().clip(lower=lo).to_numpy()
        c = COLOURS[colour]
        ax1.hist(h, bins=bins, histtype="step", lw=1.6, color=c, label=f"{colour} ({len(sel):,} alerts)")
        median, p90 = np.percentile(h, [50, 90]) if len(h) else (np.nan, np.nan)
        for q, ls in ((median, "-"), (p90, "--")):
            ax1.axvline(q, color=c, ls=ls, lw=1)
        # ECDF over all alerts: never-handled ones keep the curve below 100 %
        xs = np.sort(h)
        ax2.step(xs, np.arange(1, len(xs) + 1) / len(sel) * 100, where="post", color=c, lw=1.6,
                 label=f"{colour}: median {median:.1f} h, p90 {p90:.1f} h"
                       + (f", {len(sel) - len(h):,} never handled" if len(sel) > len(h) else ""))
    ax1.plot([], [], color="k", ls="-", lw=1, label="median")
    ax1.plot([], [], color="k", ls="--", lw=1, label="90th percentile")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("response time: alert raised → handled (hours, log scale)")
    ax1.set_ylabel("alerts per bin")
    ax1.set_title("(a) Distribution of response times")
    ax1.legend(fontsize=8, frameon=False)
    ax2.set_ylabel("alerts handled within the time (%)")
    ax2.set_ylim(0, 100)
    ax2.grid(alpha=0.3)
    ax2.set_title("(b) Share handled within a given time")
    ax2.legend(fontsize=8, frameon=False, loc="upper left")
    fig.suptitle("Time from alert to nurse, by colour — no weekend cover, so the long tail is weekends",
                 fontsize=11)
    return _save(fig, out_dir, "response_times")


# ------------------------------------------------------------------------------- 4. demand per hour


def demand_per_hour_of_week(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Mean API requests (and sessions started) per hour of the week, Monday 00:00 onwards."""
    d = tables["demand_per_hour_of_week"].sort_values("hour_of_week")
    panels = [("requests", "API requests per hour (mean)", BLUE)]
    if "sessions_started" in d:
        panels.append(("sessions_started", "sessions started per hour (mean)", GREEN))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.6 + 2.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (col, label, colour) in zip(axes[:, 0], panels, strict=True):
        ax.fill_between(d["hour_of_week"], d[col], step="post", color=colour, alpha=0.25)
        ax.step(d["hour_of_week"], d[col], where="post", color=colour, lw=1.3)
        ax.set_ylabel(label)
        for day in range(1, 7):
            ax.axvline(24 * day, color=GREY, lw=0.7, ls=":")
        ax.set_xlim(0, HOURS_PER_WEEK)
    if "requests_peak_minute" in d:
        peak = d.loc[d["requests_peak_minute"].idxmax()]
        h = int(peak["hour_of_week"])
        axes[0, 0].set_title(f"Busiest minute of the year: {int(peak['requests_peak_minute'])} requests "
                             f"({DAY_NAMES[h // 24]} {h % 24:02d}:00–{h % 24:02d}:59)", fontsize=9, loc="right")
    bottom = axes[-1, 0]
    bottom.set_xticks([24 * i + 12 for i in range(7)], DAY_NAMES)
    bottom.set_xticks(range(0, HOURS_PER_WEEK + 1, 6), minor=True)
    bottom.set_xlabel("hour of the week (day labels at noon; minor ticks every 6 hours)")
    fig.suptitle("Platform demand by hour of the week, mean over the year", fontsize=11)
    return _save(fig, out_dir, "demand_per_hour_of_week")


# ----------------------------------------------------------------------- 5. exacerbations vs alerts


def exacerbations_vs_alerts(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Exacerbations and admissions per week against red alerts per week: over the year and scatter."""
    we = full_weeks(tables["weekly_events"])
    x = pd.to_datetime(we["week_start"])
    fig, (ax1, ax3) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [2, 1]},
                                   layout="constrained")
    fig.get_layout_engine().set(wspace=0.08)
    ax1.plot(x, we["exacerbations"], color=BLUE, lw=1.6, label="exacerbations starting")
    ax1.plot(x, we["admissions"], color="#6c3483", lw=1.6, ls="--", label="of which admitted")
    ax1.set_ylabel("exacerbations per week")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.spines["right"].set_visible(True)
    ax2.plot(x, we["red_alerts"], color=RED, lw=1.2, alpha=0.8, label="red alerts (right axis)")
    ax2.set_ylabel("red alerts per week", color=RED)
    ax2.set_ylim(bottom=0)
    _date_axis(ax1)
    ax1.set_xlabel("week starting (month)")
    lines = ax1.get_lines() + ax2.get_lines()
    ax1.legend(lines, [ln.get_label() for ln in lines], loc="lower left", fontsize=8, frameon=False)
    ax1.set_title("(a) Over the year")
    ax3.scatter(we["red_alerts"], we["exacerbations"], s=18, color=BLUE, alpha=0.8)
    if len(we) > 2 and we["red_alerts"].std() > 0 and we["exacerbations"].std() > 0:
        r = np.corrcoef(we["red_alerts"], we["exacerbations"])[0, 1]
        ax3.text(0.03, 0.95, f"correlation r = {r:.2f}", transform=ax3.transAxes, va="top", fontsize=9)
    ax3.set_xlabel("red alerts per week")
    ax3.set_ylabel("exacerbations per week")
    ax3.set_title("(b) One dot per week")
    fig.suptitle("Exacerbations and hospital admissions against red alerts, per week", fontsize=11)
    return _save(fig, out_dir, "exacerbations_vs_alerts")


# ------------------------------------------------------------------------------------ 6. calibration


def calibration(tables: dict[str, pd.DataFrame], out_dir: Path) -> Path:
    """Each calibration figure placed inside its target band: 0 = lower end, 1 = upper end."""
    c = tables["calibration"].iloc[::-1].reset_index(drop=True)
    width = (c["hi"] - c["lo"]).where(lambda s: s > 0, 1.0)

    def norm(v: pd.Series) -> np.ndarray:
        return ((v - c["lo"]) / width).to_numpy(dtype=float)

    pos, clip_lo, clip_hi = norm(c["value"]), -1.0, 2.0
    y = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * len(c)))
    ax.barh(y, 1.0, left=0.0, height=0.55, color="#d5e8d4", edgecolor="#9ac39a", label="target band [lo, hi]")
    ax.scatter(norm(c["target"]), y, marker="|", s=120, color="k", lw=1.2, label="target", zorder=3)
    if {"ci_lo", "ci_hi"} <= set(c.columns):
        lo_n, hi_n = np.clip(norm(c["ci_lo"]), clip_lo, clip_hi), np.clip(norm(c["ci_hi"]), clip_lo, clip_hi)
        ok = np.isfinite(lo_n) & np.isfinite(hi_n)
        ax.hlines(y[ok], lo_n[ok], hi_n[ok], color="k", lw=1.5, label="95 % interval over replications", zorder=3)
    inside = c["inside"].astype(str).str.lower().isin(["true", "1"]).to_numpy()
    shown = np.clip(pos, clip_lo, clip_hi)
    ax.scatter(shown[inside], y[inside], color=GREEN, s=40, zorder=4, label="inside the band")
    ax.scatter(shown[~inside], y[~inside], color=RED, s=40, zorder=4, marker="D", label="outside the band")
    for yi, p in zip(y, pos, strict=True):
        if np.isfinite(p) and (p < clip_lo or p > clip_hi):
            ax.annotate("◀ off scale" if p < clip_lo else "off scale ▶", (np.clip(p, clip_lo, clip_hi), yi),
                        xytext=(6 if p < clip_lo else -60, 4), textcoords="offset points", fontsize=7, color=RED)
    ax.set_yticks(y, [f"{i}: {_short(f)}" for i, f in zip(c["id"], c["figure"], strict=True)], fontsize=8)
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, [f"{fmt_number(v)}   band [{fmt_number(lo)}, {fmt_number(hi)}]"
                         for v, lo, hi in zip(c["value"], c["lo"], c["hi"], strict=True)], fontsize=8)
    right.tick_params(length=0)
    ax.set_xlim(clip_lo - 0.05, clip_hi + 0.05)
    ax.set_xticks([-1, 0, 0.5, 1, 2], ["lo − width", "lo", "middle", "hi", "hi + width"])
    ax.set_xlabel("position of the simulated value relative to its target band (band = [lo, hi])")
    ax.set_title("Calibration: simulated value against each published target band (C1–C20)", pad=28)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=5, fontsize=8, frameon=False)
    ax.set_ylim(-0.7, len(c) - 0.3)
    return _save(fig, out_dir, "calibration")


def _short(text: str, n: int = 58) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------- all


FIGURES: dict[str, tuple[Callable[[dict[str, pd.DataFrame], Path], Path], tuple[str, ...]]] = {
    "alerts_per_week": (alerts_per_week, ("weekly_events",)),
    "nurse_work": (nurse_work, ("nurse_work_per_team_week",)),
    "response_times": (response_times, ("response_times",)),
    "demand_per_hour_of_week": (demand_per_hour_of_week, ("demand_per_hour_of_week",)),
    "exacerbations_vs_alerts": (exacerbations_vs_alerts, ("weekly_events",)),
    "calibration": (calibration, ("calibration",)),
}


def draw_figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, Path]:
    """Every figure whose input tables are present, in report order."""
    return {name: fn(tables, out_dir) for name, (fn, needs) in FIGURES.items() if all(n in tables for n in needs)}


def make_run_figures(run_dir: Path) -> dict[str, Path]:
    """Draw the run's figures into ``run_dir/figures/``; returns figure name → PNG path."""
    run_dir = Path(run_dir)
    return draw_figures(load_run_tables(run_dir), run_dir / "figures")
