"""From the session trace to a deterministic replay schedule (pure: no Locust, no HTTP, no clock).

The replay is an **open model**: every call the trace holds happens at its trace time (divided by
the speed-up), whatever the server's latency; a slow server makes the load generator late, never
the load lighter. This module turns a trace window into time-ordered :class:`Event` lists:

* citizen events — ``session_start`` (login, re-scope, episode search, procedures, thresholds),
  ``upload`` and ``duplicate`` (``$submit-measurement``), and the app's background ``message_poll``;
* clinician events — ``triage_start`` (worklist, claim, the citizen's measurements) and
  ``triage_end`` (assessment, completion, message for red) of a red or yellow alert,
  ``review_start`` (the roster) and ``review_citizen`` (one citizen's measurements) of routine review.

Every event carries ``at_s``, seconds of *trace* time since the window start. In distributed mode
each worker replays its own :class:`Part`: citizen events split by citizen id (a citizen's session,
upload and polls stay on one worker, so the app's cached token and procedures stay with them) and
clinician events by action id, both modulo the number of workers.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SESSION_START, UPLOAD, DUPLICATE, POLL = "session_start", "upload", "duplicate", "message_poll"
TRIAGE_START, TRIAGE_END, REVIEW_START, REVIEW_CITIZEN = "triage_start", "triage_end", "review_start", "review_citizen"
CITIZEN_KINDS = (SESSION_START, UPLOAD, DUPLICATE, POLL)
CLINICIAN_KINDS = (TRIAGE_START, TRIAGE_END, REVIEW_START, REVIEW_CITIZEN)
NAMED_WINDOWS = ("peak-hour", "monday", "january-week", "outage")
S_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True, order=True)
class Event:
    at_s: float  # trace seconds since the window start
    kind: str
    key: int  # session_id (citizen kinds but poll), citizen_id (poll), action_id (clinician kinds)
    sub: int = 0  # review_citizen: which citizen of the block (0, 1, …); otherwise 0


@dataclass(frozen=True)
class Part:
    """This worker's share of the schedule: ``index`` of ``count`` workers."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not (self.count >= 1 and 0 <= self.index < self.count):
            raise ValueError(f"worker {self.index} of {self.count}: need 0 <= index < count")

    def mine(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64) % self.count == self.index


@dataclass(frozen=True)
class Window:
    name: str
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    def seconds(self, times: pd.Series | np.ndarray) -> np.ndarray:
        """Trace timestamps → seconds since the window start (NaN for NaT)."""
        t = pd.to_datetime(pd.Series(times)).to_numpy(dtype="datetime64[ms]")
        out = (t - np.datetime64(self.start, "ms")).astype("timedelta64[ms]").astype(np.int64) / 1000.0
        return np.where(np.isnat(t), np.nan, out)


@dataclass(frozen=True)
class Trace:
    """The parts of a session trace (docs/TRACE.md) the replay reads."""

    sessions: pd.DataFrame
    actions: pd.DataFrame
    demand: pd.DataFrame
    citizens: pd.DataFrame
    outages: pd.DataFrame | None  # start_time, end_time: only when the scenario had an outage

    @property
    def run_start(self) -> pd.Timestamp:
        return pd.Timestamp(self.demand["minute"].iloc[0])


def load_trace(trace_dir: str | Path) -> Trace:
    """Read the trace files the replay needs (Parquet, read directly: no model code is imported)."""
    d = Path(trace_dir)
    needed = ("sessions.parquet", "clinician_actions.parquet", "demand_per_minute.parquet", "citizens.parquet")
    missing = [f for f in needed if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"{d}: not a session trace (missing {', '.join(missing)}); run `twin run` first")
    outages = pd.read_parquet(d / "outages.parquet") if (d / "outages.parquet").exists() else None
    return Trace(pd.read_parquet(d / "sessions.parquet"), pd.read_parquet(d / "clinician_actions.parquet"),
                 pd.read_parquet(d / "demand_per_minute.parquet", columns=["minute", "requests"]),
                 pd.read_parquet(d / "citizens.parquet", columns=["citizen_id", "enrol_day", "exit_day", "team_id"]),
                 outages)


