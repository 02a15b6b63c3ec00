"""The bare baseline of benchmark_api.py: a minimal Starlette endpoint inserting one row.

``BARE_DATABASE`` is ``sqlite:///path`` or ``postgresql://…``. It parses the JSON body and inserts
it with one statement (SQLite WAL ``synchronous=NORMAL`` autocommit, or one asyncpg execute), so
the twin's ``$submit-measurement`` can be read as a multiple of the cheapest possible write.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

URL = os.environ.get("BARE_DATABASE", "sqlite:///bare.db")
STATE: dict = {}


async def startup() -> None:
    if URL.startswith("sqlite:///"):
        conn = sqlite3.connect(URL.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, kind TEXT, body TEXT)")
        STATE["sqlite"] = conn
    else:
        import asyncpg

        pool = await asyncpg.create_pool(URL, min_size=1, max_size=8)
        await pool.execute("CREATE TABLE IF NOT EXISTS bare (id BIGSERIAL PRIMARY KEY, kind TEXT, body TEXT)")
        STATE["pool"] = pool


async def insert(request: Request) -> Response:
    body = await request.body()
    kind = json.loads(body).get("resourceType", "?")
    if "sqlite" in STATE:
        STATE["sqlite"].execute("INSERT INTO bare (kind, body) VALUES (?, ?)", (kind, body.decode()))
    else:
        await STATE["pool"].execute("INSERT INTO bare (kind, body) VALUES ($1, $2)", kind, body.decode())
    return Response(b'{"ok":true}', status_code=201, media_type="application/json")


async def health(request: Request) -> Response:
    return Response(b"ok")


@contextlib.asynccontextmanager
async def lifespan(_app):
    await startup()
    yield


app = Starlette(routes=[Route("/insert", insert, methods=["POST"]), Route("/health", health)], lifespan=lifespan)
