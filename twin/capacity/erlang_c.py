"""M/M/c queue formulas (Erlang B and Erlang C).

The M/M/c queue is the textbook model of "c identical servers, one shared
first-come-first-served queue":

* **M** - arrivals form a Poisson process with rate ``lambda`` (e.g. alerts per hour);
* **M** - service times are exponential with mean ``S = 1/mu`` (e.g. hours a nurse
  spends on one alert);
* **c** - number of servers working in parallel (nurses on shift); the queue is unbounded.

Key quantities (all in steady state):

* Offered load ``a = lambda * S`` in *erlangs*: the mean number of servers that would be
  busy if nobody ever had to wait. One erlang = one server busy all the time.
* Utilisation ``rho = a / c``: fraction of time a server is busy. The queue is stable only
  if ``rho < 1``; otherwise it grows without bound.
* Erlang B ``B(c, a)``: probability that all c servers are busy in the *loss* system
  M/M/c/c (no queue, blocked arrivals leave). Computed with the recursion
  ``B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1))``, which never forms ``a**c`` or ``c!``
  and so stays finite and accurate for c in the thousands.
* Erlang C ``C(c, a) = B / (1 - rho (1 - B))``: probability that an arrival in the M/M/c
  queue has to wait at all.
* Given that it waits, an arrival's wait is exponential with rate ``c mu - lambda``, so
  ``P(Wq > t) = C exp(-(c mu - lambda) t)``, ``Wq = C / (c mu - lambda)`` and, by Little's
  law, the mean queue length is ``Lq = lambda Wq``.

In the twin these formulas check the SimPy nurse-queue model (and later the platform
model): with stationary Poisson alerts and exponential handling times the simulated
mean wait must match ``mean_wait_time``. Real alerts follow daily patterns and handling
times are not exponential, so the formulas are a sanity check and a first capacity
estimate, not a replacement for the simulation.

Functions take plain numbers (Python or numpy scalars) and return Python floats/ints.
Rates and times may use any unit as long as it is the same for all arguments (e.g. per
hour and hours); the results use that unit too.
"""

from __future__ import annotations

import math
import operator

__all__ = [
    "erlang_b",
    "erlang_c_wait_probability",
    "mean_queue_length",
    "mean_response_time",
    "mean_wait_time",
    "offered_load_erlangs",
    "servers_needed",
    "utilisation",
    "wait_time_quantile",
    "wait_time_survival",
]


# --------------------------------------------------------------------------- validation


def _as_float(name: str, value: object) -> float:
    """Convert ``value`` to a finite float or raise a ValueError naming the argument."""
    if isinstance(value, bool):  # bool is an int subclass; True as a rate is a bug
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _non_negative(name: str, value: object) -> float:
    number = _as_float(name, value)
    if number < 0.0:
        raise ValueError(f"{name} must be >= 0, got {number!r}")
    return number


def _positive(name: str, value: object) -> float:
    number = _as_float(name, value)
    if number <= 0.0:
        raise ValueError(f"{name} must be > 0, got {number!r}")
    return number


def _as_servers(servers: object) -> int:
    """Accept ints, numpy ints and integral floats (e.g. 3.0); reject everything else."""
    message = f"servers must be an integer >= 1, got {servers!r}"
    if isinstance(servers, bool):
        raise ValueError(message)
    try:
        count = operator.index(servers)  # type: ignore[arg-type]
    except TypeError:
        if not isinstance(servers, float) or not servers.is_integer():
            raise ValueError(message) from None
        count = int(servers)
    if count < 1:
        raise ValueError(message)
    return count


def _check_stable(servers: int, offered_load: float) -> None:
    if offered_load >= servers:
        raise ValueError(
            f"offered_load ({offered_load:g} erlangs) must be < servers ({servers}): "
            f"utilisation {offered_load / servers:.3g} >= 1 means the queue grows without bound"
        )


# --------------------------------------------------------------------------- core formulas


def offered_load_erlangs(arrival_rate_per_h: float, mean_service_time_h: float) -> float:
    """Offered load ``a = lambda * S`` in erlangs (mean number of busy servers).

    Example: 100 calls/h with a 3-minute (0.05 h) handling time offer 5 erlangs.
    """
    arrival_rate_per_h = _non_negative("arrival_rate_per_h", arrival_rate_per_h)
    mean_service_time_h = _positive("mean_service_time_h", mean_service_time_h)
    return arrival_rate_per_h * mean_service_time_h


def _erlang_b_unchecked(servers: int, offered_load: float) -> float:
    # The recursion only multiplies and divides numbers in [0, 1] by moderate factors,
    # unlike the textbook a**c / c! form, which overflows for c around 170.
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return blocking


def _erlang_c_unchecked(servers: int, offered_load: float) -> float:
    blocking = _erlang_b_unchecked(servers, offered_load)
    rho = offered_load / servers
    return blocking / (1.0 - rho * (1.0 - blocking))


def erlang_b(servers: int, offered_load: float) -> float:
    """Erlang B: P(all ``servers`` busy) in the loss system M/M/c/c with ``offered_load`` erlangs.

    Also the building block of Erlang C. Defined for any load (no stability condition,
    because blocked arrivals leave instead of queueing).
    """
    servers = _as_servers(servers)
    offered_load = _non_negative("offered_load", offered_load)
    return _erlang_b_unchecked(servers, offered_load)


