"""Placeholder route module (filled in by the issue-3 work)."""

from __future__ import annotations

from starlette.routing import Route


def routes(service, guarded) -> list[Route]:
    return []
