"""Load shedding (twin.server.admission) on a fake ASGI app: no server, no sleeping."""

from __future__ import annotations

import asyncio
import json

import pytest

from twin.server.admission import HEARTBEAT_S, Admission


class GatedApp:
    """An app whose requests finish only when the test opens their gate."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future] = []

    async def __call__(self, scope, receive, send) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def _request(app, path: str = "/task/Task") -> tuple[int, dict, bytes]:
    sent = []

    async def send(message) -> None:
        sent.append(message)

    await app({"type": "http", "path": path}, None, send)
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers, sent[1]["body"]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_beyond_inflight_and_queue_requests_are_refused_with_503_and_retry_after():
    async def go():
        inner = GatedApp()
        app = Admission(inner, max_inflight=2, max_wait_ms=1000, max_queue=2)
        tasks = [asyncio.create_task(_request(app)) for _ in range(5)]
        await _settle()
        assert (app.inflight, len(app.waiters), len(inner.gates)) == (2, 2, 2)
        refused = [t for t in tasks if t.done()]
        assert len(refused) == 1  # the fifth found two running and two waiting
        status, headers, body = refused[0].result()
        assert status == 503 and headers[b"retry-after"] == b"1"
        assert json.loads(body)["issue"][0]["details"]["coding"][0]["code"] == "SERVER_OVERLOADED"
        while len(inner.gates) < 4 or not all(g.done() for g in inner.gates):
            for g in inner.gates:
                if not g.done():
                    g.set_result(None)
            await _settle()
        results = [await t for t in tasks]
        assert sorted(r[0] for r in results) == [200, 200, 200, 200, 503]
        assert (app.inflight, len(app.waiters), app.admitted, app.shed) == (0, 0, 4, 1)

    asyncio.run(go())


def test_a_request_that_waited_too_long_is_refused_and_the_slot_moves_on():
    async def go():
        now = [0.0]
        inner = GatedApp()
        app = Admission(inner, max_inflight=1, max_wait_ms=100, max_queue=10, clock=lambda: now[0])
        first = asyncio.create_task(_request(app))
        await _settle()
        late = asyncio.create_task(_request(app))
        await _settle()
        now[0] = 0.5  # the first request took 500 ms: the waiting one is past its 100 ms
        on_time = asyncio.create_task(_request(app))  # queued at 0.5 s: still in time at 0.5 s
        await _settle()
        inner.gates[0].set_result(None)
        await _settle()
        assert (await first)[0] == 200
        assert (await late)[0] == 503
        assert len(inner.gates) == 2  # the slot went on to the request that was still in time
        inner.gates[1].set_result(None)
        assert (await on_time)[0] == 200
        assert (app.inflight, app.admitted, app.shed) == (0, 2, 1)

    asyncio.run(go())


def test_health_is_never_shed():
    async def go():
        inner = GatedApp()
        app = Admission(inner, max_inflight=1, max_wait_ms=100, max_queue=0)
        busy = asyncio.create_task(_request(app))
        await _settle()
        health = asyncio.create_task(_request(app, "/health"))
        await _settle()
        assert len(inner.gates) == 2  # /health went through although the one slot is taken
        for g in inner.gates:
            g.set_result(None)
        assert [(await busy)[0], (await health)[0]] == [200, 200]

    asyncio.run(go())


def test_a_waiter_that_gives_up_is_dropped_and_the_slot_still_moves_on():
    async def go():
        inner = GatedApp()
        app = Admission(inner, max_inflight=1, max_wait_ms=10_000, max_queue=10)
        first = asyncio.create_task(_request(app))
        await _settle()
        quitter = asyncio.create_task(_request(app))
        patient = asyncio.create_task(_request(app))
        await _settle()
        inner.gates[0].set_result(None)  # the running request finishes …
        quitter.cancel()  # … and in the same breath a waiter's client goes away: the slot passes it by
        await _settle()
        assert (await first)[0] == 200
        assert len(inner.gates) == 2  # the slot went past the quitter to the next waiter
        inner.gates[1].set_result(None)
        assert (await patient)[0] == 200
        assert quitter.cancelled()
        assert (app.inflight, len(app.waiters)) == (0, 0)

    asyncio.run(go())


def test_the_service_rate_is_learnt_only_while_requests_wait_so_a_burst_after_a_quiet_spell_is_served():
    async def go():
        inner = GatedApp()
        app = Admission(inner, max_inflight=1, max_wait_ms=100, max_queue=100, clock=lambda: 0.0)
        t = [0.0]

        def beats(seconds: float, completions_per_beat: int) -> None:
            for _ in range(round(seconds / HEARTBEAT_S)):
                t[0] += HEARTBEAT_S
                app.completed += completions_per_beat
                app.on_beat(t[0], t[0])

        beats(2.0, 0)  # a quiet spell: now and then a request, never one waiting
        app.completed += 3
        beats(1.0, 0)
        assert app.rate_per_s == 0.0  # nothing learnt: the completions were the load, not the capacity

        # a burst: one running, five waiting; an expected wait of 5 / (3 per s) would refuse them all
        burst = [asyncio.create_task(_request(app)) for _ in range(6)]
        await _settle()
        assert (app.inflight, len(app.waiters), app.shed) == (1, 5, 0)

        beats(1.0, 2)  # requests waited at every beat: 2 per 5-ms beat is the service rate
        assert app.rate_per_s == pytest.approx(400.0, rel=0.05)
        for k in range(6):  # work the burst off
            inner.gates[k].set_result(None)
            await _settle()
        assert [(await b)[0] for b in burst] == [200] * 6
        beats(1.0, 1)  # quiet again: the service rate is kept
        assert app.rate_per_s == pytest.approx(400.0, rel=0.05)

    asyncio.run(go())
