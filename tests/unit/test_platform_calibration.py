"""Service-time distributions and the platform calibration: fitted from latencies, split into CPU
and DB, saved and loaded as JSON, and clear errors for what does not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from twin.api_calls import ENDPOINTS
from twin.platform.calibration import (
    DEFAULT_DB_FRACTION,
    MIN_SAMPLES,
    calibration_from_latencies,
    calibration_to_dict,
    load_calibration,
    save_calibration,
)
from twin.platform.service_time import ServiceTime


def latencies(seed: int = 0, n: int = 400) -> dict[str, np.ndarray]:
    """Lognormal latencies, one mean per endpoint (1, 1.5, 2, … ms), cv ≈ 0.53 (sigma 0.5)."""
    rng = np.random.default_rng(seed)
    return {name: rng.lognormal(np.log(1.0 + 0.5 * i), 0.5, n) for i, name in enumerate(ENDPOINTS)}


def build(**overrides):
    kwargs = {"database_kind": "postgresql", "triage_worker_ms": ServiceTime("gamma", 3.0, 0.5),
              "audit_write_ms": ServiceTime.fixed(0.0), "measured_at": "2026-11-26T10:00:00+00:00",
              "machine": "test box", "server_config": {"workers": 1}}
    kwargs.update(overrides)
    samples = kwargs.pop("samples", latencies())
    return calibration_from_latencies(samples, **kwargs)


# --------------------------------------------------------------------------- service times


@pytest.mark.parametrize("family", ["gamma", "lognormal"])
def test_parametric_service_times_have_their_mean_and_cv(family):
    st = ServiceTime(family, 4.0, 0.8)
    x = st.sample(np.random.default_rng(1), 200_000)
    assert x.mean() == pytest.approx(4.0, rel=0.01)
    assert x.std() / x.mean() == pytest.approx(0.8, rel=0.02)


def test_empirical_service_time_reproduces_the_samples_percentiles():
    raw = np.random.default_rng(2).gamma(2.0, 1.5, 5000)
    st = ServiceTime.fit(raw, "empirical")
    x = st.sample(np.random.default_rng(3), 100_000)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(x, q) == pytest.approx(np.quantile(raw, q), rel=0.03)


def test_fixed_and_scaled_service_times():
    assert np.all(ServiceTime.fixed(2.5).from_uniform(np.array([0.01, 0.5, 0.99])) == 2.5)
    st = ServiceTime("lognormal", 2.0, 0.5)
    u = np.array([0.1, 0.5, 0.9])
    assert np.allclose(st.scaled(0.25).from_uniform(u), 0.25 * st.from_uniform(u))
    assert ServiceTime.exponential(3.0).cv == 1.0


@pytest.mark.parametrize(("args", "message"), [
    (("weibull", 1.0, 1.0), "family"),
    (("gamma", -1.0, 1.0), "mean_ms"),
    (("gamma", 1.0, float("nan")), "cv"),
    (("lognormal", 1.0, 0.0), "cv > 0"),
    (("empirical", 1.0, 0.5, (3.0, 1.0)), "non-decreasing"),
    (("gamma", 1.0, 0.5, (1.0, 2.0)), "empirical"),
])
def test_invalid_service_times_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        ServiceTime(*args)


# --------------------------------------------------------------------------- from latencies


def test_postgresql_default_splits_latency_in_half_and_says_so():
    cal = build()
    f, reason = DEFAULT_DB_FRACTION["postgresql"]
    assert f == 0.5
    raw = latencies()["token"]
    token = cal.endpoint("token")
    assert token.mean_service_ms == pytest.approx(raw.mean())
    assert token.cpu_ms.mean_ms == pytest.approx(token.db_ms.mean_ms)
    assert token.cpu_ms.cv == pytest.approx(raw.std(ddof=1) / raw.mean())
    assert token.db_fraction_source == reason
    assert cal.metadata.sample_counts["token"] == 400
    assert "triage_worker" not in cal.metadata.sample_counts  # given as a distribution, not measured here


def test_sqlite_default_puts_everything_on_the_cpu():
    cal = build(database_kind="sqlite")
    for e in cal.endpoints.values():
        assert e.db_ms.is_zero and e.cpu_ms.mean_ms > 0
        assert "sqlite" in e.db_fraction_source


def test_measured_db_fraction_and_client_overhead():
    samples = latencies()
    cal = build(samples=samples, db_fraction={"search_measurements": 0.8}, client_overhead_ms=0.1)
    e = cal.endpoint("search_measurements")
    service = samples["search_measurements"] - 0.1
    assert e.db_ms.mean_ms == pytest.approx(0.8 * service.mean())
    assert e.cpu_ms.mean_ms == pytest.approx(0.2 * service.mean())
    assert e.db_fraction_source == "measured"
    assert cal.endpoint("token").db_fraction_source != "measured"


def test_split_parts_drawn_from_one_uniform_add_up_to_the_measured_distribution():
    cal = build(family="empirical", db_fraction={"task_claim": 0.3})
    e = cal.endpoint("task_claim")
    u = np.random.default_rng(4).random(50_000)
    total = e.cpu_ms.from_uniform(u) + e.db_ms.from_uniform(u)
    raw = latencies()["task_claim"]
    for q in (0.5, 0.95):
        assert np.quantile(total, q) == pytest.approx(np.quantile(raw, q), rel=0.03)


def test_async_work_can_be_fitted_from_samples():
    triage = np.random.default_rng(5).gamma(4.0, 0.5, 300)
    cal = build(triage_worker_ms=triage, family="gamma")
    assert cal.triage_worker_ms.mean_ms == pytest.approx(triage.mean())
    assert cal.metadata.sample_counts["triage_worker"] == 300


@pytest.mark.parametrize(("overrides", "message"), [
    ({"samples": {"tokn": np.ones(50)}}, "unknown endpoint.*tokn"),
    ({"db_fraction": {"nope": 0.5}}, "db_fraction: unknown endpoint"),
    ({"samples": {"token": np.ones(50)}, "db_fraction": {"task_claim": 0.5}}, "without samples: task_claim"),
    ({"samples": {"token": np.ones(MIN_SAMPLES - 1)}}, "need at least"),
    ({"samples": {"token": -np.ones(50)}}, "finite and > 0"),
    ({"db_fraction": {"token": 1.5}}, r"db_fraction\['token'\]"),
    ({"database_kind": "oracle"}, "database_kind"),
    ({"family": "weibull"}, "family"),
    ({"client_overhead_ms": 100.0}, "client_overhead_ms"),
    ({"triage_worker_ms": np.ones(3)}, "triage_worker_ms: 3 samples"),
    ({"samples": {}}, "empty"),
])
def test_bad_inputs_name_what_is_wrong(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(**overrides)


def test_asking_for_an_unmeasured_endpoint_says_so():
    cal = build(samples={"token": latencies()["token"]})
    with pytest.raises(KeyError, match="not measured"):
        cal.endpoint("task_claim")
    with pytest.raises(KeyError, match="unknown"):
        cal.endpoint("teleport")


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("family", ["lognormal", "empirical"])
def test_save_load_round_trip(tmp_path, family):
    cal = build(family=family, db_fraction={"token": 0.1}, notes="wrk c=1")
    path = save_calibration(cal, tmp_path / "sub" / "calibration.json")
    assert load_calibration(path) == cal
    data = json.loads(path.read_text())
    assert data["metadata"]["database_kind"] == "postgresql"
    assert data["metadata"]["measured_at"] == "2026-11-26T10:00:00+00:00"


def _write(tmp_path, data) -> str:
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_loading_reports_missing_and_unknown_fields(tmp_path):
    good = calibration_to_dict(build())

    bad = json.loads(json.dumps(good))
    del bad["endpoints"]["token"]["db_ms"]["cv"]
    with pytest.raises(ValueError, match=r"endpoints\.token\.db_ms: missing field\(s\) cv"):
        load_calibration(_write(tmp_path, bad))

    bad = json.loads(json.dumps(good))
    del bad["metadata"]["machine"]
    with pytest.raises(ValueError, match=r"metadata: missing field\(s\) machine"):
        load_calibration(_write(tmp_path, bad))

    bad = json.loads(json.dumps(good))
    bad["endpoints"]["teleport"] = bad["endpoints"]["token"]
    with pytest.raises(ValueError, match="unknown endpoint.*teleport"):
        load_calibration(_write(tmp_path, bad))

    bad = json.loads(json.dumps(good))
    bad["triage_worker_ms"]["mean"] = 1.0
    with pytest.raises(ValueError, match=r"triage_worker_ms: unknown field\(s\) mean"):
        load_calibration(_write(tmp_path, bad))

    bad = json.loads(json.dumps(good))
    bad["format_version"] = 99
    with pytest.raises(ValueError, match="format_version"):
        load_calibration(_write(tmp_path, bad))

    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_calibration(path)
