"""Writing a run's results directory: tidy tables beside the resolved scenario and its seed.

Layout of ``results/<scenario>/`` (see results/README.md):

* ``scenario.toml`` — the fully resolved scenario (defaults included); ``twin run`` on it repeats the run;
* ``run.json`` — seed(s), replications, wall time per step, package versions;
* ``trace/`` — the session trace (:mod:`twin.trace`);
* ``tables/`` — calibration, outcomes, per-team-week alerts and nurse work, response times,
  demand per hour of the week, weekly events, episodes, bad spells, backlog, replications;
* ``figures/`` and ``report.html`` — made from the tables by :mod:`twin.report`.

A directory is written under a temporary name and renamed into place only when complete, so a
failed run never leaves a partial results directory (and never clobbers the previous one before
the new one is whole).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import tomli_w

from twin import summaries
from twin.model import RunResult
from twin.outcomes import calibration_table
from twin.scenario import Scenario, scenario_to_dict
from twin.trace import write_trace


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success it replaces ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; results are for everyone on the machine
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _toml_safe(obj):
    if isinstance(obj, dict):
        return {k: _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_toml_safe(v) for v in obj]
    return obj


def write_scenario(scenario: Scenario, path: Path) -> None:
    path.write_text("# Fully resolved scenario (defaults included), written by twin run.\n"
                    + tomli_w.dumps(_toml_safe(scenario_to_dict(scenario))), encoding="utf-8")


def write_run_tables(result: RunResult, figures: dict[str, float], out: Path) -> None:
    """Trace and tidy tables of one replication."""
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    trace = write_trace(result, out / "trace")
    calibration_table(figures).to_csv(tables / "calibration.csv", index=False)
    pd.DataFrame({"metric": list(figures), "value": list(figures.values())}).to_csv(tables / "outcomes.csv", index=False)
    summaries.alerts_per_team_week(result).to_csv(tables / "alerts_per_team_week.csv", index=False)
    summaries.nurse_work_per_team_week(result).to_csv(tables / "nurse_work_per_team_week.csv", index=False)
    summaries.response_times(result).to_parquet(tables / "response_times.parquet", index=False)
    summaries.demand_per_hour_of_week(trace["demand_per_minute"]).to_csv(tables / "demand_per_hour_of_week.csv",
                                                                           index=False)
    summaries.weekly_events(result).to_csv(tables / "weekly_events.csv", index=False)
    result.episodes.to_parquet(tables / "episodes.parquet", index=False)
    result.spells.to_parquet(tables / "bad_spells.parquet", index=False)
    result.backlog.to_parquet(tables / "backlog.parquet", index=False)


def write_run_info(out: Path, info: dict) -> None:
    (out / "run.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
