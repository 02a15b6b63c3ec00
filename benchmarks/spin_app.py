"""The server of known_answer_queue.py: a raw ASGI endpoint that keeps the CPU busy for as long as
the request asks (``GET /spin?us=1500``), then answers. Its service times are therefore known
exactly, request by request; what the server adds (HTTP parsing, the event loop, the socket) is
measured as its CPU beyond the spins."""

from __future__ import annotations

import time


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = scope["query_string"].decode()
    spin_us = int(query.removeprefix("us=")) if query.startswith("us=") and query[3:].isdigit() else 0
    until = time.perf_counter() + spin_us / 1e6
    while time.perf_counter() < until:  # busy, like a request doing its work on the event loop
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
