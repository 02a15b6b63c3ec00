"""Nurse work: care teams working their worklists during working hours (SimPy).

Each care team has nurses (its staffing in FTE: whole nurses plus one part-timer on duty for the
first part of each shift) and one worklist, served by priority (red, then yellow, then routine
review) and first-come-first-served within a priority, as the FUT clinician app sorts Tasks by
``-priority``. Alerts arrive when a flagged session is uploaded; routine review of every citizen's
data is released at the start of the team's review days in half-hour blocks. A free nurse on shift
takes the next item and works it to the end (a nurse finishes the item in hand after the shift
ends); nobody starts work off shift, nor during an outage of the infrastructure (the clinician app
cannot open the worklist then; the item in hand is finished), and at the outage's end the teams
take up their worklists again.

SimPy is the event scheduler: one shift process wakes every team at the start of each shift, each
item in service is one timeout whose callback frees the nurse, and an idle team waits for its next
release with a timeout. Items arriving while the team is busy need no event of their own (see
``_Team``), which keeps a year of 10,000 citizens' work near one event per item.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import simpy

from twin.care.calendar import MINUTES_PER_DAY, ShiftCalendar

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
    """One team's worklist and free nurses. Plain Python lists, not numpy: this runs per item.

    Items enter the worklist *lazily*: an item released while every nurse is busy (or off shift)
    cannot be started before a nurse frees up (or the shift starts), so it is pulled into the
    worklist at that moment, together with everything else released by then — the same choice a
    nurse would make had it arrived in real time. Only a team with an idle nurse on shift waits
    for a release with a timeout of its own. That halves the events per item.
    """

    __slots__ = ("env", "calendar", "outages", "free", "off_duty", "duty_end_min", "queue", "todo", "next_todo",
                 "wake_at", "priority", "release", "service", "start", "end", "nurse", "waiting_work_min")

    def __init__(self, env: simpy.Environment, fte: float, calendar: ShiftCalendar, columns: dict[str, list],
                 todo: list[int], outages: list[tuple[float, float]] = ()) -> None:
        self.env, self.calendar, self.outages = env, calendar, outages
        self.priority, self.release, self.service = columns["priority"], columns["release"], columns["service"]
        self.start, self.end, self.nurse = columns["start"], columns["end"], columns["nurse"]
        nurses = max(1, math.ceil(fte - 1e-9))
        self.free = list(range(nurses - 1, -1, -1))  # a stack: nurse 0 is taken first, the part-timer last
        self.off_duty: list[int] = []
        # Minute of the day each nurse's duty ends: full-timers at the end of the shift, a part-timer
        # (the fraction left of the team's FTE) after that fraction of the shift.
        shift_start, shift_end = calendar.shift_start_hour * 60, calendar.shift_end_hour * 60
        fractions = [1.0] * (nurses - 1) + [fte - (nurses - 1)]
        self.duty_end_min = [shift_start + f * (shift_end - shift_start) for f in fractions]
        self.queue: list[tuple[int, float, int]] = []
        self.todo, self.next_todo = todo, 0  # this team's items by release time; the next not yet pulled
        self.wake_at = float("inf")
        self.waiting_work_min = 0.0

    def pull(self, now: float) -> None:
        """Move every item released by ``now`` into the worklist."""
        todo, k, release = self.todo, self.next_todo, self.release
        while k < len(todo) and release[todo[k]] <= now:
            i = todo[k]
            heapq.heappush(self.queue, (self.priority[i], release[i], i))
            self.waiting_work_min += self.service[i]
            k += 1
        self.next_todo = k

    def work(self) -> None:
        """Pull what has arrived, start what free nurses can, and wait for the next release if idle."""
        now = self.env.now
        self.pull(now)
        if not self.free or not self.calendar.on_shift(now) or self.in_outage(now):
            return  # a shift start or an outage's end calls work() again
        minute_of_day = now % MINUTES_PER_DAY
        while self.free and self.queue:
            if not self.calendar.always_on and minute_of_day >= self.duty_end_min[self.free[-1]]:
                self.off_duty.append(self.free.pop())  # a part-timer whose hours are over today
                continue
            _, _, i = heapq.heappop(self.queue)
            nurse = self.free.pop()
            service = self.service[i]
            self.waiting_work_min -= service
            self.start[i] = now
            self.nurse[i] = nurse
            self.env.timeout(service, (i, nurse)).callbacks.append(self._finish)
        if self.free and self.next_todo < len(self.todo):
            t = self.release[self.todo[self.next_todo]]
            if t < self.wake_at:  # one pending wake-up is enough
                self.wake_at = t
                self.env.timeout(t - now).callbacks.append(self._wake)

    def in_outage(self, now: float) -> bool:
        return any(a <= now < b for a, b in self.outages)

    def _wake(self, _event) -> None:
        self.wake_at = float("inf")
        self.work()

    def _finish(self, event) -> None:
        i, nurse = event.value
        self.end[i] = self.env.now
        self.free.append(nurse)
        self.work()


def simulate_nurse_work(items: WorkItems, fte_per_team: np.ndarray, calendar: ShiftCalendar,
                        horizon_min: float, outages_min: np.ndarray | None = None) -> WorkDone:
    """Run the teams' worklists until ``horizon_min``; items not finished by then stay open (NaN).

    ``fte_per_team`` is each team's staffing in full-time equivalents: 2.3 is two full-time nurses
    and one on duty for the first 30 % of each shift. ``outages_min`` ((k, 2) start and end minutes)
    are outages of the infrastructure: no item is started during one."""
    n = len(items)
    if n and np.any(np.diff(items.release_min) < 0):
        raise ValueError("work items must be sorted by release_min")
    nan = float("nan")
    columns = {"priority": items.priority.tolist(), "release": items.release_min.tolist(),
               "service": items.service_min.tolist(), "start": [nan] * n, "end": [nan] * n, "nurse": [-1] * n}
    backlog: dict[str, list] = {"team": [], "min": [], "items": [], "work_min": []}
    env = simpy.Environment()
    order = np.argsort(items.team, kind="stable")  # stable: each team's items stay in release order
    bounds = np.searchsorted(items.team[order], np.arange(len(fte_per_team) + 1))
    outages = [(float(a), float(b)) for a, b in (outages_min if outages_min is not None else np.empty((0, 2)))]
    teams = [_Team(env, float(f), calendar, columns, order[bounds[k]:bounds[k + 1]].tolist(), outages)
             for k, f in enumerate(fte_per_team)]

    def outage_ends():
        for _, end in sorted(outages):
            if end >= horizon_min:
                return
            if end > env.now:
                yield env.timeout(end - env.now)
            for team in teams:  # back online: what piled up is taken (if the shift is on)
                team.work()

    def shifts():
        for t in calendar.shift_starts(horizon_min):
            if t >= horizon_min:
                return
            if t > env.now:
                yield env.timeout(t - env.now)
            for k, team in enumerate(teams):
                team.free.extend(team.off_duty)  # part-timers are back
                team.off_duty.clear()
                team.pull(t)
                backlog["team"].append(k)
                backlog["min"].append(t)
                backlog["items"].append(len(team.queue))
                backlog["work_min"].append(team.waiting_work_min)
                team.work()

    if calendar.always_on:
        for team in teams:
            team.work()
    else:
        env.process(shifts())
    if outages:
        env.process(outage_ends())
    env.run(until=horizon_min)
    return WorkDone(np.array(columns["start"]), np.array(columns["end"]), np.array(columns["nurse"], dtype=np.int32),
                    np.array(backlog["team"], dtype=np.int32), np.array(backlog["min"], dtype=float),
                    np.array(backlog["items"], dtype=np.int32), np.array(backlog["work_min"], dtype=float))
