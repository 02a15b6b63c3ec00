"""The direct-load measurement's pure parts: MVA, endpoint sequences, request pools, calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twin.capacity.calibrate import TriageWork, direct_calibration, idle_cpu_rate
from twin.capacity.directload import RequestPools, direct_mix, endpoint_sequence
from twin.capacity.mva import mva_closed, mva_closed_load_dependent


def test_mva_one_client_and_saturation():
    x, r = mva_closed(demand_ms=2.0, delay_ms=8.0, n_max=200)
    assert x[0] == pytest.approx(1000 / 10.0)  # one client: one request per D + Z
    assert r[0] == pytest.approx(2.0)  # … and it never queues
    assert x[-1] == pytest.approx(500.0, rel=1e-3)  # many clients: 1 / D
    assert np.all(np.diff(x) >= -1e-9)  # throughput never falls
    # Little's law on the whole loop at every n
    n = np.arange(1, 201)
    assert np.allclose(x / 1000 * (r + 8.0), n)


def test_mva_matches_the_machine_repairman_formula():
    # One queue + a delay is the machine-repairman model; for n = 2 its exact throughput is known:
    # X = (1/D) * (1 - p0), p0 = 1 / (1 + 2 rho + 2 rho^2) with rho = D / Z.
    d, z = 1.0, 4.0
    rho = d / z
    p0 = 1 / (1 + 2 * rho + 2 * rho ** 2)
    x, _ = mva_closed(d, z, 2)
    assert x[1] == pytest.approx(1000 / d * (1 - p0))


def _birth_death_throughput(alone_ms: float, busy_ms: float, delay_ms: float, n: int) -> float:
    """The exact throughput of n clients (exponential think time Z) at one queue serving at rate
    1/alone with one present and 1/busy with more: the birth-death chain's stationary law."""
    weights = [1.0]
    for k in range(1, n + 1):  # balance: p(k) mu(k) = p(k-1) (n - k + 1) / Z
        weights.append(weights[-1] * (n - k + 1) / delay_ms * (alone_ms if k == 1 else busy_ms))
    p = np.array(weights) / sum(weights)
    return 1000.0 * sum(p[k] / (alone_ms if k == 1 else busy_ms) for k in range(1, n + 1))


@pytest.mark.parametrize("alone_ms,busy_ms", [(1.0, 1.0), (1.2, 0.8), (0.8, 1.2)])
def test_load_dependent_mva_is_exact_for_a_queue_cheaper_when_busy(alone_ms, busy_ms):
    delay_ms = 0.3
    x, r = mva_closed_load_dependent(alone_ms, busy_ms, delay_ms, 40)
    for n in (1, 2, 3, 8, 40):
        assert x[n - 1] == pytest.approx(_birth_death_throughput(alone_ms, busy_ms, delay_ms, n), rel=1e-9)
    assert x[-1] == pytest.approx(1000.0 / busy_ms, rel=1e-3)  # saturated: the busy cost alone
    assert np.allclose(x / 1000 * (r + delay_ms), np.arange(1, 41))  # Little's law
    if alone_ms == busy_ms:
        assert np.allclose(x, mva_closed(alone_ms, delay_ms, 40)[0])


def test_mva_refuses_nonsense():
    with pytest.raises(ValueError, match="demand_ms"):
        mva_closed(0.0, 1.0, 4)


def test_endpoint_sequence_follows_the_mix_and_the_seed():
    mix = {"token": 0.1, "submit_measurement": 0.3, "refresh_context": 0.6}
    a = endpoint_sequence(mix, 20_000, seed=3)
    assert list(a[:50]) == list(endpoint_sequence(mix, 20_000, seed=3)[:50])
    shares = pd.Series(a).value_counts(normalize=True)
    for e, share in mix.items():
        assert shares[e] == pytest.approx(share, abs=0.015)


