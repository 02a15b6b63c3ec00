"""Read-only looks into a running server's database, from the test process (SQLite or PostgreSQL).

A :class:`Probe` keeps one connection open (sqlite3 in WAL mode reads beside the server's writer;
asyncpg on its own event loop), so that tests can count rows before and after every request
cheaply. It reads the tables of ``twin.server.storage`` by their SQL names only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time


class Probe:
    def __init__(self, database: str) -> None:
        self.database = database
        if database.startswith("sqlite:///"):
            self._sqlite = sqlite3.connect(database.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
            self._loop = self._pg = None
        else:
            import asyncpg

            self._sqlite = None
            self._loop = asyncio.new_event_loop()
            self._pg = self._loop.run_until_complete(asyncpg.connect(database, timeout=10))

    def fetch(self, sql: str, *args) -> list[tuple]:
        if self._sqlite is not None:
            return [tuple(r) for r in self._sqlite.execute(sql, args).fetchall()]
        n = 0

        def dollar(part: str) -> str:
            nonlocal n
            n += 1
            return f"${n}{part}"

        pieces = sql.split("?")
        sql_pg = pieces[0] + "".join(dollar(p) for p in pieces[1:])
        return [tuple(r) for r in self._loop.run_until_complete(self._pg.fetch(sql_pg, *args))]

    def scalar(self, sql: str, *args):
        return self.fetch(sql, *args)[0][0]

    def snapshot(self) -> dict:
        """Everything a request could write: rows and versions per type, outbox, audit, accounts."""
        out = {f"resources:{t}": (int(n), int(v)) for t, n, v in
               self.fetch("SELECT type, COUNT(*), SUM(version) FROM resources GROUP BY type")}
        for table in self.tables():
            if table not in ("resources", "jobs"):
                out[table] = int(self.scalar(f"SELECT COUNT(*) FROM {table}"))
        return out

    def tables(self) -> list[str]:
        """The server's tables (outbox, the audit tables whatever their current layout, accounts, …)."""
        if self._sqlite is not None:
            rows = self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = self.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return sorted(r[0] for r in rows)

    def quiet(self, timeout: float = 20.0) -> None:
        """Wait (bounded) until the triage worker has drained the outbox: no write is then pending."""
        deadline = time.monotonic() + timeout
        while self.scalar("SELECT COUNT(*) FROM outbox") and time.monotonic() < deadline:
            time.sleep(0.05)  # the real worker is running: poll its outbox, bounded

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        else:
            self._loop.run_until_complete(self._pg.close())
            self._loop.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
