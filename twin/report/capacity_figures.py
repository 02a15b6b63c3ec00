"""Figures of the capacity section, drawn from ``results/<scenario>/capacity/`` files only.

* ``capacity_latency`` — predicted vs measured p95 (and p50) per load level, replay levels and
  step-load steps, with the ±25 % band;
* ``capacity_usl`` — measured step-load throughput against concurrency (Little's law) with the
  fitted USL curve and the model's predicted saturation.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from twin.capacity.usl import usl_throughput  # noqa: E402
from twin.report.figures import _save  # noqa: E402


def draw_capacity_figures(cap_dir: Path) -> dict[str, Path]:
    cap_dir = Path(cap_dir)
    fig_dir = cap_dir / "figures"

    out: dict[str, Path] = {}
    summary = json.loads((cap_dir / "capacity.json").read_text(encoding="utf-8"))
    levels = pd.read_csv(cap_dir / "levels.csv") if (cap_dir / "levels.csv").exists() else pd.DataFrame()
    steps = pd.read_csv(cap_dir / "steps.csv") if (cap_dir / "steps.csv").exists() else pd.DataFrame()

    if len(levels) or len(steps):
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
        pts = []
        if len(levels):
            open_levels = levels[levels["level"] != "locust-replay"]
            a = open_levels[open_levels["endpoint"] == "all"]
            pts.append(("open-model levels, all endpoints", a["measured_p95_ms"], a["predicted_p95_ms"], "o"))
            e = open_levels[(open_levels["endpoint"] != "all") & open_levels["judged"]]
            pts.append(("open-model levels, per endpoint", e["measured_p95_ms"], e["predicted_p95_ms"], "."))
            r = levels[(levels["level"] == "locust-replay") & (levels["endpoint"] == "all")]
            pts.append(("Locust trace replay (not judged)", r["measured_p95_ms"], r["predicted_p95_ms"], "s"))
        vals = pd.concat([pd.concat([m, p]) for _, m, p, _ in pts]).dropna()
        lo, hi = max(float(vals.min()) * 0.7, 0.1), float(vals.max()) * 1.4
        grid = np.geomspace(lo, hi, 50)
        ax.fill_between(grid, grid * 0.75, grid * 1.25, color="0.88", label="±25 %")
        ax.plot(grid, grid, color="0.4", lw=1)
        for label, m, p, marker in pts:
            ax.scatter(m, p, marker=marker, label=label, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured p95 latency (ms)")
        ax.set_ylabel("predicted p95 latency (ms)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["capacity_latency"] = _save(fig, fig_dir, "capacity_latency")

    if len(steps):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.scatter(steps["concurrency"], steps["throughput_per_s"], label="measured (closed loop)", zorder=3)
        ax1.plot(steps["concurrency"], steps["predicted_throughput_per_s"], "s--", color="C2",
                 label="predicted (MVA on the calibrated demand)")
        usl = summary.get("usl", {})
        if "lambda_" in usl:
            n = np.geomspace(max(steps["concurrency"].min() * 0.8, 0.5), steps["concurrency"].max() * 1.3, 200)
            ax1.plot(n, usl_throughput(n, usl["lambda_"], usl["sigma"], usl["kappa"]), color="C1",
                     label=f"USL fit (λ={usl['lambda_']:.3g}, σ={usl['sigma']:.2g}, κ={usl['kappa']:.2g})")
        sat = summary.get("saturation", {})
        if sat:
            ax1.axhline(sat["predicted_per_s"], color="C2", ls=":", label="platform model saturation")
            ax1.axhline(sat["measured_per_s"], color="C3", ls=":", label="measured saturation")
        ax1.set_xscale("log", base=2)
        ax1.set_xlabel("concurrent clients N")
        ax1.set_ylabel("throughput (requests/s)")
        ax1.legend(fontsize=7)
        ax2.plot(steps["concurrency"], steps["mean_ms"], "o-", label="measured mean")
        ax2.plot(steps["concurrency"], steps["predicted_mean_ms"], "s--", label="predicted mean (MVA)")
        ax2.plot(steps["concurrency"], steps["p95_ms"], "o-", alpha=0.5, label="measured p95")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("concurrent clients N")
        ax2.set_ylabel("latency (ms)")
        ax2.legend(fontsize=7)
        fig.tight_layout()
        out["capacity_usl"] = _save(fig, fig_dir, "capacity_usl")
    return out
