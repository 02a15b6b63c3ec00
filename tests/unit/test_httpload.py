"""The closed-loop load generator counts what arrived in its window (a real socket server, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from twin.loadtest.httpload import build_request, run_load

SERVICE_S = 0.02  # each answer takes this long: requests are in flight at both edges of the window


@pytest.fixture()
def slow_server():
    """A tiny HTTP/1.1 keep-alive server on its own thread and loop, answering every request after
    ``SERVICE_S``; yields its port."""
    loop = asyncio.new_event_loop()

    async def handle(reader, writer):
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                await asyncio.sleep(SERVICE_S)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.sockets[0].getsockname()[1]

    async def shut_down():
        server.close()
        await server.wait_closed()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    asyncio.run_coroutine_threadsafe(shut_down(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_closed_loop_throughput_counts_answers_arriving_in_the_window(slow_server):
    clients = 4
    res = asyncio.run(run_load("127.0.0.1", slow_server, [build_request("GET", "x", "/")], clients, 0.4, 0.1))
    assert res.errors == 0 and res.requests > 0
    # every request sent and answered in the window is an answer in the window; beyond those, at
    # most one per connection that was sent before the window opened — each connection had one
    # in flight then, 20 ms from its answer
    assert res.requests <= res.completed <= res.requests + clients
    assert res.completed > res.requests  # (4 in flight at the start: some of them land inside)
    assert res.rps == pytest.approx(res.completed / 0.4)
