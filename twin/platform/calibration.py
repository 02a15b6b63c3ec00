"""Calibration of the platform model: measured service times per endpoint, saved as JSON.

The platform model needs, for every endpoint of :data:`twin.api_calls.ENDPOINTS`, how long one
request keeps the application busy (CPU) and how long it holds a database connection (DB), when
it does not have to wait for anything. These come from the real API measured at **low load**: with
one request in flight at a time nothing queues, so a request's latency is its service time (plus a
small client/loopback overhead that can be subtracted).

A latency does not say how much of it was CPU and how much DB. :func:`calibration_from_latencies`
splits each endpoint's latency with a *DB fraction*:

* a **measured** fraction per endpoint when given (e.g. PostgreSQL ``pg_stat_statements``
  ``total_exec_time`` per endpoint's queries ÷ the endpoint's summed latency), recorded as
  ``"measured"``;
* else the **default for the database kind** (:data:`DEFAULT_DB_FRACTION`), recorded with its
  reason so a report can say the split was assumed:

  - ``sqlite`` → 0: the server runs SQLite in-process, on the worker's event loop, one
    transaction at a time per process (twin/server/storage.py). Database time *is* worker CPU
    time, so all of it is modelled as CPU and no connection pool is in the way.
  - ``postgresql`` → 0.5: no split has been measured yet; the midpoint keeps the model equally
    wrong either way (too much CPU or too much DB). Results that depend on it (DB pool sizing,
    cores) must be re-run with a measured fraction.

Both parts keep the measured shape: CPU time is ``(1 - f) × latency`` and DB time ``f × latency``,
and the model draws both from one uniform number per request, so their sum reproduces the measured
latency distribution exactly.

Besides the requests, every ``$submit-measurement`` causes asynchronous work after the answer: the
triage worker (rules, ClinicalImpression, Task) and an audit write. Their times are part of the
calibration too; in the twin's own server the audit row is written inside the request's
transaction, so it is already in the measured latency and ``audit_write_ms`` is then ``fixed(0)``.
"""

from __future__ import annotations

import datetime as dt
import json
import platform as _host
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin.api_calls import ENDPOINTS
from twin.platform.service_time import FAMILIES, ServiceTime

FORMAT_VERSION = 1
MIN_SAMPLES = 20  # fewer samples leave the cv (and so the queueing) too uncertain: its rel. s.e. ≈ 1/sqrt(2n)

DEFAULT_DB_FRACTION: dict[str, tuple[float, str]] = {
    "sqlite": (0.0, "default for sqlite: in-process on the worker's event loop, DB time is worker CPU time"),
    "postgresql": (0.5, "default for postgresql: split not measured, midpoint assumed; re-run with a measured "
                        "db_fraction before sizing the DB pool"),
}


@dataclass(frozen=True)
class EndpointCalibration:
    """Service times of one endpoint: application CPU and database connection hold, in ms."""

    cpu_ms: ServiceTime
    db_ms: ServiceTime
    db_fraction_source: str  # "measured", "direct" (both parts given) or the default's reason

    @property
    def mean_service_ms(self) -> float:
        return self.cpu_ms.mean_ms + self.db_ms.mean_ms


@dataclass(frozen=True)
class CalibrationMetadata:
    """Where and how the calibration was measured (a calibration without it cannot be judged)."""

    measured_at: str  # ISO 8601
    machine: str
    server_config: Mapping[str, object]  # e.g. {"workers": 1, "server": "uvicorn+uvloop"}
    database_kind: str  # "sqlite" or "postgresql"
    sample_counts: Mapping[str, int]  # per endpoint, plus "triage_worker" / "audit_write" if measured
    notes: str = ""


@dataclass(frozen=True)
class PlatformCalibration:
    """Service times per endpoint plus the per-submission asynchronous work."""

    endpoints: Mapping[str, EndpointCalibration]
    triage_worker_ms: ServiceTime
    audit_write_ms: ServiceTime
    metadata: CalibrationMetadata
    format_version: int = field(default=FORMAT_VERSION)
    # Extra CPU ms of a request that finds its core idle: the server (and the virtual CPU under it)
    # wakes from sleep with cold caches. Measured as the part of the CPU per request that falls as
    # the load rises (twin.capacity.calibrate.fit_open_demand); 0 = no such cost.
    wake_ms: float = 0.0
    # The machine's own speed noise: on a shared virtual machine the same work takes a few per cent
    # more or less CPU from one second to the next (neighbours share caches and cores). Modelled as
    # one factor per ``speed_window_s`` window of arrival time, lognormal with mean 1 and cv
    # ``speed_cv``, that multiplies every request's CPU time in the window. It hardly matters at low
    # load and dominates the tail near saturation: a window 10 % slow at 80 % load runs at 88 %.
    # Measured from the single-client calibration (twin.capacity.calibrate.speed_noise); 0 = off.
    speed_cv: float = 0.0
    speed_window_s: float = 1.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.endpoints) - set(ENDPOINTS))
        if unknown:
            raise ValueError(f"calibration: unknown endpoint(s) {', '.join(unknown)}; "
                             f"known: {', '.join(ENDPOINTS)}")
        if not self.endpoints:
            raise ValueError("calibration: no endpoints calibrated")
        if not (isinstance(self.wake_ms, int | float) and 0.0 <= self.wake_ms < 1000.0):
            raise ValueError(f"calibration: wake_ms must be a number of ms in [0, 1000), got {self.wake_ms!r}")
        if not (isinstance(self.speed_cv, int | float) and 0.0 <= self.speed_cv < 2.0):
            raise ValueError(f"calibration: speed_cv must be a number in [0, 2), got {self.speed_cv!r}")
        if not (isinstance(self.speed_window_s, int | float) and self.speed_window_s > 0):
            raise ValueError(f"calibration: speed_window_s must be a number of seconds > 0, got {self.speed_window_s!r}")

    def endpoint(self, name: str) -> EndpointCalibration:
        try:
            return self.endpoints[name]
        except KeyError:
            known = "unknown to twin.api_calls" if name not in ENDPOINTS else "not measured in this calibration"
            raise KeyError(f"endpoint {name!r} is {known}; calibrated: {', '.join(self.endpoints)}") from None


