"""How steady is this machine? The same open load, repeated, and what it cost the server each time.

    python benchmarks/machine_drift.py [scenarios/kol-10k.toml] [--rounds 20] [--rate 300] [--run-s 4]

Starts the real server on SQLite (seeded from the scenario, whose trace it simulates first if
``results/<scenario>/`` has none), then ``--rounds`` times: a single-client run of 1.5 s (the
capacity pipeline's calibration, in small) and right after it a Poisson load of ``--rate`` req/s for
``--run-s`` seconds with the peak hour's endpoint mix. For each it prints the server's CPU per
request (event loop CPU less its idle timers and the triage, over requests), the loop's
utilisation and the open load's p95.

What it answers: a capacity prediction made from a calibration can be no better than the machine
is steady. If the same load costs ±17 % from one run to the next, a level planned at 80 % runs
anywhere between 66 and 94 % busy and its p95 varies threefold — whatever the model. It prints the
coefficient of variation of the open load's cost, and whether the single-client run just before
tracks it (correlation, and the cv of their ratio against that of the first calibration's).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twin.capacity import calibrate as cb  # noqa: E402
from twin.capacity import directload as dl  # noqa: E402
from twin.capacity.pipeline import IDLE_S, peak_hour, scenario_trace, wait_triage_idle  # noqa: E402
from twin.loadtest.runner import LocalServer  # noqa: E402

SINGLE_S = 1.5


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "kol-10k.toml"))
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rate", type=float, default=300.0, help="open load, requests per second")
    p.add_argument("--run-s", type=float, default=4.0, help="seconds per open run")
    p.add_argument("--results", default=str(ROOT / "results"))
    args = p.parse_args()
    scenario = Path(args.scenario)
    trace = scenario_trace(scenario, Path(args.results))
    peak = peak_hour(trace)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalServer.start(scenario, Path(tmp) / "twin.db", quiet=True)
        pid = server.process.pid
        try:
            teams = sorted(trace.citizens["team_id"].astype(int).unique())
            per_round = int(args.rate * args.run_s * 1.2) + 2000
            fresh = dl.FreshPools(lambda: dl.build_pools(server.base_url, peak.sessions, teams, seed=1, submissions=per_round))
            mix = dl.direct_mix(peak.mix, fresh.pools)
            c0, t0 = cb.event_loop_cpu_s(pid), time.monotonic()
            time.sleep(IDLE_S)  # the server at rest: its timers' CPU, as the capacity pipeline measures it
            idle_per_s = cb.idle_cpu_rate(cb.event_loop_cpu_s(pid) - c0, time.monotonic() - t0)

            def cost_ms(run) -> tuple[float, float, object]:
                c0, t0, w0 = cb.event_loop_cpu_s(pid), time.monotonic(), cb.TriageWork.read(server.base_url)
                req = run()
                wait_triage_idle(server.base_url)
                wall, cpu = time.monotonic() - t0, cb.event_loop_cpu_s(pid) - c0
                triage = cb.TriageWork.read(server.base_url) - w0
                return 1000.0 * cb.request_cpu_s(cpu, idle_per_s, wall, triage.busy_s) / max(len(req), 1), cpu / wall, req

            for k in range(args.rounds):
                single, _, _ = cost_ms(lambda k=k: dl.single_client_run(fresh.get(SINGLE_S), mix, SINGLE_S, k))
                opened, busy, req = cost_ms(lambda k=k: dl.open_run(fresh.get(args.run_s), mix, args.rate, args.run_s,
                                                                    100 + k))
                p95 = float(np.percentile(req.loc[req["ok"] == 1, "latency_ms"], 95))
                rows.append((single, opened, busy, p95))
                print(f"round {k + 1:3d}  single client {single:6.3f} ms/req   open {args.rate:.0f}/s: {opened:6.3f} "
                      f"ms/req, loop {100 * busy:3.0f} % busy, p95 {p95:6.1f} ms", flush=True)
        finally:
            server.stop()
    a = np.array(rows)
    cv = lambda x: float(x.std(ddof=1) / x.mean())  # noqa: E731
    print(f"open load's cost per request: median {np.median(a[:, 1]):.3f} ms, cv {cv(a[:, 1]):.3f} "
          f"(min {a[:, 1].min():.3f}, max {a[:, 1].max():.3f}); loop busy {100 * a[:, 2].min():.0f}-"
          f"{100 * a[:, 2].max():.0f} %; p95 {a[:, 3].min():.1f}-{a[:, 3].max():.1f} ms")
    print(f"single client just before: cv {cv(a[:, 0]):.3f}, correlation with the open cost "
          f"{np.corrcoef(a[:, 0], a[:, 1])[0, 1]:.2f}; cv of open / single just before {cv(a[:, 1] / a[:, 0]):.3f} "
          f"against open / the first single {cv(a[:, 1] / a[0, 0]):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
