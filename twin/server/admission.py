"""Load shedding: beyond its capacity the service refuses work quickly instead of queueing it forever.

A worker process runs one event loop on one core. Offered more requests per second than it can
finish, an unguarded server queues them all: every request waits behind all the others, latency
grows without bound, clients time out and retry, and the retries add to the queue (congestion
collapse). Admission control keeps the queue short instead:

* at most ``max_inflight`` requests are being worked on at once (enough to fill a group commit on
  SQLite and the connection pool on PostgreSQL; more only adds waiting inside the server);
* the rest wait in one first-come-first-served queue;
* a request that has waited ``max_wait_ms`` when its turn comes, or that finds ``max_queue`` ahead
  of it, or whose expected wait (the queue ahead of it at the service rate, learnt while the queue
  was never empty) exceeds
  ``max_wait_ms``, is answered at once with ``503`` and ``Retry-After`` — an OperationOutcome, like
  every error. Refusing at arrival is kinder than after the wait: the app can retry sooner.

So an admitted request waits at most ``max_wait_ms`` in that queue, whatever the offered load, and
when the load drops the queue empties at the service rate (the service recovers by itself). Cheap
paths that operators and load balancers poll (``/health``) are never shed.

That queue is not the only one. Before a request reaches the application, it waits in the kernel's
socket buffers and the event loop's ready queue, where no one can see its age. Refusing is cheap but
not free (~0.2 ms of HTTP parsing and answering here), so at twice the capacity the refusals plus
the admitted work can still need more than the core, and that hidden queue grows. Hence the limit
on work in progress adapts (AIMD, as TCP's congestion window): a heartbeat measures how late the
event loop runs a 5 ms timer; while that lag (smoothed) exceeds ``LAG_TARGET_S`` the limit shrinks
by a tenth each beat, otherwise it grows by one up to ``max_inflight``. Fewer admitted requests free the core
to read and refuse the rest quickly, so the hidden queue stays short too.
"""

from __future__ import annotations

import asyncio
import collections

from twin.server import jsonfast
from twin.server.errors import FHIR_JSON, operation_outcome

EXEMPT_PATHS = frozenset({"/health"})
RETRY_AFTER_S = 1  # FUT apps retry with backoff and jitter; one second is the shortest useful wait
CODE = "SERVER_OVERLOADED"
HEARTBEAT_S = 0.005
LAG_TARGET_S = 0.025  # a loop 25 ms late on a 5 ms timer has a backlog it cannot see (a group commit or a
# triage batch alone delays it by up to ~10 ms at full load)
RATE_WINDOW_S = 0.25  # the completion rate is measured over windows this long, smoothed (EWMA)


class Admission:
    """ASGI middleware: at most ``max_inflight`` requests in the app, FIFO queue, bounded wait."""

    def __init__(self, app, max_inflight: int, max_wait_ms: float, max_queue: int, service=None,
                 clock=None) -> None:
        self.app = app
        self.clock = clock  # seconds; default the event loop's clock (tests pass their own)
        if service is not None:
            service.admission = self  # /health reports the counts
        self.max_inflight, self.max_wait_s, self.max_queue = max_inflight, max_wait_ms / 1000.0, max_queue
        self.inflight = 0
        self.limit = max_inflight  # adapted to the loop's lag, at most max_inflight
        self.lag_s = 0.0  # the heartbeat's lag, smoothed
        self.completed = 0
        # The service rate: completions per second in RATE_WINDOW_S windows during which requests
        # waited at every beat (EWMA). Only such windows tell what the service can work off; a
        # quiet window's completions are the offered load, and a rate learnt from them would shed a
        # burst after a quiet spell (a Monday morning) that the service could serve in time.
        self.rate_per_s = 0.0
        self._window: tuple[float, int] | None = None  # (start, completed then)
        self._window_beats = self._window_busy_beats = 0
        self._heartbeat: asyncio.Task | None = None
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.admitted = 0
        self.shed = 0
        self._refusal = jsonfast.dumpb(operation_outcome(
            CODE, "the service is overloaded; retry after the time in Retry-After", "transient"))

    def stats(self) -> dict:
        return {"inflight": self.inflight, "queued": len(self.waiters), "limit": self.limit,
                "lag_ms": round(self.lag_s * 1000, 1), "admitted": self.admitted, "shed": self.shed}

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + HEARTBEAT_S
            await asyncio.sleep(HEARTBEAT_S)
            self.on_beat(planned, loop.time())

    def on_beat(self, planned: float, now: float) -> None:
        """A heartbeat that was due at ``planned`` ran at ``now`` (loop seconds): adapt the limit to
        the loop's lag and learn the service rate."""
        # smoothed: one late beat (a garbage collection, a big group commit, a noisy neighbour) is no trend
        self.lag_s = 0.8 * self.lag_s + 0.2 * max(0.0, now - planned)
        if self._window is None:
            self._window = (now, self.completed)
        self._window_beats += 1
        self._window_busy_beats += bool(self.waiters)
        start, completed_then = self._window
        if now - start >= RATE_WINDOW_S:
            if self._window_busy_beats == self._window_beats:
                rate = (self.completed - completed_then) / (now - start)
                self.rate_per_s = rate if self.rate_per_s == 0 else 0.7 * self.rate_per_s + 0.3 * rate
            self._window = (now, self.completed)
            self._window_beats = self._window_busy_beats = 0
        if self.lag_s > LAG_TARGET_S:
            self.limit = max(1, (self.limit * 9) // 10)
        elif self.limit < self.max_inflight:
            self.limit += 1
            while self.waiters and self.inflight < self.limit:  # a raised limit admits waiters
                if not self._wake_next():
                    break
                self.inflight += 1

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self._heartbeat is None and self.clock is None:  # started in the server's own loop
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="admission-heartbeat")
        if not await self._enter():
            self.shed += 1
            await self._refuse(send)
            return
        self.admitted += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.completed += 1
            self._leave()

    async def _enter(self) -> bool:
        if self.inflight < self.limit and not self.waiters:
            self.inflight += 1
            return True
        if len(self.waiters) >= self.max_queue:
            return False
        if self.rate_per_s > 0 and len(self.waiters) / self.rate_per_s > self.max_wait_s:
            return False  # it would wait too long anyway: refuse now, while refusing is cheap
        loop = asyncio.get_running_loop()
        clock = self.clock or loop.time
        turn = loop.create_future()
        queued_at = clock()
        self.waiters.append(turn)
        try:
            await turn  # _leave hands its slot over by resolving this future
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._leave()  # the slot was handed over just as the client went away: pass it on
            elif turn in self.waiters:  # (a _leave in between may have dropped it already)
                self.waiters.remove(turn)
            raise
        if clock() - queued_at > self.max_wait_s:
            self._leave()  # too late to be useful: give the slot to the next one and refuse this one
            return False
        return True

    def _leave(self) -> None:
        if self.inflight > self.limit:  # the limit was lowered: this slot closes
            self.inflight -= 1
            return
        if not self._wake_next():
            self.inflight -= 1

    def _wake_next(self) -> bool:
        """Hand a slot to the first waiter still waiting; False if there is none."""
        while self.waiters:
            turn = self.waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return True
        return False

    async def _refuse(self, send) -> None:
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", FHIR_JSON.encode()), (b"retry-after", str(RETRY_AFTER_S).encode()),
                                (b"content-length", str(len(self._refusal)).encode())]})
        await send({"type": "http.response.body", "body": self._refusal})
