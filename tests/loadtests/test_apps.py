"""The citizen-app vendor mix: validated shares and a deterministic assignment from the seed."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SCENARIOS
from twin.apps import Apps, assign_apps
from twin.scenario import load_scenario, replace_path
from twin.validation import ScenarioError, build


@pytest.fixture(scope="module")
def apps() -> Apps:
    return load_scenario(SCENARIOS / "pilot-100.toml").apps


def test_defaults_have_apps_with_shares_summing_to_one(apps):
    assert len(apps.vendors) >= 2
    assert sum(a.share for a in apps.vendors) == pytest.approx(1.0)
    assert any(a.message_poll_min is None for a in apps.vendors)  # a push-only app
    assert any(not a.rereads_procedures for a in apps.vendors)  # a caching app


def test_assignment_is_deterministic_and_per_citizen(apps):
    ids = np.arange(5000)
    a = assign_apps(ids, apps, seed=7)
    assert np.array_equal(a, assign_apps(ids, apps, seed=7))
    # a citizen's app does not depend on which other citizens are asked about
    subset = np.array([4999, 3, 1200])
    assert np.array_equal(assign_apps(subset, apps, seed=7), a[subset])
    assert not np.array_equal(a, assign_apps(ids, apps, seed=8))
    shares = np.bincount(a, minlength=len(apps.vendors)) / len(ids)
    assert shares == pytest.approx([v.share for v in apps.vendors], abs=0.03)


def test_a_zero_share_app_gets_nobody(apps):
    data = {"vendors": [{"name": "x", "share": 0.0}, {"name": "y", "share": 1.0}]}
    only_y = build(Apps, data)
    assert set(assign_apps(np.arange(1000), only_y, seed=1).tolist()) == {1}


@pytest.mark.parametrize("vendors,message", [
    ([{"name": "x", "share": 0.5}], "sum to 1"),
    ([{"name": "x", "share": 0.5}, {"name": "x", "share": 0.5}], "unique"),
    ([{"name": "x", "share": 1.0, "message_poll_min": 0}], "out of range"),
    ([{"name": "x", "share": 1.0, "polls": True}], "unknown key"),
])
def test_bad_app_mixes_are_refused(vendors, message):
    with pytest.raises(ScenarioError, match=message):
        build(Apps, {"vendors": vendors})


def test_scenario_can_override_the_mix():
    s = load_scenario(SCENARIOS / "pilot-100.toml")
    changed = replace_path(s, "apps.vendors.0.message_poll_min", 60.0)
    assert changed.apps.vendors[0].message_poll_min == 60.0
