"""The platform model: the FUT infrastructure as queues, one SimPy process per request.

Each request of an open-model arrival stream (:mod:`twin.platform.arrivals`) goes through:

1. **worker** — wait for a free worker of its pool (one shared pool, or its FUT service's pool);
2. **core** — wait for a CPU core, then hold it (and the worker) for its CPU service time (plus
   the calibration's ``wake_ms`` if the request found a core idle: a server waking from sleep) — in
   ``loop_phases`` equal steps, each queueing for the core anew (an event loop's ready queue);
3. **database** — release worker and core (the worker *awaits* the query asynchronously and may
   serve someone else meanwhile), wait for a pooled connection and hold it for its DB time (also
   holding a core if the database runs on the same host);
4. answer. A ``submit_measurement`` then queues two asynchronous jobs, triage and audit, each
   waiting for its own worker pool and a core. They steal CPU from requests but are not part of
   any request's latency; with ``async_low_priority`` a request waiting for a core goes first.
   With ``triage_batch`` > 1 each triage worker takes up to that many waiting submissions at once
   and holds a core for all of them, as the server's triage worker does in one transaction.

Queues are first-come-first-served. Real cores are time-shared by the OS, not FCFS: for
exponential service both give the same mean response time, and requests here are short bursts,
so FCFS is a fair and much cheaper approximation. Workers share one queue (idle workers accept
first, as uvicorn workers on one socket roughly do).

All service times are drawn before the run, vectorised, in arrival order from named streams
(``platform.request_service``, ``platform.triage``, ``platform.audit``, ``platform.speed`` — the
machine's speed noise, :func:`speed_factors`): the same seed and arrivals
give the same run, and two configurations see the same requests with the same service times
(common random numbers), so their difference is the configuration's, not the dice's. The simulation
clock runs in milliseconds; the records are converted to seconds (times) and ms (durations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import simpy

from twin.api_calls import ENDPOINTS
from twin.platform.calibration import PlatformCalibration
from twin.platform.config import PlatformConfig
from twin.rng import Streams

SUBMIT = "submit_measurement"
REQUEST_PRIORITY, ASYNC_PRIORITY = 0, 1  # SimPy: lower number is served first


@dataclass(frozen=True)
class PlatformRun:
    """The records of one run and the window its statistics are taken over.

    ``requests``: one row per request — ``endpoint``, ``pool``, ``arrival_s``, ``worker_s`` (got a
    worker), ``start_s`` (got a core: service starts), ``cpu_end_s``, ``db_start_s`` (got a
    connection; NaN without DB work), ``db_core_s`` (got a core for DB work, if the DB is on the
    app's cores), ``end_s``, ``cpu_ms``, ``db_ms``, ``latency_ms``.
    ``async_jobs``: one row per triage or audit job — ``kind``, ``request_id``, ``ready_s``,
    ``worker_s``, ``start_s``, ``end_s``, ``service_ms``.
    """

    requests: pd.DataFrame
    async_jobs: pd.DataFrame
    config: PlatformConfig
    window_start_s: float
    window_end_s: float


def _sample_service_times(codes: np.ndarray, calibration: PlatformCalibration,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # One uniform per request drives both parts (comonotone): see twin.platform.service_time.
    u = rng.random(codes.size)
    cpu_ms, db_ms = np.empty(codes.size), np.empty(codes.size)
    names = list(ENDPOINTS)
    for code in np.unique(codes):
        cal = calibration.endpoint(names[code])
        mask = codes == code
        cpu_ms[mask] = cal.cpu_ms.from_uniform(u[mask])
        db_ms[mask] = cal.db_ms.from_uniform(u[mask])
    return cpu_ms, db_ms


def speed_factors(arrival_ms: np.ndarray, cv: float, window_s: float, rng: np.random.Generator) -> np.ndarray:
    """The machine's speed factor for each request: one lognormal draw (mean 1, ``cv``) per
    ``window_s`` window of arrival time (PlatformCalibration.speed_cv); all ones when ``cv`` is 0."""
    if cv <= 0.0 or arrival_ms.size == 0:
        return np.ones(arrival_ms.size)
    window = (arrival_ms / (1000.0 * window_s)).astype(np.int64)
    sigma2 = np.log1p(cv**2)
    return rng.lognormal(-sigma2 / 2.0, np.sqrt(sigma2), int(window[-1]) + 1)[window]


def simulate_platform(
    arrivals: pd.DataFrame,
    config: PlatformConfig,
    calibration: PlatformCalibration,
    seed: int,
    warmup_s: float = 0.0,
    horizon_s: float | None = None,
) -> PlatformRun:
    """Run every request of ``arrivals`` (columns ``time_s``, ``endpoint``) through the platform.

    The run continues until every request and async job is done. Statistics
    (:mod:`twin.platform.summary`) use the window ``[warmup_s, horizon_s]`` — by default up to the
    last arrival — so the empty start and the drain after the last arrival do not dilute them.
    """
    for col in ("time_s", "endpoint"):
        if col not in arrivals.columns:
            raise ValueError(f"arrivals: missing column {col!r} (expected time_s, endpoint)")
    n = len(arrivals)
    if n == 0:
        raise ValueError("arrivals is empty: nothing to simulate")
    arrival_ms = arrivals["time_s"].to_numpy(dtype=float) * 1000.0
    if not np.all(np.isfinite(arrival_ms)) or arrival_ms.min() < 0:
        raise ValueError("arrivals.time_s must be finite and >= 0")
    if np.any(np.diff(arrival_ms) < 0):
        raise ValueError("arrivals.time_s must be sorted (arrivals_from_trace and arrivals_at_rate return them sorted)")
    endpoint = arrivals["endpoint"].astype(str).to_numpy()
    unknown = sorted(set(endpoint) - set(ENDPOINTS))
    if unknown:
        raise ValueError(f"arrivals: unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(ENDPOINTS)}")
    missing = sorted(set(endpoint) - set(calibration.endpoints))
    if missing:
        raise ValueError(f"calibration has no service times for endpoint(s) {', '.join(missing)} used by arrivals")
    last_arrival_s = float(arrival_ms[-1] / 1000.0)
    horizon_s = last_arrival_s if horizon_s is None else float(horizon_s)
    if not 0 <= warmup_s < horizon_s:
        raise ValueError(f"need 0 <= warmup_s < horizon_s, got warmup_s={warmup_s}, horizon_s={horizon_s}")

    name_code = {name: i for i, name in enumerate(ENDPOINTS)}
    codes = np.fromiter((name_code[e] for e in endpoint), dtype=np.int16, count=n)
    streams = Streams(seed)
    cpu_ms, db_ms = _sample_service_times(codes, calibration, streams.get("platform.request_service"))
    cpu_ms *= speed_factors(arrival_ms, calibration.speed_cv, calibration.speed_window_s, streams.get("platform.speed"))
    is_submit = codes == name_code[SUBMIT]
    n_submit = int(is_submit.sum())
    triage_ms = calibration.triage_worker_ms.sample(streams.get("platform.triage"), n_submit)
    audit_ms = calibration.audit_write_ms.sample(streams.get("platform.audit"), n_submit)
    async_jobs = [(kind, times.tolist()) for kind, times in (("triage", triage_ms), ("audit", audit_ms))
                  if not np.all(times == 0)]

    env = simpy.Environment()
    priority = bool(async_jobs) and config.async_low_priority
    cores = simpy.PriorityResource(env, config.cores) if priority else simpy.Resource(env, config.cores)
    pool_names = list(config.worker_pools())
    pools = [simpy.Resource(env, size) for size in config.worker_pools().values()]
    pool_of = np.array([pool_names.index(config.pool_of(name)) for name in ENDPOINTS], dtype=np.int16)[codes]
    db_pool = simpy.Resource(env, config.db_connections)
    async_pools = {"triage": simpy.Resource(env, config.triage_workers),
                   "audit": simpy.Resource(env, config.audit_workers)}
    db_on_cores = config.db_on_app_cores
    phases = config.loop_phases

    # Python lists, not numpy arrays: element stores from the processes are ~3x cheaper.
    nan = float("nan")
    t_worker, t_core, t_cpu_end = [nan] * n, [nan] * n, [nan] * n
    t_db, t_db_core, t_end = [nan] * n, [nan] * n, [nan] * n
    cpu_l, db_l, pool_l, submit_l = cpu_ms.tolist(), db_ms.tolist(), pool_of.tolist(), is_submit.tolist()
    submit_index = (np.cumsum(is_submit) - 1).tolist()  # request i -> its row among submissions
    async_rows: list[tuple[str, int, float, float, float, float, float]] = []

    def core_request(prio: int):
        return cores.request(priority=prio) if priority else cores.request()

    def async_job(kind: str, request_id: int, service_ms: float):
        ready = env.now
        slot = async_pools[kind].request()
        yield slot
        got_worker = env.now
        core = core_request(ASYNC_PRIORITY)
        yield core
        start = env.now
        yield env.timeout(service_ms)
        cores.release(core)
        async_pools[kind].release(slot)
        async_rows.append((kind, request_id, ready, got_worker, start, env.now, service_ms))

    triage_queue: list[tuple[int, float, float]] = []  # (request id, ready at, service ms) awaiting a batch
    triage_idle: list[simpy.Event] = []  # batching triage workers waiting for work

    def triage_worker():
        """One batching triage worker: take up to ``triage_batch`` waiting jobs, run them back to back
        on one core (the server's one transaction), repeat; sleep when there is nothing to do."""
        while True:
            if not triage_queue:
                wake = env.event()
                triage_idle.append(wake)
                yield wake
                continue
            got_worker = env.now
            core = core_request(ASYNC_PRIORITY)
            yield core
            # the batch is what waits when the worker gets the core (the server reads the outbox then)
            batch = triage_queue[:config.triage_batch]
            del triage_queue[:config.triage_batch]
            for request_id, ready, service_ms in batch:
                start = env.now
                yield env.timeout(service_ms)
                async_rows.append(("triage", request_id, ready, got_worker, start, env.now, service_ms))
            cores.release(core)

    batched_triage = config.triage_batch > 1
    if batched_triage:
        for _ in range(config.triage_workers):
            env.process(triage_worker())

    def queue_triage(request_id: int, service_ms: float) -> None:
        triage_queue.append((request_id, env.now, service_ms))
        if triage_idle:
            triage_idle.pop().succeed()

    wake_ms = calibration.wake_ms

    def request(i: int):
        cpu = cpu_l[i]
        if wake_ms and cores.count < cores.capacity and not cores.queue:
            cpu += wake_ms  # an idle core: the server was asleep
        pool = pools[pool_l[i]]
        worker = pool.request()
        yield worker
        t_worker[i] = env.now
        core = core_request(REQUEST_PRIORITY)
        yield core
        t_core[i] = env.now
        if phases == 1:
            yield env.timeout(cpu)
        else:
            step = cpu / phases
            yield env.timeout(step)
            for _ in range(phases - 1):  # back to the end of the ready queue, then the next step
                cores.release(core)
                core = core_request(REQUEST_PRIORITY)
                yield core
                yield env.timeout(step)
        cores.release(core)
        pool.release(worker)
        t_cpu_end[i] = env.now
        db = db_l[i]
        if db > 0.0:
            conn = db_pool.request()
            yield conn
            t_db[i] = env.now
            if db_on_cores:
                core = core_request(REQUEST_PRIORITY)
                yield core
                t_db_core[i] = env.now
                yield env.timeout(db)
                cores.release(core)
            else:
                yield env.timeout(db)
            db_pool.release(conn)
        t_end[i] = env.now
        if submit_l[i]:
            j = submit_index[i]
            for kind, times in async_jobs:
                if kind == "triage" and batched_triage:
                    queue_triage(i, times[j])
                else:
                    env.process(async_job(kind, i, times[j]))

    def arrive():
        at = arrival_ms.tolist()
        for i in range(n):
            gap = at[i] - env.now
            if gap > 0:
                yield env.timeout(gap)
            env.process(request(i))

    env.process(arrive())
    env.run()

    def seconds(values: list[float]) -> np.ndarray:
        return np.asarray(values, dtype=float) / 1000.0

    end = np.asarray(t_end, dtype=float)
    requests = pd.DataFrame({
        "endpoint": pd.Categorical.from_codes(codes, categories=list(ENDPOINTS)),
        "pool": pd.Categorical.from_codes(pool_of, categories=pool_names),
        "arrival_s": arrival_ms / 1000.0,
        "worker_s": seconds(t_worker),
        "start_s": seconds(t_core),
        "cpu_end_s": seconds(t_cpu_end),
        "db_start_s": seconds(t_db),
        "db_core_s": seconds(t_db_core),
        "end_s": end / 1000.0,
        "cpu_ms": cpu_ms,
        "db_ms": db_ms,
        "latency_ms": end - arrival_ms,
    })
    jobs = pd.DataFrame(async_rows, columns=["kind", "request_id", "ready_s", "worker_s", "start_s", "end_s",
                                             "service_ms"])
    for col in ("ready_s", "worker_s", "start_s", "end_s"):
        jobs[col] = jobs[col] / 1000.0
    jobs["kind"] = pd.Categorical(jobs["kind"], categories=["triage", "audit"])
    return PlatformRun(requests, jobs, config, float(warmup_s), horizon_s)
