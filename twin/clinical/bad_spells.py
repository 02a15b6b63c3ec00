"""Bad spells: symptom worsenings that resolve on their own and are not treated.

More than half of the worsening episodes a COPD patient reports are not exacerbations (X6, Aaron
2012: ≈4.1 per patient-year). They make the questionnaire answers worse and nudge SpO2 and pulse a
little, so they are the main source of *false* alerts. They are independent of the exacerbation
process: a Poisson process per citizen over the time the citizen is monitored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.clinical.exacerbations import DELTA_VITALS, WARMUP_DAYS, draw_peaks
from twin.clinical.population import DAYS_PER_YEAR
from twin.scenario import BadSpells


@dataclass
class Spells:
    citizen: np.ndarray
    start_day: np.ndarray
    duration_days: np.ndarray
    peak: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.citizen)


def simulate_bad_spells(enrol_day: np.ndarray, exit_day: np.ndarray, spells: BadSpells, duration_days: int,
                        rng: np.random.Generator) -> Spells:
    t0 = np.maximum(enrol_day, -WARMUP_DAYS)
    t1 = np.minimum(exit_day, duration_days)
    exposure_days = np.clip(t1 - t0, 0, None)
    counts = rng.poisson(spells.rate_per_year * exposure_days / DAYS_PER_YEAR)
    citizen = np.repeat(np.arange(len(enrol_day)), counts)
    start = t0[citizen] + rng.random(citizen.size) * exposure_days[citizen]
    order = np.lexsort((start, citizen))
    citizen, start = citizen[order], start[order]
    duration = rng.lognormal(np.log(spells.duration_median_days), spells.duration_sigma, citizen.size)
    peak = draw_peaks(rng, spells.deltas, citizen.size)
    assert set(peak) == set(DELTA_VITALS)
    return Spells(citizen, start, duration, peak)
