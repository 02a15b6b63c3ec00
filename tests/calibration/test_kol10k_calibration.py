"""Calibration: the kol-10k year lands inside every band of docs/calibration-targets.md (C1–C20).

Each test is one row of the table and names it. With 10,000 citizens most figures have little
sampling noise, so a miss means the model is off, not unlucky.
"""

from __future__ import annotations

import pytest

from twin.outcomes import load_targets

TARGETS = load_targets()


@pytest.mark.calibration
@pytest.mark.parametrize("row", list(TARGETS), ids=[f"{k}-{v['figure'][:60]}" for k, v in TARGETS.items()])
def test_calibration_row(row, kol10k_figures):
    t = TARGETS[row]
    value = kol10k_figures[row]
    assert t["lo"] <= value <= t["hi"], (
        f"{row} ({t['figure']}, source {t['source']}): {value:.4g} is outside [{t['lo']}, {t['hi']}], target {t['target']}")


def test_outputs_that_are_reported_not_tuned_are_sane(kol10k_figures):
    f = kol10k_figures
    assert 0.3 < f["sensitivity"] < 1
    assert 0.2 < f["red_ppv"] < 1
    assert f["red_alerts_per_week"] > 0 and f["yellow_alerts_per_week"] > 0
    assert f["response_h_median_red"] < f["response_h_p90_red"]
    assert 0 < f["utilisation"] < 1
