"""Request arrivals for the platform model: from the session trace, or Poisson at a fixed rate.

The platform model is an **open model**: requests arrive at given times whatever the platform's
state, as citizens open the app whether or not the server is slow. (A *closed* model, like a load
generator with a fixed number of users, would slow its own arrivals down when the server slows and
so hide overload.) Arrivals are a DataFrame with one row per request: ``time_s`` (seconds from the
start of the window, sorted) and ``endpoint`` (a name of :data:`twin.api_calls.ENDPOINTS`).

Two sources:

* :func:`arrivals_from_trace` expands the twin's session trace, like
  :func:`twin.trace.demand_per_minute` does but at millisecond resolution: each session or
  clinician action makes the calls of its call sequence at the time of their phase (``start``,
  ``upload``, ``end``); a duplicate upload repeats ``submit_measurement``; a routine review block
  spreads its per-citizen calls evenly over the block.
* :func:`arrivals_at_rate` draws Poisson arrivals at a constant rate with a fixed endpoint mix;
  consecutive calls with ``start_s`` build a step load for a scalability curve.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from twin.api_calls import CALL_SEQUENCES, ENDPOINTS, ROUTINE_REVIEW_PER_CITIZEN
from twin.rng import Streams

ENDPOINT_NAMES: tuple[str, ...] = tuple(ENDPOINTS)


def _frame(time_s: np.ndarray, endpoint_codes: np.ndarray) -> pd.DataFrame:
    order = np.argsort(time_s, kind="stable")
    return pd.DataFrame({
        "time_s": np.asarray(time_s, dtype=float)[order],
        "endpoint": pd.Categorical.from_codes(np.asarray(endpoint_codes, dtype=np.int16)[order],
                                              categories=list(ENDPOINT_NAMES)),
    })


def arrivals_from_trace(
    sessions_df: pd.DataFrame,
    clinician_actions_df: pd.DataFrame,
    window_start: object,
    window_end: object,
    speedup: float = 1.0,
    call_spacing_s: float = 0.0,
    outages: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Expand trace rows into requests whose phase time falls in ``[window_start, window_end)``.

    ``time_s`` is ``(phase time - window_start) / speedup``: ``speedup=60`` replays an hour of
    trace in a minute. Calls of one phase share the phase's instant unless ``call_spacing_s`` puts
    the k-th call ``k × call_spacing_s`` later (a client's think time, not sped up). A session
    opened during one of ``outages`` (``start_time``, ``end_time``: the trace's outages.parquet)
    makes its start calls when it uploads, as in ``trace.demand_per_minute``: the app could not
    log in before.
    """
    start, end = pd.Timestamp(window_start), pd.Timestamp(window_end)
    if not end > start:
        raise ValueError(f"window_end ({end}) must be after window_start ({start})")
    if not (np.isfinite(speedup) and speedup > 0):
        raise ValueError(f"speedup must be > 0, got {speedup!r}")
    if not (np.isfinite(call_spacing_s) and call_spacing_s >= 0):
        raise ValueError(f"call_spacing_s must be >= 0, got {call_spacing_s!r}")
    for name, df, cols in (("sessions_df", sessions_df, ("start_time", "upload_time", "duplicate_time")),
                           ("clinician_actions_df", clinician_actions_df,
                            ("start_time", "end_time", "call_sequence", "citizens_reviewed"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{name}: missing column(s) {', '.join(missing)} (see docs/TRACE.md)")

    start_ns, end_ns = start.value, end.value
    times: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    code = {name: i for i, name in enumerate(ENDPOINT_NAMES)}

    def add(at: pd.Series | np.ndarray, endpoint: str, order: int) -> None:
        ns = pd.to_datetime(pd.Series(at)).to_numpy("datetime64[ns]").astype("int64")
        valid = pd.notna(pd.Series(at)).to_numpy()
        keep = valid & (ns >= start_ns) & (ns < end_ns)
        t = (ns[keep] - start_ns) / 1e9 / speedup + order * call_spacing_s
        times.append(t)
        codes.append(np.full(t.size, code[endpoint], dtype=np.int16))

    def add_sequence(sequence: str, phase_times: Mapping[str, pd.Series]) -> None:
        order_in_phase: dict[str, int] = {}
        for endpoint, phase in CALL_SEQUENCES[sequence]:
            k = order_in_phase.get(phase, 0)
            add(phase_times[phase], endpoint, k)
            order_in_phase[phase] = k + 1

    s = sessions_df
    session_start = s["start_time"]
    if outages is not None and len(outages):
        offline = np.zeros(len(s), dtype=bool)
        for o in outages.itertuples():
            offline |= ((s["start_time"] >= o.start_time) & (s["start_time"] < o.end_time)).to_numpy()
        session_start = s["start_time"].where(~offline, s["upload_time"])
    add_sequence("citizen_submit", {"start": session_start, "upload": s["upload_time"]})
    add(s["duplicate_time"], "submit_measurement", 0)  # the idempotent repeat of an upload

    w = clinician_actions_df
    sequence = w["call_sequence"].astype(str)
    for name in ("clinician_triage_yellow", "clinician_triage_red", "clinician_routine_review"):
        rows = w[(sequence == name).to_numpy()]
        add_sequence(name, {"start": rows["start_time"], "end": rows["end_time"]})
        if name == "clinician_routine_review" and len(rows):
            # One citizen after another, spread evenly over the block (as trace.demand_per_minute does).
            done = rows["start_time"].notna() & rows["end_time"].notna()
            rows = rows[done.to_numpy()]
            reviewed = rows["citizens_reviewed"].to_numpy(dtype=np.int64)
            first = np.repeat(np.cumsum(reviewed) - reviewed, reviewed)
            k = np.arange(reviewed.sum()) - first
            t0 = np.repeat(pd.to_datetime(rows["start_time"]).to_numpy("datetime64[ns]").astype("int64"), reviewed)
            span = np.repeat((pd.to_datetime(rows["end_time"]) - pd.to_datetime(rows["start_time"]))
                             .to_numpy("timedelta64[ns]").astype("int64"), reviewed)
            at = (t0 + (k + 0.5) / np.repeat(reviewed, reviewed) * span).astype("int64").astype("datetime64[ns]")
            for order, endpoint in enumerate(ROUTINE_REVIEW_PER_CITIZEN):
                add(at, endpoint, order)

    return _frame(np.concatenate(times), np.concatenate(codes))


def _check_mix(mix: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    if not mix:
        raise ValueError("mix is empty: give each endpoint's share of the requests, e.g. {'submit_measurement': 1.0}")
    unknown = sorted(set(mix) - set(ENDPOINTS))
    if unknown:
        raise ValueError(f"mix: unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(ENDPOINTS)}")
    names = list(mix)
    shares = np.array([mix[n] for n in names], dtype=float)
    if np.any(~np.isfinite(shares)) or np.any(shares < 0):
        raise ValueError(f"mix: shares must be finite and >= 0, got {dict(mix)}")
    if abs(shares.sum() - 1.0) > 1e-6:
        raise ValueError(f"mix: shares must sum to 1, they sum to {shares.sum():.6g}")
    return names, shares / shares.sum()


def arrivals_at_rate(
    rate_per_s: float,
    mix: Mapping[str, float],
    duration_s: float,
    seed: int,
    start_s: float = 0.0,
) -> pd.DataFrame:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s`` from ``start_s``, endpoints drawn by ``mix``.

    Uses the order-statistics property of the Poisson process: given N ~ Poisson(rate × duration)
    arrivals in an interval, their times are N sorted uniform points. Same seed, same arrivals.
    """
    if not (np.isfinite(rate_per_s) and rate_per_s >= 0):
        raise ValueError(f"rate_per_s must be >= 0, got {rate_per_s!r}")
    if not (np.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration_s must be > 0, got {duration_s!r}")
    names, shares = _check_mix(mix)
    streams = Streams(seed)
    rng_time, rng_mix = streams.get("platform.arrival_times"), streams.get("platform.arrival_mix")
    n = int(rng_time.poisson(rate_per_s * duration_s))
    time_s = start_s + np.sort(rng_time.random(n)) * duration_s
    chosen = rng_mix.choice(len(names), size=n, p=shares)
    codes = np.array([ENDPOINT_NAMES.index(nm) for nm in names], dtype=np.int16)[chosen]
    return _frame(time_s, codes)


def endpoint_mix(arrivals: pd.DataFrame) -> dict[str, float]:
    """Each endpoint's share of the requests in ``arrivals`` (e.g. a peak hour's mix for a step load)."""
    if len(arrivals) == 0:
        raise ValueError("arrivals is empty: no mix to take")
    counts = arrivals["endpoint"].astype(str).value_counts()
    return {name: float(c / counts.sum()) for name, c in counts.items()}
