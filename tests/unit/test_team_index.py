"""The partial team index: team searches use it, a submission's rows stay out of it."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.sqlite_storage import migrated_sqlite
from twin.server import storage as st
from twin.server.storage import TEAM_SEARCHED, Filter, Row

WORKLIST_ORDER = [("priority", True), ("last_updated", False), ("id", False)]


def _row(type_: str, id_: str, team: str = "ct-1", status: str = "ready", priority: int | None = None) -> Row:
    return Row(type_, id_, 1, "2026-01-05T08:00:00+00:00", "p-1", "e-1", team, "o-1", status, None,
               "2026-01-05T08:00:00+00:00", priority, None, "{}")


def _plan(storage, type_: str, filters: list[Filter], order=()) -> str:
    where, params = st._where(type_, filters)
    order_sql = ", ".join(f"{c} {'DESC' if desc else 'ASC'}" for c, desc in order)
    sql = f"SELECT id FROM resources WHERE {where}" + (f" ORDER BY {order_sql}" if order_sql else "")
    return " / ".join(r[-1] for r in storage.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())


@pytest.mark.parametrize("type_", TEAM_SEARCHED)
def test_a_team_search_uses_the_partial_index(tmp_path, type_):
    async def go():
        async with migrated_sqlite(tmp_path / "t.db") as storage:
            return _plan(storage, type_, [Filter("team", "=", "ct-1")])

    assert "resources_team_searched" in asyncio.run(go())


def test_the_worklist_reads_its_page_in_index_order_without_a_sort(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "t.db") as storage:
            return _plan(storage, "Task", [Filter("team", "=", "ct-1"), Filter("status", "in", ["ready"])],
                         WORKLIST_ORDER)

    plan = asyncio.run(go())
    assert "COVERING INDEX resources_team_searched" in plan and "TEMP B-TREE" not in plan


def test_only_team_searched_types_enter_the_index_and_searches_find_them(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "t.db") as storage:
            async with storage.transaction() as tx:
                await tx.insert([_row("Task", "t-1", priority=2), _row("Task", "t-2", priority=0),
                                 _row("Task", "t-3", team="ct-2", priority=1), _row("Observation", "o-1"),
                                 _row("QuestionnaireResponse", "q-1"), _row("Provenance", "v-1")])
            async with storage.transaction() as tx:
                in_index = await tx.fetch(f"SELECT type, id FROM resources INDEXED BY resources_team_searched "
                                          f"WHERE {st.TEAM_SEARCHED_SQL} ORDER BY id")
                page = await tx.search("Task", [Filter("team", "=", "ct-1"), Filter("status", "in", ["ready"])],
                                       WORKLIST_ORDER)
            return in_index, [r.id for r in page]

    in_index, page = asyncio.run(go())
    assert in_index == [("Task", "t-1"), ("Task", "t-2"), ("Task", "t-3")]
    assert page == ["t-1", "t-2"]  # the team's own, highest priority first


def test_a_team_search_of_another_type_is_a_programming_error():
    with pytest.raises(ValueError, match="TEAM_SEARCHED"):
        st._where("Observation", [Filter("team", "=", "ct-1")])


def test_searches_are_prepared_once_not_at_every_execution(tmp_path):
    """SQLite re-plans a statement at every execution when its plan depended on a bound value (a
    partial index's predicate checked against ``type = ?``). The authorizer is called only while a
    statement is prepared: once a search has run (and been prepared), running it again must not
    call it."""

    async def go():
        async with migrated_sqlite(tmp_path / "t.db") as storage:
            searches = [("Task", [Filter("team", "=", "ct-1"), Filter("status", "in", ["ready"])], WORKLIST_ORDER),
                        ("Observation", [Filter("patient", "=", "p-1")], [("effective", True)]),
                        ("EpisodeOfCare", [Filter("team", "=", "ct-1")], [])]
            prepared_again = {}
            for type_, filters, order in searches:
                calls: list = []
                storage.conn.set_authorizer(lambda *a, calls=calls: calls.append(a) or 0)  # 0: SQLITE_OK
                try:
                    for _ in range(2):  # the first prepares (set_authorizer expires every statement)
                        before = len(calls)
                        async with storage.transaction() as tx:
                            await tx.search(type_, filters, order, limit=10)
                    prepared_again[type_] = len(calls) - before
                finally:
                    storage.conn.set_authorizer(None)
            return prepared_again

    assert asyncio.run(go()) == {"Task": 0, "Observation": 0, "EpisodeOfCare": 0}


@pytest.mark.parametrize("bad", ["Task'; DROP TABLE resources; --", "task", "", "Task Observation"])
def test_a_resource_type_that_is_not_a_name_never_reaches_the_sql(bad):
    with pytest.raises(ValueError, match="resource type"):
        st._where(bad, [])