# ------------------------------------------------------------------------------------ windows
def resolve_window(spec: str, trace: Trace) -> Window:
    """A named window of the trace, or ``START..END`` (ISO timestamps, trace wall clock).

    * ``peak-hour`` — the 60 consecutive minutes with the most requests (earliest on a tie);
    * ``monday`` — the Monday (00:00–24:00) with the most requests;
    * ``january-week`` — the Monday-to-Sunday week starting in January with the most requests;
    * ``outage`` — the trace's first outage and its catch-up: from the outage start for twice its
      length (the backlog of uploads arrives after it ends).
    """
    minute = pd.to_datetime(trace.demand["minute"])
    requests = trace.demand["requests"].to_numpy(dtype=np.int64)
    if spec == "peak-hour":
        if len(requests) < 60:
            raise ValueError("peak-hour: the trace is shorter than an hour")
        per_hour = np.convolve(requests, np.ones(60, dtype=np.int64), mode="valid")
        start = minute.iloc[int(np.argmax(per_hour))]
        return Window(spec, start, start + pd.Timedelta(hours=1))
    if spec in ("monday", "january-week"):
        per_day = pd.Series(requests, index=minute).resample("D").sum()
        if spec == "monday":
            mondays = per_day[(per_day.index.day_of_week == 0)]
            full = mondays[[_whole_day_in(trace, d) for d in mondays.index]]
            if full.empty:
                raise ValueError("monday: the trace holds no whole Monday")
            start = full.idxmax()
            return Window(spec, start, start + pd.Timedelta(days=1))
        weeks = {d: per_day[d:d + pd.Timedelta(days=6)].sum() for d in per_day.index
                 if d.month == 1 and d.day_of_week == 0 and d + pd.Timedelta(days=6) in per_day.index
                 and _whole_day_in(trace, d + pd.Timedelta(days=6))}
        if not weeks:
            raise ValueError("january-week: the trace holds no whole Monday-to-Sunday week starting in January")
        start = max(weeks, key=lambda d: (weeks[d], -d.value))  # the busiest; the earliest on a tie
        return Window(spec, start, start + pd.Timedelta(days=7))
    if spec == "outage":
        if trace.outages is None or trace.outages.empty:
            raise ValueError("outage: this trace has no outage (the scenario simulated none); "
                             "name another window or give START..END")
        o = trace.outages.sort_values("start_time").iloc[0]
        start, end = pd.Timestamp(o["start_time"]), pd.Timestamp(o["end_time"])
        return Window(spec, start, end + (end - start))
    m = re.fullmatch(r"\s*(\S+)\s*\.\.\s*(\S+)\s*", spec)
    if not m:
        raise ValueError(f"window {spec!r}: use one of {', '.join(NAMED_WINDOWS)} or START..END "
                         "(e.g. 2026-01-05T08:00..2026-01-05T09:00)")
    try:
        start, end = pd.Timestamp(m[1]), pd.Timestamp(m[2])
    except ValueError as e:
        raise ValueError(f"window {spec!r}: {e}") from None
    if end <= start:
        raise ValueError(f"window {spec!r}: END must be after START")
    first, last = minute.iloc[0], minute.iloc[-1] + pd.Timedelta(minutes=1)
    if start < first or end > last:
        raise ValueError(f"window {spec!r}: the trace covers {first} .. {last}")
    return Window("custom", start, end)


def _whole_day_in(trace: Trace, day: pd.Timestamp) -> bool:
    minute = trace.demand["minute"]
    return bool(minute.iloc[0] <= day and day + pd.Timedelta(days=1) <= minute.iloc[-1] + pd.Timedelta(minutes=1))


# ------------------------------------------------------------------------------------- events
def citizen_events(trace: Trace, window: Window, part: Part = Part()) -> list[Event]:
    """Session starts, uploads and duplicates in the window, for this part's citizens, in time order.

    Each call falls at its own trace time; an upload whose session started before the window is
    replayed too (the app logs in again first: after that long its token has expired). A session
    opened during an outage makes no calls at its start (none reached the platform)."""
    s = trace.sessions
    s = s[part.mine(s["citizen_id"].to_numpy())]
    offline = np.zeros(len(s), dtype=bool)  # sessions opened while the platform was unreachable
    if trace.outages is not None:
        for o in trace.outages.itertuples():
            offline |= ((s["start_time"] >= o.start_time) & (s["start_time"] < o.end_time)).to_numpy()
    events = []
    for kind, column in ((SESSION_START, "start_time"), (UPLOAD, "upload_time"), (DUPLICATE, "duplicate_time")):
        at = window.seconds(s[column])
        inside = (at >= 0) & (at < window.duration_s)
        if kind == SESSION_START:
            inside &= ~offline  # their calls failed at the client; the app logs in again at its upload
        events += [Event(float(a), kind, int(k)) for a, k in zip(at[inside], s["session_id"].to_numpy()[inside],
                                                                 strict=True)]
    events.sort()
    return events


