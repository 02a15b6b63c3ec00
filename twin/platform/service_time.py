"""Service-time distributions: how long one request keeps a CPU core or a database connection busy.

A *service time* is the time a resource spends on one job when nothing else is in the way (no
queueing). Queueing theory needs more than its mean: the waiting time of an M/G/c queue grows with
the squared coefficient of variation ``cv**2 = variance / mean**2`` of the service time
(Pollaczek-Khinchine), so a service whose times vary a lot (cv 1.5) queues much more than a
regular one (cv 0.3) at the same utilisation. A distribution is therefore stored as one of:

* ``gamma`` with ``(mean_ms, cv)`` — cv 1 is the exponential of M/M/c, cv 0 a fixed time;
* ``lognormal`` with ``(mean_ms, cv)`` — heavier right tail than a gamma of the same cv, typical
  of measured web latencies;
* ``empirical`` with ``quantiles_ms`` — the measured values at probabilities evenly spaced from 0
  to 1, sampled by linear interpolation of the inverse CDF (no shape assumed).

Sampling goes through the inverse CDF (``from_uniform``), so one uniform number can drive two
distributions at once: the platform model draws a request's CPU and DB time from the *same*
uniform, which keeps a slow request slow in both parts, as a big search is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

FAMILIES = ("gamma", "lognormal", "empirical")
EMPIRICAL_QUANTILES = 101  # percentiles 0, 1, …, 100: fine enough for p99, small enough to read in JSON


@dataclass(frozen=True)
class ServiceTime:
    """One service-time distribution in milliseconds (see the module docstring for the families)."""

    family: str
    mean_ms: float
    cv: float
    quantiles_ms: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"service time family {self.family!r}: use one of {', '.join(FAMILIES)}")
        if not (math.isfinite(self.mean_ms) and self.mean_ms >= 0):
            raise ValueError(f"service time mean_ms must be a finite number >= 0, got {self.mean_ms!r}")
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"service time cv must be a finite number >= 0, got {self.cv!r}")
        if self.family == "lognormal" and self.cv == 0 and self.mean_ms > 0:
            raise ValueError("a lognormal service time needs cv > 0; use family 'gamma' with cv 0 for a fixed time")
        if self.family == "empirical":
            q = np.asarray(self.quantiles_ms, dtype=float)
            if q.size < 2 or not np.all(np.isfinite(q)) or q[0] < 0 or np.any(np.diff(q) < 0):
                raise ValueError("an empirical service time needs >= 2 finite, non-negative, non-decreasing "
                                 f"quantiles_ms, got {self.quantiles_ms!r}")
        elif self.quantiles_ms:
            raise ValueError(f"quantiles_ms belongs to family 'empirical', not {self.family!r}")

    # ----------------------------------------------------------------- construction

    @classmethod
    def fixed(cls, time_ms: float) -> ServiceTime:
        """A constant time (gamma with cv 0); ``fixed(0)`` means "this part takes no time"."""
        return cls("gamma", float(time_ms), 0.0)

    @classmethod
    def exponential(cls, mean_ms: float) -> ServiceTime:
        """The memoryless service time of M/M/c (gamma with cv 1)."""
        return cls("gamma", float(mean_ms), 1.0)

    @classmethod
    def fit(cls, samples_ms: np.ndarray, family: str) -> ServiceTime:
        """Fit ``family`` to samples: by moments for gamma/lognormal, by percentiles for empirical."""
        x = np.asarray(samples_ms, dtype=float)
        if x.size < 2 or not np.all(np.isfinite(x)) or np.any(x < 0):
            raise ValueError(f"need >= 2 finite, non-negative samples to fit a service time, got {x.size}")
        mean = float(x.mean())
        cv = float(x.std(ddof=1) / mean) if mean > 0 else 0.0
        if family == "empirical":
            q = np.quantile(x, np.linspace(0.0, 1.0, EMPIRICAL_QUANTILES))
            return cls("empirical", mean, cv, tuple(float(v) for v in q))
        return cls(family, mean, cv)

    def scaled(self, factor: float) -> ServiceTime:
        """The same shape, every time multiplied by ``factor`` (cv is unchanged by scaling)."""
        q = tuple(v * factor for v in self.quantiles_ms)
        return ServiceTime(self.family, self.mean_ms * factor, self.cv, q)

    # ----------------------------------------------------------------- sampling

    @property
    def is_zero(self) -> bool:
        return self.mean_ms == 0.0

    def from_uniform(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF: uniform(0, 1) numbers → service times in ms (vectorised)."""
        u = np.asarray(u, dtype=float)
        if self.mean_ms == 0.0 or (self.family == "gamma" and self.cv == 0.0):
            return np.full(u.shape, self.mean_ms)
        if self.family == "gamma":
            shape = 1.0 / self.cv**2
            return special.gammaincinv(shape, u) * (self.mean_ms / shape)
        if self.family == "lognormal":
            sigma2 = math.log1p(self.cv**2)
            mu = math.log(self.mean_ms) - sigma2 / 2
            return np.exp(mu + math.sqrt(sigma2) * special.ndtri(u))
        q = np.asarray(self.quantiles_ms)
        return np.interp(u, np.linspace(0.0, 1.0, q.size), q)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.from_uniform(rng.random(n))

    # ----------------------------------------------------------------- JSON

    def to_dict(self) -> dict:
        out: dict = {"family": self.family, "mean_ms": self.mean_ms, "cv": self.cv}
        if self.quantiles_ms:
            out["quantiles_ms"] = list(self.quantiles_ms)
        return out

    @classmethod
    def from_dict(cls, data: dict, where: str) -> ServiceTime:
        """Build from JSON; ``where`` names the field in error messages (e.g. ``endpoints.token.cpu_ms``)."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object with family, mean_ms, cv, got {data!r}")
        allowed = {"family", "mean_ms", "cv", "quantiles_ms"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        missing = [k for k in ("family", "mean_ms", "cv") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
        try:
            return cls(str(data["family"]), float(data["mean_ms"]), float(data["cv"]),
                       tuple(float(v) for v in data.get("quantiles_ms", ())))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
