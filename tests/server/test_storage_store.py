"""``Tx.store`` — a submission's writes (resources, outbox item, audit record) — on both databases,
and the ``one_write`` unit that lets PostgreSQL run it without BEGIN and COMMIT.

Storage-level tests against real SQLite and real PostgreSQL: the rows come back as stored, a
store that violates the unique identifier index leaves nothing behind (no resource, no outbox
item, no audit row), and a ``one_write`` unit refuses a second write instead of committing it
apart from the first.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.server.conftest import drop_pg_database, fresh_pg_database
from twin.server.storage import INTEGRITY_ERRORS, AuditRecord, Lookup, OutboxItem, Row, Storage

AT = "2026-01-05T08:00:00+00:00"


def _rows(key: str, n: int = 3) -> list[Row]:
    rows = [Row("Observation", f"{key}-obs-{k}", 1, AT, "p-1", "e-1", "ct-1", "o-1", "final", "NPU03011", AT, None,
                None, '{"resourceType": "Observation"}') for k in range(n)]
    rows.append(Row("Provenance", f"{key}-prov", 1, AT, "p-1", "e-1", "ct-1", "o-1", None, None, AT, 7,
                    f"provenance:{key}", '{"resourceType": "Provenance"}'))
    return rows


def _audit(trace: str) -> AuditRecord:
    return AuditRecord((AT, trace, "PATIENT", "p-1", "o-1", "C", "$submit-measurement", "Bundle", None, None),
                       ["p-1", "p-2"])


@pytest.fixture
def pg_url():
    dbname = f"twin_store_{os.getpid()}"
    yield fresh_pg_database(dbname)
    drop_pg_database(dbname)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


async def _open(url: str) -> Storage:
    storage = Storage.connect(url)
    await storage.open()
    await storage.migrate()
    return storage


async def _counts(storage: Storage) -> tuple[int, int, int, int]:
    async with storage.transaction() as tx:
        return tuple([(await tx.fetch(f"SELECT COUNT(*) FROM {table}"))[0][0]
                      for table in ("resources", "outbox", "audit_request")]
                     + [len(await storage.fetch_audit("SELECT patient FROM {by_request}"))])


@pytest.mark.parametrize("one_write", [False, True])
def test_store_writes_rows_outbox_and_audit_together(storage_url, one_write):
    async def go():
        storage = await _open(storage_url)
        try:
            async with storage.transaction(one_write=one_write) as tx:
                assert await tx.get_by_ident("Provenance", ["provenance:a"]) == []  # reads come first
                await tx.store(_rows("a"), OutboxItem("ob-a", "triage", '{"x": 1}', AT), _audit("t-a"))
            async with storage.transaction(one_write=one_write) as tx:
                await tx.store(_rows("b", 1))  # neither outbox item nor audit record
            async with storage.transaction() as tx:
                stored = await tx.get("Observation", "a-obs-2")
                (prov,) = await tx.get_by_ident("Provenance", ["provenance:a"])
                outbox = await tx.outbox_pending("triage", 10)
                audit = await tx.fetch("SELECT trace_id, action, subtype FROM audit_request")
            return stored, prov, outbox, audit, await _counts(storage)
        finally:
            await storage.close()

    stored, prov, outbox, audit, counts = asyncio.run(go())
    assert stored == _rows("a")[2]  # every column as given, the version an integer
    assert prov == _rows("a")[-1]  # priority and ident too
    assert outbox == [("ob-a", '{"x": 1}')]
    assert audit == [("t-a", "C", "$submit-measurement")]
    assert counts == (4 + 2, 1, 1, 2)


@pytest.mark.parametrize("one_write", [False, True])
@pytest.mark.parametrize("conflict", ["identifier", "outbox id"])
def test_a_store_that_violates_a_unique_key_leaves_nothing(storage_url, one_write, conflict):
    async def go():
        storage = await _open(storage_url)
        try:
            async with storage.transaction() as tx:
                await tx.store(_rows("a"), OutboxItem("ob-a", "triage", "{}", AT), _audit("t-a"))
            before = await _counts(storage)
            again, outbox_id = _rows("again"), "ob-again"
            if conflict == "identifier":
                again[-1].ident = "provenance:a"  # a parallel copy of submission a committed first
            else:
                outbox_id = "ob-a"  # fails after the resources are written: they must go too
            with pytest.raises(INTEGRITY_ERRORS):
                async with storage.transaction(one_write=one_write) as tx:
                    await tx.store(again, OutboxItem(outbox_id, "triage", "{}", AT), _audit("t-again"))
            return before, await _counts(storage)
        finally:
            await storage.close()

    before, after = asyncio.run(go())
    assert after == before == (4, 1, 1, 2)


def test_a_one_write_unit_refuses_a_second_write_on_postgresql(pg_url):
    # (SQLite runs every unit as a transaction, a savepoint of a group commit: nothing to refuse)
    async def go():
        storage = await _open(pg_url)
        try:
            with pytest.raises(RuntimeError, match="second write"):
                async with storage.transaction(one_write=True) as tx:
                    await tx.store(_rows("a"))
                    await tx.outbox_put("ob-a", "triage", "{}", AT)
            async with storage.transaction(one_write=True) as tx:
                await tx.fetch("SELECT COUNT(*) FROM outbox")  # reads are no writes
                await tx.store(_rows("b"))
            return await _counts(storage)
        finally:
            await storage.close()

    assert asyncio.run(go()) == (8, 0, 0, 0)


def test_lookup_answers_several_keyed_lookups_in_one_statement(storage_url):
    async def go():
        storage = await _open(storage_url)
        try:
            async with storage.transaction() as tx:
                await tx.store(_rows("a") + _rows("b", 1))
                return await tx.lookup(("id", "version", "priority"), [
                    Lookup("Provenance", "ident", ["provenance:b", "provenance:none"]),
                    Lookup("Observation", "id", ["a-obs-0", "a-obs-2", "b-obs-0", "a-prov"]),
                    Lookup("Observation", "id", []),  # nothing wanted: nothing found
                    Lookup("Provenance", "id", ["a-prov"])])
        finally:
            await storage.close()

    provenance_b, observations, nothing, provenance_a = asyncio.run(go())
    assert provenance_b == [("b-prov", 1, 7)]
    assert sorted(observations) == [("a-obs-0", 1, None), ("a-obs-2", 1, None), ("b-obs-0", 1, None)]  # not a-prov
    assert nothing == []
    assert provenance_a == [("a-prov", 1, 7)]


def test_a_released_postgresql_connection_costs_no_reset_round_trip_and_comes_back_clean(pg_url):
    # The pool takes a connection back without asyncpg's reset query (a round trip per request);
    # a transaction left open is still rolled back, so the next unit starts clean.
    async def go():
        storage = Storage.connect(pg_url)
        storage.pool_size = 1  # every unit below gets the same connection
        await storage.open()
        await storage.migrate()
        try:
            async with storage.transaction(one_write=True) as tx:
                conn = tx.conn._con  # the connection itself: the pool's proxy dies at release
                before = conn._protocol.queries_count
                await tx.fetch("SELECT COUNT(*) FROM resources")
            queries_per_read = conn._protocol.queries_count - before
            with pytest.raises(RuntimeError, match="handler failed"):
                async with storage.transaction(one_write=True) as tx:
                    await tx.conn.execute("BEGIN")
                    await tx.conn.execute("SET LOCAL statement_timeout = 1234")
                    await tx.conn.execute("INSERT INTO outbox (id, kind, payload, created) "
                                          "VALUES ('left-open', 'triage', '{}', $1)", AT)
                    raise RuntimeError("handler failed")
            async with storage.transaction(one_write=True) as tx:
                assert tx.conn._con is conn
                assert not conn.is_in_transaction()
                left = (await tx.fetch("SELECT COUNT(*) FROM outbox"))[0][0]
                timeout = (await tx.fetch("SHOW statement_timeout"))[0][0]
                plans = (await tx.fetch("SELECT current_setting('plan_cache_mode')"))[0][0]  # set for the session: it stays
            return queries_per_read, left, timeout, plans
        finally:
            await storage.close()

    assert asyncio.run(go()) == (1, 0, "0", "force_generic_plan")
