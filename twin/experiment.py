"""Runs: one replication, many replications, scenario comparisons and threshold what-ifs.

The layers are separate (STYLE.md habit 5):

* :func:`run_replication` — one seed → the model's tables and headline figures;
* :func:`run_replications` — N independent seeds in parallel processes → per-replication figures
  and 95 % confidence intervals (Student t over replications);
* :func:`compare` — two scenarios on the *same* seeds (common random numbers: every stochastic
  process has its own named stream, so the citizens, their events and readings are identical where
  the scenarios agree) → paired differences with intervals;
* :func:`what_if` — one parameter over a list of values, same seeds for every value.

Each returns tidy tables; :mod:`twin.results` writes them, :mod:`twin.report` draws them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from twin.model import RunResult, simulate
from twin.outcomes import calibration_figures, clinical_outcomes
from twin.rng import Streams
from twin.scenario import Scenario, replace_path, scenario_to_dict
from twin.validation import build


@dataclass
class ReplicationSummary:
    seed: int
    figures: dict[str, float]  # calibration figures C1..C20 and clinical outcomes


def headline_figures(result: RunResult) -> dict[str, float]:
    return {**calibration_figures(result), **clinical_outcomes(result)}


def run_replication(scenario: Scenario, progress: Callable[[str], None] | None = None) -> tuple[RunResult, dict[str, float]]:
    result = simulate(scenario, progress)
    return result, headline_figures(result)


def _replicate_worker(args: tuple[dict, int]) -> ReplicationSummary:
    plain, seed = args
    scenario = build(Scenario, plain).with_seed(seed)
    _, figures = run_replication(scenario)
    return ReplicationSummary(seed, figures)


def replication_seeds(scenario: Scenario, n: int) -> list[int]:
    """Replication 0 uses the scenario's own seed; the others are spawned from it."""
    return [scenario.run.seed, *Streams(scenario.run.seed).replication_seeds(n - 1)] if n > 1 else [scenario.run.seed]


def run_replications(scenario: Scenario, seeds: Sequence[int], workers: int | None = None,
                     on_done: Callable[[], None] | None = None) -> pd.DataFrame:
    """Figures of each replication: one row per (replication, metric)."""
    plain = scenario_to_dict(scenario)  # plain data pickles; mapping proxies do not
    workers = max(1, min(workers or os.cpu_count() or 1, len(seeds)))
    jobs = [(plain, s) for s in seeds]
    summaries = []
    if workers == 1:
        for job in jobs:
            summaries.append(_replicate_worker(job))
            if on_done:
                on_done()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for summary in pool.map(_replicate_worker, jobs):
                summaries.append(summary)
                if on_done:
                    on_done()
    rows = [{"replication": i, "seed": s.seed, "metric": k, "value": v}
            for i, s in enumerate(summaries) for k, v in s.figures.items()]
    return pd.DataFrame(rows)


def confidence_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the Student-t interval over replications (NaN interval for a single value)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return mean, mean - half, mean + half


def summarise_replications(per_rep: pd.DataFrame) -> pd.DataFrame:
    """metric, mean, ci_lo, ci_hi, n over replications."""
    rows = []
    for metric, g in per_rep.groupby("metric", sort=False):
        mean, lo, hi = confidence_interval(g["value"].to_numpy())
        rows.append({"metric": metric, "mean": mean, "ci_lo": lo, "ci_hi": hi, "replications": len(g)})
    return pd.DataFrame(rows)


def paired_differences(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """B minus A per metric, paired by replication (common random numbers)."""
    merged = a.merge(b, on=["replication", "seed", "metric"], suffixes=("_a", "_b"))
    rows = []
    for metric, g in merged.groupby("metric", sort=False):
        mean_a, _, _ = confidence_interval(g["value_a"].to_numpy())
        mean_b, _, _ = confidence_interval(g["value_b"].to_numpy())
        diff, lo, hi = confidence_interval((g["value_b"] - g["value_a"]).to_numpy())
        rows.append({"metric": metric, "mean_a": mean_a, "mean_b": mean_b, "difference": diff, "ci_lo": lo,
                     "ci_hi": hi, "significant": bool(np.isfinite(lo) and (lo > 0 or hi < 0)), "replications": len(g)})
    return pd.DataFrame(rows)


def compare(a: Scenario, b: Scenario, replications: int, workers: int | None = None,
            on_done: Callable[[], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Both scenarios on A's replication seeds; returns (per-rep A, per-rep B, paired differences)."""
    seeds = replication_seeds(a, replications)
    per_a = run_replications(a, seeds, workers, on_done)
    per_b = run_replications(b, seeds, workers, on_done)
    return per_a, per_b, paired_differences(per_a, per_b)


def what_if(scenario: Scenario, parameter: str, values: Sequence[float], replications: int,
            workers: int | None = None, on_done: Callable[[], None] | None = None) -> pd.DataFrame:
    """One row per (parameter_value, replication, metric), all values on the same seeds."""
    seeds = replication_seeds(scenario, replications)
    frames = []
    for value in values:
        variant = replace_path(scenario, parameter, value)
        per = run_replications(variant, seeds, workers, on_done)
        per.insert(0, "parameter_value", value)
        frames.append(per)
    return pd.concat(frames, ignore_index=True)
