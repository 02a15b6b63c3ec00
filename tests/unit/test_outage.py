"""Outages: the apps' retry with capped exponential backoff and full jitter, as a pure function."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import ROOT
from tests.unit.test_trace_schema import documented_columns
from twin.capacity.recommend import design_loads, trace_catch_up_rate
from twin.clinical.outage import RetryPolicy, catch_up_minutes, in_outage, retry_through_outages
from twin.scenario import load_scenario, resolve
from twin.validation import ScenarioError

H = 1 / 24
WINDOWS = np.array([[10 + 7 * H, 10 + 13 * H], [20, 20 + 2 * H]])  # a 6-hour and a 2-hour outage, in days
POLICY = RetryPolicy(base_s=30.0, factor=2.0, cap_s=1800.0, keep_s=np.inf)


def intended(n: int = 20_000, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(9.5, 21.0, n)


def test_no_upload_inside_an_outage_and_nothing_else_moves():
    t = intended()
    r = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(7))
    assert r.buffered.sum() > 500
    assert not in_outage(r.upload_day, WINDOWS).any()
    assert not r.lost.any() and np.isfinite(r.upload_day).all()
    np.testing.assert_array_equal(r.upload_day[~r.buffered], t[~r.buffered])
    assert (r.failed_attempts[~r.buffered] == 0).all() and (r.failed_attempts[r.buffered] >= 1).all()
    assert (r.upload_day[r.buffered] > t[r.buffered]).all()


def test_first_retry_after_recovery_within_one_cap_of_the_end():
    t = intended()
    r = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(7))
    k = np.searchsorted(WINDOWS[:, 0], t[r.buffered], side="right") - 1
    late_s = (r.upload_day[r.buffered] - WINDOWS[k, 1]) * 86_400
    assert (late_s >= 0).all() and (late_s < POLICY.cap_s).all()


def test_backoff_is_bounded_by_the_cap():
    # Every wait is at most the cap, so an app that met the whole 6-hour outage tried at least 6 h / cap times.
    t = np.full(2_000, WINDOWS[0, 0])
    r = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(3))
    assert (r.failed_attempts >= 6 * 3600 / POLICY.cap_s).all()
    # With a tiny cap the apps hammer the (unreachable) server far more often.
    small = retry_through_outages(t, WINDOWS, RetryPolicy(30.0, 2.0, 120.0, np.inf), np.random.default_rng(3))
    assert small.failed_attempts.mean() > 5 * r.failed_attempts.mean()
    assert ((small.upload_day - WINDOWS[0, 1]) * 86_400 < 120.0).all()


def test_jitter_is_seeded_and_repeatable():
    t = intended()
    a = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(11))
    b = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(11))
    c = retry_through_outages(t, WINDOWS, POLICY, np.random.default_rng(12))
    np.testing.assert_array_equal(a.upload_day, b.upload_day)
    np.testing.assert_array_equal(a.failed_attempts, b.failed_attempts)
    assert not np.array_equal(a.upload_day[a.buffered], c.upload_day[c.buffered])
    # Full jitter spreads the catch-up: the apps do not all come back in the same second.
    first = a.buffered & (a.upload_day < WINDOWS[1, 0])
    late_s = (a.upload_day[first] - WINDOWS[0, 1]) * 86_400
    assert np.ptp(late_s) > 0.8 * POLICY.cap_s and np.unique(np.round(late_s)).size > 0.5 * first.sum()


def test_a_measurement_held_longer_than_the_buffer_keeps_is_lost():
    t = np.array([WINDOWS[0, 0], WINDOWS[0, 1] - 0.5 * H, 5.0])  # met the whole outage; its last 30 min; none
    r = retry_through_outages(t, WINDOWS, RetryPolicy(30.0, 2.0, 600.0, keep_s=3 * 3600), np.random.default_rng(0))
    assert r.lost.tolist() == [True, False, False]
    assert np.isnan(r.upload_day[0]) and np.isfinite(r.upload_day[1:]).all()
    assert r.upload_day[2] == 5.0


def test_no_outage_draws_nothing():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    r = retry_through_outages(intended(100), np.zeros((0, 2)), POLICY, rng)
    assert rng.bit_generator.state == state and not r.buffered.any()


def test_catch_up_minutes():
    cf = np.full(120, 10)
    up = cf.copy()
    up[:60] = 0  # the outage
    up[60:72] += 40  # the surge: 12 minutes
    assert catch_up_minutes(up, cf, 60) == 15.0  # in 5-minute blocks
    assert catch_up_minutes(cf, cf, 60) == 0.0
    assert np.isnan(catch_up_minutes(up + 100, cf, 60))  # never caught up within the data


# ------------------------------------------------------------------------------------- scenario
def test_scenario_outages_validate():
    sc = load_scenario(ROOT / "scenarios" / "outage.toml")
    (o,) = sc.outages
    assert (o.start, o.duration_hours) == ("2026-01-12T07:00", 6.0)
    assert o.start_datetime.weekday() == 0 and o.start_datetime.hour == 7
    assert load_scenario(ROOT / "scenarios" / "kol-10k.toml").outages == ()
    for bad, message in (([{"start": "2027-03-01T07:00", "duration_hours": 6.0}], "outside the run"),
                         ([{"start": "Monday", "duration_hours": 6.0}], "ISO date-time"),
                         ([{"start": "2026-01-12T07:00", "duration_hours": 0.0}], "out of range"),
                         ([{"start": "2026-01-12T07:00", "duration_hours": 6.0},
                           {"start": "2026-01-12T09:00", "duration_hours": 1.0}], "overlaps"),
                         ([{"start": "2026-01-12T07:00", "hours": 6.0}], "unknown key")):
        with pytest.raises(ScenarioError, match=message):
            resolve({"outages": bad})
    with pytest.raises(ScenarioError, match="outage_backoff_base_s"):
        resolve({"uploads": {"outage_backoff_base_s": 3600.0, "outage_backoff_cap_min": 1.0}})


def test_trace_doc_describes_outages():
    assert documented_columns("outages.parquet") == ["start_time", "end_time"]
    assert "intended_upload_time" in documented_columns("sessions.parquet")


def test_capacity_uses_the_trace_outage_when_there_is_one():
    minute = pd.date_range("2026-01-12", periods=24 * 60, freq="min")
    requests = np.full(minute.size, 10)
    requests[13 * 60:13 * 60 + 15] = 600  # the catch-up after a 07:00-13:00 outage
    demand = pd.DataFrame({"minute": minute, "requests": requests})
    outages = pd.DataFrame({"start_time": [pd.Timestamp("2026-01-12 07:00")], "end_time": [pd.Timestamp("2026-01-12 13:00")]})
    assert trace_catch_up_rate(demand, None) is None and trace_catch_up_rate(demand, outages.iloc[:0]) is None
    rate, label = trace_catch_up_rate(demand, outages)
    assert rate == pytest.approx(10.0) and "6 h outage" in label
    peak = pd.DataFrame({"time_s": np.arange(3600.0)})
    loads = design_loads(peak, 3600.0, 1000, 10_000, 6.0, 1.0, [1000, 2000], trace_catch_up=(rate, label))
    assert loads[loads["situation"] == label]["rate_per_s"].tolist() == pytest.approx([10.0, 20.0])
    modelled = design_loads(peak, 3600.0, 1000, 10_000, 6.0, 1.0, [1000])
    assert modelled["situation"].str.contains("backlog").any()
