"""SQLite's WAL stays bounded under steady writes: the writer completes a checkpoint every
``WAL_AUTOCHECKPOINT_PAGES`` and the WAL starts over, beside the background checkpointer."""

from __future__ import annotations

import asyncio
import os

from tests.unit.sqlite_storage import migrated_sqlite
from twin.server.storage import WAL_AUTOCHECKPOINT_PAGES, Row

PAGE_BYTES = 4096
WRITTEN_LIMITS = 5  # the test writes this many times the WAL's limit


def test_the_wal_stays_bounded_while_five_times_its_limit_is_written(tmp_path):
    body = "x" * 4000  # about a page per row

    async def go() -> tuple[int, int]:
        async with migrated_sqlite(tmp_path / "w.db") as storage:
            # The audit copier's reads every 0.5 s could, like any reader's snapshot, also keep a
            # checkpoint from starting the WAL over: the bound is tested with the writer and the
            # background checkpointer alone.
            storage.audit_indexer.stop()
            written = 0
            for batch in range(WRITTEN_LIMITS * WAL_AUTOCHECKPOINT_PAGES // 100):
                async with storage.transaction() as tx:
                    await tx.insert([Row("Observation", f"o-{batch}-{k}", 1, "2026-01-05T08:00:00+00:00", "p-1", "e-1",
                                         "ct-1", "o-1", "final", "c", "2026-01-05T08:00:00+00:00", None, None, body)
                                     for k in range(100)])
                written += 100 * len(body)
            return written, os.path.getsize(f"{tmp_path / 'w.db'}-wal")

    written, wal_bytes = asyncio.run(go())
    assert written > WRITTEN_LIMITS * WAL_AUTOCHECKPOINT_PAGES * PAGE_BYTES * 0.9
    # Unbounded, the WAL would hold all five limits' worth. Bounded, it holds the limit plus what is
    # written while a checkpoint cannot restart it: the writer's own is skipped while the background
    # checkpointer holds the checkpoint lock, and on a slow machine that copy (16 MB and an fsync)
    # lasted ~20 commits here (6,050 and 6,192 pages at the end; 1.5 limits were too tight a bound).
    assert wal_bytes < 2.5 * WAL_AUTOCHECKPOINT_PAGES * PAGE_BYTES
