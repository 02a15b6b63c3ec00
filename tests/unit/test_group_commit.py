"""SQLite group commit: units that queue together share one COMMIT, and every unit is answered."""

from __future__ import annotations

import asyncio

from tests.unit.sqlite_storage import migrated_sqlite


def test_a_cancelled_unit_does_not_strand_the_rest_of_its_batch(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "g.db") as storage:

            async def unit(k: int) -> int:
                async with storage.transaction() as tx:
                    await tx.execute("INSERT INTO jobs (name, day, ran_at) VALUES (?, ?, ?)", (f"u{k}", "d", "t"))
                return k

            tasks = [asyncio.create_task(unit(k)) for k in range(5)]
            for _ in range(3):  # every unit has run its statements and waits for the shared commit
                await asyncio.sleep(0)
            tasks[2].cancel()  # its client went away while the batch was still open
            results = await asyncio.gather(*tasks, return_exceptions=True)
            async with storage.transaction() as tx:
                stored = [r[0] for r in await tx.fetch("SELECT name FROM jobs ORDER BY name")]
            return results, stored

    results, stored = asyncio.run(go())
    assert [r for r in results if not isinstance(r, BaseException)] == [0, 1, 3, 4]
    assert isinstance(results[2], asyncio.CancelledError)
    # the cancelled unit's work was already in the batch: it is committed with the others
    # (stored without an answer; a resubmission finds it)
    assert stored == ["u0", "u1", "u2", "u3", "u4"]


def test_commit_times_count_commits_and_the_units_they_carried(tmp_path):
    async def go():
        async with migrated_sqlite(tmp_path / "t.db") as storage:
            before = storage.commits.stats()

            async def unit(k: int) -> None:
                async with storage.transaction() as tx:
                    await tx.execute("INSERT INTO jobs (name, day, ran_at) VALUES (?, ?, ?)", (f"u{k}", "d", "t"))

            await asyncio.gather(*(unit(k) for k in range(6)))  # queued together: one batch
            await unit(99)  # alone: a batch of its own
            return before, storage.commits.stats()

    before, after = asyncio.run(go())
    assert after["units"] - before["units"] == 7
    assert after["commits"] - before["commits"] == 2
    assert after["busy_s"] > before["busy_s"] and after["longest_ms"] > 0
