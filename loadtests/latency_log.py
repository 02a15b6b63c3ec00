"""Every request's latency to a CSV file (Locust's ``events.request`` hook), for calibration.

Locust's own statistics round percentiles and mix all of a run's seconds together; the capacity
pipeline (twin/capacity/) needs each request: when it ended, which endpoint, how long it took and
whether it failed, so it can cut a run into load steps and fit service times. One row per request:
``end_s`` (wall-clock seconds since the epoch when the answer arrived), ``endpoint``,
``latency_ms``, ``ok`` (1/0). Rows are buffered and written in blocks, so the hook costs about a
microsecond per request and does not slow the load generator.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

HEADER = "end_s,endpoint,latency_ms,ok\n"
FLUSH_EVERY = 2000


class LatencyLog:
    def __init__(self) -> None:
        self._fh: io.TextIOBase | None = None
        self._rows: list[str] = []

    def open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("w", encoding="utf-8")
        self._fh.write(HEADER)

    def record(self, name: str, response_time: float, exception=None, **_kw) -> None:
        """Locust ``request`` listener (``response_time`` in ms)."""
        if self._fh is None:
            return
        self._rows.append(f"{time.time():.4f},{name},{response_time:.3f},{0 if exception is not None else 1}\n")
        if len(self._rows) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self._fh is not None and self._rows:
            self._fh.write("".join(self._rows))
            self._fh.flush()
        self._rows = []

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


LATENCY_LOG = LatencyLog()
