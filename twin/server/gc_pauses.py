"""Garbage-collector pauses of the server process: measured, and kept short.

CPython's cyclic garbage collector runs on the thread that allocates — here the event loop — and
stops it for the whole collection. A young-generation pass over a few hundred new objects takes
microseconds; a full (generation 2) pass walks *every* tracked object of the process: the
imported modules, the seeded caches, uvicorn's and Starlette's objects — and stalls every request
waiting on the loop for milliseconds. Those stalls are rare, so they do not move the mean, but they
land in the p95 of everything queued behind them, and a queueing model that only knows the
requests' own service times cannot predict them.

Two remedies, as large Python services use them (Instagram's ``gc.freeze``):

* :func:`prepare_for_serving` — after start-up, move everything alive into the permanent
  generation, so full collections only walk what the service allocated since, and collect the
  young generation less often;
* :class:`GcPauses` — a ``gc.callbacks`` hook that times every collection per generation, so
  ``/health`` shows the pauses (count, total, longest) and the capacity pipeline can put them beside
  the measured latency.
"""

from __future__ import annotations

import gc
import time

GENERATIONS = 3
# Net allocations between young collections. CPython's 700 runs a young pass every fraction of a
# millisecond of request work; most of a request's objects die by reference counting anyway. In a
# closed-loop benchmark of the server (benchmarks/benchmark_api.py, SQLite, after the freeze) 700
# gave 3,415 young / 310 middle / 28 full passes, 0.77 s of pauses; 20,000 gave 103 / 9 / 1, 0.04 s.
YOUNG_THRESHOLD = 20_000


class GcPauses:
    """Counts and times the collector's passes (per generation) while installed."""

    def __init__(self) -> None:
        self.collections = [0] * GENERATIONS
        self.pause_s = [0.0] * GENERATIONS
        self.longest_s = [0.0] * GENERATIONS
        self.frozen_objects = 0  # set by prepare_for_serving (counting them walks them all: ~45,000)
        self._started: float | None = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:  # installed between a start and its stop
            return
        took = time.perf_counter() - self._started
        self._started = None
        g = int(info.get("generation", 0))
        self.collections[g] += 1
        self.pause_s[g] += took
        self.longest_s[g] = max(self.longest_s[g], took)

    def install(self) -> GcPauses:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def stats(self) -> dict:
        """Per generation: passes, their total and longest pause (ms), and the frozen objects."""
        return {"collections": list(self.collections),
                "pause_ms": [round(1000.0 * s, 3) for s in self.pause_s],
                "longest_ms": [round(1000.0 * s, 3) for s in self.longest_s],
                "frozen_objects": self.frozen_objects}


RECORDER = GcPauses()
"""The server process's recorder (installed at start-up, read by ``/health``)."""


def prepare_for_serving() -> int:
    """Collect once, move every surviving object to the permanent generation (never scanned again)
    and collect the young generation less often; returns how many objects were frozen. Call when
    start-up is done and before serving."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    RECORDER.frozen_objects = gc.get_freeze_count()
    return RECORDER.frozen_objects
