"""Working hours of a care team: which minutes of the run a nurse is on shift.

Time is minutes from the start of the run (midnight of ``start_date``). A team works
``shift_start_hour``–``shift_end_hour`` on its working weekdays; there is no weekend cover unless
the scenario lists Saturday and Sunday (T19). A 24/7 calendar (all days, 0–24 h) turns the nurse
queue into a plain M/M/c queue, which is how it is tested against Erlang C.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from twin.scenario import WEEKDAYS

MINUTES_PER_DAY = 1440.0


@dataclass(frozen=True)
class ShiftCalendar:
    start: dt.date
    shift_start_hour: float
    shift_end_hour: float
    working_days: tuple[str, ...]

    def __post_init__(self) -> None:
        # Precomputed once: on_shift() runs for every dispatch in the nurse model.
        working = tuple((self.start.weekday() + d) % 7 in {WEEKDAYS.index(w) for w in self.working_days}
                        for d in range(7))
        object.__setattr__(self, "_working_by_offset", working)
        object.__setattr__(self, "_shift_min", (self.shift_start_hour * 60, self.shift_end_hour * 60))
        object.__setattr__(self, "_always_on", self.shift_start_hour <= 0 and self.shift_end_hour >= 24
                           and len(set(self.working_days)) == 7)

    @property
    def always_on(self) -> bool:
        return self._always_on

    def is_working_day(self, day: int) -> bool:
        return self._working_by_offset[day % 7]

    def weekday_name(self, day: int) -> str:
        """``mon`` … ``sun`` of run day ``day`` (independent of the system locale)."""
        return WEEKDAYS[(self.start.weekday() + day) % 7]

    def on_shift(self, t_min: float) -> bool:
        if self._always_on:
            return True
        day = int(t_min // MINUTES_PER_DAY)
        if not self._working_by_offset[day % 7]:
            return False
        minute = t_min - day * MINUTES_PER_DAY
        return self._shift_min[0] <= minute < self._shift_min[1]

    def shift_starts(self, until_min: float) -> list[float]:
        """The start minute of every shift from day 0 until ``until_min``."""
        days = math.ceil(until_min / MINUTES_PER_DAY) + 1
        starts = (d * MINUTES_PER_DAY + self.shift_start_hour * 60 for d in range(days) if self.is_working_day(d))
        return [t for t in starts if t < until_min]

    def working_minutes_until(self, t_min: np.ndarray) -> np.ndarray:
        """On-shift minutes in [0, t) for each t (vectorised)."""
        t = np.asarray(t_min, dtype=float)
        if self.always_on:
            return t.copy()
        days = int(np.nanmax(t) // MINUTES_PER_DAY) + 2 if t.size else 1
        working = np.array([self.is_working_day(d) for d in range(days)], dtype=float)
        shift_min = (self.shift_end_hour - self.shift_start_hour) * 60
        before = np.concatenate([[0.0], np.cumsum(working * shift_min)])
        day = np.floor(np.nan_to_num(t) / MINUTES_PER_DAY).astype(int)
        in_day = np.clip(np.nan_to_num(t) - day * MINUTES_PER_DAY - self.shift_start_hour * 60, 0, shift_min)
        out = before[day] + working[day] * in_day
        return np.where(np.isnan(t), np.nan, out)

    def working_minutes_between(self, t0_min: float, t1_min: float) -> float:
        """On-shift minutes in [t0, t1): response time measured in working time."""
        if t1_min <= t0_min:
            return 0.0
        if self.always_on:
            return t1_min - t0_min
        total = 0.0
        day = int(t0_min // MINUTES_PER_DAY)
        while day * MINUTES_PER_DAY < t1_min:
            if self.is_working_day(day):
                a = day * MINUTES_PER_DAY + self.shift_start_hour * 60
                b = day * MINUTES_PER_DAY + self.shift_end_hour * 60
                total += max(0.0, min(b, t1_min) - max(a, t0_min))
            day += 1
        return total
