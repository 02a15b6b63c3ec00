"""A small HTTP/1.1 load generator (asyncio, keep-alive, no dependencies) for benchmarks and the
capacity measurements, where Locust would be the bottleneck.

Requests are pre-built bytes, so the client spends its time on sockets, not on building JSON: about
0.05 ms of CPU per request, where Locust's users spend milliseconds. On this 2-core machine it
leaves a core to the server (a Locust process tops out near 600 trace requests/s here; the server
answers about twice that).

* :func:`run_load` — closed loop: ``concurrency`` connections each send a request, wait for the
  whole response, and send the next, for ``duration_s``; latency from write to the last byte;
* :func:`run_open_load` — open model: requests are due at given times (e.g. :func:`poisson_schedule`),
  whatever the answers' latency; latency from the due time.

Both run with the client's garbage collector held off (:func:`collector_paused`): a full collection
in a process holding a trace stops the client's loop for tens of milliseconds, and every answer
arriving meanwhile would be timestamped late — a stall of the generator measured as the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int  # non-2xx answers
    duration_s: float
    latencies_ms: np.ndarray
    statuses: dict[int, int] = field(default_factory=dict)
    sent: int = 0  # requests taken from the pool, warm-up and unfinished ones included
    completed: int | None = None  # answers that arrived within the measured window, whenever sent

    @property
    def rps(self) -> float:
        """Throughput: answers per second of the measured window (``completed`` where counted, else
        the requests with a latency)."""
        return (self.requests if self.completed is None else self.completed) / self.duration_s

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")

    def summary(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "rps": round(self.rps, 1),
                "p50_ms": round(self.percentile_ms(50), 2), "p95_ms": round(self.percentile_ms(95), 2),
                "p99_ms": round(self.percentile_ms(99), 2), "statuses": self.statuses}


def build_request(method: str, host: str, path: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block (runs are bounded; reference counting still
    frees almost everything): collect once, freeze what is alive, disable; undone on exit."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int, duration_s: float,
                   warmup_s: float = 1.0) -> LoadResult:
    """Closed loop: each connection takes the next request of the pool (cycled) when its last one answered.

    Latencies are those of the requests sent and answered within the measured window; the
    throughput counts every answer that arrived within it. Counting only the requests sent in
    the window undercounts by the requests in flight at either edge — at 64 connections and 45 ms
    each, ~90 ms of a 2.5-s window, 4 %."""
    with collector_paused():
        return await _closed_loop(host, port, requests, concurrency, duration_s, warmup_s)


async def _closed_loop(host: str, port: int, requests: Sequence[bytes], concurrency: int, duration_s: float,
                       warmup_s: float) -> LoadResult:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = [0]
    completed = [0]
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                req = requests[counter[0] % len(requests)]
                counter[0] += 1
                t0 = time.perf_counter()
                writer.write(req)
                status = await _read_response(reader)
                t1 = time.perf_counter()
                if measure_from <= t1 <= stop_at:
                    completed[0] += 1
                if t0 >= measure_from and t1 <= stop_at:
                    latencies.append((t1 - t0) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies)
    errors = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    return LoadResult(len(lat), errors, duration_s, lat, dict(sorted(statuses.items())), counter[0], completed[0])


@dataclass
class OpenLoadResult:
    """One row per arrival: its phase, when it was due (s from start), latency from then, status (0: no answer)."""

    phase: np.ndarray
    due_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    sent_s: np.ndarray | None = None  # when the request was written (s from the start; NaN: never)
    service_ms: np.ndarray | None = None  # from the write to the last byte of the answer

    @property
    def lag_ms(self) -> np.ndarray:
        """How late each request left the client: waiting for a connection, or a busy client."""
        return (self.sent_s - self.due_s) * 1000.0


def poisson_schedule(phases: Sequence[tuple[float, float]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Due times (s from the start) of a Poisson process whose rate changes by phase
    (``(duration_s, rate_per_s)``), and each arrival's phase index. Seeded: the same seed gives the
    same arrivals, so a model can be run on exactly the arrivals the server saw."""
    rng = np.random.default_rng(seed)
    due, phase_of = [], []
    t0 = 0.0
    for k, (duration_s, rate) in enumerate(phases):
        n = rng.poisson(rate * duration_s)
        due.append(np.sort(rng.uniform(t0, t0 + duration_s, n)))
        phase_of.append(np.full(n, k))
        t0 += duration_s
    return np.concatenate(due or [np.empty(0)]), np.concatenate(phase_of or [np.empty(0, dtype=int)])


async def run_open_load(host: str, port: int, requests: Sequence[bytes], phases: Sequence[tuple[float, float]] = (),
                        seed: int = 0, max_connections: int = 1024, timeout_s: float = 30.0,
                        schedule: tuple[np.ndarray, np.ndarray] | None = None,
                        warm_connections: int = 0) -> OpenLoadResult:
    """Open model: request ``i`` (``requests[i]``, cycled) is due at the ``i``-th time of
    ``schedule`` (default: :func:`poisson_schedule` of ``phases`` and ``seed``), whatever the
    server's latency. Each arrival takes an idle keep-alive connection or opens one (at most
    ``max_connections``; beyond, it waits for one). Latency is measured from the due time, so
    client-side waiting counts, as it does for a citizen's app. ``warm_connections`` are opened
    before the first arrival is due: without them the first second measures TCP connection set-up
    (each arrival finding every connection busy opens one, which slows the server, which makes
    more arrivals find them busy) — a p95 of 250 ms at half load, where steady state has 10 ms."""
    with collector_paused():
        return await _open_loop(host, port, requests, phases, seed, max_connections, timeout_s, schedule,
                                warm_connections)


async def _open_loop(host: str, port: int, requests: Sequence[bytes], phases: Sequence[tuple[float, float]],
                     seed: int, max_connections: int, timeout_s: float,
                     schedule: tuple[np.ndarray, np.ndarray] | None, warm_connections: int) -> OpenLoadResult:
    due_s, phase_of = schedule if schedule is not None else poisson_schedule(phases, seed)
    due = due_s.tolist()
    n = len(due)
    latency = np.full(n, np.nan)
    sent = np.full(n, np.nan)
    service = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(min(warm_connections, max_connections)):  # connected before the clock starts
        idle.append(await asyncio.open_connection(host, port))
    slots = asyncio.Semaphore(max_connections)
    start = time.perf_counter()

    async def one(i: int) -> None:
        async with slots:
            for attempt in range(2):  # a kept-alive connection the server has just closed: once more, on a new one
                conn = idle.pop() if idle and attempt == 0 else None
                reused = conn is not None
                try:
                    if conn is None:
                        conn = await asyncio.open_connection(host, port)
                    reader, writer = conn
                    sent[i] = time.perf_counter() - start
                    writer.write(requests[i % len(requests)])
                    status[i] = await asyncio.wait_for(_read_response(reader), timeout_s)
                    done = time.perf_counter() - start
                    latency[i] = (done - due[i]) * 1000
                    service[i] = (done - sent[i]) * 1000
                    idle.append(conn)
                    return
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    if conn is not None:
                        conn[1].close()
                    if not reused:
                        return

    tasks = []
    i = 0
    while i < n:  # start every arrival that is due, then sleep until the next one
        now = time.perf_counter() - start
        while i < n and due[i] <= now:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
        if i < n:
            await asyncio.sleep(max(due[i] - (time.perf_counter() - start), 0.0))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return OpenLoadResult(np.asarray(phase_of), np.asarray(due_s), latency, status, sent, service)
