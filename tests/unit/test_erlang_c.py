"""Erlang B/C formulas against textbook values, exact arithmetic, properties and a SimPy M/M/c."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import simpy
from scipy.stats import poisson

from twin.capacity.erlang_c import (
    erlang_b,
    erlang_c_wait_probability,
    mean_queue_length,
    mean_response_time,
    mean_wait_time,
    offered_load_erlangs,
    servers_needed,
    utilisation,
    wait_time_quantile,
    wait_time_survival,
)

# --------------------------------------------------------------------------- reference formulas


def erlang_b_factorial(servers: int, offered_load: Fraction) -> Fraction:
    """Textbook B = (a^c / c!) / sum_k a^k / k!, in exact rational arithmetic."""
    terms = [offered_load**k / math.factorial(k) for k in range(servers + 1)]
    return terms[-1] / sum(terms)


def erlang_c_factorial(servers: int, offered_load: Fraction) -> Fraction:
    """Textbook C = (a^c/c! * c/(c-a)) / (sum_{k<c} a^k/k! + a^c/c! * c/(c-a)), exactly."""
    head = sum(offered_load**k / math.factorial(k) for k in range(servers))
    tail = offered_load**servers / math.factorial(servers) * servers / (servers - offered_load)
    return tail / (head + tail)


# --------------------------------------------------------------------------- textbook values


def test_offered_load_call_centre():
    # 100 calls/h, 3-minute handling time -> 5 erlangs.
    assert offered_load_erlangs(100.0, 3 / 60) == pytest.approx(5.0)
    assert offered_load_erlangs(0.0, 0.5) == 0.0


def test_mm1_matches_closed_form():
    # M/M/1: C = rho, Wq = rho / (mu - lambda), Lq = rho^2 / (1 - rho).
    arrival_rate, service_rate = 0.7, 1.0
    rho = arrival_rate / service_rate
    assert erlang_c_wait_probability(1, rho) == pytest.approx(rho)
    assert mean_wait_time(1, arrival_rate, 1 / service_rate) == pytest.approx(
        rho / (service_rate - arrival_rate)
    )
    assert mean_queue_length(1, arrival_rate, 1 / service_rate) == pytest.approx(rho**2 / (1 - rho))
    assert mean_response_time(1, arrival_rate, 1 / service_rate) == pytest.approx(
        1 / (service_rate - arrival_rate)
    )
    assert utilisation(1, arrival_rate, 1 / service_rate) == pytest.approx(rho)


def test_mm2_lambda1_mu1():
    # c=2, lambda=1, mu=1: C = 1/3, Wq = C/(2-1) = 1/3, and the M/M/2 closed form
    # Lq = 2 rho^3 / (1 - rho^2) with rho = 1/2 also gives 1/3.
    assert erlang_c_wait_probability(2, 1.0) == pytest.approx(1 / 3, rel=1e-12)
    assert mean_wait_time(2, 1.0, 1.0) == pytest.approx(1 / 3, rel=1e-12)
    rho = 0.5
    assert mean_queue_length(2, 1.0, 1.0) == pytest.approx(2 * rho**3 / (1 - rho**2), rel=1e-12)
    assert erlang_b(2, 1.0) == pytest.approx(0.2, rel=1e-12)


def test_c3_a2_is_four_ninths():
    assert erlang_c_wait_probability(3, 2.0) == pytest.approx(4 / 9, rel=1e-12)
    assert erlang_b(3, 2.0) == pytest.approx(4 / 19, rel=1e-12)


def test_call_centre_example():
    # 100 calls/h, AHT 3 min (5 erlangs), 6 agents. Exact: B = 0.191847..., C = 0.587516...
    # (C ~ 0.59, not ~ 0.2: about 0.2 is the Erlang B blocking probability of the loss system).
    arrival_rate_per_h, aht_h, agents = 100.0, 3 / 60, 6
    load = offered_load_erlangs(arrival_rate_per_h, aht_h)
    expected_c = float(erlang_c_factorial(agents, Fraction(5)))
    assert expected_c == pytest.approx(0.587516450, abs=1e-9)
    assert erlang_b(agents, load) == pytest.approx(float(erlang_b_factorial(agents, Fraction(5))), rel=1e-12)
    assert erlang_b(agents, load) == pytest.approx(0.191847259, abs=1e-9)
    assert erlang_c_wait_probability(agents, load) == pytest.approx(expected_c, rel=1e-12)
    # Wq = C / (c mu - lambda) = C * AHT / (c - a) = 0.5875 * 3 min / 1 = 1.76 min.
    wait_min = mean_wait_time(agents, arrival_rate_per_h, aht_h) * 60
    assert wait_min == pytest.approx(expected_c * 3.0, rel=1e-12)
    assert mean_queue_length(agents, arrival_rate_per_h, aht_h) == pytest.approx(
        arrival_rate_per_h * expected_c * aht_h, rel=1e-12
    )


SMALL_SERVER_COUNTS = [1, 2, 3, 5, 8, 13, 20]
SMALL_LOADS = ["0.1", "0.9", "2.5", "7", "19.5"]  # strings so Fraction() is exact


@pytest.mark.parametrize("servers", SMALL_SERVER_COUNTS)
@pytest.mark.parametrize("load", SMALL_LOADS)
def test_erlang_b_recursion_matches_factorial_formula(servers, load):
    exact = erlang_b_factorial(servers, Fraction(load))
    assert erlang_b(servers, float(load)) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize(
    ("servers", "load"),
    # Only stable combinations (load < servers) have an Erlang C value.
    [(c, a) for c in SMALL_SERVER_COUNTS for a in SMALL_LOADS if Fraction(a) < c],
)
def test_erlang_c_matches_factorial_formula(servers, load):
    exact = erlang_c_factorial(servers, Fraction(load))
    assert erlang_c_wait_probability(servers, float(load)) == pytest.approx(float(exact), rel=1e-12)


def test_large_server_counts_stay_finite_and_accurate():
    # a**c / c! would overflow a float at c ~ 170; the recursion must not.
    # Erlang B equals the truncated-Poisson ratio pmf(c) / cdf(c), which scipy computes in log space.
    for servers, load in [(200, 180.0), (1000, 950.0), (1000, 999.0), (1000, 1.0)]:
        expected_b = poisson.pmf(servers, load) / poisson.cdf(servers, load)
        assert erlang_b(servers, load) == pytest.approx(expected_b, rel=1e-9, abs=1e-300)
        wait_probability = erlang_c_wait_probability(servers, load)
        assert 0.0 <= wait_probability <= 1.0
        assert math.isfinite(mean_wait_time(servers, load, 1.0))


def test_numpy_scalars_accepted():
    assert erlang_c_wait_probability(np.int64(2), np.float64(1.0)) == pytest.approx(1 / 3)
    assert mean_wait_time(np.int32(3), np.float32(2.0), np.float64(1.0)) == pytest.approx(4 / 9)
    assert erlang_b(3.0, 2) == pytest.approx(4 / 19)  # integral float server counts are fine


# --------------------------------------------------------------------------- properties


def test_wait_probability_decreases_with_servers_and_stays_in_unit_interval():
    for load in [0.5, 3.7, 12.0, 80.0]:
        first = math.floor(load) + 1
        values = [erlang_c_wait_probability(c, load) for c in range(first, first + 40)]
        assert all(0.0 < v <= 1.0 for v in values)
        assert all(later < earlier for earlier, later in zip(values, values[1:], strict=False))


def test_erlang_b_below_erlang_c():
    # Waiting customers keep servers busy longer than blocked ones that leave: C >= B.
    for servers, load in [(1, 0.5), (4, 3.0), (30, 25.0)]:
        assert erlang_b(servers, load) <= erlang_c_wait_probability(servers, load)


def test_zero_load_never_waits():
    assert erlang_c_wait_probability(3, 0.0) == 0.0
    assert mean_wait_time(3, 0.0, 1.0) == 0.0
    assert wait_time_quantile(3, 0.0, 1.0, 0.99) == 0.0
    assert servers_needed(0.0, 1.0, 0.0, 0.99) == 1


def test_survival_and_quantile_are_inverse():
    servers, arrival_rate, service_time = 4, 3.2, 1.0
    wait_probability = erlang_c_wait_probability(servers, arrival_rate * service_time)
    assert wait_time_survival(servers, arrival_rate, service_time, 0.0) == pytest.approx(wait_probability)
    for q in [0.5, 0.8, 0.95, 0.999]:
        t = wait_time_quantile(servers, arrival_rate, service_time, q)
        if q <= 1 - wait_probability:
            assert t == 0.0
        else:
            assert t > 0.0
            assert wait_time_survival(servers, arrival_rate, service_time, t) == pytest.approx(1 - q)
    # Mean of the exponential tail: integral of the survival function equals Wq.
    drain_rate = servers / service_time - arrival_rate
    assert mean_wait_time(servers, arrival_rate, service_time) == pytest.approx(wait_probability / drain_rate)


def test_quantile_zero_when_most_served_immediately():
    # c=10, a=2: C is tiny, so the 90 % quantile is no wait at all.
    assert wait_time_quantile(10, 2.0, 1.0, 0.9) == 0.0


@pytest.mark.parametrize(
    ("arrival_rate", "service_time", "target_wait", "target_level"),
    [
        (100.0, 3 / 60, 20 / 3600, 0.80),  # call centre: 80 % answered within 20 s
        (12.0, 5 / 60, 15 / 60, 0.95),  # nurses: 12 alerts/h, 5 min each, 95 % within 15 min
        (0.5, 1.0, 0.0, 0.5),  # target "no wait at all" for half the arrivals
        (900.0, 1.0, 0.01, 0.99),  # large system
    ],
)
def test_servers_needed_is_smallest_meeting_target(arrival_rate, service_time, target_wait, target_level):
    servers = servers_needed(arrival_rate, service_time, target_wait, target_level)

    def level(c: int) -> float:
        return 1.0 - wait_time_survival(c, arrival_rate, service_time, target_wait)

    assert level(servers) >= target_level
    fewer = servers - 1
    if fewer >= 1 and fewer > arrival_rate * service_time:
        assert level(fewer) < target_level
    # otherwise c-1 servers is unstable (or zero) and cannot meet any target


def test_servers_needed_call_centre_value():
    # 5 erlangs, 80 % within 20 s: 8 agents (7 agents answer only ~74 % within 20 s).
    assert servers_needed(100.0, 3 / 60, 20 / 3600, 0.80) == 8


def test_utilisation_reports_overload_without_raising():
    assert utilisation(2, 3.0, 1.0) == pytest.approx(1.5)


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: erlang_b(0, 1.0), "servers"),
        (lambda: erlang_b(-2, 1.0), "servers"),
        (lambda: erlang_b(2.5, 1.0), "servers"),
        (lambda: erlang_b(True, 1.0), "servers"),
        (lambda: erlang_b("3", 1.0), "servers"),
        (lambda: erlang_b(3, -0.1), "offered_load"),
        (lambda: erlang_b(3, float("nan")), "offered_load"),
        (lambda: erlang_c_wait_probability(3, 3.0), "offered_load .* must be < servers"),
        (lambda: erlang_c_wait_probability(3, 4.5), "utilisation"),
        (lambda: offered_load_erlangs(-1.0, 1.0), "arrival_rate_per_h"),
        (lambda: offered_load_erlangs(1.0, 0.0), "mean_service_time_h"),
        (lambda: mean_wait_time(2, -1.0, 1.0), "arrival_rate"),
        (lambda: mean_wait_time(2, 1.0, 0.0), "mean_service_time"),
        (lambda: mean_wait_time(2, 1.0, float("inf")), "mean_service_time"),
        (lambda: mean_wait_time(2, 2.0, 1.0), "must be < servers"),
        (lambda: mean_response_time(1, 1.0, 1.0), "must be < servers"),
        (lambda: mean_queue_length(0, 1.0, 1.0), "servers"),
        (lambda: utilisation(1, 1.0, -1.0), "mean_service_time"),
        (lambda: wait_time_survival(2, 1.0, 1.0, -1.0), "t must be >= 0"),
        (lambda: wait_time_quantile(2, 1.0, 1.0, 1.0), r"q must be in \[0, 1\)"),
        (lambda: wait_time_quantile(2, 1.0, 1.0, -0.1), "q must be in"),
        (lambda: servers_needed(1.0, 1.0, -1.0, 0.9), "target_wait_time"),
        (lambda: servers_needed(1.0, 1.0, 1.0, 1.0), "target_service_level"),
        (lambda: servers_needed(1.0, 1.0, 1.0, 0.0), "target_service_level"),
        (lambda: servers_needed(-1.0, 1.0, 1.0, 0.5), "arrival_rate"),
    ],
)
def test_argument_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- simulation check


def simulate_mmc_waits(
    servers: int, arrival_rate: float, mean_service_time: float, customers: int, seed: int
) -> np.ndarray:
    """Waiting times of ``customers`` FIFO arrivals in a SimPy M/M/c, starting empty."""
    rng = np.random.default_rng(seed)
    # Draw all randomness up front (vectorised, reproducible) so the loop is pure SimPy.
    interarrival_times = rng.exponential(1.0 / arrival_rate, customers)
    service_times = rng.exponential(mean_service_time, customers)
    waits = np.empty(customers)
    env = simpy.Environment()
    pool = simpy.Resource(env, capacity=servers)

    def customer(index: int):
        arrived = env.now
        with pool.request() as request:
            yield request
            waits[index] = env.now - arrived
            yield env.timeout(service_times[index])

    def arrivals():
        for index in range(customers):
            yield env.timeout(interarrival_times[index])
            env.process(customer(index))

    env.process(arrivals())
    env.run()
    return waits


@pytest.mark.slow
def test_simpy_mmc_mean_wait_matches_formula():
    # c=3, rho=0.8. At this load successive waits are strongly correlated, so 200k customers
    # give a relative standard error of ~2.5 %; 5 % is ~2 sigma (deterministic with the seed).
    servers, arrival_rate, mean_service_time = 3, 2.4, 1.0
    waits = simulate_mmc_waits(servers, arrival_rate, mean_service_time, customers=200_000, seed=1)
    expected_wait = mean_wait_time(servers, arrival_rate, mean_service_time)
    assert waits.mean() == pytest.approx(expected_wait, rel=0.05)
    expected_wait_probability = erlang_c_wait_probability(servers, arrival_rate * mean_service_time)
    assert np.mean(waits > 0.0) == pytest.approx(expected_wait_probability, abs=0.02)
