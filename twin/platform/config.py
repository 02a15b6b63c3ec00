"""The platform's configuration: how many workers, cores, database connections and async workers.

These are the knobs an architect turns ("2 workers on 4 cores, a pool of 16 connections"):

* ``cores`` — CPU cores of the host. This is the real constraint on application work: a
  request's CPU part runs only while it has a core.
* ``workers`` — server worker processes sharing one queue (our server: N uvicorn workers in one
  process group, every FUT service in each). A worker runs one request's CPU work at a time but
  *awaits* the database asynchronously, so while one request waits for its query the worker
  serves another. ``workers_per_service`` instead gives each FUT service (auth, patient,
  careplan, measurement, task, organization) its own pool, as separately deployed services have.
* ``db_connections`` — the database connection pool (all workers together). A request holds a
  connection for its DB time.
* ``db_on_app_cores`` — the database server runs on the same host (PostgreSQL next to the app on
  one box), so DB work also needs one of ``cores``; False for a separate database host.
* ``triage_workers`` / ``audit_workers`` — concurrent asynchronous jobs after a submission. They
  need a core too, so they steal capacity from requests without being in their latency;
  ``async_low_priority`` lets requests go first when both wait for a core (non-preemptive).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twin.api_calls import ENDPOINTS

SERVICES: tuple[str, ...] = ("auth", "patient", "careplan", "measurement", "task", "organization")


def _count(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"PlatformConfig.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class PlatformConfig:
    """Resources of the modelled platform (see the module docstring for each)."""

    cores: int = 2
    workers: int = 1
    workers_per_service: Mapping[str, int] | None = None
    db_connections: int = 8
    db_on_app_cores: bool = False
    triage_workers: int = 1
    audit_workers: int = 1
    async_low_priority: bool = True

    def __post_init__(self) -> None:
        for name in ("cores", "workers", "db_connections", "triage_workers", "audit_workers"):
            _count(name, getattr(self, name))
        if self.workers_per_service is not None:
            unknown = sorted(set(self.workers_per_service) - set(SERVICES))
            if unknown:
                raise ValueError(f"PlatformConfig.workers_per_service: unknown service(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(SERVICES)}")
            used = {e.service for e in ENDPOINTS.values()}
            missing = sorted(used - set(self.workers_per_service))
            if missing:
                raise ValueError(f"PlatformConfig.workers_per_service: no workers for service(s) {', '.join(missing)}, "
                                 "which endpoints of twin.api_calls use")
            for service, n in self.workers_per_service.items():
                _count(f"workers_per_service[{service!r}]", n)
            object.__setattr__(self, "workers_per_service", dict(self.workers_per_service))

    def worker_pools(self) -> dict[str, int]:
        """Pool name → size: ``{"shared": workers}`` or one pool per FUT service."""
        if self.workers_per_service is None:
            return {"shared": self.workers}
        return dict(self.workers_per_service)

    def pool_of(self, endpoint: str) -> str:
        return "shared" if self.workers_per_service is None else ENDPOINTS[endpoint].service
