"""The platform model against queueing theory (M/M/c = Erlang C), and its behaviour: async work
steals CPU, the DB pool and per-service pools queue where they should, runs are repeatable, and
trace rows expand into the calls of their sequences."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from twin.api_calls import CALL_SEQUENCES, ENDPOINTS, ROUTINE_REVIEW_PER_CITIZEN, TRACE_ENDPOINTS
from twin.capacity.erlang_c import erlang_c_wait_probability, mean_wait_time
from twin.platform import (
    PlatformConfig,
    ServiceTime,
    arrivals_at_rate,
    arrivals_from_trace,
    endpoint_mix,
    endpoint_summary,
    resource_summary,
    simulate_platform,
)
from twin.platform.calibration import CalibrationMetadata, EndpointCalibration, PlatformCalibration
from twin.platform.summary import interval_load

SUBMIT = "submit_measurement"
SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


def calibration(cpu: dict[str, ServiceTime], db: dict[str, ServiceTime] | None = None,
                triage: ServiceTime | None = None, audit: ServiceTime | None = None) -> PlatformCalibration:
    db = db or {}
    meta = CalibrationMetadata("2026-11-26T10:00:00+00:00", "test", {}, "postgresql", {})
    return PlatformCalibration(
        {name: EndpointCalibration(st, db.get(name, ServiceTime.fixed(0.0)), "direct") for name, st in cpu.items()},
        triage or ServiceTime.fixed(0.0), audit or ServiceTime.fixed(0.0), meta)


def waits_ms(run) -> np.ndarray:
    r = run.requests
    r = r[r["arrival_s"] >= run.window_start_s]
    return ((r["start_s"] - r["arrival_s"]) * 1000.0).to_numpy()


# --------------------------------------------------------------------------- M/M/c against Erlang C

SERVERS, SERVICE_MS = 3, 10.0
MMC_REQUESTS = 200_000


@pytest.fixture(scope="module", params=[0.5, 0.8], ids=["rho0.5", "rho0.8"])
def mmc(request):
    rho = request.param
    rate_per_s = rho * SERVERS / SERVICE_MS * 1000.0
    duration_s = MMC_REQUESTS / rate_per_s
    arrivals = arrivals_at_rate(rate_per_s, {SUBMIT: 1.0}, duration_s, seed=11)
    cal = calibration({SUBMIT: ServiceTime.exponential(SERVICE_MS)})
    # c workers on c cores, no DB part, no async work: exactly c FCFS servers with one queue.
    run = simulate_platform(arrivals, PlatformConfig(cores=SERVERS, workers=SERVERS), cal, seed=12,
                            warmup_s=0.02 * duration_s)  # drop the empty-system start
    return rho, rate_per_s, run


def test_mmc_mean_wait_and_wait_probability_match_erlang_c(mmc):
    rho, rate_per_s, run = mmc
    rate_per_ms = rate_per_s / 1000.0
    wait = waits_ms(run)
    expected_wait = mean_wait_time(SERVERS, rate_per_ms, SERVICE_MS)
    expected_p_wait = erlang_c_wait_probability(SERVERS, rate_per_ms * SERVICE_MS)
    # Over 8 seeds of 100k requests the relative error of the mean wait had a standard deviation
    # of 2.2 % (rho 0.5) and 2.8 % (rho 0.8) — waits are strongly autocorrelated — and P(wait > 0)
    # of 0.9 %. With 200k requests that is ~1.6-2 % and ~0.6 %: 6 % and 3 % are about 3 and 5
    # standard errors, loose enough for any seed, tight enough to catch a wrong queue discipline
    # or a lost server (either moves the mean wait by tens of %).
    assert wait.mean() == pytest.approx(expected_wait, rel=0.06)
    assert (wait > 1e-9).mean() == pytest.approx(expected_p_wait, rel=0.03)


def test_mmc_utilisation_and_littles_law(mmc):
    rho, rate_per_s, run = mmc
    resources = resource_summary(run).set_index("resource")
    # Busy time over ~20k-40k s of server time: its relative error is well under 1 %.
    assert resources.loc["cpu_cores", "utilisation"] == pytest.approx(rho, rel=0.02)
    assert resources.loc["workers:shared", "utilisation"] == pytest.approx(rho, rel=0.02)
    # Little's law: time-averaged queue length = arrival rate x mean wait.
    lq = resources.loc["workers:shared", "mean_queue_length"]
    assert lq == pytest.approx(rate_per_s * waits_ms(run).mean() / 1000.0, rel=0.02)
    assert resources.loc["db_connections", "utilisation"] == 0.0
    summary = endpoint_summary(run).set_index("endpoint")
    assert summary.loc[SUBMIT, "throughput_per_s"] == pytest.approx(rate_per_s, rel=0.02)
    assert summary.loc[SUBMIT, "p50_ms"] <= summary.loc[SUBMIT, "p95_ms"] <= summary.loc[SUBMIT, "p99_ms"]


# --------------------------------------------------------------------------- async work and pools


def submissions(rate_per_s: float = 60.0, duration_s: float = 300.0, seed: int = 3) -> pd.DataFrame:
    return arrivals_at_rate(rate_per_s, {SUBMIT: 1.0}, duration_s, seed=seed)


def mean_latency(run) -> float:
    return float(run.requests["latency_ms"].mean())


def test_async_work_raises_latency_only_when_it_competes_for_cpu():
    arrivals = submissions()  # 60/s x 5 ms = 0.3 of one core for requests, + 0.3 for triage
    plain = calibration({SUBMIT: ServiceTime.exponential(5.0)})
    with_triage = calibration({SUBMIT: ServiceTime.exponential(5.0)}, triage=ServiceTime.exponential(5.0))
    # Two workers on one core: requests and triage jobs can both be waiting for the core, which is
    # where priority decides (with one worker the next request only asks for the core after the
    # previous one released it, so it never meets a triage job in that queue).
    one_core = PlatformConfig(cores=1, workers=2)
    base = simulate_platform(arrivals, one_core, plain, seed=1)
    fifo = simulate_platform(arrivals, PlatformConfig(cores=1, workers=2, async_low_priority=False), with_triage, seed=1)
    low = simulate_platform(arrivals, one_core, with_triage, seed=1)
    assert mean_latency(fifo) > 1.1 * mean_latency(low) > 1.1 * 1.1 * mean_latency(base)
    # Async work is not in the latency: with a spare core (2 cores, 1 worker, 1 triage worker) the
    # requests never meet it, and common random numbers make their latencies identical.
    spare_base = simulate_platform(arrivals, PlatformConfig(cores=2, workers=1), plain, seed=1)
    spare = simulate_platform(arrivals, PlatformConfig(cores=2, workers=1), with_triage, seed=1)
    assert np.allclose(spare.requests["latency_ms"], spare_base.requests["latency_ms"])
    jobs = spare.async_jobs
    assert len(jobs) == len(arrivals) and set(jobs["kind"]) == {"triage"}
    util = resource_summary(low).set_index("resource")["utilisation"]
    assert util["cpu_cores"] == pytest.approx(0.6, rel=0.08)


def test_batched_triage_does_every_job_once_and_holds_the_core_for_the_whole_batch():
    arrivals = submissions(rate_per_s=220.0, duration_s=120.0)  # 0.44 + 0.44 of the core
    cal = calibration({SUBMIT: ServiceTime.exponential(2.0)}, triage=ServiceTime.exponential(2.0))
    # One core, many requests in flight (an event loop): triage jobs pile up while the worker waits
    # for the core behind requests, so it finds several when it gets it.
    loop = PlatformConfig(cores=1, workers=32, async_low_priority=False)
    one = simulate_platform(arrivals, loop, cal, seed=4)
    batched = simulate_platform(arrivals, replace(loop, triage_batch=10), cal, seed=4)
    jobs = batched.async_jobs
    assert sorted(jobs["request_id"]) == list(range(len(arrivals)))  # each submission triaged once
    assert np.allclose(jobs["end_s"] - jobs["start_s"], jobs["service_ms"] / 1000.0)
    # a batch runs back to back: within a batch each job starts when the one before ended
    same = jobs["worker_s"].to_numpy()
    chained = (same[1:] == same[:-1])
    assert chained.any()
    assert np.allclose(jobs["start_s"].to_numpy()[1:][chained], jobs["end_s"].to_numpy()[:-1][chained])
    assert jobs.groupby("worker_s").size().max() <= 10
    # The same work (0.88 of the core in all), but in batches it stalls the requests behind it longer.
    assert np.percentile(batched.requests["latency_ms"], 95) > 1.05 * np.percentile(one.requests["latency_ms"], 95)
    util = resource_summary(batched).set_index("resource")["utilisation"]
    assert util["cpu_cores"] == pytest.approx(0.88, rel=0.05)


def test_a_small_db_pool_queues_requests_for_connections():
    arrivals = submissions(rate_per_s=150.0, duration_s=120.0)
    cal = calibration({SUBMIT: ServiceTime.exponential(1.0)}, db={SUBMIT: ServiceTime.exponential(5.0)})
    small = simulate_platform(arrivals, PlatformConfig(cores=2, workers=2, db_connections=1), cal, seed=2)
    large = simulate_platform(arrivals, PlatformConfig(cores=2, workers=2, db_connections=8), cal, seed=2)
    db_small = resource_summary(small).set_index("resource").loc["db_connections"]
    db_large = resource_summary(large).set_index("resource").loc["db_connections"]
    assert db_small["utilisation"] == pytest.approx(0.75, rel=0.1)  # 150/s x 5 ms on one connection
    assert db_small["mean_queue_length"] > 1.0 > 10 * db_large["mean_queue_length"]
    assert mean_latency(small) > 2 * mean_latency(large)


def test_db_on_the_app_cores_competes_with_requests_for_cpu():
    arrivals = submissions(rate_per_s=100.0, duration_s=120.0)
    cal = calibration({SUBMIT: ServiceTime.exponential(3.0)}, db={SUBMIT: ServiceTime.exponential(3.0)})
    apart = simulate_platform(arrivals, PlatformConfig(cores=1, workers=1), cal, seed=3)
    together = simulate_platform(arrivals, PlatformConfig(cores=1, workers=1, db_on_app_cores=True), cal, seed=3)
    cpu_apart = resource_summary(apart).set_index("resource").loc["cpu_cores", "utilisation"]
    cpu_together = resource_summary(together).set_index("resource").loc["cpu_cores", "utilisation"]
    assert cpu_together == pytest.approx(2 * cpu_apart, rel=0.05)
    assert mean_latency(together) > 1.2 * mean_latency(apart)


def test_per_service_pools_isolate_a_saturated_service():
    # Slow searches (measurement service) at 90 % of one worker; cheap tokens (auth) beside them.
    mix = {"search_measurements": 0.5, "token": 0.5}
    arrivals = arrivals_at_rate(90.0, mix, 300.0, seed=5)
    cal = calibration({"search_measurements": ServiceTime.exponential(20.0), "token": ServiceTime.fixed(0.5)})
    per_service = {s: 1 for s in ("auth", "patient", "careplan", "measurement", "task", "organization")}
    shared = simulate_platform(arrivals, PlatformConfig(cores=4, workers=2), cal, seed=6)
    split = simulate_platform(arrivals, PlatformConfig(cores=4, workers_per_service=per_service), cal, seed=6)
    split_p99 = endpoint_summary(split).set_index("endpoint")["p99_ms"]
    shared_p99 = endpoint_summary(shared).set_index("endpoint")["p99_ms"]
    # Its own auth worker (2 % busy): tokens hardly wait. Sharing, they queue behind the searches
    # (measured 63 ms) — and the searches, alone on one worker at 90 %, queue far more.
    assert split_p99["token"] < 1.5 < 20.0 < shared_p99["token"]
    assert split_p99["search_measurements"] > 5 * shared_p99["search_measurements"]
    assert "workers:measurement" in set(resource_summary(split)["resource"])


def test_more_workers_and_cores_shorten_waits():
    arrivals = submissions(rate_per_s=220.0, duration_s=120.0)  # 0.44 + 0.44 of the core
    cal = calibration({SUBMIT: ServiceTime("lognormal", 6.0, 1.2)})
    latencies = [mean_latency(simulate_platform(arrivals, PlatformConfig(cores=c, workers=c), cal, seed=7))
                 for c in (1, 2, 4)]
    assert latencies[0] > latencies[1] > latencies[2] >= 6.0 * 0.9


def test_same_seed_same_run_other_seed_other_service_times():
    arrivals = submissions(duration_s=60.0)
    cal = calibration({SUBMIT: ServiceTime("gamma", 5.0, 0.7)}, triage=ServiceTime("gamma", 2.0, 0.5))
    cfg = PlatformConfig(cores=1, workers=1)
    a, b = simulate_platform(arrivals, cfg, cal, seed=9), simulate_platform(arrivals, cfg, cal, seed=9)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.async_jobs, b.async_jobs)
    c = simulate_platform(arrivals, cfg, cal, seed=10)
    assert not np.allclose(a.requests["cpu_ms"], c.requests["cpu_ms"])


def test_fifty_thousand_requests_run_in_seconds():
    # Measured 0.8-1.0 s on the 2-core box; the bound only catches a several-fold slowdown.
    names = list(ENDPOINTS)
    cal = calibration({n: ServiceTime("lognormal", 1.0 + 0.3 * i, 0.5) for i, n in enumerate(names)},
                      db={n: ServiceTime("lognormal", 0.5, 0.5) for n in names},
                      triage=ServiceTime("gamma", 2.0, 0.5), audit=ServiceTime("gamma", 0.3, 0.5))
    arrivals = arrivals_at_rate(50_000 / 3600, {n: 1 / len(names) for n in names}, 3600.0, seed=1)
    t0 = time.perf_counter()
    run = simulate_platform(arrivals, PlatformConfig(cores=2, workers=2), cal, seed=1)
    assert time.perf_counter() - t0 < 8.0
    assert run.requests["end_s"].notna().all()


@pytest.mark.parametrize(("arrivals", "message"), [
    (pd.DataFrame({"time_s": [0.0], "endpoint": ["teleport"]}), "unknown endpoint"),
    (pd.DataFrame({"time_s": [0.0], "endpoint": ["token"]}), "no service times for endpoint.*token"),
    (pd.DataFrame({"time_s": [1.0, 0.5], "endpoint": [SUBMIT, SUBMIT]}), "sorted"),
    (pd.DataFrame({"time_s": [], "endpoint": []}), "empty"),
    (pd.DataFrame({"at": [0.0], "endpoint": [SUBMIT]}), "time_s"),
])
def test_bad_arrivals_are_rejected(arrivals, message):
    with pytest.raises(ValueError, match=message):
        simulate_platform(arrivals, PlatformConfig(), calibration({SUBMIT: ServiceTime.fixed(1.0)}), seed=1)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cores": 0}, "cores"),
    ({"workers": 1.5}, "workers"),
    ({"db_connections": True}, "db_connections"),
    ({"workers_per_service": {"auth": 1}}, "no workers for service"),
    ({"workers_per_service": {"billing": 1}}, "unknown service.*billing"),
])
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlatformConfig(**kwargs)


def test_interval_load_counts_overlaps_not_touching_intervals():
    mean, peak = interval_load(np.array([0.0, 1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0, 2.0]), 0.0, 4.0)
    assert peak == 2 and mean == pytest.approx((1 + 1 + 2) / 4)


# --------------------------------------------------------------------------- arrivals


def test_arrivals_at_rate_is_poisson_with_the_mix():
    mix = {"token": 0.25, SUBMIT: 0.75}
    a = arrivals_at_rate(200.0, mix, 100.0, seed=4)
    assert len(a) == pytest.approx(20_000, abs=4 * np.sqrt(20_000))
    assert endpoint_mix(a)[SUBMIT] == pytest.approx(0.75, abs=0.015)
    gaps = np.diff(a["time_s"].to_numpy())
    assert gaps.mean() == pytest.approx(1 / 200, rel=0.03) and gaps.std() / gaps.mean() == pytest.approx(1, rel=0.05)
    pd.testing.assert_frame_equal(a, arrivals_at_rate(200.0, mix, 100.0, seed=4))
    later = arrivals_at_rate(10.0, mix, 5.0, seed=4, start_s=100.0)
    assert later["time_s"].min() >= 100.0


@pytest.mark.parametrize(("mix", "message"), [
    ({}, "empty"), ({"teleport": 1.0}, "unknown endpoint"), ({"token": 0.5}, "sum to 1"), ({"token": -1.0, SUBMIT: 2.0}, ">= 0"),
])
def test_bad_mixes_are_rejected(mix, message):
    with pytest.raises(ValueError, match=message):
        arrivals_at_rate(1.0, mix, 10.0, seed=1)


def tiny_trace() -> tuple[pd.DataFrame, pd.DataFrame]:
    t = pd.Timestamp("2026-01-05 08:00:00")
    sessions = pd.DataFrame({
        "start_time": [t, t + pd.Timedelta(minutes=5), t - pd.Timedelta(minutes=1)],
        "upload_time": [t + pd.Timedelta(seconds=90), t + pd.Timedelta(minutes=6), t + pd.Timedelta(seconds=10)],
        "duplicate_time": [t + pd.Timedelta(seconds=95), pd.NaT, pd.NaT],
    })
    actions = pd.DataFrame({
        "start_time": [t + pd.Timedelta(minutes=10), t + pd.Timedelta(minutes=20), pd.NaT],
        "end_time": [t + pd.Timedelta(minutes=15), t + pd.Timedelta(minutes=40), pd.NaT],
        "call_sequence": pd.Categorical(["clinician_triage_red", "clinician_routine_review", "clinician_triage_yellow"],
                                        categories=list(CALL_SEQUENCES)),
        "citizens_reviewed": [0, 4, 0],
    })
    return sessions, actions


def test_trace_rows_expand_into_their_call_sequences():
    sessions, actions = tiny_trace()
    t = pd.Timestamp("2026-01-05 08:00:00")
    a = arrivals_from_trace(sessions, actions, t, t + pd.Timedelta(hours=1))
    counts = a["endpoint"].astype(str).value_counts()
    expected: dict[str, int] = {}

    def add(sequence, times=1, phases=("start", "upload", "end")):
        for endpoint, phase in CALL_SEQUENCES[sequence]:
            if phase in phases:
                expected[endpoint] = expected.get(endpoint, 0) + times

    add("citizen_submit", times=2)  # the first two sessions start in the window
    add("citizen_submit", times=1, phases=("upload",))  # the third started before it, uploads inside
    expected[SUBMIT] += 1  # one duplicate upload
    add("clinician_triage_red")
    add("clinician_routine_review")
    for endpoint in ROUTINE_REVIEW_PER_CITIZEN:
        expected[endpoint] = expected.get(endpoint, 0) + 4  # four citizens reviewed
    # the yellow triage never started (NaT): no calls
    assert counts.to_dict() == expected
    assert a["time_s"].is_monotonic_increasing and a["time_s"].min() >= 0
    searches = a.loc[a["endpoint"] == "search_measurements", "time_s"].to_numpy()
    # routine review: 4 citizens spread over 20 min from 08:20 -> 2.5, 7.5, 12.5, 17.5 min into it
    assert np.allclose(searches[1:], 1200 + np.array([2.5, 7.5, 12.5, 17.5]) * 60)


def test_trace_window_speedup_and_call_spacing():
    sessions, actions = tiny_trace()
    t = pd.Timestamp("2026-01-05 08:00:00")
    full = arrivals_from_trace(sessions, actions, t, t + pd.Timedelta(hours=1))
    fast = arrivals_from_trace(sessions, actions, t, t + pd.Timedelta(hours=1), speedup=60.0)
    assert np.allclose(np.sort(fast["time_s"]), np.sort(full["time_s"] / 60.0))
    first_minutes = arrivals_from_trace(sessions, actions, t, t + pd.Timedelta(minutes=2))
    assert len(first_minutes) == 5 + 1 + 1 + 1  # session 1 start calls, its upload, duplicate, session 3 upload
    spaced = arrivals_from_trace(sessions, actions, t, t + pd.Timedelta(minutes=2), call_spacing_s=0.5)
    starts = [e for e, phase in CALL_SEQUENCES["citizen_submit"] if phase == "start"]
    got = spaced[spaced["endpoint"].isin(starts)].sort_values("time_s")
    assert list(got["endpoint"].astype(str)) == starts
    assert np.allclose(got["time_s"], 0.5 * np.arange(len(starts)))
    with pytest.raises(ValueError, match="window_end"):
        arrivals_from_trace(sessions, actions, t, t)
    with pytest.raises(ValueError, match="missing column"):
        arrivals_from_trace(sessions.drop(columns="duplicate_time"), actions, t, t + pd.Timedelta(hours=1))


def test_a_simulated_year_expands_into_the_trace_demand_and_its_peak_hour_runs():
    from twin.model import simulate
    from twin.scenario import load_scenario
    from twin.trace import clinician_action_table, demand_per_minute, session_table

    result = simulate(load_scenario(SCENARIOS / "pilot-100.toml"))  # a year of 100 citizens, ~0.05 s
    sessions = session_table(result)
    actions = clinician_action_table(result, sessions)
    demand = demand_per_minute(result)
    start = demand["minute"].iloc[0]
    end = demand["minute"].iloc[-1] + pd.Timedelta(minutes=1)
    arrivals = arrivals_from_trace(sessions, actions, start, end)
    # Same calls as trace.demand_per_minute counts (which the Locust replay uses), endpoint by endpoint.
    counts = arrivals["endpoint"].astype(str).value_counts()
    assert {e: int(counts.get(e, 0)) for e in TRACE_ENDPOINTS} == {e: int(demand[e].sum()) for e in TRACE_ENDPOINTS}

    hourly = demand.set_index("minute")["requests"].resample("1h").sum()
    peak = hourly.idxmax()
    hour = arrivals_from_trace(sessions, actions, peak, peak + pd.Timedelta(hours=1))
    assert len(hour) == hourly.max()
    cal = calibration({e: ServiceTime("lognormal", 2.0, 0.8) for e in ENDPOINTS},
                      triage=ServiceTime("gamma", 3.0, 0.5))
    run = simulate_platform(hour, PlatformConfig(), cal, seed=1, horizon_s=3600.0)
    assert len(run.async_jobs) == int((hour["endpoint"] == SUBMIT).sum())
    assert endpoint_summary(run).set_index("endpoint").loc["all", "requests"] == len(hour)


def test_sessions_opened_during_an_outage_log_in_when_they_upload():
    t = pd.Timestamp("2026-01-12 07:00")
    sessions = pd.DataFrame({"start_time": [t + pd.Timedelta(hours=1), t - pd.Timedelta(hours=1)],
                             "upload_time": [t + pd.Timedelta(hours=6, minutes=5), t - pd.Timedelta(minutes=55)],
                             "duplicate_time": [pd.NaT, pd.NaT]})
    actions = pd.DataFrame({"start_time": pd.Series([], dtype="datetime64[ns]"),
                            "end_time": pd.Series([], dtype="datetime64[ns]"),
                            "call_sequence": pd.Series([], dtype=str), "citizens_reviewed": pd.Series([], dtype=int)})
    outages = pd.DataFrame({"start_time": [t], "end_time": [t + pd.Timedelta(hours=6)]})
    start = t - pd.Timedelta(hours=2)
    arr = arrivals_from_trace(sessions, actions, start, t + pd.Timedelta(hours=8), outages=outages)
    token_at_h = sorted(arr.loc[arr["endpoint"] == "token", "time_s"] / 3600)
    # the session opened before the outage logs in at its start; the one opened offline at its upload
    assert token_at_h == pytest.approx([1.0, 8 + 5 / 60])
    assert len(arrivals_from_trace(sessions, actions, start, t + pd.Timedelta(hours=8))) == len(arr)


def test_a_request_finding_the_core_idle_pays_the_wake_up():
    cal = replace(calibration({SUBMIT: ServiceTime.fixed(1.0)}), wake_ms=0.5)
    sparse = pd.DataFrame({"time_s": np.arange(100) * 0.5, "endpoint": SUBMIT})  # never two in the system
    run = simulate_platform(sparse, PlatformConfig(cores=1, workers=1), cal, seed=1)
    assert np.allclose(run.requests["latency_ms"], 1.5)
    # at 80 % load most arrivals find the core busy and skip it: the mean cost per request falls
    busy = arrivals_at_rate(700.0, {SUBMIT: 1.0}, 60.0, seed=8)
    run = simulate_platform(busy, PlatformConfig(cores=1, workers=32), cal, seed=1)
    util = resource_summary(run).set_index("resource")["utilisation"]["cpu_cores"]
    per_request_ms = util * 60_000.0 / len(busy)
    assert 1.05 < per_request_ms < 1.3
