"""Figures of the experiment reports: a scenario comparison and a one-parameter what-if sweep.

* :func:`forest_plot` — ``twin compare``: for each key metric, how much scenario B differs from A
  (B − A, relative to A, in %) with its 95 % interval over paired replications. A bar that does not
  cross zero is a difference the replications can tell apart from noise.
* :func:`whatif_tradeoff` — ``twin what-if``: the clinician's trade-off of a threshold change. Each
  parameter value is one point: how many exacerbations are caught early (sensitivity) against how
  many alerts a week the teams get (a) and how many nurse hours they take (b), with 95 % intervals
  over replications in both directions.

:func:`whatif_summary` turns the sweep's tidy rows into means and Student-t intervals per value.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twin.report.figures import BLUE, GREY, RED, _save  # noqa: E402
from twin.report.metrics import SHORT_LABELS, fmt, fmt_interval, is_share, mean_ci  # noqa: E402

WHATIF_METRICS = ("red_alerts_per_week", "yellow_alerts_per_week", "alerts_per_week", "sensitivity", "red_ppv",
                  "nurse_hours_per_week")



# ------------------------------------------------------------------------------------ comparison


def relative_differences(diff: pd.DataFrame) -> pd.DataFrame:
    """Key metrics' differences B − A as % of A (rows with A = 0 or missing are left out)."""
    d = diff[diff["metric"].isin(SHORT_LABELS)].copy()
    d["order"] = d["metric"].map({m: i for i, m in enumerate(SHORT_LABELS)})
    d = d.sort_values("order")
    base = d["mean_a"].abs()
    d = d[np.isfinite(base) & (base > 0)]
    for col in ("difference", "ci_lo", "ci_hi"):
        d[f"{col}_pct"] = d[col] / d["mean_a"].abs() * 100 if col in d else np.nan
    return d.reset_index(drop=True)


def forest_plot(diff: pd.DataFrame, out_dir: Path, label_a: str = "A", label_b: str = "B") -> Path:
    """Relative difference B − A of each key metric, with its 95 % interval; significant ones in colour."""
    d = relative_differences(diff)
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.34 * max(len(d), 1)))
    y = np.arange(len(d))[::-1]
    sig = d["significant"].astype(str).str.lower().isin(["true", "1"]).to_numpy() if "significant" in d else (
        np.zeros(len(d), bool))
    lo = (d["difference_pct"] - d["ci_lo_pct"]).to_numpy(dtype=float)
    hi = (d["ci_hi_pct"] - d["difference_pct"]).to_numpy(dtype=float)
    err = np.nan_to_num(np.vstack([lo, hi]), nan=0.0)
    for mask, colour, label in ((sig, RED, "interval excludes 0 (significant)"), (~sig, GREY, "interval includes 0")):
        if mask.any():
            ax.errorbar(d["difference_pct"].to_numpy()[mask], y[mask], xerr=err[:, mask], fmt="o", color=colour,
                        capsize=3, lw=1.4, label=label)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, [SHORT_LABELS[m] for m in d["metric"]])
    right = ax.secondary_yaxis("right")
    right.set_yticks(y, [_abs_label(r) for r in d.itertuples()], fontsize=8)
    right.tick_params(length=0)
    ax.set_ylim(-0.7, len(d) - 0.3)
    ax.set_xlabel(f"difference {label_b} − {label_a}, relative to {label_a} (%)")
    ax.set_title(f"How {label_b} differs from {label_a}: mean paired difference with 95 % interval", pad=22)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_dir, "comparison_forest")


def _abs_label(r) -> str:
    share = is_share(r.metric)
    scale, unit = (100, " pp") if share else (1, "")
    v = f"{r.difference * scale:+.3g}{unit}"
    if np.isfinite(r.ci_lo) and np.isfinite(r.ci_hi):
        v += f" [{r.ci_lo * scale:+.3g}, {r.ci_hi * scale:+.3g}]"
    return v.replace("-", "\u2212")


# --------------------------------------------------------------------------------------- what-if


def whatif_summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """Per parameter value and metric: mean, 95 % Student-t interval and replications.

    Adds ``alerts_per_week`` = red + yellow alerts per week, summed within each replication first so
    its interval reflects the replications, not the two metrics' separate noise.
    """
    wide = sweep.pivot_table(index=["value", "replication"], columns="metric", values="metric_value",
                             aggfunc="first")
    if {"red_alerts_per_week", "yellow_alerts_per_week"} <= set(wide.columns):
        wide["alerts_per_week"] = wide["red_alerts_per_week"] + wide["yellow_alerts_per_week"]
    rows = []
    for value, g in wide.groupby(level="value", sort=True):
        for metric in wide.columns:
            mean, lo, hi = mean_ci(g[metric].to_numpy())
            rows.append({"value": value, "metric": metric, "mean": mean, "ci_lo": lo, "ci_hi": hi,
                         "replications": int(g[metric].notna().sum())})
    return pd.DataFrame(rows)


