"""Functional tests: reproducibility, monotone behaviour, and theory (Erlang C) vs simulation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from twin.capacity import erlang_c
from twin.care.calendar import ShiftCalendar
from twin.care.nurse_work import WorkItems, simulate_nurse_work
from twin.experiment import headline_figures
from twin.model import simulate
from twin.scenario import replace_path


def test_same_seed_gives_identical_output(pilot1000):
    a, b = simulate(pilot1000), simulate(pilot1000)
    pd.testing.assert_frame_equal(a.sessions, b.sessions)
    pd.testing.assert_frame_equal(a.work, b.work)
    pd.testing.assert_frame_equal(a.episodes, b.episodes)


def test_different_seeds_give_different_output(pilot1000):
    a, b = simulate(pilot1000), simulate(pilot1000.with_seed(pilot1000.run.seed + 1))
    assert len(a.sessions) != len(b.sessions) or not a.sessions["spo2"].equals(b.sessions["spo2"])
    assert not a.citizens["age_years"].equals(b.citizens["age_years"])


def test_common_random_numbers_keep_citizens_when_only_staffing_changes(kol10k_result, kol10k):
    more = simulate(replace_path(kol10k, "care.nurses_per_1000_citizens", 9.0))
    pd.testing.assert_frame_equal(kol10k_result.sessions, more.sessions)
    assert more.teams["nurses"].sum() > kol10k_result.teams["nurses"].sum()


def test_more_nurses_shorter_response_times(kol10k):
    few_run = simulate(replace_path(kol10k, "care.nurses_per_1000_citizens", 2.5))
    many_run = simulate(replace_path(kol10k, "care.nurses_per_1000_citizens", 8.0))
    few, many = headline_figures(few_run), headline_figures(many_run)
    assert many["response_h_median_red"] < few["response_h_median_red"]
    assert many["response_h_median_yellow"] < few["response_h_median_yellow"]
    assert many["response_h_p90_red"] < few["response_h_p90_red"]
    assert many["utilisation"] < few["utilisation"]
    # the work offered does not change with staffing (common random numbers), only when it is done
    assert many_run.work["service_min"].sum() == pytest.approx(few_run.work["service_min"].sum())


def test_stricter_thresholds_more_alerts_and_higher_sensitivity(kol10k, kol10k_figures):
    stricter = replace_path(kol10k, "rules.copd-national.thresholds.spo2.yellow_tighten_below", 2.0)
    stricter = replace_path(stricter, "rules.copd-national.thresholds.pulse.yellow_tighten_above", 10.0)
    f = headline_figures(simulate(stricter))
    base = kol10k_figures
    assert f["yellow_alerts_per_week"] + f["red_alerts_per_week"] > base["yellow_alerts_per_week"] + base["red_alerts_per_week"]
    assert f["sensitivity"] > base["sensitivity"]
    assert f["nurse_hours_per_week"] > base["nurse_hours_per_week"]


def test_winter_has_more_exacerbations_per_week_than_the_year():
    from tests.conftest import SCENARIOS
    from twin.scenario import load_scenario

    year = simulate(load_scenario(SCENARIOS / "pilot-1000.toml"))
    winter = simulate(replace_path(load_scenario(SCENARIOS / "winter.toml"), "cohorts.0.citizens", 1000))
    per_week = lambda r: len(r.episodes.query("onset_day >= 0 and onset_day < @r.scenario.run.duration_days")) / (  # noqa: E731
        r.scenario.run.duration_days / 7)
    assert per_week(winter) > 1.15 * per_week(year)


def test_nurse_queue_matches_erlang_c_in_a_stationary_case():
    """One team, always on shift, Poisson arrivals, exponential service: an M/M/3 queue."""
    rng = np.random.default_rng(11)
    servers, arrival_per_min, service_mean_min = 3, 0.25, 10.0  # rho = 0.83
    n = 120_000
    release = np.cumsum(rng.exponential(1 / arrival_per_min, n))
    work = WorkItems(np.zeros(n, int), release, np.ones(n, np.int8), rng.exponential(service_mean_min, n))
    always = ShiftCalendar(dt.date(2026, 1, 5), 0.0, 24.0, ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
    done = simulate_nurse_work(work, np.array([servers]), always, horizon_min=release[-1] + 1e4)
    wait = (done.start_min - release)[n // 10:]  # drop a warm-up tenth
    batches = np.array_split(wait, 30)  # batch means for a confidence interval on correlated waits
    means = np.array([b.mean() for b in batches])
    half = 2.045 * means.std(ddof=1) / np.sqrt(len(means))
    theory = erlang_c.mean_wait_time(servers, arrival_per_min, service_mean_min)
    assert abs(means.mean() - theory) < half, (means.mean(), theory, half)
    p_wait = (wait > 1e-9).mean()
    assert p_wait == pytest.approx(erlang_c.erlang_c_wait_probability(servers, arrival_per_min * service_mean_min),
                                   abs=0.02)