# --------------------------------------------------------------------------- from measurements


def _as_service_time(value: ServiceTime | np.ndarray, family: str, where: str) -> tuple[ServiceTime, int | None]:
    if isinstance(value, ServiceTime):
        return value, None
    x = np.asarray(value, dtype=float)
    if x.size < MIN_SAMPLES:
        raise ValueError(f"{where}: {x.size} samples, need at least {MIN_SAMPLES}")
    return ServiceTime.fit(x, family), int(x.size)


def calibration_from_latencies(
    samples_by_endpoint: Mapping[str, np.ndarray],
    *,
    database_kind: str,
    triage_worker_ms: ServiceTime | np.ndarray,
    audit_write_ms: ServiceTime | np.ndarray,
    db_fraction: Mapping[str, float] | None = None,
    family: str = "lognormal",
    client_overhead_ms: float = 0.0,
    measured_at: str | None = None,
    machine: str | None = None,
    server_config: Mapping[str, object] | None = None,
    notes: str = "",
) -> PlatformCalibration:
    """Build a calibration from low-load latency samples (ms) per endpoint.

    ``client_overhead_ms`` (loopback + client time, e.g. from a trivial GET) is subtracted from
    every sample first; ``db_fraction`` gives a measured DB share per endpoint, the others get
    :data:`DEFAULT_DB_FRACTION` for ``database_kind`` (see the module docstring). ``family`` is
    ``gamma``, ``lognormal`` (fitted by mean and cv) or ``empirical`` (percentiles kept).
    ``triage_worker_ms`` and ``audit_write_ms`` are samples (fitted the same way) or a
    :class:`ServiceTime`.
    """
    if family not in FAMILIES:
        raise ValueError(f"family {family!r}: use one of {', '.join(FAMILIES)}")
    if database_kind not in DEFAULT_DB_FRACTION:
        raise ValueError(f"database_kind {database_kind!r}: use one of {', '.join(DEFAULT_DB_FRACTION)}")
    if not samples_by_endpoint:
        raise ValueError("samples_by_endpoint is empty: give latency samples for at least one endpoint")
    db_fraction = dict(db_fraction or {})
    for what, names in (("samples_by_endpoint", samples_by_endpoint), ("db_fraction", db_fraction)):
        unknown = sorted(set(names) - set(ENDPOINTS))
        if unknown:
            raise ValueError(f"{what}: unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(ENDPOINTS)}")
    extra = sorted(set(db_fraction) - set(samples_by_endpoint))
    if extra:
        raise ValueError(f"db_fraction given for endpoint(s) without samples: {', '.join(extra)}")
    if not (np.isfinite(client_overhead_ms) and client_overhead_ms >= 0):
        raise ValueError(f"client_overhead_ms must be >= 0, got {client_overhead_ms!r}")

    default_fraction, default_reason = DEFAULT_DB_FRACTION[database_kind]
    endpoints: dict[str, EndpointCalibration] = {}
    counts: dict[str, int] = {}
    for name, raw in samples_by_endpoint.items():
        x = np.asarray(raw, dtype=float).ravel()
        if x.size < MIN_SAMPLES:
            raise ValueError(f"samples_by_endpoint[{name!r}]: {x.size} samples, need at least {MIN_SAMPLES}")
        if not np.all(np.isfinite(x)) or np.any(x <= 0):
            raise ValueError(f"samples_by_endpoint[{name!r}]: latencies must be finite and > 0 ms")
        service = x - client_overhead_ms
        if np.any(service <= 0):
            raise ValueError(f"samples_by_endpoint[{name!r}]: client_overhead_ms {client_overhead_ms} is not below "
                             f"every latency (min {x.min():.3g} ms)")
        f = db_fraction.get(name, default_fraction)
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"db_fraction[{name!r}] must be in [0, 1], got {f!r}")
        total = ServiceTime.fit(service, family)
        endpoints[name] = EndpointCalibration(
            cpu_ms=total.scaled(1.0 - f), db_ms=total.scaled(f),
            db_fraction_source="measured" if name in db_fraction else default_reason)
        counts[name] = int(x.size)

    triage, n_triage = _as_service_time(triage_worker_ms, family, "triage_worker_ms")
    audit, n_audit = _as_service_time(audit_write_ms, family, "audit_write_ms")
    for key, n in (("triage_worker", n_triage), ("audit_write", n_audit)):
        if n is not None:
            counts[key] = n
    metadata = CalibrationMetadata(
        measured_at=measured_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        machine=machine or f"{_host.node()} {_host.machine()} {_host.python_implementation()} {_host.python_version()}",
        server_config=dict(server_config or {}),
        database_kind=database_kind,
        sample_counts=counts,
        notes=notes,
    )
    return PlatformCalibration(endpoints, triage, audit, metadata)


