"""Crash safety: concurrent submissions, SIGKILL mid-run, restart on the same database, verify.

Three short rounds of ``benchmarks/crash_soak.py`` per database kind (its own SQLite file; its own
PostgreSQL database): every submission answered 201/200 is stored (its locations resolve), triaged
exactly once, audited; nothing half-written; no duplicates (``crash_soak.verify`` lists the
checks). The long version is ``python benchmarks/crash_soak.py --rounds N``.
"""

from __future__ import annotations

import random

import pytest

from benchmarks import crash_soak
from tests.server.conftest import PG_ADMIN, free_port

ROUNDS = 3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_answered_submissions_survive_sigkill(kind, tmp_path):
    port = free_port()
    try:
        database, cleanup = crash_soak.prepare_database(None if kind == "sqlite" else PG_ADMIN, tmp_path,
                                                        f"http://127.0.0.1:{port}")
    except OSError as exc:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {exc}")
    rng = random.Random(20260301)
    total = crash_soak.RoundResult()
    try:
        for _ in range(ROUNDS):
            res = crash_soak.run_round(database, port, tmp_path / "server.log", list(crash_soak.CITIZENS[:4]), rng,
                                       kill_after=(0.3, 0.8))
            total.add(res)
            assert res.answered > 0, "no submission was answered before the crash"
    finally:
        cleanup()
    print(f"{kind}: sent {total.sent}, answered {total.answered}, lost {total.lost}, duplicated {total.duplicated}, "
          f"stored without answer {total.unanswered_stored}")
    assert (total.lost, total.duplicated, total.broken) == (0, 0, []), total
