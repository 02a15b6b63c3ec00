"""A small closed-loop HTTP/1.1 load generator for benchmarks (asyncio, keep-alive, no dependencies).

``concurrency`` connections each send a request, wait for the whole response, and send the next,
for ``duration_s``. Requests are pre-built bytes (a pool cycled through), so the client spends its
time on sockets, not on building JSON; on this 2-core machine it leaves a core to the server.
Latency is measured per request from write to the last byte of the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int  # non-2xx answers
    duration_s: float
    latencies_ms: np.ndarray
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

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


async def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int, duration_s: float,
                   warmup_s: float = 1.0) -> LoadResult:
    """Closed loop: each connection takes the next request of the pool (cycled) when its last one answered."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = [0]
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
                if t0 >= measure_from and t1 <= stop_at:
                    latencies.append((t1 - t0) * 1000)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies)
    errors = sum(n for s, n in statuses.items() if not 200 <= s < 300)
    return LoadResult(len(lat), errors, duration_s, lat, dict(sorted(statuses.items())))


@dataclass
class OpenLoadResult:
    """One row per arrival: its phase, when it was due (s from start), latency from then, status (0: no answer)."""

    phase: np.ndarray
    due_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray


async def run_open_load(host: str, port: int, requests: Sequence[bytes], phases: Sequence[tuple[float, float]],
                        seed: int = 0, max_connections: int = 1024, timeout_s: float = 30.0) -> OpenLoadResult:
    """Open model: requests arrive as a Poisson process whose rate changes by phase
    (``(duration_s, rate_per_s)``), whatever the server's latency. Each arrival takes an idle
    keep-alive connection or opens one (at most ``max_connections``; beyond, it waits for one).
    Latency is measured from the arrival's due time, so client-side waiting counts, as it does
    for a citizen's app."""
    rng = np.random.default_rng(seed)
    due, phase_of = [], []
    t0 = 0.0
    for k, (duration_s, rate) in enumerate(phases):
        n = rng.poisson(rate * duration_s)
        times = np.sort(rng.uniform(t0, t0 + duration_s, n))
        due += times.tolist()
        phase_of += [k] * n
        t0 += duration_s
    n = len(due)
    latency = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
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
                    writer.write(requests[i % len(requests)])
                    status[i] = await asyncio.wait_for(_read_response(reader), timeout_s)
                    latency[i] = (time.perf_counter() - start - due[i]) * 1000
                    idle.append(conn)
                    return
                except (TimeoutError, OSError, asyncio.IncompleteReadError):
                    if conn is not None:
                        conn[1].close()
                    if not reused:
                        return

    tasks = []
    for i in range(n):
        delay = due[i] - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return OpenLoadResult(np.array(phase_of), np.array(due), latency, status)
