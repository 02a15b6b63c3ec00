"""What a platform run says: latency per endpoint, and how busy and how queued each resource was.

Statistics are taken over the run's window ``[window_start_s, window_end_s]``:

* **per endpoint** — requests *arriving* in the window: count, mean and p50/p95/p99/max latency,
  mean queueing (latency minus service), and throughput = requests *completed* in the window per
  second of window;
* **per resource** — CPU cores, each worker pool, the DB connection pool and the async worker
  pools: utilisation = busy time in the window ÷ (capacity × window length), the time-averaged
  and the maximum number waiting, and the mean wait of the jobs that queued there.

Busy and waiting periods are intervals ``[from, to)`` of the records (e.g. a request holds a core
from ``start_s`` to ``cpu_end_s``), clipped to the window, so nothing has to be counted during the
run itself. By Little's law the time-averaged queue length equals arrival rate × mean wait.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from twin.platform.model import PlatformRun

PERCENTILES = (50, 95, 99)


def _clip(start: np.ndarray, end: np.ndarray, w0: float, w1: float) -> tuple[np.ndarray, np.ndarray]:
    s = np.clip(np.asarray(start, dtype=float), w0, w1)
    e = np.clip(np.asarray(end, dtype=float), w0, w1)
    keep = np.isfinite(s) & np.isfinite(e) & (e > s)  # zero-length: got the resource at once, never queued
    return s[keep], e[keep]


def interval_load(start: np.ndarray, end: np.ndarray, w0: float, w1: float) -> tuple[float, int]:
    """Time-averaged and maximum number of open intervals ``[start, end)`` within ``[w0, w1]``."""
    s, e = _clip(start, end, w0, w1)
    if s.size == 0:
        return 0.0, 0
    times = np.concatenate([s, e])
    steps = np.concatenate([np.ones(s.size, np.int64), -np.ones(e.size, np.int64)])
    order = np.lexsort((steps, times))  # at equal times close before open: touching intervals don't overlap
    return float((e - s).sum() / (w1 - w0)), int(np.cumsum(steps[order]).max())


def endpoint_summary(run: PlatformRun) -> pd.DataFrame:
    """One row per endpoint (plus ``all``): count, throughput_per_s, latency mean/p50/p95/p99/max in ms."""
    r = run.requests
    w0, w1 = run.window_start_s, run.window_end_s
    arrived = r[(r["arrival_s"] >= w0) & (r["arrival_s"] <= w1)]
    done = r[(r["end_s"] >= w0) & (r["end_s"] <= w1)]
    rows = []
    groups = [(str(name), g) for name, g in arrived.groupby("endpoint", observed=True)] + [("all", arrived)]
    for name, g in groups:
        lat = g["latency_ms"].to_numpy()
        completed = len(done) if name == "all" else int((done["endpoint"] == name).sum())
        row = {"endpoint": name, "requests": len(g), "throughput_per_s": completed / (w1 - w0)}
        if len(g) == 0:  # nothing arrived in the window: no latency to describe
            row.update({k: np.nan for k in ("mean_ms", *(f"p{p}_ms" for p in PERCENTILES), "max_ms",
                                             "mean_queueing_ms")})
            rows.append(row)
            continue
        row["mean_ms"] = float(lat.mean())
        for p, v in zip(PERCENTILES, np.percentile(lat, PERCENTILES), strict=True):
            row[f"p{p}_ms"] = float(v)
        row["max_ms"] = float(lat.max())
        row["mean_queueing_ms"] = float((lat - g["cpu_ms"] - g["db_ms"]).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def resource_summary(run: PlatformRun) -> pd.DataFrame:
    """One row per resource: capacity, utilisation, mean and max queue length, mean wait (ms) of those who waited."""
    r, a, cfg = run.requests, run.async_jobs, run.config
    w0, w1 = run.window_start_s, run.window_end_s
    has_db = r["db_ms"].to_numpy() > 0

    def cat(*arrays) -> np.ndarray:
        return np.concatenate([np.asarray(x, dtype=float) for x in arrays])

    # resource -> (capacity, busy intervals, waiting intervals)
    core_busy = [(r["start_s"], r["cpu_end_s"]), (a["start_s"], a["end_s"])]
    core_wait = [(r["worker_s"], r["start_s"]), (a["worker_s"], a["start_s"])]
    if cfg.db_on_app_cores:
        core_busy.append((r["db_core_s"][has_db], r["end_s"][has_db]))
        core_wait.append((r["db_start_s"][has_db], r["db_core_s"][has_db]))
    resources = {"cpu_cores": (cfg.cores, core_busy, core_wait)}
    for pool, size in cfg.worker_pools().items():
        mine = (r["pool"] == pool).to_numpy()
        resources[f"workers:{pool}"] = (size, [(r["worker_s"][mine], r["cpu_end_s"][mine])],
                                        [(r["arrival_s"][mine], r["worker_s"][mine])])
    db_hold_end = r["end_s"][has_db]
    resources["db_connections"] = (cfg.db_connections, [(r["db_start_s"][has_db], db_hold_end)],
                                   [(r["cpu_end_s"][has_db], r["db_start_s"][has_db])])
    for kind, size in (("triage", cfg.triage_workers), ("audit", cfg.audit_workers)):
        mine = (a["kind"] == kind).to_numpy()
        resources[f"{kind}_workers"] = (size, [(a["worker_s"][mine], a["end_s"][mine])],
                                        [(a["ready_s"][mine], a["worker_s"][mine])])

    rows = []
    for name, (capacity, busy, wait) in resources.items():
        busy_mean, _ = interval_load(cat(*(b for b, _ in busy)), cat(*(e for _, e in busy)), w0, w1)
        ws, we = cat(*(b for b, _ in wait)), cat(*(e for _, e in wait))
        queue_mean, queue_max = interval_load(ws, we, w0, w1)
        waited = (we - ws)[(we > ws) & (ws >= w0) & (ws <= w1)]
        rows.append({"resource": name, "capacity": capacity, "utilisation": busy_mean / capacity,
                     "mean_queue_length": queue_mean, "max_queue_length": queue_max,
                     "jobs_waited": int(waited.size),
                     "mean_wait_of_waiting_ms": float(waited.mean() * 1000.0) if waited.size else 0.0})
    return pd.DataFrame(rows)


def summarise(run: PlatformRun) -> dict[str, pd.DataFrame]:
    """Both tables, keyed ``endpoints`` and ``resources``, ready to write as tidy files."""
    return {"endpoints": endpoint_summary(run), "resources": resource_summary(run)}
