"""Benchmark: how long one replication takes, against a plain-SimPy baseline measured in the same run.

    python benchmarks/benchmark_twin.py                 # full: kol-10k, daily-regime, national-growth, baseline
    python benchmarks/benchmark_twin.py --quick         # baseline on 30 days (extrapolated), 1 repeat

Each measurement runs in its own process (clean memory, honest peak RSS) and covers the whole
replication: the model, the calibration and outcome figures, and the trace and tables written to
disk (not the HTML report). The baseline is benchmarks/naive_simpy_baseline.py: one SimPy process
per citizen, six readings a day, alerts to a nurse Resource. Goals (issue 2): kol-10k <= 5 s,
daily-regime <= 20 s, national-growth <= 120 s with peak memory <= 6 GB. The machine is shared and
noisy (reference/performance.md: +-20 % drift), so medians of repeats and ratios are reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS_S = {"kol-10k": 5.0, "daily-regime": 20.0, "national-growth": 120.0}
MEMORY_GOAL_GB = 6.0


def worker(scenario_path: str) -> dict:
    """One replication with everything but the HTML report; prints JSON."""
    from twin.experiment import run_replication
    from twin.results import write_run_tables
    from twin.scenario import load_scenario

    scenario = load_scenario(scenario_path)
    t0 = time.perf_counter()
    result, figures = run_replication(scenario)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_run_tables(result, figures, Path(tmp))
    t2 = time.perf_counter()
    return {"scenario": Path(scenario_path).stem, "wall_s": t2 - t0, "model_and_figures_s": t1 - t0,
            "write_s": t2 - t1, "sessions": len(result.sessions), "citizens": len(result.citizens),
            "steps_s": result.timings_s, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def baseline_worker(citizens: int, days: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from naive_simpy_baseline import run_naive

    out = run_naive(citizens, days, seed=1)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return out


def in_subprocess(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per scenario (median reported)")
    p.add_argument("--quick", action="store_true", help="1 repeat; baseline on 30 days, extrapolated to a year")
    p.add_argument("--baseline-days", type=int, default=365)
    p.add_argument("--skip", nargs="*", default=[], help="scenarios to skip, e.g. national-growth")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmark.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--baseline-worker", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0
    if args.baseline_worker:
        print(json.dumps(baseline_worker(*args.baseline_worker)))
        return 0

    repeats = 1 if args.quick else args.repeats
    baseline_days = 30 if args.quick else args.baseline_days
    rows = {}
    for name in ("kol-10k", "daily-regime", "national-growth"):
        if name in args.skip:
            continue
        n = 1 if name == "national-growth" else repeats
        runs = [in_subprocess(["--worker", str(ROOT / "scenarios" / f"{name}.toml")]) for _ in range(n)]
        rows[name] = {"median_s": statistics.median(r["wall_s"] for r in runs), "runs_s": [r["wall_s"] for r in runs],
                      "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "sessions": runs[0]["sessions"],
                      "steps_s": runs[0]["steps_s"], "goal_s": GOALS_S[name]}
        print(f"{name:16s} median {rows[name]['median_s']:6.2f} s over {n} run(s) "
              f"(goal <= {GOALS_S[name]:.0f} s), peak RSS {rows[name]['peak_rss_gb']:.2f} GB, "
              f"{rows[name]['sessions']:,} sessions", flush=True)

    base = in_subprocess(["--baseline-worker", "10000", str(baseline_days)])
    year_s = base["wall_s"] * 365 / baseline_days
    print(f"{'naive SimPy':16s} {base['wall_s']:6.2f} s for 10,000 citizens x {baseline_days} days x 6 readings "
          f"({base['readings_per_s']:,.0f} readings/s)" + (f" -> {year_s:.0f} s per year (extrapolated)"
                                                            if baseline_days != 365 else ""), flush=True)
    if "kol-10k" in rows:
        ratio = year_s / rows["kol-10k"]["median_s"]
        print(f"kol-10k year vs naive SimPy year: {ratio:.0f}x faster (the twin does more per citizen: "
              "exacerbations, bad spells, 5 vitals, questionnaire, triage, nurse work, trace)")
    result = {"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
              "scenarios": rows, "baseline": {**base, "year_s_extrapolated": year_s, "days": baseline_days},
              "memory_goal_gb": MEMORY_GOAL_GB, "at": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
