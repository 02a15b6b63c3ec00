"""Load shapes as pure functions of elapsed time: no Locust, no sleeping."""

from __future__ import annotations

import pytest

from loadtests.shapes import StepPlan, due_s, replay_users


def test_replay_events_fall_due_at_trace_time_over_speedup():
    assert due_s(3600.0, 60.0) == 60.0
    assert due_s(0.0, 1.0) == 0.0
    assert due_s(90.0, 1.0) == 90.0


def test_replay_keeps_the_pool_until_window_and_drain_are_over_then_stops():
    # a 1-hour window at 60x is 60 s of run, plus 15 s of drain
    assert replay_users(0.0, 200, 3600, 60, 15) == 200
    assert replay_users(74.9, 200, 3600, 60, 15) == 200
    assert replay_users(75.0, 200, 3600, 60, 15) is None


def test_step_rate_rises_stepwise_and_ends_after_the_last_step():
    plan = StepPlan(rate_per_step=5, step_s=30, max_steps=4)
    assert [plan.rate_at(t) for t in (0, 29.9, 30, 61, 119.9)] == [5, 5, 10, 15, 20]
    assert plan.step_at(120) is None and plan.rate_at(120) == 0
    assert plan.duration_s == 120


def test_step_arrivals_match_the_rate_of_each_step_and_are_deterministic():
    plan = StepPlan(rate_per_step=2, step_s=10, max_steps=3)
    times = list(plan.arrivals())
    assert times == list(plan.arrivals())
    per_step = [sum(1 for t in times if k * 10 <= t < (k + 1) * 10) for k in range(3)]
    assert per_step == [20, 40, 60]
    assert times == sorted(times) and times[0] > 0 and times[-1] < 30


def test_step_saturation_on_p95_or_failures():
    plan = StepPlan(1, 10, 5, p95_limit_ms=500, fail_ratio_limit=0.01)
    assert not plan.saturated(499, 0.0)
    assert plan.saturated(501, 0.0)
    assert plan.saturated(10, 0.02)
    assert not plan.saturated(None, 0.0)  # no requests yet: not saturated


def test_step_plan_parsing():
    plan = StepPlan.parse("5,30,10", p95_limit_ms=250)
    assert (plan.rate_per_step, plan.step_s, plan.max_steps, plan.p95_limit_ms) == (5, 30, 10, 250)
    for bad in ("5,30", "a,b,c", "5,0,3"):
        with pytest.raises(ValueError):
            StepPlan.parse(bad)
