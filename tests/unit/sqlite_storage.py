"""A migrated SQLite ``Storage`` for unit tests that talk to the storage layer directly."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from twin.server.storage import Storage


@contextlib.asynccontextmanager
async def migrated_sqlite(path: Path | str) -> AsyncIterator[Storage]:
    """Open (creating if need be) and migrate the SQLite database at ``path``; closed on exit."""
    storage = Storage.connect(f"sqlite:///{path}")
    await storage.open()
    try:
        await storage.migrate()
        yield storage
    finally:
        await storage.close()
