"""The self-contained HTML reports: one run, a scenario comparison, a what-if sweep.

Each report is written for a clinician or a service owner, not a modeller: plain-language labels
with units, the uncertainty beside each number when replications were run, and the figures
embedded as base64 PNGs so ``report.html`` can be mailed or archived as one file. Everything is
read from the result files a run (or ``twin compare`` / ``twin what-if``) wrote; a missing optional
file or column removes its section instead of breaking the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from twin.report.experiment_figures import (
    WHATIF_METRICS,
    forest_plot,
    relative_differences,
    whatif_paired_table,
    whatif_summary,
    whatif_table,
    whatif_tradeoff,
)
from twin.report.figures import draw_figures
from twin.report.metrics import (
    SHORT_LABELS,
    fmt,
    fmt_duration_h,
    fmt_interval,
    fmt_number,
    is_share,
    key_metrics,
)
from twin.report.outage import outage_context
from twin.report.runfiles import duration_days, load_run_info, load_run_tables, team_summary

TEMPLATES = Path(__file__).parent / "templates"
MODEL_DOC = "MODEL.md"
DEFAULTS_FILE = "twin/defaults/defaults.toml"
BUSY_UTILISATION = 0.9  # a team spending more of its staffed hours than this is highlighted
WEEKDAY_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
                 "sat": "Saturday", "sun": "Sunday"}


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_number
    return env


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode("ascii")


def _write(path: Path, template: str, **context) -> Path:
    path.write_text(_env().get_template(template).render(**context), encoding="utf-8")
    return path


def _model_link(out_dir: Path) -> str:
    """Relative link from the report to MODEL.md at the repository root (found by walking up)."""
    here = Path(out_dir).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[2]]
    root = next((d for d in candidates if (d / MODEL_DOC).is_file()), None)
    root = root or next((d for d in candidates if (d / "pyproject.toml").is_file()), candidates[-1])
    return Path(os.path.relpath(root / MODEL_DOC, here)).as_posix()


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------ run


def _run_header(run_dir: Path, info: dict, tables: dict[str, pd.DataFrame]) -> dict:
    run, sc = info["run"], info["scenario"]
    sc_run = sc.get("run", {})
    seeds = run.get("seeds") or []
    replications = run.get("replications") or (len(seeds) if seeds else None)
    if replications is None and "calibration" in tables and "replications" in tables["calibration"]:
        replications = int(tables["calibration"]["replications"].max())
    stamp = next((run[k] for k in ("run_at", "date", "finished_at", "started_at") if run.get(k)), None)
    if stamp is None:
        source = run_dir / "run.json" if (run_dir / "run.json").is_file() else run_dir / "tables"
        stamp = dt.datetime.fromtimestamp(source.stat().st_mtime).strftime("%Y-%m-%d %H:%M") if source.exists() else "–"
    cohorts = sc.get("cohorts", [])
    wall_s = run.get("wall_s")
    return {
        "scenario": run.get("scenario") or sc_run.get("name") or run_dir.name,
        "description": sc_run.get("description") or "",
        "seed": run.get("seed", sc_run.get("seed", "–")),
        "replications": replications or 1,
        "run_date": str(stamp),
        "start_date": sc_run.get("start_date"),
        "duration_days": sc_run.get("duration_days"),
        "citizens": sum(c.get("citizens", 0) for c in cohorts) or None,
        "teams": len(tables["teams"]) if "teams" in tables else None,
        "wall_min": round(wall_s / 60, 1) if _finite(wall_s) else None,
        "versions": run.get("versions") if isinstance(run.get("versions"), dict) else {},
        "timings_s": run.get("timings_s") if isinstance(run.get("timings_s"), dict) else {},
    }


def _key_figures(outcomes: pd.DataFrame | None, scenario: dict) -> list[dict]:
    if outcomes is None:
        return []
    by = outcomes.set_index("metric")
    care = scenario.get("care", {})
    rows = []
    for m in key_metrics(scenario.get("outcomes"), care.get("response_target_working_hours")):
        if m.key not in by.index or not _finite(by.at[m.key, "value"]):
            continue
        r = by.loc[m.key]
        rows.append({"label": m.label, "value": fmt(r["value"], m.share, m.decimals), "unit": m.unit,
                     "explanation": m.explanation, "ci": fmt_interval(r.get("ci_lo"), r.get("ci_hi"), m.share, m.decimals)})
    return rows


def _in_brief(outcomes: pd.DataFrame | None, header: dict, teams: pd.DataFrame) -> list[str]:
    """A few plain sentences with the headline numbers (each only when its numbers exist)."""
    if outcomes is None:
        return []
    o = outcomes.set_index("metric")["value"].to_dict()

    def has(*keys: str) -> bool:
        return all(_finite(o.get(k)) for k in keys)

    who = f"the {header['teams']} care teams" if header.get("teams") else "the care teams"
    out = []
    if has("red_alerts_per_week", "yellow_alerts_per_week"):
        out.append(f"Together, {who} receive about {fmt_number(o['red_alerts_per_week'])} red and "
                   f"{fmt_number(o['yellow_alerts_per_week'])} yellow alerts a week.")
    if has("sensitivity", "red_ppv"):
        s = f"{fmt(o['sensitivity'], True)} of exacerbations are preceded by an alert"
        if has("flag_in_control_window"):
            s += f" (a window of the same length 60 days earlier holds one {fmt(o['flag_in_control_window'], True)} of the time)"
        s += f", and {fmt(o['red_ppv'], True)} of red alerts are followed by an exacerbation or come during one"
        if has("red_ppv_new_onset"):
            s += f"; {fmt(o['red_ppv_new_onset'], True)} announce a new one"
        out.append(s + ".")
    if has("nurse_hours_per_week", "nurse_fte_needed"):
        s = (f"The work takes about {fmt_number(o['nurse_hours_per_week'])} nurse hours a week, "
             f"{fmt_number(o['nurse_fte_needed'])} full-time nurses")
        if has("fte_staffed", "utilisation"):
            s += (f", of the {fmt_number(o['fte_staffed'])} full-time equivalents staffed "
                  f"({fmt(o['utilisation'], True)} of their hours)")
        elif has("nurses_staffed", "utilisation"):
            s += (f", of the {fmt_number(o['nurses_staffed'])} staffed ({fmt(o['utilisation'], True)} of their"
                  " hours)")
        out.append(s + ".")
    if "utilisation" in teams and len(teams):
        busy = int((teams["utilisation"] > BUSY_UTILISATION).sum())
        if busy:
            out.append(f"The work is unevenly spread: {busy} of the {len(teams)} teams spend more than "
                       f"{BUSY_UTILISATION * 100:.0f} % of their staffed hours on it (highlighted in the team table).")
    if has("response_h_median_red", "response_h_p90_red"):
        out.append(f"Half of the red alerts are handled within {fmt_duration_h(o['response_h_median_red'])}; "
                   f"nine in ten within {fmt_duration_h(o['response_h_p90_red'])}, the rest waiting over a "
                   "night or a weekend.")
    return out


def _team_rows(t: pd.DataFrame) -> tuple[list[str], list[dict]]:
    if t.empty:
        return [], []
    spec = [("name", "Team", str), ("region", "Region", str), ("caseload_at_start", "Citizens at start", fmt_number),
            ("fte", "Nurse FTE", fmt), ("red_alerts_per_week", "Red alerts per week", fmt_number),
            ("yellow_alerts_per_week", "Yellow alerts per week", fmt_number),
            ("nurse_hours_per_week", "Nurse hours per week", fmt_number),
            ("utilisation", "Utilisation (% of staffed hours)", lambda v: fmt(v, True)),
            ("backlog_work_h_max", "Largest backlog (hours of work waiting)", fmt_number)]
    spec = [s for s in spec if s[0] in t]
    rows = []
    for r in t.itertuples(index=False):
        d = r._asdict()
        busy = _finite(d.get("utilisation")) and d["utilisation"] > BUSY_UTILISATION
        cells = [{"text": "–" if isinstance(d[k], float) and np.isnan(d[k]) else f(d[k]),
                  "num": k not in ("name", "region")} for k, _, f in spec]
        rows.append({"cells": cells, "busy": busy})
    return [s[1] for s in spec], rows


def _calibration_rows(cal: pd.DataFrame | None) -> list[dict]:
    if cal is None:
        return []
    rows = []
    for r in cal.to_dict("records"):
        inside = str(r.get("inside")).lower() in ("true", "1")
        rows.append({"id": r["id"], "figure": r["figure"], "value": fmt_number(r["value"]),
                     "ci": fmt_interval(r.get("ci_lo"), r.get("ci_hi")), "target": fmt_number(r["target"]),
                     "band": f"{fmt_number(r['lo'])} – {fmt_number(r['hi'])}", "inside": inside,
                     "source": r.get("source", "")})
    return rows


def _captions(scenario: dict, n_top: int = 10) -> dict[str, str]:
    care = scenario.get("care", {})
    days = [WEEKDAY_NAMES.get(d, d) for d in care.get("working_days", [])]
    if care.get("shift_start_hour") is not None and care.get("shift_end_hour") is not None and days:
        def hhmm(h: float) -> str:
            return f"{int(h):02d}:{round(h % 1 * 60):02d}"
        shift = (f"Nurses work {hhmm(care['shift_start_hour'])}–{hhmm(care['shift_end_hour'])}, "
                 f"{days[0]} to {days[-1]}.")
    else:
        shift = "Nurses work a weekday day shift."
    weekend = "" if {"sat", "sun"} <= set(care.get("working_days", [])) else " There is no weekend cover."
    return {
        "alerts_per_week": "Red and yellow alerts per week for all care teams together, stacked. Alerts follow the "
                           "exacerbation season: more in winter, fewer in summer. The last, incomplete week of "
                           "the run is left out.",
        "nurse_work": "(a) Nurse hours per week spent on routine review of green data, triage of red alerts "
                      "(including the phone call and documentation) and triage of yellow alerts. "
                      f"(b) The largest amount of work waiting at any moment of each week in the {n_top} teams "
                      "with the largest caseload; a line that keeps rising means the team cannot keep up.",
        "response_times": "Time from an alert being raised to a nurse finishing its triage, in clock hours on a log "
                          "scale. Solid lines mark the median, dashed lines the 90th percentile. " + shift + weekend
                          + " Alerts raised in the evening wait overnight (the bump around 16–24 h) and alerts raised "
                          "on Friday afternoon or at the weekend wait until Monday (the long tail beyond 40 h).",
        "demand_per_hour_of_week": "Mean number of requests to the platform's API per clock hour of the week "
                                   "(citizens' app and nurses' worklists together), and sessions started. "
                                   "Citizens measure in the morning, and most on their agreed measurement weekdays.",
        "exacerbations_vs_alerts": "(a) Exacerbations starting each week, those leading to admission, and red "
                                   "alerts (right axis). (b) One dot per week. Red alerts rise and fall with "
                                   "exacerbations, but many red alerts come from stable citizens.",
        "calibration": "Each calibration figure placed within its published target band: the band [lo, hi] is the "
                       "green bar, the target the black tick, the simulated value a green dot (inside) or red "
                       "diamond (outside). The numbers on the right are the simulated value and the band.",
    }


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (figures in ``run_dir/figures/``) from the run's result files."""
    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    days = duration_days(info)
    tables = load_run_tables(run_dir, days)
    header = _run_header(run_dir, info, tables)
    pngs = draw_figures(tables, run_dir / "figures")
    captions = _captions(info["scenario"])
    figures = [{"name": n, "uri": _data_uri(p), "caption": captions.get(n, "")} for n, p in pngs.items()]
    teams = team_summary(tables, days)
    team_columns, team_rows = _team_rows(teams)
    return _write(run_dir / "report.html", "report.html", h=header,
                  in_brief=_in_brief(tables.get("outcomes"), header, teams), busy_pct=f"{BUSY_UTILISATION * 100:.0f} %",
                  key_figures=_key_figures(tables.get("outcomes"), info["scenario"]),
                  team_columns=team_columns, team_rows=team_rows,
                  calibration=_calibration_rows(tables.get("calibration")), figures=figures,
                  model_link=_model_link(run_dir), model_doc=MODEL_DOC, defaults_file=DEFAULTS_FILE,
                  capacity=_capacity_context(run_dir),
                  outage=outage_context(run_dir, tables.get("outcomes"), _data_uri))


