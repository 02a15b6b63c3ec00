"""The twin through a platform outage (pilot-100, a 3-hour Monday-morning outage): sessions are
buffered and moved after the recovery, nothing is lost, the uploads surge, alerts reach the nurses
later; the trace holds the outage; the report shows it. Compared with the same seed without the
outage (common random numbers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SCENARIOS
from twin.experiment import headline_figures
from twin.model import simulate
from twin.report import build_report
from twin.results import write_run_info, write_run_tables, write_scenario
from twin.scenario import load_scenario, resolve, scenario_to_dict
from twin.trace import read_trace

START, HOURS = "2026-03-02T07:00", 3.0  # a Monday
CAP_DAYS = 30 / 1440  # outage_backoff_cap_min of the defaults


def with_outage(scenario):
    data = scenario_to_dict(scenario)
    data["outages"] = [{"start": START, "duration_hours": HOURS}]
    return resolve(data)


@pytest.fixture(scope="module")
def runs():
    base = load_scenario(SCENARIOS / "pilot-100.toml")
    return simulate(base), simulate(with_outage(base))


def window_days(result):
    start = (pd.Timestamp(START) - pd.Timestamp(result.scenario.run.start)) / pd.Timedelta(days=1)
    return start, start + HOURS / 24


def test_sessions_moved_after_the_recovery_none_lost(runs):
    base, out = runs
    a, b = base.sessions, out.sessions
    assert len(a) == len(b)
    pd.testing.assert_series_equal(a["start_day"], b["start_day"])  # same citizens, same sessions
    pd.testing.assert_series_equal(a["colour"], b["colour"])
    start, end = window_days(out)
    inside = (a["upload_day"] >= start) & (a["upload_day"] < end)
    assert inside.sum() >= 5
    moved = b["upload_day"] != a["upload_day"]
    assert (moved == inside).all()
    np.testing.assert_array_equal(b["intended_upload_day"], a["upload_day"])
    assert b["upload_day"].notna().all()  # nothing lost
    assert ((b.loc[inside, "upload_day"] >= end) & (b.loc[inside, "upload_day"] < end + CAP_DAYS)).all()
    assert (b.loc[inside, "attempts"] > a.loc[inside, "attempts"]).all()
    assert (b.loc[~inside, "attempts"] == a.loc[~inside, "attempts"]).all()


def test_alerts_raised_at_the_new_upload_time(runs):
    base, out = runs
    s = out.sessions.set_index("session_id")
    start, end = window_days(out)
    alerts = out.work[out.work["session_id"] >= 0]
    moved = alerts[s.loc[alerts["session_id"], "intended_upload_day"].between(start, end, inclusive="left").to_numpy()]
    assert len(moved) >= 1
    np.testing.assert_allclose(moved["release_day"], s.loc[moved["session_id"], "upload_day"])
    assert (moved["release_day"] >= end).all()
    assert out.counterfactual_work is not None and base.counterfactual_work is None
    cf = out.counterfactual_work.set_index("session_id").loc[moved["session_id"]]
    assert (cf["release_day"].to_numpy() < end).all()
    assert (moved["start_day"].to_numpy() >= cf["start_day"].to_numpy()).all()  # no alert is seen earlier


def test_outage_figures(runs):
    base, out = runs
    f = headline_figures(out)
    assert f["outage_hours"] == HOURS and f["outage_lost"] == 0 and f["outage_buffered"] >= 5
    assert f["outage_peak_uploads_per_min"] >= 2
    assert 0 < f["outage_catch_up_min"] <= 35 and 0 < f["outage_backlog_drained_min"] <= 30
    assert f["outage_alert_extra_delay_h_median"] >= 0
    assert not any(k.startswith("outage") for k in headline_figures(base))
    # Everything but the outage's own figures is what the same seed gives without the outage ... except
    # what hangs on alert timing (response times, detection) -- the calibration figures are untouched.
    fb = headline_figures(base)
    for key in ("C11_mean", "C13", "C17", "red_alerts_per_week", "exacerbations_per_patient_year"):
        if key in fb:
            assert f[key] == fb[key]


def write_run(run, name: str, out: Path) -> None:
    """A one-replication run's results directory, as `twin run` writes it (scenario, tables, info)."""
    write_scenario(run.scenario, out / "scenario.toml")
    write_run_tables(run, headline_figures(run), out)
    write_run_info(out, {"scenario": name, "seed": run.scenario.run.seed, "replications": 1})


def test_trace_and_demand_surge(runs, tmp_path):
    base, out = runs
    write_run(out, "pilot-outage", tmp_path)
    trace = read_trace(tmp_path / "trace")
    o = trace["outages"]
    assert list(o.columns) == ["start_time", "end_time"] and len(o) == 1
    assert o["start_time"].iloc[0] == pd.Timestamp(START)
    assert o["end_time"].iloc[0] == pd.Timestamp(START) + pd.Timedelta(hours=HOURS)
    d = trace["demand_per_minute"].set_index("minute")
    s = trace["sessions"]
    end = o["end_time"].iloc[0]
    during = d.loc[o["start_time"].iloc[0]:end - pd.Timedelta(minutes=1)]
    citizen = ["token", "episodeofcare_search", "get_patient_procedures", "servicerequest_read",
               "submit_measurement"]  # refresh_context is the nurses' too
    assert during[citizen].to_numpy().sum() == 0  # nothing of the citizens reaches the unreachable platform
    after = d.loc[end:end + pd.Timedelta(minutes=29), "submit_measurement"].sum()
    intended_after = ((s["intended_upload_time"] >= end) & (s["intended_upload_time"] < end + pd.Timedelta(minutes=30))).sum()
    assert after > intended_after  # the catch-up surge
    assert d["sessions_started"].sum() == len(s)
    assert d["submit_measurement"].sum() == s["upload_time"].notna().sum() + s["duplicate_time"].notna().sum()

    from loadtests.schedule import load_trace, resolve_window
    w = resolve_window("outage", load_trace(tmp_path / "trace"))
    assert (w.start, w.end) == (pd.Timestamp(START), pd.Timestamp(START) + pd.Timedelta(hours=2 * HOURS))

    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert 'id="outage"' in html and "Catch-up time" in html and (tmp_path / "figures" / "outage_catch_up.png").is_file()


def test_no_outage_trace_and_report(runs, tmp_path):
    base, _ = runs
    write_run(base, "pilot", tmp_path)
    trace = read_trace(tmp_path / "trace")
    assert trace["outages"].empty and list(trace["outages"].columns) == ["start_time", "end_time"]
    s = trace["sessions"]
    assert (s["intended_upload_time"] == s["upload_time"]).all()
    from loadtests.schedule import load_trace, resolve_window
    with pytest.raises(ValueError, match="no outage"):
        resolve_window("outage", load_trace(tmp_path / "trace"))
    html = build_report(tmp_path).read_text(encoding="utf-8")
    assert 'id="outage"' not in html and 'id="key-figures"' in html
