"""Recommend the smallest platform configuration per population, and name the bottleneck.

Design loads (:func:`design_loads`), per population N:

* **peak hour** — the trace's busiest hour of API requests, scaled by N / the trace's citizens
  (demand per citizen from the trace), with the peak hour's endpoint mix;
* **outage catch-up** — the trace has no outage unless its scenario simulates one, so catch-up
  is *modelled*: the uploads of ``backlog_hours`` of the busiest daytime (the session calls of the
  trace's busiest ``backlog_hours`` window) arrive in the first ``catch_up_hours`` after recovery,
  on top of the peak hour's own demand. When the trace *has* an outage (``outages.parquet``),
  :func:`trace_catch_up_rate` measures the catch-up from the trace instead (the busiest
  ``window_min`` minutes of requests after the recovery), and ``design_loads`` uses that rate.

Search (:func:`recommend`): for each load, cores (= uvicorn workers: one event loop per core) from
the analytic lower bound upwards, then the DB pool, until the platform model meets every objective
(p95 per endpoint kind) at the design load **× (1 + headroom)**. The bottleneck is the resource with
the highest utilisation at the design load.

The calibration comes from SQLite, where DB time is CPU time. A production deployment would use
PostgreSQL on its own host, whose split is not measured: :func:`production_calibration` assumes
the DB holds a connection ``db_share`` of each request's measured server time (the PostgreSQL default
of :data:`twin.platform.calibration.DEFAULT_DB_FRACTION`), *on top of* the measured CPU — an
assumption the report states.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from twin.capacity.calibrate import kind_of
from twin.capacity.compare import capacity_per_s
from twin.platform import (
    EndpointCalibration,
    PlatformCalibration,
    PlatformConfig,
    arrivals_at_rate,
    endpoint_mix,
    endpoint_summary,
    resource_summary,
    simulate_platform,
)

CORE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
POOL_STEPS = (2, 4, 8, 16, 32, 64, 128, 256)
SIM_REQUESTS = 20_000  # requests simulated per check: p95 of each common endpoint from > 1000 samples
SIM_MAX_S = 600.0


@dataclasses.dataclass(frozen=True)
class Objectives:
    write_p95_ms: float
    read_p95_ms: float
    headroom: float  # design load × (1 + headroom) must still meet the objectives

    def limit_ms(self, endpoint: str) -> float:
        return self.write_p95_ms if kind_of(endpoint) == "write" else self.read_p95_ms


def production_calibration(cal: PlatformCalibration, db_share: float) -> PlatformCalibration:
    """CPU as measured; DB time (holding a connection, separate host) ``db_share``/(1−db_share) × CPU."""
    ratio = db_share / (1.0 - db_share)
    endpoints = {n: EndpointCalibration(e.cpu_ms, e.cpu_ms.scaled(ratio),
                                        f"assumed: DB time {db_share:.0%} of server time (PostgreSQL, not measured)")
                 for n, e in cal.endpoints.items()}
    return dataclasses.replace(cal, endpoints=endpoints)


def design_loads(peak_arrivals: pd.DataFrame, peak_window_s: float, trace_citizens: int,
                 backlog_requests: int, backlog_hours: float, catch_up_hours: float,
                 populations: Sequence[int], trace_catch_up: tuple[float, str] | None = None) -> pd.DataFrame:
    """Rows (citizens, situation, rate_per_s) for the peak hour and the outage catch-up.

    ``peak_arrivals`` are the trace's requests in its peak window (``arrivals_from_trace``);
    ``backlog_requests`` the session requests of the busiest ``backlog_hours`` (delayed by the
    outage and sent in ``catch_up_hours`` after it). ``trace_catch_up`` — (rate per second at the
    trace's citizens, label) from :func:`trace_catch_up_rate` — replaces that model with the
    catch-up the trace simulated."""
    peak_rate = len(peak_arrivals) / peak_window_s
    if trace_catch_up is not None:
        catch_up_rate, catch_up_label = trace_catch_up
    else:
        catch_up_rate = peak_rate + backlog_requests / (catch_up_hours * 3600.0)
        catch_up_label = f"outage catch-up ({backlog_hours:g} h backlog in {catch_up_hours:g} h)"
    rows = []
    for n in populations:
        scale = n / trace_citizens
        rows.append({"citizens": int(n), "situation": "peak hour", "rate_per_s": peak_rate * scale})
        rows.append({"citizens": int(n), "situation": catch_up_label, "rate_per_s": catch_up_rate * scale})
    return pd.DataFrame(rows)


def trace_catch_up_rate(demand: pd.DataFrame, outages: pd.DataFrame | None,
                        window_min: int = 15) -> tuple[float, str] | None:
    """The trace's own outage catch-up: the busiest ``window_min`` minutes of requests (all
    endpoints, ``demand_per_minute``: ``minute``, ``requests``) within twice the longest outage's
    length after its recovery, as requests per second; None when the trace has no outage."""
    if outages is None or outages.empty:
        return None
    o = outages.assign(length=outages["end_time"] - outages["start_time"]).sort_values("length").iloc[-1]
    start, end = pd.Timestamp(o["start_time"]), pd.Timestamp(o["end_time"])
    minute = pd.to_datetime(demand["minute"])
    after = demand.loc[((minute >= end) & (minute < end + 2 * (end - start))).to_numpy(), "requests"].to_numpy()
    if after.size == 0:
        return None
    w = max(1, min(int(window_min), after.size))
    busiest = float(np.convolve(after, np.ones(w), mode="valid").max())
    hours = (end - start) / pd.Timedelta(hours=1)
    return busiest / (w * 60.0), f"outage catch-up (the trace's {hours:g} h outage, busiest {w} min after it)"


def _check(cal: PlatformCalibration, config: PlatformConfig, rate: float, mix: Mapping[str, float],
           objectives: Objectives, seed: int) -> tuple[bool, pd.DataFrame, pd.DataFrame]:
    duration = min(SIM_MAX_S, max(30.0, SIM_REQUESTS / rate))
    arrivals = arrivals_at_rate(rate, mix, duration, seed)
    run = simulate_platform(arrivals, config, cal, seed, warmup_s=min(5.0, duration / 10))
    ep, res = endpoint_summary(run), resource_summary(run)
    ok = True
    for r in ep.itertuples():
        if r.endpoint == "all" or r.requests < 20:
            continue
        ok &= bool(r.p95_ms <= objectives.limit_ms(r.endpoint))
    ok &= bool((res["utilisation"] < 1.0).all())
    return ok, ep, res


def smallest_config(cal: PlatformCalibration, rate: float, mix: Mapping[str, float], objectives: Objectives,
                    seed: int = 0, base: PlatformConfig | None = None) -> dict:
    """The smallest (cores = workers, DB pool) meeting the objectives at rate × (1 + headroom)."""
    base = base or PlatformConfig()
    test_rate = rate * (1.0 + objectives.headroom)
    need = capacity_per_s(cal, dataclasses.replace(base, cores=1, workers=1, db_connections=1), mix)["per_resource"]
    min_cores = test_rate / min(need["cpu_cores"], need.get("workers:shared", np.inf))
    min_pool = test_rate / need["db_connections"] if np.isfinite(need["db_connections"]) else 0.0
    cores_list = [c for c in CORE_STEPS if c >= min_cores] or [CORE_STEPS[-1]]
    pools = [p for p in POOL_STEPS if p >= min_pool] or [POOL_STEPS[-1]]
    for cores in cores_list:
        for pool in pools[:3]:  # a bigger pool beyond three steps past the bound does not rescue the cores
            config = dataclasses.replace(base, cores=cores, workers=cores, db_connections=pool,
                                         triage_workers=max(1, cores // 2))
            ok, _, _ = _check(cal, config, test_rate, mix, objectives, seed)
            if ok:
                _, ep, res = _check(cal, config, rate, mix, objectives, seed)
                top = res.sort_values("utilisation", ascending=False).iloc[0]
                worst = ep[ep["endpoint"] != "all"].sort_values("p95_ms", ascending=False).iloc[0]
                return {"cores": cores, "workers": cores, "db_connections": pool,
                        "triage_workers": config.triage_workers, "meets": True,
                        "bottleneck": str(top["resource"]), "bottleneck_utilisation": float(top["utilisation"]),
                        "p95_submit_ms": float(ep.set_index("endpoint")["p95_ms"].get("submit_measurement", np.nan)),
                        "worst_endpoint": str(worst["endpoint"]), "worst_p95_ms": float(worst["p95_ms"])}
    return {"cores": None, "workers": None, "db_connections": None, "triage_workers": None, "meets": False,
            "bottleneck": "cpu_cores", "bottleneck_utilisation": np.nan, "p95_submit_ms": np.nan,
            "worst_endpoint": "", "worst_p95_ms": np.nan}


def recommend(cal: PlatformCalibration, loads: pd.DataFrame, mix: Mapping[str, float], objectives: Objectives,
              seed: int = 0, on_done: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per design load (:func:`design_loads`) with its smallest configuration."""
    rows = []
    for r in loads.to_dict("records"):
        rows.append({**r, **smallest_config(cal, r["rate_per_s"], mix, objectives, seed)})
        if on_done:
            on_done()
    return pd.DataFrame(rows)


def first_to_saturate(table: pd.DataFrame) -> str:
    """The resource named bottleneck most often (ties: at the largest load)."""
    t = table.dropna(subset=["bottleneck"])
    if t.empty:
        return ""
    counts = t["bottleneck"].value_counts()
    top = counts[counts == counts.max()].index
    return str(t[t["bottleneck"].isin(top)].sort_values("rate_per_s").iloc[-1]["bottleneck"])


__all__ = ["Objectives", "design_loads", "endpoint_mix", "first_to_saturate", "production_calibration",
           "recommend", "smallest_config"]
