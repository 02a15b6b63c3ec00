"""Naive plain-SimPy baseline: one process per citizen, Python work per reading.

This is the model the project's benchmark compares the twin against. It is written the
way a first SimPy model usually is, on purpose:

* every citizen is its own SimPy process that wakes up 6 times a day (every 240 min),
  draws SpO2 ~ Normal(93.5, 1) % and pulse ~ Normal(85, 5) bpm with Python's
  ``random.Random`` and checks the alert thresholds in Python;
* exacerbations arrive as a Poisson process (1.7 per year); for 10 days after an onset
  SpO2 is 2 points lower and pulse 7 bpm higher (overlapping episodes extend, not stack);
* a reading with SpO2 < 90 % or pulse > 100 bpm raises an alert, which becomes its own
  process queueing for one of 10 nurses (``simpy.Resource``), each alert taking an
  exponential 5 min on average.

All simulation times are in minutes. The cost is dominated by one SimPy event plus a
few Python calls per reading: 10,000 citizens x 365 days = 21.9 million readings.

Usage::

    python benchmarks/naive_simpy_baseline.py --citizens 10000 --days 365 --seed 1

prints one JSON line with citizens, days, readings, alerts, wall_s and readings_per_s.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import simpy

MIN_PER_DAY = 24 * 60
MIN_PER_YEAR = 365 * MIN_PER_DAY

READINGS_PER_DAY = 6
READING_INTERVAL_MIN = MIN_PER_DAY / READINGS_PER_DAY  # 240 min

SPO2_MEAN_PCT = 93.5
SPO2_SD_PCT = 1.0
PULSE_MEAN_BPM = 85.0
PULSE_SD_BPM = 5.0

EXACERBATIONS_PER_YEAR = 1.7
EXACERBATION_RATE_PER_MIN = EXACERBATIONS_PER_YEAR / MIN_PER_YEAR
EXACERBATION_DURATION_MIN = 10 * MIN_PER_DAY
EXACERBATION_SPO2_DROP_PCT = 2.0
EXACERBATION_PULSE_RISE_BPM = 7.0

SPO2_ALERT_BELOW_PCT = 90.0
PULSE_ALERT_ABOVE_BPM = 100.0

NURSES = 10
NURSE_SERVICE_TIME_MEAN_MIN = 5.0


def run_naive(citizens: int = 10_000, days: int = 365, seed: int = 1) -> dict:
    """Simulate ``citizens`` for ``days`` days and return counts plus wall-clock speed.

    Returns a dict with keys citizens, days, readings, alerts, wall_s, readings_per_s.
    ``wall_s`` covers building the processes and running the simulation (not imports).
    """
    if citizens < 1:
        raise ValueError(f"citizens must be >= 1, got {citizens!r}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days!r}")

    started_s = time.perf_counter()
    rng = random.Random(seed)
    env = simpy.Environment()
    nurses = simpy.Resource(env, capacity=NURSES)
    counts = {"readings": 0, "alerts": 0}
    horizon_min = days * MIN_PER_DAY

    def handle_alert():
        with nurses.request() as request:
            yield request
            yield env.timeout(rng.expovariate(1.0 / NURSE_SERVICE_TIME_MEAN_MIN))

    def citizen():
        # Random phase so 10,000 citizens do not all measure at the same instant.
        yield env.timeout(rng.uniform(0.0, READING_INTERVAL_MIN))
        # Poisson exacerbations: exponential gaps between onsets, applied lazily at the
        # next reading (only readings can observe them), so no second process is needed.
        # Everyone starts well; the ~4.7 % steady-state share exacerbated builds up over 10 days.
        next_onset_min = rng.expovariate(EXACERBATION_RATE_PER_MIN)
        exacerbated_until_min = -math.inf
        for _ in range(READINGS_PER_DAY * days):
            now_min = env.now
            while next_onset_min <= now_min:
                exacerbated_until_min = max(exacerbated_until_min, next_onset_min + EXACERBATION_DURATION_MIN)
                next_onset_min += rng.expovariate(EXACERBATION_RATE_PER_MIN)

            spo2_pct = rng.gauss(SPO2_MEAN_PCT, SPO2_SD_PCT)
            pulse_bpm = rng.gauss(PULSE_MEAN_BPM, PULSE_SD_BPM)
            if now_min < exacerbated_until_min:
                spo2_pct -= EXACERBATION_SPO2_DROP_PCT
                pulse_bpm += EXACERBATION_PULSE_RISE_BPM
            counts["readings"] += 1

            if spo2_pct < SPO2_ALERT_BELOW_PCT or pulse_bpm > PULSE_ALERT_ABOVE_BPM:
                counts["alerts"] += 1
                env.process(handle_alert())  # the citizen does not wait for the nurse

            yield env.timeout(READING_INTERVAL_MIN)

    for _ in range(citizens):
        env.process(citizen())
    # Every reading happens before the horizon (phase < interval), so the count is exact.
    env.run(until=horizon_min)

    wall_s = time.perf_counter() - started_s
    return {
        "citizens": citizens,
        "days": days,
        "readings": counts["readings"],
        "alerts": counts["alerts"],
        "wall_s": round(wall_s, 6),
        "readings_per_s": round(counts["readings"] / wall_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--citizens", type=int, default=10_000, help="number of citizens (default 10000)")
    parser.add_argument("--days", type=int, default=365, help="simulated days (default 365)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    print(json.dumps(run_naive(args.citizens, args.days, args.seed)))


if __name__ == "__main__":
    main()
