"""Load shapes as pure functions of elapsed time (no Locust, no clock: tested without sleeping).

Two shapes drive the API, both **open-model**: arrivals happen at their scheduled times whatever
the server's latency. Locust's users are only a pool of workers that carry the arrivals out (a user
takes the next due event, sleeps until its time, makes its calls); the pool's size caps how many
calls can be in flight, not how many arrive.

* **replay** — the trace's window at ``speedup`` times real speed: an event at trace second ``t``
  is due at ``t / speedup`` seconds into the run; the run lasts the window plus a drain period.
* **step** — sessions arrive at ``rate_per_step`` per second in the first step, twice that in the
  second, …; each step lasts ``step_s``. The run stops after the step whose p95 or failure ratio
  exceeds its limit (the service saturated) or after ``max_steps``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass


def due_s(at_trace_s: float, speedup: float) -> float:
    """Seconds into the run at which an event at ``at_trace_s`` of the window is due."""
    return at_trace_s / speedup


def replay_users(elapsed_s: float, users: int, window_s: float, speedup: float, drain_s: float) -> int | None:
    """The pool size at ``elapsed_s`` of a replay: all ``users`` until the window has been replayed
    and drained, then ``None`` (stop)."""
    return users if elapsed_s < window_s / speedup + drain_s else None


@dataclass(frozen=True)
class StepPlan:
    rate_per_step: float  # sessions per second added by each step
    step_s: float  # duration of one step, seconds
    max_steps: int
    p95_limit_ms: float = 1000.0  # stop after a step whose p95 exceeds this …
    fail_ratio_limit: float = 0.01  # … or whose failed share of requests exceeds this

    def __post_init__(self) -> None:
        if self.rate_per_step <= 0 or self.step_s <= 0 or self.max_steps < 1:
            raise ValueError(f"step plan {self}: rate, duration and steps must be positive")

    @classmethod
    def parse(cls, text: str, p95_limit_ms: float = 1000.0, fail_ratio_limit: float = 0.01) -> StepPlan:
        """``RATE,SECONDS,STEPS``, e.g. ``5,30,10``: 5 more sessions/s every 30 s, at most 10 steps."""
        m = re.fullmatch(r"\s*([0-9.]+)\s*,\s*([0-9.]+)\s*,\s*([0-9]+)\s*", text)
        if not m:
            raise ValueError(f"--step {text!r}: expected RATE,SECONDS,STEPS such as 5,30,10")
        return cls(float(m[1]), float(m[2]), int(m[3]), p95_limit_ms, fail_ratio_limit)

    @property
    def duration_s(self) -> float:
        return self.step_s * self.max_steps

    def step_at(self, elapsed_s: float) -> int | None:
        """The step (0-based) running at ``elapsed_s``, ``None`` once all steps are done."""
        k = math.floor(elapsed_s / self.step_s)
        return k if 0 <= k < self.max_steps else None

    def rate_at(self, elapsed_s: float) -> float:
        """Session arrivals per second at ``elapsed_s`` (0 after the last step)."""
        k = self.step_at(elapsed_s)
        return 0.0 if k is None else (k + 1) * self.rate_per_step

    def arrivals(self) -> Iterator[float]:
        """Arrival times (seconds into the run), evenly spaced within each step: deterministic, so
        two runs of one plan offer the server exactly the same load."""
        for k in range(self.max_steps):
            rate = (k + 1) * self.rate_per_step
            n = round(rate * self.step_s)
            for j in range(n):
                yield k * self.step_s + (j + 0.5) * self.step_s / n

    def saturated(self, p95_ms: float | None, fail_ratio: float) -> bool:
        """Whether a finished step shows saturation: its p95 or failure ratio over the limit."""
        return (p95_ms is not None and p95_ms > self.p95_limit_ms) or fail_ratio > self.fail_ratio_limit
