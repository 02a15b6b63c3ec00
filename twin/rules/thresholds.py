"""Per-patient alarm thresholds: a red range and a yellow range per measurement.

In FUT the thresholds live on each patient's ServiceRequest as ``ehealth-referenceRange``
extensions: ``RELRAL`` is the range outside which a value raises a RED alarm and ``RELGAL`` the
range outside which it raises a YELLOW one (OpenTele called them alert and warning limits). They
start as a national standard set and are individualised for a patient whose normal (baseline)
sits outside or too close to it (reference/calibration.md T10–T12).

Individualising a range, per side:

* **widen** so the patient's own baseline sits at least ``widen`` inside it — a citizen whose SpO2
  is 89 % every day should not raise a yellow alarm every day;
* **tighten** so a change of ``tighten_below`` / ``tighten_above`` from the baseline always
  flags — "SpO2 ≥ 4 below baseline" is red even when 4 below is still above the national cut-off,
  "pulse 15 over baseline" is yellow even below 100 (T12). Tightening is per side: a rise in SpO2
  or a fall in pulse is not a warning sign, so those sides keep the national limit.

Bounds are inclusive (a value equal to a bound is inside), as FHIR ``referenceRange`` low/high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceRanges:
    """One patient's thresholds for one measurement: inside [yellow_low, yellow_high] is green."""

    red_low: float
    yellow_low: float
    yellow_high: float
    red_high: float

    def __post_init__(self) -> None:
        if not (self.red_low <= self.yellow_low <= self.yellow_high <= self.red_high):
            raise ValueError(
                "reference ranges must nest: red_low <= yellow_low <= yellow_high <= red_high, got "
                f"{self.red_low}, {self.yellow_low}, {self.yellow_high}, {self.red_high}"
            )


@dataclass(frozen=True)
class StandardThreshold:
    """The national standard for one measurement plus how it is individualised."""

    ranges: ReferenceRanges
    yellow_widen: float = 0.0
    red_widen: float = 0.0
    yellow_tighten_below: float = math.inf
    yellow_tighten_above: float = math.inf
    red_tighten_below: float = math.inf
    red_tighten_above: float = math.inf

    def __post_init__(self) -> None:
        if (self.yellow_widen > min(self.yellow_tighten_below, self.yellow_tighten_above)
                or self.red_widen > min(self.red_tighten_below, self.red_tighten_above)):
            raise ValueError("widen must not exceed tighten, or the baseline itself would raise an alarm")


def individualise(standard: StandardThreshold, baseline: float) -> ReferenceRanges:
    """The ranges for one patient whose usual value is ``baseline``."""
    out = individualise_arrays(standard, np.array([baseline], dtype=float))
    return ReferenceRanges(*(float(out[k][0]) for k in ("red_low", "yellow_low", "yellow_high", "red_high")))


def individualise_arrays(standard: StandardThreshold, baseline: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised :func:`individualise`: one entry per patient, keys as ReferenceRanges' fields."""
    r = standard.ranges
    b = np.asarray(baseline, dtype=float)
    yellow_low = np.maximum(np.minimum(r.yellow_low, b - standard.yellow_widen), b - standard.yellow_tighten_below)
    yellow_high = np.minimum(np.maximum(r.yellow_high, b + standard.yellow_widen), b + standard.yellow_tighten_above)
    red_low = np.maximum(np.minimum(r.red_low, b - standard.red_widen), b - standard.red_tighten_below)
    red_high = np.minimum(np.maximum(r.red_high, b + standard.red_widen), b + standard.red_tighten_above)
    # Keep the ranges nested (red outside yellow) whatever the tightening did.
    red_low = np.minimum(red_low, yellow_low)
    red_high = np.maximum(red_high, yellow_high)
    return {"red_low": red_low, "yellow_low": yellow_low, "yellow_high": yellow_high, "red_high": red_high}