def whatif_table(summary: pd.DataFrame) -> list[dict]:
    """Rows for the HTML table: one per parameter value, each metric as 'mean (lo–hi)'."""
    out = []
    for value, g in summary.groupby("value", sort=True):
        row = {"value": f"{value:g}" if isinstance(value, int | float) else str(value), "cells": []}
        by = g.set_index("metric")
        for m in WHATIF_METRICS:
            if m in by.index:
                r = by.loc[m]
                row["cells"].append({"mean": fmt(r["mean"], is_share(m)),
                                     "ci": fmt_interval(r["ci_lo"], r["ci_hi"], is_share(m))})
            else:
                row["cells"].append({"mean": "–", "ci": ""})
        out.append(row)
    return out


def whatif_paired_table(sweep: pd.DataFrame, baseline_value: float) -> list[dict]:
    """Rows for the HTML table: each value's difference from the baseline value, paired by seed.

    Every value ran on the same seeds (common random numbers), so the per-seed difference cancels
    the noise the values share; its interval is far narrower than the intervals of the means."""
    wide = sweep.pivot_table(index=["seed", "value"], columns="metric", values="metric_value", aggfunc="first")
    if {"red_alerts_per_week", "yellow_alerts_per_week"} <= set(wide.columns):
        wide["alerts_per_week"] = wide["red_alerts_per_week"] + wide["yellow_alerts_per_week"]
    values = sorted(wide.index.get_level_values("value").unique())
    if not any(np.isclose(v, baseline_value) for v in values):
        return []
    base = wide.xs(next(v for v in values if np.isclose(v, baseline_value)), level="value")
    out = []
    for value in values:
        if np.isclose(value, baseline_value):
            continue
        diff = wide.xs(value, level="value") - base
        row = {"value": f"{value:g}", "cells": []}
        for m in WHATIF_METRICS:
            if m in diff:
                mean, lo, hi = mean_ci(diff[m].to_numpy())
                share = is_share(m)
                significant = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
                row["cells"].append({"mean": ("+" if mean > 0 else "") + fmt(mean, share),
                                     "ci": fmt_interval(lo, hi, share), "significant": significant})
            else:
                row["cells"].append({"mean": "–", "ci": "", "significant": False})
        out.append(row)
    return out


def whatif_tradeoff(summary: pd.DataFrame, out_dir: Path, parameter: str = "parameter") -> Path:
    """(a) alerts per week and (b) nurse hours per week against sensitivity, one point per value."""
    wide = summary.pivot(index="value", columns="metric", values=["mean", "ci_lo", "ci_hi"]).sort_index()
    panels = [("alerts_per_week", "red + yellow alerts per week (all teams)", "(a) Alerts against sensitivity"),
              ("nurse_hours_per_week", "nurse hours per week (all teams)", "(b) Nurse time against sensitivity")]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), layout="constrained")
    for ax, (metric, ylabel, title) in zip(axes, panels, strict=True):
        ax.set_title(title)
        ax.set_xlabel("exacerbations caught early, sensitivity (% of exacerbations)")
        ax.set_ylabel(ylabel)
        if metric not in wide["mean"] or "sensitivity" not in wide["mean"]:
            ax.text(0.5, 0.5, f"{metric} or sensitivity not in the sweep", ha="center", transform=ax.transAxes)
            continue
        x, y = wide["mean"]["sensitivity"] * 100, wide["mean"][metric]
        xerr = _err(x, wide["ci_lo"]["sensitivity"] * 100, wide["ci_hi"]["sensitivity"] * 100)
        yerr = _err(y, wide["ci_lo"][metric], wide["ci_hi"][metric])
        ax.plot(x, y, color=BLUE, lw=0.8, alpha=0.6)
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", color=BLUE, capsize=3, lw=1.2,
                    label="mean with 95 % interval over replications")
        for value, xi, yi in zip(wide.index, x, y, strict=True):
            ax.annotate(f"{value:g}", (xi, yi), xytext=(6, 6), textcoords="offset points", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="upper left")
    fig.suptitle(f"What-if: {parameter} (point labels = parameter value)", fontsize=11)
    return _save(fig, out_dir, "whatif_tradeoff")


def _err(mid: pd.Series, lo: pd.Series, hi: pd.Series) -> np.ndarray:
    return np.nan_to_num(np.vstack([(mid - lo).to_numpy(dtype=float), (hi - mid).to_numpy(dtype=float)]), nan=0.0)