def _capacity_context(run_dir: Path) -> dict | None:
    """The capacity section's numbers and figures, when ``twin capacity`` (or ``twin run``) wrote them."""
    cap = Path(run_dir) / "capacity"
    if not (cap / "capacity.json").is_file():
        return None
    from twin.report.capacity_figures import draw_capacity_figures

    summary = json.loads((cap / "capacity.json").read_text(encoding="utf-8"))
    pngs = draw_capacity_figures(cap)
    read = lambda f: pd.read_csv(cap / f).to_dict("records") if (cap / f).is_file() else []  # noqa: E731
    levels = [r for r in read("levels.csv") if r["endpoint"] in ("all", "submit_measurement")]
    shares = [f"{100 * s:.0f}" for s in summary.get("level_shares", (0.2, 0.5, 0.8))]  # (0.8: before session 9)
    return {"s": summary, "levels": levels, "level_shares": ", ".join(shares[:-1]) + " and " + shares[-1],
            "steps": read("steps.csv"), "usl": read("usl.csv"),
            "recommendation": read("recommendation.csv"), "storage": read("storage.csv"),
            "figures": {n: _data_uri(p) for n, p in pngs.items()}}


# ----------------------------------------------------------------------------------- comparison


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _seeds_text(seeds) -> str:
    seeds = list(seeds or [])
    return ", ".join(map(str, seeds[:5])) + (f" … ({len(seeds)} seeds)" if len(seeds) > 5 else "")


