"""The Universal Scalability Law (USL): how throughput grows, flattens and falls with load.

Gunther's USL describes the throughput ``X`` of a system at concurrency ``N`` (users, in-flight
requests, workers — or offered load) with three parameters:

    X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1))

* ``lambda`` — throughput of one unit of concurrency with no interference: the ideal slope;
* ``sigma`` — **contention**: the share of work that is serialised (a lock, one DB writer, a
  single core). With ``kappa = 0`` this is Amdahl's law: throughput rises towards the ceiling
  ``lambda / sigma`` but never beyond it;
* ``kappa`` — **coherency**: the cost of keeping N parties consistent with each other (cache
  invalidation, lock hand-offs, connection churn), growing with the N(N-1) pairs. With
  ``kappa > 0`` throughput *peaks* at ``N* = sqrt((1 - sigma) / kappa)`` and then falls:
  adding load makes the system do less.

Fitting the curve to a handful of measured (N, X) points, e.g. Locust step loads against the
real API, turns "it got slow at 300 users" into where the limit is and what causes it (sigma:
queue for something; kappa: things fighting each other). The fit is non-linear least squares
(:func:`scipy.optimize.curve_fit`, parameters >= 0, sigma and kappa <= 1), started from the
linearised form ``N / X = a + b N + c N**2``, which is an ordinary quadratic. Confidence intervals come from
a seeded bootstrap over the points (resample the points with replacement, refit, take the
percentiles), and standard errors from the fit's covariance matrix; with few points the
bootstrap is the more honest of the two, because it also sees parameters stuck at their bound.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = ["UslFit", "fit_usl", "usl_throughput"]

MIN_POINTS = 4  # 3 parameters + at least one residual degree of freedom
FIT_MAXFEV = 20_000  # evaluations for the fit itself …
BOOTSTRAP_MAXFEV = 300  # … and for each bootstrap resample: a resample that repeats a few noisy points
# (a 7-step sweep drawn as 1, 8, 8, 8, 32, 32, 64) can send the optimiser wandering for all 20,000 —
# 12 s each here, and the main job's USL took minutes. The resamples that converged took at most 128
# evaluations (median 28-32; 900 resamples of three sweeps); one that has not converged by 300 is
# skipped, as one that does not converge at all.
# kappa (or sigma) counts as zero when its term is below this share of the denominator at the largest
# measured N: it then changes the throughput there by < 0.01 %, far below any measurement noise, so the
# data show no peak (or no ceiling), and the fitted 1e-11 is round-off, not a finding.
NEGLIGIBLE_SHARE = 1e-4
PARAMETERS = ("lambda_", "sigma", "kappa")


def usl_throughput(n: np.ndarray | float, lambda_: float, sigma: float, kappa: float) -> np.ndarray:
    """X(N) of the USL for concurrency ``n`` (vectorised)."""
    n = np.asarray(n, dtype=float)
    return lambda_ * n / (1.0 + sigma * (n - 1.0) + kappa * n * (n - 1.0))


def _peak(lambda_: float, sigma: float, kappa: float, n_max: float) -> tuple[float, float]:
    """(N*, X(N*)): the concurrency of maximum throughput and that throughput."""
    if sigma >= 1.0:
        return 1.0, lambda_  # X(N) never rises above X(1): everything is serialised or worse
    contention = sigma * (n_max - 1.0)
    coherency = kappa * n_max * (n_max - 1.0)
    negligible = NEGLIGIBLE_SHARE * (1.0 + contention + coherency)
    if coherency <= negligible:
        # No coherency cost: no peak. Throughput approaches Amdahl's ceiling lambda/sigma
        # (unbounded if contention is negligible too: linear scaling).
        return math.inf, (lambda_ / sigma if contention > negligible else math.inf)
    n_star = math.sqrt((1.0 - sigma) / kappa)
    if n_star < 1.0:
        return 1.0, lambda_  # the USL counts from one unit of concurrency; it only falls from there
    return n_star, float(usl_throughput(n_star, lambda_, sigma, kappa))


@dataclass(frozen=True)
class UslFit:
    """A USL fit: parameters with confidence intervals, goodness of fit and the peak.

    ``ci`` maps ``lambda_``, ``sigma``, ``kappa``, ``peak_concurrency`` and ``max_throughput`` to
    (low, high) bootstrap percentile intervals at ``confidence``; ``stderr`` holds the standard
    errors of the three parameters from the covariance (``inf`` when a parameter sits at its
    bound). ``peak_concurrency`` is ``inf`` when kappa is negligible (``NEGLIGIBLE_SHARE``);
    ``max_throughput`` is then the asymptote ``lambda_ / sigma`` (``inf`` if sigma is negligible
    too). With ``sigma >= 1`` or ``N* < 1`` the peak is at N = 1. Throughput is in the unit of the
    data (e.g. requests per second).
    """

    lambda_: float
    sigma: float
    kappa: float
    ci: dict[str, tuple[float, float]]
    stderr: dict[str, float]
    r_squared: float
    peak_concurrency: float
    max_throughput: float
    n_points: int
    confidence: float
    bootstrap_fits: int

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return usl_throughput(n, self.lambda_, self.sigma, self.kappa)

    def table(self) -> pd.DataFrame:
        """One row per quantity: estimate, CI bounds and (for the parameters) standard error."""
        estimates = {"lambda_": self.lambda_, "sigma": self.sigma, "kappa": self.kappa,
                     "peak_concurrency": self.peak_concurrency, "max_throughput": self.max_throughput}
        return pd.DataFrame([{"quantity": k, "estimate": v, "ci_low": self.ci[k][0], "ci_high": self.ci[k][1],
                              "stderr": self.stderr.get(k, math.nan)} for k, v in estimates.items()])


def _check(n: np.ndarray, x: np.ndarray) -> None:
    if n.ndim != 1 or x.ndim != 1 or n.size != x.size:
        raise ValueError(f"concurrency and throughput must be 1-d and of equal length, got shapes {n.shape} and {x.shape}")
    if n.size < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} (concurrency, throughput) points to fit the 3 USL parameters "
                         f"with a degree of freedom left, got {n.size}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(x))):
        raise ValueError("concurrency and throughput must be finite numbers (no NaN or inf)")
    if np.any(n <= 0):
        raise ValueError(f"concurrency must be > 0, got min {n.min():g}")
    if np.any(x <= 0):
        raise ValueError(f"throughput must be > 0, got min {x.min():g} (drop failed runs before fitting)")
    if np.unique(n).size < 3:
        raise ValueError(f"need at least 3 distinct concurrency levels to tell sigma from kappa, got {np.unique(n).size}")


def _initial_guess(n: np.ndarray, x: np.ndarray) -> np.ndarray:
    # N/X = (1 - sigma)/lambda + (sigma - kappa)/lambda N + kappa/lambda N^2: a quadratic in N.
    c2, c1, c0 = np.polyfit(n, n / x, 2)
    lam = 1.0 / max(c0 + c1 + c2, 1e-300)  # at N = 1, N/X = 1/lambda
    kappa = max(c2 * lam, 0.0)
    sigma = min(max(c1 * lam + kappa, 0.0), 1.0)
    if not np.isfinite(lam) or lam <= 0:
        lam = float(np.max(x / n))
    return np.array([lam, sigma, kappa])


def _fit(n: np.ndarray, x: np.ndarray, maxfev: int = FIT_MAXFEV) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # A parameter on its bound (kappa = 0) makes the covariance singular; stderr is then inf.
        # Trial steps near the bounds may still overflow in a resample's Jacobian: the bootstrap skips those.
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        p0 = _initial_guess(n, x)
        if not np.all(np.isfinite(p0)):  # a degenerate resample: start from plain linear scaling
            p0 = np.array([float(np.max(x / n)), 0.0, 0.0])
        # Finite upper bounds keep the optimiser's trial steps where the curve is finite (a step to
        # sigma ~ 1e300 overflowed, and the fit of a noisy sweep failed on NaN): sigma is a serial
        # share, at most 1; kappa beyond 1 would halve the throughput from one client to two; lambda
        # (the one-client throughput) beyond a thousand times the most measured is not a fit.
        upper = np.array([1e3 * float(np.max(x)), 1.0, 1.0])
        p0 = np.clip(p0, 0.0, upper)
        params, cov = curve_fit(usl_throughput, n, x, p0=p0, bounds=(np.zeros(3), upper), maxfev=maxfev)
    return params, cov


def fit_usl(
    concurrency: np.ndarray,
    throughput: np.ndarray,
    *,
    confidence: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> UslFit:
    """Fit the USL to measured (concurrency N, throughput X) points; see the module docstring.

    Repeated measurements at one N are welcome (they show the noise). Raises ValueError for fewer
    than 4 points, fewer than 3 distinct N, or non-positive / non-finite values.
    """
    n = np.asarray(concurrency, dtype=float)
    x = np.asarray(throughput, dtype=float)
    _check(n, x)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n_bootstrap < 100:
        raise ValueError(f"n_bootstrap must be >= 100 for stable percentile intervals, got {n_bootstrap}")

    params, cov = _fit(n, x)
    lam, sigma, kappa = (float(p) for p in params)
    n_max = float(n.max())
    n_star, x_max = _peak(lam, sigma, kappa, n_max)
    residual = x - usl_throughput(n, *params)
    total = float(((x - x.mean()) ** 2).sum())
    r_squared = 1.0 - float((residual**2).sum()) / total if total > 0 else math.nan
    diag = np.diag(cov)
    stderr = {k: float(math.sqrt(v)) if np.isfinite(v) and v >= 0 else math.inf for k, v in zip(PARAMETERS, diag, strict=True)}

    # Pairs bootstrap: resample points; skip resamples that cannot identify 3 parameters.
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n.size, n.size)
        if np.unique(n[idx]).size < 3:
            continue
        try:
            p, _ = _fit(n[idx], x[idx], BOOTSTRAP_MAXFEV)
        except (RuntimeError, ValueError):  # no convergence, or a degenerate start, on this resample
            continue
        draws.append((*p, *_peak(*(float(v) for v in p), n_max)))
    if len(draws) < n_bootstrap // 2:
        raise ValueError(f"only {len(draws)} of {n_bootstrap} bootstrap resamples could be fitted: "
                         "too few distinct concurrency levels for a confidence interval")
    boot = np.array(draws)
    alpha = (1.0 - confidence) / 2.0
    ci = {}
    for j, name in enumerate((*PARAMETERS, "peak_concurrency", "max_throughput")):
        # "inverted_cdf" picks observed values, so resamples with N* = inf give inf, not NaN.
        lo, hi = np.quantile(boot[:, j], [alpha, 1.0 - alpha], method="inverted_cdf")
        ci[name] = (float(lo), float(hi))
    return UslFit(lambda_=lam, sigma=sigma, kappa=kappa, ci=ci, stderr=stderr, r_squared=r_squared,
                  peak_concurrency=n_star, max_throughput=x_max, n_points=int(n.size), confidence=confidence,
                  bootstrap_fits=len(draws))
