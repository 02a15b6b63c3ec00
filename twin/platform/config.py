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
* ``loop_phases`` — how many times a request's CPU work rejoins the back of the core's queue. A
  thread-per-request server runs a request in one go (1). An event loop does not: a request
  parses, runs its handler to the database commit, waits while the commit is queued behind the
  other ready callbacks, then resumes to send its answer — each step queues anew behind whatever
  became ready meanwhile, so requests interleave, as under processor sharing.
* ``triage_batch`` — submissions a triage worker takes in one go (our server: up to 10 per
  transaction). A batch holds its core for all of them: requests arriving meanwhile wait behind
  the whole batch — one of the stalls that set the p95 of everything else.
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
    triage_batch: int = 1
    loop_phases: int = 1

    def __post_init__(self) -> None:
        for name in ("cores", "workers", "db_connections", "triage_workers", "audit_workers", "triage_batch",
                     "loop_phases"):
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
