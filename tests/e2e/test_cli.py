"""The ``twin`` command end to end on small scenarios: results, report, errors, replications,
comparison and what-if."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, SCENARIOS
from twin.cli import main
from twin.trace import read_trace


def test_run_writes_results_trace_and_report(tmp_path):
    out = tmp_path / "pilot"
    assert main(["run", str(SCENARIOS / "pilot-100.toml"), "--out", str(out), "--quiet", "--no-loadtest"]) == 0
    for name in ("scenario.toml", "run.json", "report.html", "tables/calibration.csv", "tables/outcomes.csv",
                 "tables/weekly_events.csv", "figures/alerts_per_week.png"):
        assert (out / name).exists(), name
    trace = read_trace(out / "trace")
    assert len(trace["sessions"]) > 1000 and len(trace["citizens"]) >= 100
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "MODEL.md" in html and html.count("data:image/png;base64") >= 5
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 20261126 and info["replications"] == 1


def test_resolved_scenario_reruns_identically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(SCENARIOS / "pilot-100.toml"), "--out", str(a), "--quiet", "--no-report"]) == 0
    assert main(["run", str(a / "scenario.toml"), "--out", str(b), "--quiet", "--no-report"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(a / "trace/sessions.parquet"),
                                  pd.read_parquet(b / "trace/sessions.parquet"))


def test_bad_scenario_clear_error_and_no_results_directory(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nname = "bad"\n[diseases.copd.exacerbations]\nhospitalisation_prob = 1.5\n')
    out = tmp_path / "results" / "bad"
    assert main(["run", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "diseases.copd.exacerbations.hospitalisation_prob: 1.5 is out of range; allowed between 0 and 1" in err
    assert not out.exists()
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_failed_run_keeps_the_previous_results(tmp_path, monkeypatch):
    out = tmp_path / "pilot"
    assert main(["run", str(SCENARIOS / "pilot-100.toml"), "--out", str(out), "--quiet", "--no-report"]) == 0
    import twin.results

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(twin.results, "write_run_tables", boom)
    with pytest.raises(RuntimeError):
        main(["run", str(SCENARIOS / "pilot-100.toml"), "--out", str(out), "--quiet", "--no-report"])
    assert (out / "trace" / "sessions.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pilot"]


def test_replications_give_intervals(tmp_path):
    out = tmp_path / "reps"
    assert main(["run", str(SCENARIOS / "pilot-100.toml"), "--out", str(out), "--quiet", "--replications", "3",
                 "--workers", "2", "--no-loadtest"]) == 0
    cal = pd.read_csv(out / "tables" / "calibration.csv")
    assert {"ci_lo", "ci_hi", "replications"} <= set(cal.columns)
    assert (cal["replications"] == 3).all()
    reps = pd.read_csv(out / "tables" / "replications.csv")
    assert reps["seed"].nunique() == 3
    c4 = cal.set_index("id").loc["C4"]
    assert c4["ci_lo"] <= c4["value"] <= c4["ci_hi"]


def test_compare_uses_common_random_numbers(tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text((SCENARIOS / "pilot-100.toml").read_text()
                      + "\n[rules.copd-national.thresholds.spo2]\nyellow_tighten_below = 2.0\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(SCENARIOS / "pilot-100.toml"), str(strict), "--replications", "2", "--out", str(out),
                 "--quiet", "--workers", "1"]) == 0
    diff = pd.read_csv(out / "differences.csv").set_index("metric")
    # Same citizens and readings in both arms: the only change is which readings flag.
    assert diff.loc["C15", "difference"] == 0
    assert diff.loc["yellow_alerts_per_week", "difference"] > 0
    assert (out / "report.html").exists()


def test_whatif_sweeps_a_threshold(tmp_path):
    out = tmp_path / "wi"
    assert main(["whatif", str(SCENARIOS / "pilot-100.toml"), "--parameter",
                 "rules.copd-national.thresholds.spo2.yellow_tighten_below", "--values", "2,3", "--replications", "2",
                 "--out", str(out), "--quiet", "--workers", "1"]) == 0
    sweep = pd.read_csv(out / "sweep.csv")
    assert list(sweep.columns) == ["value", "replication", "seed", "metric", "metric_value"]
    alerts = sweep[sweep["metric"] == "yellow_alerts_per_week"].groupby("value")["metric_value"].mean()
    assert alerts.loc[2.0] >= alerts.loc[3.0]
    assert sorted(sweep["value"].unique()) == [2.0, 2.5, 3.0]  # the current value joins as the baseline
    assert "paired by seed" in (out / "report.html").read_text(encoding="utf-8")


def test_whatif_rejects_unknown_parameter(tmp_path, capsys):
    assert main(["whatif", str(SCENARIOS / "pilot-100.toml"), "--parameter", "rules.nope", "--values", "1",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "no such parameter" in capsys.readouterr().err


def test_console_script_is_installed():
    done = subprocess.run([sys.executable, "-m", "twin.cli", "validate", str(SCENARIOS / "kol-10k.toml")],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0 and "10000 citizens" in done.stdout