# --------------------------------------------------------------------------- JSON


def calibration_to_dict(calibration: PlatformCalibration) -> dict:
    m = calibration.metadata
    return {
        "format_version": calibration.format_version,
        "metadata": {"measured_at": m.measured_at, "machine": m.machine, "server_config": dict(m.server_config),
                     "database_kind": m.database_kind, "sample_counts": dict(m.sample_counts), "notes": m.notes},
        "endpoints": {name: {"cpu_ms": e.cpu_ms.to_dict(), "db_ms": e.db_ms.to_dict(),
                             "db_fraction_source": e.db_fraction_source}
                      for name, e in calibration.endpoints.items()},
        "triage_worker_ms": calibration.triage_worker_ms.to_dict(),
        "audit_write_ms": calibration.audit_write_ms.to_dict(),
        "wake_ms": calibration.wake_ms,
        "speed_cv": calibration.speed_cv,
        "speed_window_s": calibration.speed_window_s,
    }


def _fields(data: object, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                         f"allowed: {', '.join(required + optional)}")
    return data


def calibration_from_dict(data: dict, where: str = "calibration") -> PlatformCalibration:
    top = _fields(data, where, ("format_version", "metadata", "endpoints", "triage_worker_ms", "audit_write_ms"),
                  ("wake_ms", "speed_cv", "speed_window_s"))
    if top["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{where}.format_version: {top['format_version']!r}, this code reads {FORMAT_VERSION}")
    meta = _fields(top["metadata"], f"{where}.metadata",
                   ("measured_at", "machine", "server_config", "database_kind", "sample_counts"), ("notes",))
    if meta["database_kind"] not in DEFAULT_DB_FRACTION:
        raise ValueError(f"{where}.metadata.database_kind {meta['database_kind']!r}: "
                         f"use one of {', '.join(DEFAULT_DB_FRACTION)}")
    if not isinstance(top["endpoints"], dict):
        raise ValueError(f"{where}.endpoints: expected an object keyed by endpoint name")
    unknown = sorted(set(top["endpoints"]) - set(ENDPOINTS))
    if unknown:
        raise ValueError(f"{where}.endpoints: unknown endpoint(s) {', '.join(unknown)}; known: {', '.join(ENDPOINTS)}")
    endpoints = {}
    for name, raw in top["endpoints"].items():
        e = _fields(raw, f"{where}.endpoints.{name}", ("cpu_ms", "db_ms", "db_fraction_source"))
        endpoints[name] = EndpointCalibration(
            ServiceTime.from_dict(e["cpu_ms"], f"{where}.endpoints.{name}.cpu_ms"),
            ServiceTime.from_dict(e["db_ms"], f"{where}.endpoints.{name}.db_ms"),
            str(e["db_fraction_source"]))
    metadata = CalibrationMetadata(
        measured_at=str(meta["measured_at"]), machine=str(meta["machine"]), server_config=dict(meta["server_config"]),
        database_kind=meta["database_kind"], sample_counts={k: int(v) for k, v in meta["sample_counts"].items()},
        notes=str(meta.get("notes", "")))
    return PlatformCalibration(
        endpoints=endpoints,
        triage_worker_ms=ServiceTime.from_dict(top["triage_worker_ms"], f"{where}.triage_worker_ms"),
        audit_write_ms=ServiceTime.from_dict(top["audit_write_ms"], f"{where}.audit_write_ms"),
        metadata=metadata, wake_ms=float(top.get("wake_ms", 0.0)), speed_cv=float(top.get("speed_cv", 0.0)),
        speed_window_s=float(top.get("speed_window_s", 1.0)))


def save_calibration(calibration: PlatformCalibration, path: str | Path) -> Path:
    """Write the calibration as indented JSON (diffable, readable) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration_to_dict(calibration), indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(path: str | Path) -> PlatformCalibration:
    """Read a calibration written by :func:`save_calibration`; errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return calibration_from_dict(data, where=str(path))
