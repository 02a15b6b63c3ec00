"""Mean Value Analysis: throughput and response time of a closed loop of N clients (exact).

A closed-loop load test (N connections, each sending its next request as soon as the last is
answered) is a *closed queueing network*: N customers cycle between the server's CPU, a queue
with service demand ``D`` per request, and a *delay* ``Z`` that never queues (the client's own
time and the loopback network: every request pays it, whatever the load). Exact MVA (Reiser &
Lavenberg, 1980) computes it one client at a time:

    R(n) = D * (1 + Q(n - 1))      the request finds the queue left by n - 1 others (arrival theorem)
    X(n) = n / (R(n) + Z)          Little's law on the whole loop
    Q(n) = X(n) * R(n)             Little's law on the queue

with Q(0) = 0. X rises like n / (D + Z) and levels off at 1 / D, the saturation throughput; the
knee is near N* = (D + Z) / D. The capacity pipeline runs it beside the measured concurrency sweep:
the open-model platform model answers "what latency at this arrival rate", MVA answers "what
throughput with N clients" — together with the USL fit they check one another.
"""

from __future__ import annotations

import numpy as np


def mva_closed(demand_ms: float, delay_ms: float, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Throughput (per s) and response time at the queue (ms, without the delay) for n = 1 … n_max."""
    if not (demand_ms > 0 and delay_ms >= 0 and n_max >= 1):
        raise ValueError(f"need demand_ms > 0, delay_ms >= 0, n_max >= 1; got {demand_ms}, {delay_ms}, {n_max}")
    x = np.empty(n_max)
    r = np.empty(n_max)
    q = 0.0
    for n in range(1, n_max + 1):
        r_n = demand_ms * (1.0 + q)
        x_n = n / (r_n + delay_ms)  # per ms
        q = x_n * r_n
        x[n - 1], r[n - 1] = x_n * 1000.0, r_n
    return x, r


def mva_closed_load_dependent(alone_ms: float, busy_ms: float, delay_ms: float,
                              n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`mva_closed`, for a server whose cost per request depends on whether it is alone.

    An event loop serving one request at a time sleeps between them and pays for each wake-up;
    with others waiting it goes straight on (:func:`twin.capacity.directload.busy_loop_saving`).
    So the queue is *load-dependent*: it serves at rate 1 / ``alone_ms`` with one request present
    and 1 / ``busy_ms`` with more. Exact MVA for a load-dependent queue and a delay (Reiser &
    Lavenberg) carries the queue-length distribution p(k | n) instead of its mean:

        R(n) = Σ_k k / μ(k) · p(k − 1 | n − 1)
        X(n) = n / (R(n) + Z)
        p(k | n) = X(n) / μ(k) · p(k − 1 | n − 1),  p(0 | n) = 1 − Σ_k≥1 p(k | n)

    With ``alone_ms == busy_ms`` it is :func:`mva_closed`; X(1) = 1 / (alone + Z), and X levels
    off at 1 / ``busy_ms``."""
    if not (alone_ms > 0 and busy_ms > 0 and delay_ms >= 0 and n_max >= 1):
        raise ValueError(f"need alone_ms, busy_ms > 0, delay_ms >= 0, n_max >= 1; got {alone_ms}, {busy_ms}, "
                         f"{delay_ms}, {n_max}")
    cost = np.full(n_max + 1, busy_ms)  # 1 / μ(k), ms per request with k present (k = 0 unused)
    cost[1] = alone_ms
    x = np.empty(n_max)
    r = np.empty(n_max)
    p = np.zeros(n_max + 1)
    p[0] = 1.0  # p(k | 0): nobody there
    k = np.arange(n_max + 1)
    for n in range(1, n_max + 1):
        shifted = np.concatenate([[0.0], p[:-1]])  # p(k − 1 | n − 1) at index k
        r_n = float(np.sum(k[1:] * cost[1:] * shifted[1:]))
        x_n = n / (r_n + delay_ms)  # per ms
        p = x_n * cost * shifted
        p[0] = max(1.0 - p[1:].sum(), 0.0)
        x[n - 1], r[n - 1] = x_n * 1000.0, r_n
    return x, r
