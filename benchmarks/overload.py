"""Overload: does the API shed load at twice its capacity, and recover when the load drops?

    python benchmarks/overload.py [--phase-s 15] [--skip-postgres]

Seeds scenarios/pilot-1000.toml into SQLite, starts ``twin serve`` (one worker) and measures its
saturation throughput for ``$submit-measurement`` with a closed loop of 32 connections. Then an
open-model load (Poisson arrivals, twin/loadtest/httpload.py ``run_open_load``) runs three phases:
half the saturation rate, **twice** the saturation rate, half again. It does so twice in the same
run, on fresh databases: with the service's load shedding (twin/server/admission.py, defaults), and
without it (``TWIN_LOAD_SHEDDING=0``) — the baseline.

Per phase it prints the offered and answered rates, the share refused with 503 (+ Retry-After),
and the latency percentiles of the *admitted* (2xx) requests, measured from each request's due
time; then the recovery time: how long after the drop to half load the 1-second p95 of admitted
requests is back within 2x the first phase's p95 with no refusals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchmark_api as b  # noqa: E402

from twin.loadtest.httpload import run_load, run_open_load  # noqa: E402
from twin.loadtest.runner import stop_process  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402
from twin.seed import seed  # noqa: E402

NO_SHEDDING = {"TWIN_LOAD_SHEDDING": "0"}


def phase_table(res, phases: list[tuple[float, float]]) -> list[dict]:
    rows = []
    for k, (duration_s, rate) in enumerate(phases):
        mine = res.phase == k
        ok = mine & (res.status >= 200) & (res.status < 300)
        lat = res.latency_ms[ok]
        rows.append({"phase": k, "offered_rps": round(rate, 1), "arrivals": int(mine.sum()),
                     "answered_2xx_rps": round(ok.sum() / duration_s, 1),
                     "refused_503_share": round(float((res.status[mine] == 503).mean()), 3) if mine.any() else 0.0,
                     "no_answer": int((res.status[mine] == 0).sum()),
                     **{f"admitted_p{q}_ms": round(float(np.percentile(lat, q)), 1) if lat.size else None
                        for q in (50, 95, 99)}})
    return rows


def recovery_s(res, phases: list[tuple[float, float]]) -> float | None:
    """Seconds after the start of the last phase until a 1-s window has admitted p95 within 2x
    the first phase's and no 503 — None if it never recovers within the phase."""
    first_ok = (res.phase == 0) & (res.status >= 200) & (res.status < 300)
    target = 2 * float(np.percentile(res.latency_ms[first_ok], 95))
    t_drop = sum(d for d, _ in phases[:-1])
    for second in range(int(phases[-1][0])):
        window = (res.due_s >= t_drop + second) & (res.due_s < t_drop + second + 1)
        ok = window & (res.status >= 200) & (res.status < 300)
        if window.any() and ok.any() and not (res.status[window] == 503).any() \
                and np.percentile(res.latency_ms[ok], 95) <= target:
            return float(second)
    return None


def run(label: str, extra_env: dict, tmp: Path, args) -> dict:
    name = f"overload_{label}_{os.getpid()}"
    port = b.free_port()
    base, host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
    database = b.fresh_database("sqlite", tmp, name)
    seed(load_scenario(ROOT / "scenarios" / "pilot-1000.toml"), database, base)
    env = {**os.environ, "TWIN_SECRET": b.SECRET, "TWIN_NIGHTLY_JOBS": "0", **extra_env}
    proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "serve", "--database", database, "--port", str(port),
                             "--base-url", base], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        b.wait_healthy(f"{base}/health", proc)
        pools = b.prepare_requests(base, host, citizens=300, submissions=int(args.phase_s * 6000) + 20000)
        submit = pools["submit"]
        saturation = asyncio.run(run_load("127.0.0.1", port, submit[:15000], 32, 5.0)).rps
        b.wait_triage_idle(base)
        phases = [(args.phase_s, 0.5 * saturation), (args.phase_s, 2.0 * saturation), (args.phase_s, 0.5 * saturation)]
        res = asyncio.run(run_open_load("127.0.0.1", port, submit[15000:], phases, seed=args.seed))
        table = phase_table(res, phases)
        rec = recovery_s(res, phases)
        print(f"  {label}: saturation {saturation:.0f} submissions/s (closed loop, c=32)")
        for row in table:
            print(f"    phase {row['phase']}: offered {row['offered_rps']:7.0f}/s  2xx {row['answered_2xx_rps']:7.0f}/s  "
                  f"503 {100 * row['refused_503_share']:5.1f} %  no answer {row['no_answer']:5d}  admitted p50/p95/p99 "
                  f"{row['admitted_p50_ms']}/{row['admitted_p95_ms']}/{row['admitted_p99_ms']} ms", flush=True)
        print(f"    recovery after the drop: {rec if rec is not None else 'not within the phase'} s", flush=True)
        health = __import__("httpx").get(f"{base}/health").json()
        return {"saturation_rps": round(saturation, 1), "phases": table, "recovery_s": rec,
                "admission": health.get("admission")}
    finally:
        stop_process(proc, 30.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase-s", type=float, default=15.0, help="seconds per phase")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "benchmark_overload.json"))
    args = p.parse_args()
    out = {"at": time.strftime("%Y-%m-%d %H:%M:%S"), "phase_s": args.phase_s}
    with tempfile.TemporaryDirectory() as tmp:
        out["shedding"] = run("shedding", {}, Path(tmp), args)
        out["no_shedding"] = run("no_shedding", NO_SHEDDING, Path(tmp), args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
