"""The report module on small synthetic result files: the run report, the comparison and the what-if.

The tables are built here with the columns a run writes, so the tests never depend on a previous
run; they check that every section and figure is present, and that optional inputs (run.json,
scenario.toml, replication intervals, whole tables) can be missing without breaking the report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin.report import build_comparison_report, build_report, build_whatif_report
from twin.report.experiment_figures import whatif_summary
from twin.report.figures import FIGURES, make_run_figures
from twin.report.metrics import fmt, fmt_interval, fmt_number, key_metrics, mean_ci
from twin.report.runfiles import load_run_tables, team_summary

PNG = "data:image/png;base64,"
ENDPOINTS = ("token", "refresh_context", "episodeofcare_search", "get_patient_procedures", "servicerequest_read",
             "submit_measurement", "careteam_roster", "task_worklist", "task_claim", "search_measurements",
             "clinicalimpression_create", "task_complete", "communication_create")
DAYS = 30  # four whole weeks and a short fifth one
N_TEAMS = 4


def _write_run(run_dir: Path, replications: bool = False, with_run_json: bool = True) -> Path:
    """A tiny run directory with every table the report reads."""
    rng = np.random.default_rng(1)
    tables, trace = run_dir / "tables", run_dir / "trace"
    tables.mkdir(parents=True)
    trace.mkdir()
    weeks = np.arange(int(np.ceil(DAYS / 7)))
    pd.DataFrame({"week": weeks, "week_start": pd.date_range("2026-01-01", periods=len(weeks), freq="7D").date,
                  "exacerbations": rng.poisson(30, len(weeks)), "admissions": rng.poisson(8, len(weeks)),
                  "red_alerts": rng.poisson(150, len(weeks)), "yellow_alerts": rng.poisson(250, len(weeks)),
                  "sessions": rng.poisson(1500, len(weeks))}).to_csv(tables / "weekly_events.csv", index=False)
    tw = pd.MultiIndex.from_product([range(N_TEAMS), weeks], names=["team_id", "week"]).to_frame(index=False)
    tw.assign(red=rng.poisson(20, len(tw)), yellow=rng.poisson(40, len(tw))).to_csv(
        tables / "alerts_per_team_week.csv", index=False)
    work = tw.assign(hours_routine_review=rng.uniform(5, 10, len(tw)), hours_triage_red=rng.uniform(2, 5, len(tw)),
                     hours_triage_yellow=rng.uniform(1, 3, len(tw)))
    work["nurse_hours"] = work[["hours_routine_review", "hours_triage_red", "hours_triage_yellow"]].sum(axis=1)
    work = work.assign(backlog_items_max=rng.integers(0, 30, len(tw)), backlog_work_h_max=rng.uniform(0, 8, len(tw)),
                       available_hours=37.5)
    work["utilisation"] = work["nurse_hours"] / work["available_hours"]
    work.to_csv(tables / "nurse_work_per_team_week.csv", index=False)
    n = 400
    raised = rng.uniform(0, DAYS, n)
    handled = raised + rng.lognormal(-2, 1.5, n)
    handled[:5] = np.nan  # never handled
    pd.DataFrame({"team_id": rng.integers(0, N_TEAMS, n), "colour": rng.choice(["red", "yellow"], n),
                  "raised_day": raised, "handled_day": handled, "response_h": (handled - raised) * 24}).to_parquet(
        tables / "response_times.parquet", index=False)
    hours = np.arange(168)
    demand = pd.DataFrame({"hour_of_week": hours, "sessions_started": rng.uniform(0, 50, 168)})
    for e in ENDPOINTS:
        demand[e] = rng.uniform(0, 40, 168)
    demand["requests"] = demand[list(ENDPOINTS)].sum(axis=1)
    demand["requests_peak_minute"] = rng.integers(0, 60, 168)
    demand.to_csv(tables / "demand_per_hour_of_week.csv", index=False)
    cal = pd.DataFrame({"id": ["C2", "C4", "C13_spo2"], "figure": ["deaths per patient-year", "exacerbations",
                                                                   "SpO2 change (points)"],
                        "value": [0.1, 2.5, -1.2], "target": [0.1, 1.7, -1.5], "lo": [0.08, 1.55, -2.5],
                        "hi": [0.14, 1.85, -0.8], "inside": [True, False, True], "source": ["P12", "X2", "F8, F10"]})
    metrics = [m.key for m in key_metrics()]
    outcomes = pd.DataFrame({"metric": metrics, "value": rng.uniform(0.2, 0.9, len(metrics))})
    if replications:
        cal = cal.assign(ci_lo=cal["value"] * 0.95, ci_hi=cal["value"] * 1.05, replications=5)
        outcomes = outcomes.assign(ci_lo=outcomes["value"] * 0.9, ci_hi=outcomes["value"] * 1.1)
    cal.to_csv(tables / "calibration.csv", index=False)
    outcomes.to_csv(tables / "outcomes.csv", index=False)
    pd.DataFrame({"team_id": range(N_TEAMS), "name": [f"Kommune {i} copd team" for i in range(N_TEAMS)],
                  "cohort": "copd", "org_code": range(101, 101 + N_TEAMS), "org_name": [f"Kommune {i}" for i in range(N_TEAMS)],
                  "org_kind": ["municipality"] * (N_TEAMS - 1) + ["region"], "region": "Hovedstaden",
                  "nurses": 1, "caseload_at_start": [50, 400, 120, 90]}).to_parquet(trace / "teams.parquet", index=False)
    (run_dir / "scenario.toml").write_text(
        f'[run]\nname = "tiny"\nseed = 7\nstart_date = "2026-01-01"\nduration_days = {DAYS}\n'
        '[care]\nshift_start_hour = 8.0\nshift_end_hour = 15.5\nworking_days = ["mon", "tue", "wed", "thu", "fri"]\n'
        '[care.response_target_working_hours]\nred = 7.5\nyellow = 15.0\n', encoding="utf-8")
    if with_run_json:
        info = {"scenario": "tiny", "seed": 7, "replications": 5 if replications else 1, "wall_s": 12.0,
                "run_at": "2026-11-26T02:00:00", "timings_s": {"population": 0.5}, "versions": {"twin": "0.1.0"}}
        (run_dir / "run.json").write_text(json.dumps(info), encoding="utf-8")
    return run_dir


# ------------------------------------------------------------------------------------ run report


def test_run_report_has_every_section_and_figure(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    html = build_report(run).read_text(encoding="utf-8")
    assert (run / "report.html").is_file()
    for heading in ("Key figures", "Care teams", "Figures", "Calibration against published figures",
                    "About the model", "Limitations"):
        assert f">{heading}</h2>" in html, heading
    assert html.count(PNG) == len(FIGURES)
    assert "tiny" in html and "seed 7" in html
    assert "MODEL.md (model description following STRESS-DES)" in html
    assert "twin/defaults/defaults.toml" in html
    assert "✗" in html and "✓" in html  # C4 outside, C2 inside
    assert "95 % CI" not in html  # no replications → no intervals
    assert all(f"Kommune {i} copd team" in html for i in range(N_TEAMS))
    # teams sorted by caseload: 400, 120, 90, 50
    order = [html.index(f"Kommune {i} copd team") for i in (1, 2, 3, 0)]
    assert order == sorted(order)


def test_run_report_shows_replication_intervals(tmp_path: Path) -> None:
    html = build_report(_write_run(tmp_path / "run", replications=True)).read_text(encoding="utf-8")
    assert "95 % CI" in html
    assert "5 replications" in html and "show the first replication" in html
    assert "2026-11-26T02:00:00" in html and "twin 0.1.0" in html


def test_run_report_survives_missing_optional_inputs(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", with_run_json=False)
    for rel in ("scenario.toml", "trace/teams.parquet", "tables/response_times.parquet",
                "tables/demand_per_hour_of_week.csv", "tables/calibration.csv"):
        (run / rel).unlink()
    html = build_report(run).read_text(encoding="utf-8")
    assert html.count(PNG) == 3  # alerts, nurse work, exacerbations vs alerts
    assert "Key figures" in html and "Care teams" in html
    assert "Calibration against published figures" not in html
    assert "team 1" in html  # names fall back to team ids


def test_make_run_figures_writes_pngs(tmp_path: Path) -> None:
    figs = make_run_figures(_write_run(tmp_path / "run"))
    assert set(figs) == set(FIGURES)
    assert all(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in figs.values())


def test_team_summary_adds_up_and_drops_nothing(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run")
    tables = load_run_tables(run)
    t = team_summary(tables, DAYS)
    assert len(t) == N_TEAMS
    total_red = tables["alerts_per_team_week"]["red"].sum() / (DAYS / 7)
    assert t["red_alerts_per_week"].sum() == pytest.approx(total_red)
    assert tables["weekly_events"]["days_in_week"].tolist() == [7, 7, 7, 7, 2]


# ---------------------------------------------------------------------------------- comparison


def test_comparison_report(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    pd.DataFrame({
        "metric": ["red_alerts_per_week", "sensitivity", "nurse_hours_per_week", "C4", "admissions"],
        "mean_a": [1500.0, 0.70, 1100.0, 1.7, 4000.0], "mean_b": [1200.0, 0.66, 1000.0, 1.7, 4010.0],
        "difference": [-300.0, -0.04, -100.0, 0.0, 10.0], "ci_lo": [-320.0, -0.05, -120.0, np.nan, -20.0],
        "ci_hi": [-280.0, 0.01, -80.0, np.nan, 40.0], "significant": [True, False, True, False, False],
        "replications": 5,
    }).to_csv(out / "differences.csv", index=False)
    (out / "comparison.json").write_text(json.dumps({"scenario_a": "kol-10k", "scenario_b": "strict-spo2",
                                                     "replications": 5, "seeds": [1, 2, 3, 4, 5]}))
    html = build_comparison_report(out).read_text(encoding="utf-8")
    assert html.count(PNG) == 1
    assert "strict-spo2" in html and "kol-10k" in html
    assert len(re.findall(r'<tr class="sig">', html)) == 2
    assert "−20.0 %" in html  # red alerts, relative to A
    assert "−320 to −280" in html


def test_comparison_report_without_json_or_intervals(tmp_path: Path) -> None:
    pd.DataFrame({"metric": ["red_alerts_per_week"], "mean_a": [1500.0], "mean_b": [1400.0], "difference": [-100.0],
                  "ci_lo": [np.nan], "ci_hi": [np.nan], "significant": [False], "replications": [1]}).to_csv(
        tmp_path / "differences.csv", index=False)
    html = build_comparison_report(tmp_path).read_text(encoding="utf-8")
    assert html.count(PNG) == 1 and "−100" in html


# ------------------------------------------------------------------------------------- what-if


def _sweep(values=(90.0, 92.0), reps: int = 3) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        for r in range(reps):
            figures = {"red_alerts_per_week": 1000 + 300 * i + 10 * r, "yellow_alerts_per_week": 2000 + 100 * i + r,
                       "sensitivity": 0.6 + 0.1 * i + 0.01 * r, "red_ppv": 0.8 - 0.05 * i,
                       "nurse_hours_per_week": 1000 + 150 * i + 5 * r}
            rows += [{"value": v, "replication": r, "seed": 100 + r, "metric": k, "metric_value": x}
                     for k, x in figures.items()]
    return pd.DataFrame(rows)


def test_whatif_report(tmp_path: Path) -> None:
    out = tmp_path / "whatif"
    out.mkdir()
    _sweep().to_csv(out / "sweep.csv", index=False)
    (out / "whatif.json").write_text(json.dumps({"scenario": "kol-10k", "parameter": "rules.copd-national.spo2.red",
                                                 "values": [90.0, 92.0], "replications": 3}))
    html = build_whatif_report(out).read_text(encoding="utf-8")
    assert html.count(PNG) == 1
    assert "rules.copd-national.spo2.red" in html
    assert "<td class=\"num\">90</td>" in html and "<td class=\"num\">92</td>" in html


def test_whatif_report_reads_a_duplicated_value_column(tmp_path: Path) -> None:
    """A sweep written with the metric's value under a second 'value' header still reads (no whatif.json)."""
    sweep = _sweep().rename(columns={"metric_value": "value"})
    sweep.to_csv(tmp_path / "sweep.csv", index=False)
    html = build_whatif_report(tmp_path).read_text(encoding="utf-8")
    assert html.count(PNG) == 1 and "71.0 %" in html


def test_whatif_summary_sums_alerts_within_replications() -> None:
    s = whatif_summary(_sweep()).set_index(["value", "metric"])
    assert s.loc[(90.0, "alerts_per_week"), "mean"] == pytest.approx(3000 + 11)  # (1000+2000) + mean(11*r)
    assert s.loc[(92.0, "sensitivity"), "replications"] == 3
    lo, hi = s.loc[(90.0, "sensitivity"), ["ci_lo", "ci_hi"]]
    assert lo < 0.61 < hi


# -------------------------------------------------------------------------------------- helpers


def test_mean_ci_matches_student_t() -> None:
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert np.isnan(mean_ci([5.0])[1])


def test_formatting() -> None:
    assert fmt(0.7188, share=True) == "71.9 %"
    assert fmt_number(1166.06) == "1,166"
    assert fmt_number(-1.2) == "−1.2"
    assert fmt_interval(np.nan, 1.0) == ""
    assert fmt_interval(0.1, 0.2, share=True) == "10.0–20.0 %"
