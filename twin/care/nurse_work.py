"""Nurse work: care teams working their worklists during working hours (SimPy).

Each care team has ``nurses`` and one worklist, served by priority (red, then yellow, then routine
review) and first-come-first-served within a priority, as the FUT clinician app sorts Tasks by
``-priority``. Alerts arrive when a flagged session is uploaded; routine review of every citizen's
data is released at the start of the team's review days in half-hour blocks. A free nurse on shift
takes the next item and works it to the end (a nurse finishes the item in hand after the shift
ends); nobody starts work off shift.

SimPy is the event scheduler: one feeder process releases the work items at their times, one shift
process wakes every team at the start of each shift, and each item in service is one timeout whose
callback frees the nurse. That keeps the event count at about two per item, so a year of 10,000
citizens' alerts takes well under a second.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import simpy

from twin.care.calendar import ShiftCalendar

PRIORITY_RED, PRIORITY_YELLOW, PRIORITY_ROUTINE = 0, 1, 2
WORK_KINDS = ("triage_red", "triage_yellow", "routine_review")


@dataclass
class WorkItems:
    """The work to do, one entry per item, sorted by ``release_min``."""

    team: np.ndarray  # int team index
    release_min: np.ndarray  # when the item enters the worklist (minutes from run start)
    priority: np.ndarray  # PRIORITY_*
    service_min: np.ndarray  # nurse time it takes

    def __len__(self) -> int:
        return len(self.team)


@dataclass
class WorkDone:
    start_min: np.ndarray  # when a nurse took the item (NaN: still waiting at the end of the run)
    end_min: np.ndarray
    nurse: np.ndarray  # index of the nurse within the team (-1 if never started)
    backlog_team: np.ndarray  # per (team, shift start): items waiting when the shift began
    backlog_min: np.ndarray
    backlog_items: np.ndarray
    backlog_work_min: np.ndarray


class _Team:
    __slots__ = ("env", "calendar", "free", "queue", "items", "done", "waiting_work_min")

    def __init__(self, env: simpy.Environment, nurses: int, calendar: ShiftCalendar, items: WorkItems,
                 done: WorkDone) -> None:
        self.env, self.calendar, self.items, self.done = env, calendar, items, done
        self.free = list(range(nurses - 1, -1, -1))  # a stack: nurse 0 is taken first
        self.queue: list[tuple[int, float, int]] = []
        self.waiting_work_min = 0.0

    def arrive(self, i: int) -> None:
        heapq.heappush(self.queue, (int(self.items.priority[i]), float(self.items.release_min[i]), i))
        self.waiting_work_min += float(self.items.service_min[i])
        self.dispatch()

    def dispatch(self) -> None:
        if not self.free or not self.queue or not self.calendar.on_shift(self.env.now):
            return
        while self.free and self.queue:
            _, _, i = heapq.heappop(self.queue)
            nurse = self.free.pop()
            service = float(self.items.service_min[i])
            self.waiting_work_min -= service
            self.done.start_min[i] = self.env.now
            self.done.nurse[i] = nurse
            ev = self.env.timeout(service)
            ev.callbacks.append(lambda _ev, i=i, nurse=nurse: self._finish(i, nurse))

    def _finish(self, i: int, nurse: int) -> None:
        self.done.end_min[i] = self.env.now
        self.free.append(nurse)
        self.dispatch()


def simulate_nurse_work(items: WorkItems, nurses_per_team: np.ndarray, calendar: ShiftCalendar,
                        horizon_min: float) -> WorkDone:
    """Run the teams' worklists until ``horizon_min``; items not finished by then stay open (NaN)."""
    n = len(items)
    if n and np.any(np.diff(items.release_min) < 0):
        raise ValueError("work items must be sorted by release_min")
    done = WorkDone(np.full(n, np.nan), np.full(n, np.nan), np.full(n, -1, dtype=np.int32),
                    *([] for _ in range(4)))
    env = simpy.Environment()
    teams = [_Team(env, int(c), calendar, items, done) for c in nurses_per_team]

    def feeder():
        release, team = items.release_min, items.team
        for i in range(n):
            t = release[i]
            if t >= horizon_min:
                return
            if t > env.now:
                yield env.timeout(t - env.now)
            teams[team[i]].arrive(i)

    def shifts():
        for t in calendar.shift_starts(horizon_min):
            if t >= horizon_min:
                return
            if t > env.now:
                yield env.timeout(t - env.now)
            for k, team in enumerate(teams):
                done.backlog_team.append(k)
                done.backlog_min.append(t)
                done.backlog_items.append(len(team.queue))
                done.backlog_work_min.append(team.waiting_work_min)
                team.dispatch()

    env.process(feeder())
    if not calendar.always_on:
        env.process(shifts())
    env.run(until=horizon_min)
    done.backlog_team = np.array(done.backlog_team, dtype=np.int32)
    done.backlog_min = np.array(done.backlog_min, dtype=float)
    done.backlog_items = np.array(done.backlog_items, dtype=np.int32)
    done.backlog_work_min = np.array(done.backlog_work_min, dtype=float)
    return done