def erlang_c_wait_probability(servers: int, offered_load: float) -> float:
    """Erlang C: probability that an arrival has to wait, P(Wq > 0), in an M/M/c queue.

    Raises ValueError if ``offered_load >= servers`` (utilisation >= 1: no steady state).
    """
    servers = _as_servers(servers)
    offered_load = _non_negative("offered_load", offered_load)
    _check_stable(servers, offered_load)
    return _erlang_c_unchecked(servers, offered_load)


def _queue_parameters(
    servers: object, arrival_rate: object, mean_service_time: object
) -> tuple[float, float]:
    """Validate the (c, lambda, S) triple; return C and the wait decay rate c*mu - lambda."""
    servers = _as_servers(servers)
    arrival_rate = _non_negative("arrival_rate", arrival_rate)
    mean_service_time = _positive("mean_service_time", mean_service_time)
    offered_load = arrival_rate * mean_service_time
    _check_stable(servers, offered_load)
    wait_probability = _erlang_c_unchecked(servers, offered_load)
    # c*mu - lambda written as (c - a) / S: one subtraction of comparable numbers.
    drain_rate = (servers - offered_load) / mean_service_time
    return wait_probability, drain_rate


def mean_wait_time(servers: int, arrival_rate: float, mean_service_time: float) -> float:
    """Mean time in queue before service, ``Wq = C / (c mu - lambda)``.

    Same time unit as the inputs (per-hour rate and hours give hours).
    """
    wait_probability, drain_rate = _queue_parameters(servers, arrival_rate, mean_service_time)
    return wait_probability / drain_rate


def mean_response_time(servers: int, arrival_rate: float, mean_service_time: float) -> float:
    """Mean time in system (queue + service), ``W = Wq + S``."""
    return mean_wait_time(servers, arrival_rate, mean_service_time) + float(mean_service_time)


def mean_queue_length(servers: int, arrival_rate: float, mean_service_time: float) -> float:
    """Mean number waiting (not being served), ``Lq = lambda * Wq`` (Little's law)."""
    return float(arrival_rate) * mean_wait_time(servers, arrival_rate, mean_service_time)


def utilisation(servers: int, arrival_rate: float, mean_service_time: float) -> float:
    """Server utilisation ``rho = lambda / (c mu) = a / c``.

    Unlike the waiting-time functions this does not raise for an overloaded system: a
    value >= 1 is returned as is, so capacity reports can show *how* overloaded it is.
    """
    servers = _as_servers(servers)
    arrival_rate = _non_negative("arrival_rate", arrival_rate)
    mean_service_time = _positive("mean_service_time", mean_service_time)
    return arrival_rate * mean_service_time / servers


def wait_time_survival(servers: int, arrival_rate: float, mean_service_time: float, t: float) -> float:
    """P(Wq > t) = C exp(-(c mu - lambda) t): the share of arrivals waiting longer than ``t``."""
    wait_probability, drain_rate = _queue_parameters(servers, arrival_rate, mean_service_time)
    t = _non_negative("t", t)
    return wait_probability * math.exp(-drain_rate * t)


def wait_time_quantile(servers: int, arrival_rate: float, mean_service_time: float, q: float) -> float:
    """The ``q``-quantile of the waiting time (e.g. q=0.95 -> 95 % wait at most this long).

    Zero when at least a share ``q`` of arrivals is served at once (``q <= 1 - C``);
    otherwise ``ln(C / (1 - q)) / (c mu - lambda)``, the inverse of ``wait_time_survival``.
    """
    wait_probability, drain_rate = _queue_parameters(servers, arrival_rate, mean_service_time)
    q = _as_float("q", q)
    if not 0.0 <= q < 1.0:
        raise ValueError(f"q must be in [0, 1), got {q!r}")
    if q <= 1.0 - wait_probability:
        return 0.0
    return math.log(wait_probability / (1.0 - q)) / drain_rate


def servers_needed(
    arrival_rate: float,
    mean_service_time: float,
    target_wait_time: float,
    target_service_level: float,
) -> int:
    """Smallest c with P(Wq <= target_wait_time) >= target_service_level.

    This is the classic call-centre staffing question ("80 % answered within 20 s"),
    here e.g. "95 % of alerts picked up by a nurse within 15 min". Only stable
    configurations (c > offered load) are considered.
    """
    arrival_rate = _non_negative("arrival_rate", arrival_rate)
    mean_service_time = _positive("mean_service_time", mean_service_time)
    target_wait_time = _non_negative("target_wait_time", target_wait_time)
    target_service_level = _as_float("target_service_level", target_service_level)
    if not 0.0 < target_service_level < 1.0:
        raise ValueError(f"target_service_level must be in (0, 1), got {target_service_level!r}")

    offered_load = arrival_rate * mean_service_time
    # Walk c upwards, extending the Erlang B recursion one step at a time, so the whole
    # search costs O(answer) instead of O(answer**2). Service level rises to 1 as c grows
    # (C -> 0), so the loop terminates.
    blocking = 1.0
    servers = 0
    while True:
        servers += 1
        blocking = offered_load * blocking / (servers + offered_load * blocking)
        if servers <= offered_load:
            continue  # unstable: the queue never settles
        wait_probability = blocking / (1.0 - offered_load / servers * (1.0 - blocking))
        drain_rate = (servers - offered_load) / mean_service_time
        service_level = 1.0 - wait_probability * math.exp(-drain_rate * target_wait_time)
        if service_level >= target_service_level:
            return servers