def clinician_events(trace: Trace, window: Window, part: Part = Part()) -> list[Event]:
    """Worklist actions in the window for this part, in time order.

    A triage's end is replayed only with its start (the claim): a Task claimed before the window
    cannot be completed by the replay. Routine review's per-citizen calls are spread evenly over
    the block, as in ``demand_per_minute`` (twin/trace.py)."""
    a = trace.actions
    a = a[part.mine(a["action_id"].to_numpy()) & a["start_time"].notna().to_numpy()]
    start_s, end_s = window.seconds(a["start_time"]), window.seconds(a["end_time"])
    started = (start_s >= 0) & (start_s < window.duration_s)
    ended = started & (end_s >= 0) & (end_s < window.duration_s)
    ids, kinds = a["action_id"].to_numpy(), a["kind"].astype(str).to_numpy()
    reviewed = a["citizens_reviewed"].to_numpy()
    events: list[Event] = []
    for i in np.flatnonzero(started):
        if kinds[i] == "routine_review":
            events.append(Event(float(start_s[i]), REVIEW_START, int(ids[i])))
            n = int(reviewed[i])
            span = (end_s[i] - start_s[i]) if np.isfinite(end_s[i]) else 0.0
            for k in range(n):
                at = start_s[i] + (k + 0.5) / n * span
                if at < window.duration_s:
                    events.append(Event(float(at), REVIEW_CITIZEN, int(ids[i]), k))
        else:
            events.append(Event(float(start_s[i]), TRIAGE_START, int(ids[i])))
            if ended[i]:
                events.append(Event(float(end_s[i]), TRIAGE_END, int(ids[i])))
    events.sort()
    return events


def poll_events(trace: Trace, window: Window, poll_min_by_citizen: dict[int, float], seed: int,
                part: Part = Part()) -> Iterator[Event]:
    """The apps' background inbox polls in the window, lazily and in time order.

    Citizen ``c`` polling every ``P`` minutes polls at ``phase_c + k·P`` (trace time, from the run
    start), ``phase_c`` drawn once from the seed, while enrolled. Lazy, because a chatty app
    multiplies: 1,000 citizens polling each minute for a week are 10 million events."""
    citizens = trace.citizens
    citizens = citizens[part.mine(citizens["citizen_id"].to_numpy())]
    offset_s = (window.start - trace.run_start).total_seconds()
    phase_u = np.random.default_rng([seed, 0x9011]).random(int(trace.citizens["citizen_id"].max()) + 1)
    heap: list[tuple[float, int, float, float]] = []
    for cid, enrol_day, exit_day in citizens[["citizen_id", "enrol_day", "exit_day"]].itertuples(index=False):
        period = poll_min_by_citizen.get(int(cid))
        if period is None:
            continue
        period_s = period * 60.0
        lo = max(enrol_day * S_PER_DAY - offset_s, 0.0)
        hi = min(exit_day * S_PER_DAY - offset_s, window.duration_s)
        if hi <= lo:
            continue
        phase = phase_u[int(cid)] * period_s - offset_s  # the poll times, as seconds since the window start
        first = phase + np.ceil((lo - phase) / period_s) * period_s
        if first < hi:
            heap.append((float(first), int(cid), period_s, float(hi)))
    heapq.heapify(heap)
    while heap:
        at, cid, period_s, hi = heap[0]
        yield Event(at, POLL, cid)
        if at + period_s < hi:
            heapq.heapreplace(heap, (at + period_s, cid, period_s, hi))
        else:
            heapq.heappop(heap)


def merge(*streams) -> Iterator[Event]:
    """Time-ordered merge of event streams (lists or lazy iterators)."""
    return heapq.merge(*streams)