def test_pools_never_repeat_a_submission_and_mix_keeps_what_can_be_sent():
    pools = RequestPools("127.0.0.1", 1, {"token": [b"t1", b"t2"], "submit_measurement": [b"s1", b"s2", b"s3"]})
    assert pools.sequence(["token", "submit_measurement", "token", "token", "submit_measurement"]) == \
        [b"t1", b"s1", b"t2", b"t1", b"s2"]
    with pytest.raises(ValueError, match="pre-built submissions"):
        pools.sequence(["submit_measurement"] * 4)
    assert direct_mix({"token": 1.0, "task_claim": 1.0, "submit_measurement": 3.0}, pools) == \
        {"token": 0.25, "submit_measurement": 0.75}


def test_direct_calibration_splits_cpu_and_overhead():
    rng = np.random.default_rng(0)
    cpu_ms = {"token": 0.4, "submit_measurement": 1.2}
    overhead_ms = 0.3
    rows = []
    for e, c in cpu_ms.items():
        for _ in range(400):
            rows.append({"endpoint": e, "latency_ms": c * rng.gamma(16, 1 / 16) + overhead_ms, "ok": 1})
    req = pd.DataFrame(rows)
    true_cpu_s = float((req["latency_ms"] - overhead_ms).sum()) / 1000
    triage = TriageWork(triaged=400, busy_s=400 * 0.25 / 1000, batches=300)  # as /health reports it
    server_cpu_s = true_cpu_s + 0.5 + triage.busy_s  # + idle + triage
    cal, details = direct_calibration(req, server_cpu_s, idle_cpu_s=0.5, triage=triage)
    assert details["overhead_ms"] == pytest.approx(overhead_ms, rel=1e-6)
    for e, c in cpu_ms.items():
        assert cal.endpoint(e).cpu_ms.mean_ms == pytest.approx(c, rel=0.05)
    assert cal.triage_worker_ms.mean_ms == pytest.approx(0.25)
    # endpoints not measured borrow their kind's samples and are marked as estimates
    assert details["endpoint_source"]["task_claim"].startswith("estimate")


def test_idle_rate_and_no_cpu_is_an_error():
    assert idle_cpu_rate(0.2, 2.0) == pytest.approx(0.1)
    req = pd.DataFrame({"endpoint": ["token"] * 50, "latency_ms": [1.0] * 50, "ok": [1] * 50})
    with pytest.raises(ValueError, match="no CPU beyond idle"):
        direct_calibration(req, server_cpu_s=0.1, idle_cpu_s=0.1, triage=TriageWork(0, 0.0, 0))


def _sweep(throughputs, means):
    return pd.DataFrame({"concurrency": [1, 2, 4, 8, 16, 32, 64][: len(throughputs)],
                         "throughput_per_s": throughputs, "mean_ms": means})


def test_sweep_saturation_is_the_median_of_the_saturated_steps_not_the_best():
    from twin.capacity.compare import sweep_saturation

    # one client 1.7 ms; two clients hardly queue (3.1 < 2 x 1.7 + …: not saturated); from four on
    # they do — five noisy readings of one saturation, the best 713 and the median 640
    sat = sweep_saturation(_sweep([573, 638, 683, 588, 552, 713, 640], [1.7, 3.1, 5.8, 13.4, 28.4, 43.9, 93.3]))
    assert sat["measured_reached"] and sat["saturated_steps"] == [4, 8, 16, 32, 64]
    assert sat["measured_per_s"] == pytest.approx(640.0)
    assert sat["best_step_per_s"] == pytest.approx(713.0)
    assert (sat["saturated_min_per_s"], sat["saturated_max_per_s"]) == (552.0, 713.0)


def test_sweep_without_a_saturated_step_gives_its_best_as_a_lower_bound():
    from twin.capacity.compare import sweep_saturation

    # eight workers: the latency stays near one client's, throughput still rising
    sat = sweep_saturation(_sweep([100, 199, 395, 780], [1.0, 1.0, 1.02, 1.1]))
    assert not sat["measured_reached"] and sat["saturated_steps"] == []
    assert sat["measured_per_s"] == sat["best_step_per_s"] == 780.0
    with pytest.raises(ValueError):
        sweep_saturation(_sweep([], []))
