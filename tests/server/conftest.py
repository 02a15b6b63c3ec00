"""The real server over HTTP, on SQLite and on PostgreSQL, seeded with the pilot-100 scenario.

Each database kind gets one server process for the test session (``twin serve`` in a subprocess on
a free port); PostgreSQL gets a fresh database that is dropped afterwards. PostgreSQL runs on the
CI machine at 127.0.0.1:5432 (trust auth); where it is not reachable, its tests are skipped with
the reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, SCENARIOS
from twin.loadtest.runner import stop_process
from twin.scenario import load_scenario
from twin.seed import seed

PG_ADMIN = os.environ.get("TWIN_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-" + "x" * 40


@dataclass
class Server:
    kind: str
    base_url: str
    database: str
    process: subprocess.Popen

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh_pg_database(dbname: str) -> str:
    """An empty PostgreSQL database ``dbname`` (dropped first if left over), its URL; skips the
    test when no PostgreSQL answers. The caller drops it: ``drop_pg_database``."""
    try:
        asyncio.run(_pg(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))
        asyncio.run(_pg(f"CREATE DATABASE {dbname}"))
    except Exception as exc:  # noqa: BLE001 - any connection failure means: no PostgreSQL here
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{dbname}"


def drop_pg_database(dbname: str) -> None:
    asyncio.run(_pg(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"))


def start_server(kind: str, database: str, port: int, extra_env: dict[str, str] | None = None) -> Server:
    base = f"http://127.0.0.1:{port}"
    # Tests run the nightly job themselves. Load shedding waits longer than in production: a burst
    # of 50 parallel requests on a busy CI machine is a correctness test, not an overload test.
    env = {**os.environ, "TWIN_SECRET": SECRET, "TWIN_NIGHTLY_JOBS": "0", "TWIN_MAX_WAIT_MS": "10000",
           **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "serve", "--database", database, "--port", str(port),
                             "--base-url", base, "--log-level", "error"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"twin serve exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return Server(kind, base, database, proc)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # waiting for a real process to listen, not for simulated behaviour
    proc.kill()
    raise RuntimeError("twin serve did not become healthy in 30 s")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    kind = request.param
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    scenario = load_scenario(SCENARIOS / "pilot-100.toml")
    dbname = None
    if kind == "sqlite":
        database = f"sqlite:///{tmp_path_factory.mktemp('db') / 'twin.db'}"
    else:
        dbname = f"twin_test_{os.getpid()}"
        database = fresh_pg_database(dbname)
    seed(scenario, database, base)
    srv = start_server(kind, database, port)
    yield srv
    stop_process(srv.process)
    if dbname:
        drop_pg_database(dbname)
