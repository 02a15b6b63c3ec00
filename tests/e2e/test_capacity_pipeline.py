"""The capacity pipeline end to end on pilot-100 with a tiny budget (real server and Locust, 127.0.0.1), as
`twin run` carries it out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_capacity_pipeline_pilot_100(tmp_path):
    # The main job's path: `twin run` with its load test, into a directory not named after the
    # scenario file (`--out`), with a small load-test budget (a copy of pilot-100 that sets it).
    scenario = tmp_path / "pilot-100.toml"
    scenario.write_text((ROOT / "scenarios/pilot-100.toml").read_text(encoding="utf-8")
                        + "\n[capacity]\nloadtest_budget_s = 25.0\n", encoding="utf-8")
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "twin.cli", "run", str(scenario), "--replications", "1", "--quiet",
                          "--out", str(results / "pilot-renamed")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)  # a hang guard, not a speed test
    assert run.returncode == 0, run.stderr + run.stdout
    assert sorted(p.name for p in results.iterdir()) == ["pilot-renamed"]  # no second run beside it
    out = results / "pilot-renamed" / "capacity"
    for f in ("calibration.json", "levels.csv", "steps.csv", "recommendation.csv", "capacity.json"):
        assert (out / f).is_file(), f
    s = json.loads((out / "capacity.json").read_text())
    sat = s["saturation"]
    assert sat["predicted_per_s"] > 0 and sat["measured_per_s"] > 0
    # alone, the event loop sleeps about once per request (less on a crowded machine, where the next
    # request can arrive before the loop is done with the last); kept busy by four clients, hardly
    # ever — and the prediction is the single client's demand less what that saves
    busy = sat["busy_loop"]
    assert busy["alone_sleeps_per_request"] > 3 * busy["busy_sleeps_per_request"]
    assert busy["busy_sleeps_per_request"] < 0.3 and len(busy["saving_ms_by_round"]) == 3
    assert sat["demand_ms"] == pytest.approx(sat["single_client_demand_ms"] - busy["saving_ms"], rel=0.02)
    import pandas as pd

    steps = pd.read_csv(out / "steps.csv")  # the server's counters per request, per step of the sweep
    assert (steps["loop_cpu_ms_per_request"] > 0).all() and (steps["commit_units_per_request"] > 0).all()
    assert steps["loop_sleeps_per_request"].iloc[0] > steps["loop_sleeps_per_request"].iloc[-1]
    assert s["bottleneck"]
    assert 'id="capacity"' in (results / "pilot-renamed" / "report.html").read_text()  # written by `twin run`
