"""Trace → replay schedule: windows, events in time order, the split across workers, polls."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loadtests import schedule as sc
from loadtests.schedule import Part, Trace, Window


def day_window(trace: Trace) -> Window:
    return sc.resolve_window("monday", trace)


def test_peak_hour_is_the_busiest_60_minutes(pilot_trace):
    w = sc.resolve_window("peak-hour", pilot_trace)
    assert w.duration_s == 3600
    per_min = pilot_trace.demand.set_index("minute")["requests"]
    inside = per_min[(per_min.index >= w.start) & (per_min.index < w.end)].sum()
    rolling = per_min.rolling(60).sum().max()
    assert inside == rolling


def test_monday_and_january_week(pilot_trace):
    m = sc.resolve_window("monday", pilot_trace)
    assert m.start.day_of_week == 0 and m.start == m.start.normalize() and m.duration_s == 86_400
    per_day = pilot_trace.demand.set_index("minute")["requests"].resample("D").sum()
    assert per_day[m.start] == per_day[per_day.index.day_of_week == 0].max()
    j = sc.resolve_window("january-week", pilot_trace)
    assert j.start.month == 1 and j.start.day_of_week == 0 and j.duration_s == 7 * 86_400


def test_outage_window_needs_an_outage(pilot_trace):
    with pytest.raises(ValueError, match="no outage"):
        sc.resolve_window("outage", pilot_trace)
    start = pd.Timestamp("2026-03-03 06:00")
    outages = pd.DataFrame({"start_time": [start], "end_time": [start + pd.Timedelta(hours=6)]})
    w = sc.resolve_window("outage", Trace(pilot_trace.sessions, pilot_trace.actions, pilot_trace.demand,
                                          pilot_trace.citizens, outages))
    assert (w.start, w.end) == (start, start + pd.Timedelta(hours=12))  # the outage and its catch-up


@pytest.mark.parametrize("spec,message", [
    ("rush-hour", "use one of"), ("2026-03-02T10:00..2026-03-02T09:00", "after START"),
    ("2020-01-01..2020-01-02", "covers"), ("x..y", "window"),
])
def test_bad_windows_are_refused_with_the_reason(pilot_trace, spec, message):
    with pytest.raises(ValueError, match=message):
        sc.resolve_window(spec, pilot_trace)


def test_citizen_events_are_the_trace_calls_in_the_window_in_order(pilot_trace):
    w = day_window(pilot_trace)
    events = sc.citizen_events(pilot_trace, w)
    assert events == sorted(events) and all(0 <= e.at_s < w.duration_s for e in events)
    s = pilot_trace.sessions
    in_day = lambda col: ((s[col] >= w.start) & (s[col] < w.end)).sum()  # noqa: E731
    kinds = pd.Series([e.kind for e in events]).value_counts()
    assert kinds.get(sc.SESSION_START, 0) == in_day("start_time") > 0
    assert kinds.get(sc.UPLOAD, 0) == in_day("upload_time")
    assert kinds.get(sc.DUPLICATE, 0) == in_day("duplicate_time")
    first = min(e for e in events if e.kind == sc.SESSION_START)
    row = s[s["session_id"] == first.key].iloc[0]
    assert first.at_s == pytest.approx((row["start_time"] - w.start).total_seconds())


@pytest.mark.parametrize("workers", [2, 3])
def test_split_across_workers_is_a_partition_and_keeps_citizens_together(pilot_trace, workers):
    w = sc.resolve_window("january-week", pilot_trace)
    whole_c, whole_k = sc.citizen_events(pilot_trace, w), sc.clinician_events(pilot_trace, w)
    parts_c = [sc.citizen_events(pilot_trace, w, Part(i, workers)) for i in range(workers)]
    parts_k = [sc.clinician_events(pilot_trace, w, Part(i, workers)) for i in range(workers)]
    assert sorted(e for p in parts_c for e in p) == whole_c
    assert sorted(e for p in parts_k for e in p) == whole_k
    citizen_of = dict(zip(pilot_trace.sessions["session_id"], pilot_trace.sessions["citizen_id"], strict=True))
    owners = [{citizen_of[e.key] for e in p} for p in parts_c]
    assert all(not (owners[i] & owners[j]) for i in range(workers) for j in range(i + 1, workers))
    assert sc.citizen_events(pilot_trace, w, Part(1, workers)) == parts_c[1]  # the same split every time
    with pytest.raises(ValueError):
        Part(workers, workers)


def test_clinician_events_follow_the_actions(pilot_trace):
    w = day_window(pilot_trace)
    events = sc.clinician_events(pilot_trace, w)
    assert events == sorted(events)
    a = pilot_trace.actions
    started = a[(a["start_time"] >= w.start) & (a["start_time"] < w.end)]
    triage = started[started["kind"] != "routine_review"]
    kinds = pd.Series([e.kind for e in events]).value_counts()
    assert kinds.get(sc.TRIAGE_START, 0) == len(triage)
    assert kinds.get(sc.TRIAGE_END, 0) == (triage["end_time"] < w.end).sum()
    review = started[started["kind"] == "routine_review"]
    assert kinds.get(sc.REVIEW_START, 0) == len(review)
    per_block = pd.Series([e.key for e in events if e.kind == sc.REVIEW_CITIZEN]).value_counts()
    for action_id, n in per_block.items():  # every reviewed citizen within the block (all end in the day here)
        row = review[review["action_id"] == action_id].iloc[0]
        assert n == row["citizens_reviewed"]


def test_polls_follow_the_period_while_enrolled_and_are_deterministic(pilot_trace):
    w = Window("custom", pd.Timestamp("2026-03-02 08:00"), pd.Timestamp("2026-03-02 10:00"))
    c = pilot_trace.citizens
    enrolled = c[(c["enrol_day"] * 86400 <= (w.start - pilot_trace.run_start).total_seconds())
                 & (c["exit_day"] * 86400 > (w.end - pilot_trace.run_start).total_seconds())]
    pollers = {int(cid): 15.0 for cid in enrolled["citizen_id"][:10]}
    events = list(sc.poll_events(pilot_trace, w, pollers, seed=3))
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)
    assert events == list(sc.poll_events(pilot_trace, w, pollers, seed=3))
    per_citizen = pd.Series([e.key for e in events]).value_counts()
    assert set(per_citizen.index) == set(pollers) and set(per_citizen) == {8}  # 2 h / 15 min
    for cid in pollers:
        times = np.array([e.at_s for e in events if e.key == cid])
        assert np.allclose(np.diff(times), 900.0)
    halves = [list(sc.poll_events(pilot_trace, w, pollers, seed=3, part=Part(i, 2))) for i in range(2)]
    assert sorted(halves[0] + halves[1]) == events