def _signed(v: float, scale: float = 1.0, spec: str = ".3g") -> str:
    """'+12', '−0.4', '0' (true minus sign); '–' when missing."""
    if not _finite(v):
        return "–"
    x = float(v) * scale
    return "0" if x == 0 else format(x, "+" + spec).replace("-", "\u2212")


def build_comparison_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` for ``twin compare``: differences B − A with 95 % intervals."""
    out_dir = Path(out_dir)
    meta = _read_json(out_dir / "comparison.json")
    a, b = str(meta.get("scenario_a", "A")), str(meta.get("scenario_b", "B"))
    diff = pd.read_csv(out_dir / "differences.csv")
    key_order = {m: i for i, m in enumerate(SHORT_LABELS)}
    diff = diff.assign(_key=diff["metric"].map(key_order)).sort_values("_key", na_position="last", kind="stable")
    rows = []
    for r in diff.to_dict("records"):
        share = is_share(r["metric"])
        scale = 100 if share else 1
        sig = str(r.get("significant")).lower() in ("true", "1")
        rows.append({"metric": SHORT_LABELS.get(r["metric"], r["metric"]), "key": r["metric"] in key_order,
                     "a": fmt(r["mean_a"], share), "b": fmt(r["mean_b"], share),
                     "diff": _signed(r["difference"], scale) + (" pp" if share and _finite(r["difference"]) else ""),
                     "ci": (f"{_signed(r['ci_lo'], scale)} to {_signed(r['ci_hi'], scale)}"
                            if _finite(r.get("ci_lo")) and _finite(r.get("ci_hi")) else ""),
                     "rel": (_signed(r["difference"] / abs(r["mean_a"]) * 100, 1, ".1f") + " %"
                             if _finite(r["difference"]) and _finite(r["mean_a"]) and r["mean_a"] != 0 else ""),
                     "significant": sig})
    figures = []
    if not relative_differences(diff).empty:
        png = forest_plot(diff, out_dir / "figures", a, b)
        figures.append({"name": "comparison_forest", "uri": _data_uri(png),
                        "caption": f"Each key figure's mean paired difference ({b} − {a}) as a percentage of its "
                                   f"value in {a}, with the 95 % interval over replications. Red: the interval "
                                   "excludes zero. Right: the absolute difference (pp = percentage points)."})
    replications = meta.get("replications") or (int(diff["replications"].max()) if "replications" in diff else None)
    return _write(out_dir / "report.html", "comparison.html", a=a, b=b, replications=replications,
                  seeds=_seeds_text(meta.get("seeds")), rows=rows, figures=figures, model_link=_model_link(out_dir),
                  model_doc=MODEL_DOC, defaults_file=DEFAULTS_FILE)


# -------------------------------------------------------------------------------------- what-if


def read_sweep(path: Path) -> pd.DataFrame:
    """sweep.csv → value, replication, seed, metric, metric_value (also reading a duplicated 'value')."""
    sweep = pd.read_csv(path)
    if "metric_value" not in sweep and "value.1" in sweep:
        sweep = sweep.rename(columns={"value.1": "metric_value"})
    return sweep


def build_whatif_report(out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` for ``twin what-if``: the trade-off over one parameter's values."""
    out_dir = Path(out_dir)
    meta = _read_json(out_dir / "whatif.json")
    parameter = str(meta.get("parameter", "parameter"))
    summary = whatif_summary(read_sweep(out_dir / "sweep.csv"))
    png = whatif_tradeoff(summary, out_dir / "figures", parameter)
    figures = [{"name": "whatif_tradeoff", "uri": _data_uri(png),
                "caption": "One point per value of the parameter (the label): (a) red and yellow alerts per week and "
                           "(b) nurse hours per week against the share of exacerbations caught early, with 95 % "
                           "intervals over replications in both directions. Moving right means catching more "
                           "exacerbations; moving up means more work for the teams."}]
    replications = meta.get("replications") or (int(summary["replications"].max()) if len(summary) else None)
    baseline = meta.get("baseline_value")
    paired = whatif_paired_table(read_sweep(out_dir / "sweep.csv"), float(baseline)) if baseline is not None else []
    return _write(out_dir / "report.html", "whatif.html", scenario=meta.get("scenario", out_dir.name),
                  parameter=parameter, replications=replications, seeds=_seeds_text(meta.get("seeds")),
                  columns=[SHORT_LABELS.get(m, m) for m in WHATIF_METRICS], rows=whatif_table(summary),
                  paired=paired, baseline_value=baseline,
                  figures=figures, model_link=_model_link(out_dir), model_doc=MODEL_DOC, defaults_file=DEFAULTS_FILE)
