"""The capacity pipeline: measure the real API, calibrate the platform model, compare, recommend.

    run_capacity(CapacityRun(Path("scenarios/kol-10k.toml")))   # → results/kol-10k/capacity/

One local ``twin serve`` (SQLite, 127.0.0.1, one uvicorn worker) seeded with the scenario carries
every run, each a Locust replay with every request logged (``twin/loadtest/runner.py``). The
apps' background inbox polls are left out: they are not in the trace nor in the platform model.

1. **calibration** — the peak window replayed at a low rate (``CALIBRATION_RATE_PER_S``, a few per
   cent of one core) → ``calibration.json`` (:mod:`twin.capacity.calibrate`);
2. **replay levels** — the peak window at speed-ups giving ``LEVEL_SHARES`` of the model's
   saturation; the model runs on the *same* sub-window and speed-up (``arrivals_from_trace``);
3. **step load** — sessions of the peak window at rising rates past saturation; the model runs
   on Poisson arrivals at each step's measured rate and mix. A USL is fitted to the measured steps;
4. **storage** — bytes per submission from the database file before and after all runs;
5. **recommendation** — per population, the smallest configuration meeting the objectives.

The server under test is **one uvicorn worker = one event loop**: it uses at most one core
however many the box has, so the model runs with ``cores=1, workers=1``. The box has two cores
and the load generator (Locust) takes much of the second one; under load the two also compete,
which the model does not see — the step load's measured saturation is a property of *this box
with its load generator*, the report says so.

Time: every run is bounded (``-t`` and a kill in the runner); their lengths are shares of the
scenario's ``capacity.loadtest_budget_s``.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from twin.api_calls import CALL_SEQUENCES, ENDPOINTS
from twin.capacity import calibrate as cb
from twin.capacity import compare as cmp
from twin.capacity import recommend as rec
from twin.capacity import storage_growth as sg
from twin.capacity.usl import fit_usl
from twin.loadtest.runner import LoadTestRun, LocalServer, ensure_trace, run_loadtest
from twin.platform import (
    PlatformConfig,
    arrivals_at_rate,
    arrivals_from_trace,
    endpoint_mix,
    save_calibration,
    simulate_platform,
)
from twin.scenario import load_scenario

CALIBRATION_RATE_PER_S = 25.0  # ~2-5 % of one core at the 1-2 ms per request measured on this box kind
LEVEL_SHARES = (0.2, 0.5, 0.8)  # of the model's saturation (issue 4: judge up to 80 %)
STEPS = 8  # step k offers (k + 1) / STEP_AT_SATURATION of the model's saturation
STEP_AT_SATURATION = 6
STEP_P95_LIMIT_MS = 2000.0  # the step load stops after a step this slow: saturated
SHARES = {"calibration": 0.12, "level": 0.09, "step": 0.24}  # of the budget, per run (the rest: start-up, drain)
DRAIN_S = 1.0
USERS, CLINICIANS = 200, 40
SERVER = {"workers": 1, "server": "uvicorn (one event loop)", "database": "sqlite", "host": "127.0.0.1"}


def server_config() -> PlatformConfig:
    """The server under test in the model's terms: one event loop → one core, one worker; the
    "DB" part of a request is its non-CPU time (client, loopback) — a delay that never queues."""
    return PlatformConfig(cores=1, workers=1, db_connections=10_000, db_on_app_cores=False, triage_workers=1,
                          audit_workers=1, async_low_priority=False)


@dataclass
class CapacityRun:
    scenario: Path
    results: Path = Path("results")
    budget_s: float | None = None  # default: the scenario's capacity.loadtest_budget_s
    seed: int = 0
    quiet: bool = False


def _say(run: CapacityRun, text: str) -> None:
    if not run.quiet:
        print(text, file=sys.stderr, flush=True)


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _speedup_for(sessions, actions, start: pd.Timestamp, rate_per_s: float, run_s: float,
                 trace_end: pd.Timestamp) -> float:
    """Speed-up at which the trace from ``start`` offers ``rate_per_s`` requests per run second."""
    speedup = 10.0
    for _ in range(8):
        end = min(start + pd.Timedelta(seconds=run_s * speedup), trace_end)
        n = len(arrivals_from_trace(sessions, actions, start, end))
        trace_rate = n / max((end - start).total_seconds(), 1.0)
        if trace_rate <= 0:  # nothing in so short a stretch (a small pilot): look further
            speedup *= 100.0
            continue
        speedup = max(rate_per_s / trace_rate, 0.01)
    return speedup


def _window_spec(start: pd.Timestamp, end: pd.Timestamp) -> str:
    return f"{start.isoformat()}..{end.isoformat()}"


def run_capacity(run: CapacityRun) -> dict:
    """Carry out the pipeline; writes ``results/<scenario>/capacity/`` and returns its summary."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from loadtests import schedule

    started = time.monotonic()
    scenario_path = Path(run.scenario)
    name = scenario_path.stem
    sc = load_scenario(scenario_path)
    cap = sc.capacity
    budget = float(run.budget_s or cap.loadtest_budget_s)
    out = run.results / name / "capacity"
    if out.exists():
        shutil.rmtree(out)
    (out / "runs").mkdir(parents=True)
    base_run = LoadTestRun(scenario=scenario_path, results=run.results, drain_s=DRAIN_S, users=USERS,
                           clinicians=CLINICIANS, latency_log=True, message_polls=False, quiet=True)
    trace_dir = ensure_trace(base_run, name, sc)
    trace = schedule.load_trace(trace_dir)
    sessions, actions = trace.sessions, trace.actions
    peak = schedule.resolve_window("peak-hour", trace)
    trace_end = pd.Timestamp(trace.demand["minute"].iloc[-1]) + pd.Timedelta(minutes=1)
    model_cfg = server_config()
    summary: dict = {"scenario": name, "budget_s": budget, "server": SERVER, "peak_window": [str(peak.start),
                                                                                              str(peak.end)]}
    timings: dict[str, float] = {}

    def replay(label: str, **kw) -> tuple[pd.DataFrame, dict]:
        t = time.monotonic()
        c0, n0, l0 = cb.process_cpu_s(server.process.pid), cb.triaged_count(server.base_url), _children_cpu_s()
        s = run_loadtest(replace(base_run, target=server.base_url, out=out / "runs" / label, **kw))
        wall = time.monotonic() - t
        counters = cb.ServerCounters(cb.process_cpu_s(server.process.pid) - c0,
                                     cb.triaged_count(server.base_url) - n0, float(s["wall_s"]))
        requests = cb.read_latency_log(out / "runs" / label)
        extra = {"label": label, "wall_s": round(wall, 2), "server_cpu_s": counters.cpu_s,
                 "locust_cpu_s": _children_cpu_s() - l0, "triaged": counters.triaged, "requests": int(len(requests)),
                 "failed": int((requests["ok"] == 0).sum()), "counters": counters}
        extra["server_cpu_ms_per_request"] = 1000 * counters.cpu_s / max(len(requests), 1)
        extra["locust_cpu_ms_per_request"] = 1000 * extra["locust_cpu_s"] / max(len(requests), 1)
        timings[label] = round(wall, 2)
        _say(run, f"capacity {name}: {label}: {len(requests)} requests in {wall:.0f} s")
        return requests, extra

    with tempfile.TemporaryDirectory(prefix="twin-capacity-") as tmp:
        db = Path(tmp) / "twin.db"
        t = time.monotonic()
        server = LocalServer.start(scenario_path, db, quiet=True)
        timings["seed_and_start"] = round(time.monotonic() - t, 2)
        try:
            bytes_before, triaged_before = sg.table_bytes(db), cb.triaged_count(server.base_url)
            # 1. calibration
            cal_s = SHARES["calibration"] * budget
            sp = _speedup_for(sessions, actions, peak.start, CALIBRATION_RATE_PER_S, cal_s, trace_end)
            end = min(peak.start + pd.Timedelta(seconds=cal_s * sp), trace_end)
            requests, extra = replay("calibration", window=_window_spec(peak.start, end), speedup=sp)
            cal, details = cb.build_calibration(requests, extra.pop("counters"), server_config=SERVER)
            save_calibration(cal, out / "calibration.json")
            details.update(speedup=sp, window=[str(peak.start), str(end)], server_cpu_ms_per_request=
                           extra["server_cpu_ms_per_request"], locust_cpu_ms_per_request=extra["locust_cpu_ms_per_request"])
            (out / "calibration_details.json").write_text(json.dumps(details, indent=2, default=str), encoding="utf-8")
            peak_arrivals = arrivals_from_trace(sessions, actions, peak.start, peak.end)
            peak_mix = endpoint_mix(peak_arrivals)
            model_sat = cmp.capacity_per_s(cal, model_cfg, peak_mix)
            summary["calibration"] = {k: details[k] for k in ("requests", "speedup", "utilisation_during_calibration",
                                                               "triage_ms_estimate", "triage_note",
                                                               "server_cpu_ms_per_request")}
            # 2. replay levels
            level_s = SHARES["level"] * budget
            measured, predicted, runs = [], [], [extra]
            for share in LEVEL_SHARES:
                label = f"level-{round(share * 100)}pct"
                sp = _speedup_for(sessions, actions, peak.start, share * model_sat["rate_per_s"], level_s, trace_end)
                end = min(peak.start + pd.Timedelta(seconds=level_s * sp), trace_end)
                requests, extra = replay(label, window=_window_spec(peak.start, end), speedup=sp)
                extra.pop("counters")
                extra.update(speedup=sp, target_share=share)
                runs.append(extra)
                t0 = float(requests["start_s"].min())
                m = cmp.measured_by_endpoint(requests, t0, t0 + (end - peak.start).total_seconds() / sp)
                # Locust's app makes a phase's calls one after another: space them by the mean latency
                spacing_s = float(requests["latency_ms"].mean()) / 1000.0
                arrivals = arrivals_from_trace(sessions, actions, peak.start, end, speedup=sp, call_spacing_s=spacing_s)
                pr = simulate_platform(arrivals, model_cfg, cal, run.seed)
                measured.append(m.assign(level=label))
                predicted.append(cmp.predicted_by_endpoint(pr).assign(level=label))
            # 3. step load
            step_total = SHARES["step"] * budget
            step_s = step_total / STEPS
            per_session = len(CALL_SEQUENCES["citizen_submit"])
            rate_per_step = model_sat["rate_per_s"] / per_session / STEP_AT_SATURATION
            requests, extra = replay("step", window="peak-hour", step=f"{rate_per_step:.3f},{step_s:.3f},{STEPS}",
                                     step_p95_ms=STEP_P95_LIMIT_MS)
            extra.pop("counters")
            runs.append(extra)
            bytes_after, triaged_after = sg.table_bytes(db), cb.triaged_count(server.base_url)
        finally:
            server.stop()
    timings["loadtest_total"] = round(time.monotonic() - started, 2)

    t0 = float(requests["start_s"].min()) - 0.5 * step_s / max(rate_per_step * step_s, 1.0)
    steps = cmp.step_points(requests, step_s, t0)
    known = requests[requests["endpoint"].isin(list(ENDPOINTS))]
    step_mix = endpoint_mix(known.rename(columns={}))
    step_sat = cmp.capacity_per_s(cal, model_cfg, step_mix)
    # the model on each step's measured offered rate, one continuous run (a backlog carries over)
    parts = [arrivals_at_rate(r.offered_per_s, step_mix, step_s, run.seed + int(r.step), start_s=r.step * step_s)
             for r in steps.itertuples()]
    arr = pd.concat(parts, ignore_index=True).sort_values("time_s", kind="stable").reset_index(drop=True)
    srun = simulate_platform(arr, model_cfg, cal, run.seed)
    rq = srun.requests
    pred_steps = []
    for r in steps.itertuples():
        a, b = r.step * step_s + 0.25 * step_s, (r.step + 1) * step_s
        lat = rq[(rq["arrival_s"] >= a) & (rq["arrival_s"] < b)]["latency_ms"].to_numpy()
        done = int(((rq["end_s"] >= a) & (rq["end_s"] < b)).sum())
        pred_steps.append({"step": r.step, "predicted_p50_ms": float(np.percentile(lat, 50)) if lat.size else np.nan,
                           "predicted_p95_ms": float(np.percentile(lat, 95)) if lat.size else np.nan,
                           "predicted_throughput_per_s": done / (b - a)})
    steps = steps.merge(pd.DataFrame(pred_steps), on="step", how="left")
    measured_sat = float(steps["throughput_per_s"].max())
    saturated = bool((steps["p95_ms"] > STEP_P95_LIMIT_MS / 2).any())
    steps["load_share"] = steps["offered_per_s"] / measured_sat
    steps["p95_rel_error"] = steps["predicted_p95_ms"] / steps["p95_ms"] - 1
    steps["judged"] = steps["load_share"] <= cmp.UP_TO_SATURATION
    steps["within_bar"] = steps["p95_rel_error"].abs() <= cmp.P95_BAR
    steps.to_csv(out / "steps.csv", index=False)

    levels = cmp.compare_levels(pd.concat(predicted), pd.concat(measured), measured_sat)
    levels.to_csv(out / "levels.csv", index=False)
    sat_err = step_sat["rate_per_s"] / measured_sat - 1
    summary["saturation"] = {"measured_per_s": measured_sat, "measured_reached": saturated,
                             "predicted_per_s": step_sat["rate_per_s"], "predicted_bottleneck": step_sat["bottleneck"],
                             "rel_error": sat_err, "within_bar": abs(sat_err) <= cmp.SATURATION_BAR,
                             "bar": cmp.SATURATION_BAR}
    judged = levels[(levels["endpoint"] == "all") & levels["judged"]]
    judged_steps = steps[steps["judged"]]
    summary["p95_bar"] = {"bar": cmp.P95_BAR, "levels_judged": int(len(judged)),
                          "levels_within": int(judged["within_bar"].sum()),
                          "steps_judged": int(len(judged_steps)), "steps_within": int(judged_steps["within_bar"].sum())}

    # 4. USL on the measured steps
    pts = steps[(steps["concurrency"] > 0) & (steps["throughput_per_s"] > 0)]
    try:
        usl = fit_usl(pts["concurrency"].to_numpy(), pts["throughput_per_s"].to_numpy(), seed=run.seed)
        usl.table().to_csv(out / "usl.csv", index=False)
        summary["usl"] = {"lambda_": usl.lambda_, "sigma": usl.sigma, "kappa": usl.kappa,
                          "max_throughput": usl.max_throughput, "peak_concurrency": usl.peak_concurrency,
                          "r_squared": usl.r_squared, "ci": usl.ci}
    except (ValueError, RuntimeError, FloatingPointError) as e:
        summary["usl"] = {"error": str(e)}

    # 5. storage
    subs = triaged_after - triaged_before
    try:
        per_sub = sg.bytes_per_submission(bytes_before, bytes_after, subs)
        rate = sg.submissions_per_citizen_year(sessions, trace.citizens, sc.run.duration_days)
        storage = sg.storage_table(per_sub, rate, cap.populations)
        storage.to_csv(out / "storage.csv", index=False)
        summary["storage"] = {"submissions": subs, "bytes_per_submission": per_sub,
                              "submissions_per_citizen_year": rate}
    except ValueError as e:
        summary["storage"] = {"error": str(e)}

    # 6. recommendation
    t = time.monotonic()
    starts = pd.to_datetime(sessions["start_time"]).dropna()
    per_min = starts.dt.floor("min").value_counts().sort_index()
    per_min = per_min.reindex(pd.date_range(per_min.index[0], per_min.index[-1], freq="min"), fill_value=0)
    window_min = max(int(round(cap.outage_backlog_hours * 60)), 1)
    busiest = int(per_min.rolling(window_min).sum().max()) if len(per_min) >= window_min else int(per_min.sum())
    peak_day = (peak.start - trace.run_start).total_seconds() / 86_400.0
    c = trace.citizens
    enrolled = int(((c["enrol_day"] <= peak_day) & (c["exit_day"] > peak_day)).sum()) or sc.citizens
    summary["citizens_at_peak"] = enrolled
    loads = rec.design_loads(peak_arrivals, peak.duration_s, enrolled, busiest * per_session, cap.outage_backlog_hours, cap.catch_up_hours,
                             cap.populations)
    objectives = rec.Objectives(cap.write_p95_ms, cap.read_p95_ms, cap.headroom)
    prod = rec.production_calibration(cal, cap.postgres_db_share)
    table = rec.recommend(prod, loads, peak_mix, objectives, run.seed)
    table.to_csv(out / "recommendation.csv", index=False)
    timings["recommend"] = round(time.monotonic() - t, 2)
    summary["bottleneck"] = rec.first_to_saturate(table)
    summary["objectives"] = {"write_p95_ms": cap.write_p95_ms, "read_p95_ms": cap.read_p95_ms,
                             "headroom": cap.headroom, "postgres_db_share": cap.postgres_db_share,
                             "outage_backlog_hours": cap.outage_backlog_hours, "catch_up_hours": cap.catch_up_hours}
    summary["runs"] = runs
    summary["timings_s"] = {**timings, "total": round(time.monotonic() - started, 2)}
    (out / "capacity.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    from twin.report.capacity_figures import draw_capacity_figures

    draw_capacity_figures(out)
    return summary


def _json_default(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return str(v)
