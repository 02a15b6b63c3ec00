"""Soak: the kol-10k peak hour at twice its rate for half an hour — do latency and memory stay flat?

    python benchmarks/soak.py [--scenario scenarios/kol-10k.toml] [--factor 2] [--minutes 30] [--sample-s 10]

Starts a local ``twin serve`` on SQLite seeded with the scenario (its trace comes from
``results/<scenario>/trace``, made by ``twin run`` if missing), then offers the peak hour's mix of
calls (twin/capacity/directload.py: pre-built requests) as Poisson arrivals at ``factor`` times the
peak hour's rate, without a break, for ``minutes``. Every ``sample_s`` it prints and records one row:
requests, errors, p50/p95/p99 latency, the server's resident memory (RSS) and the database size.
At the end: memory growth (first sample after the first minute to the last, and the slope per
hour of a straight-line fit) and latency drift (p95 of the last five minutes over the first five).
Not a CI test (it runs for half an hour); results go to ``results/<scenario>/soak.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TOKEN_REFRESH_S = 240  # access tokens live 300 s: new logins (and requests) before they expire
sys.path.insert(0, str(ROOT))

from loadtests import schedule  # noqa: E402
from twin.capacity import directload as dl  # noqa: E402
from twin.loadtest.runner import LoadTestRun, LocalServer, ensure_trace  # noqa: E402
from twin.platform import arrivals_from_trace, endpoint_mix  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def db_mb(db: Path) -> float:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) / 2**20


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", default=str(ROOT / "scenarios" / "kol-10k.toml"))
    p.add_argument("--factor", type=float, default=2.0, help="times the peak hour's rate")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    scenario = Path(args.scenario)
    name = scenario.stem
    trace_dir = ensure_trace(LoadTestRun(scenario=scenario, quiet=True), name, load_scenario(scenario))
    trace = schedule.load_trace(trace_dir)
    peak = schedule.resolve_window("peak-hour", trace)
    peak_arrivals = arrivals_from_trace(trace.sessions, trace.actions, peak.start, peak.end)
    rate = args.factor * len(peak_arrivals) / peak.duration_s
    samples = int(args.minutes * 60 / args.sample_s)
    with tempfile.TemporaryDirectory(prefix="twin-soak-") as tmp:
        db = Path(tmp) / "twin.db"
        server = LocalServer.start(scenario, db)
        try:
            in_peak = (trace.sessions["start_time"] >= peak.start) & (trace.sessions["start_time"] < peak.end)
            mix0 = endpoint_mix(peak_arrivals)
            need = int(rate * mix0.get("submit_measurement", 0.1) * args.minutes * 60 * 1.3) + 100
            teams = sorted(trace.citizens["team_id"].unique())
            per_build = int(need * TOKEN_REFRESH_S / (args.minutes * 60)) + 100

            def fresh_pools(k: int) -> dl.RequestPools:
                return dl.build_pools(server.base_url, trace.sessions[in_peak], teams, submissions=per_build,
                                      seed=args.seed + k)

            pools = fresh_pools(0)
            built = time.monotonic()
            mix = dl.direct_mix(mix0, pools)
            print(f"soak {name}: {rate:.1f} requests/s ({args.factor:g} x the peak hour), {args.minutes:g} min, "
                  f"server pid {server.process.pid}", flush=True)
            rows = []
            started = time.monotonic()
            for k in range(samples):
                if time.monotonic() - built > TOKEN_REFRESH_S:  # the pre-built requests' tokens expire
                    pools, built = fresh_pools(k), time.monotonic()
                req = dl.open_run(pools, mix, rate, args.sample_s, args.seed + k)
                lat = req["latency_ms"].to_numpy(float)
                row = {"minute": round((time.monotonic() - started) / 60, 2), "requests": len(req),
                       "errors": int((req["ok"] == 0).sum()),
                       **{f"p{q}_ms": round(float(np.nanpercentile(lat, q)), 2) if len(lat) else np.nan
                          for q in (50, 95, 99)},
                       "rss_mb": round(rss_mb(server.process.pid), 1), "db_mb": round(db_mb(db), 1)}
                rows.append(row)
                print("  " + "  ".join(f"{k_}={v}" for k_, v in row.items()), flush=True)
        finally:
            server.stop()
    df = pd.DataFrame(rows)
    out = ROOT / "results" / name / "soak.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    settled = df[df["minute"] >= 1.0] if (df["minute"] >= 1.0).sum() >= 2 else df
    slope_mb_per_h = float(np.polyfit(settled["minute"], settled["rss_mb"], 1)[0] * 60) if len(settled) >= 2 else np.nan
    head, tail = df[df["minute"] <= 5], df[df["minute"] >= df["minute"].max() - 5]
    print(f"memory: {settled['rss_mb'].iloc[0]:.0f} MB after the first minute -> {df['rss_mb'].iloc[-1]:.0f} MB at the "
          f"end (slope {slope_mb_per_h:+.1f} MB/hour); database {df['db_mb'].iloc[0]:.0f} -> {df['db_mb'].iloc[-1]:.0f} MB")
    print(f"latency: p95 median of samples {head['p95_ms'].median():.1f} ms in the first 5 min, "
          f"{tail['p95_ms'].median():.1f} ms in the last 5; errors {int(df['errors'].sum())} of "
          f"{int(df['requests'].sum())} requests")
    print(f"-> {out} (pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
