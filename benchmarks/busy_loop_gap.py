"""How much more does a request cost a sleeping event loop than a busy one, on this machine?

    python benchmarks/busy_loop_gap.py [scenarios/kol-10k.toml] [--rounds 10] [--window-s 1.0]

Starts the real server on SQLite (seeded from the scenario, whose trace it simulates first if
``results/<scenario>/`` has none) and, for ``--rounds`` rounds, measures five short closed-loop
windows in alternating order: ``GET /metadata`` from one client and from four (the capacity
pipeline's busy-loop saving, :func:`twin.capacity.directload.busy_loop_saving`), and the peak
hour's endpoint mix from one, two and sixteen clients. For each: the event loop's CPU per request
(less its idle timers), its sleeps per request, the triage's and the COMMITs' share.

What it answers: the capacity pipeline predicts the saturation from the single client's demand
less the /metadata saving. If the mix's single-client cost exceeds its saturated cost by more
than that saving, the prediction is low by the difference. It prints, per round, the saturated
cost's error against the additive prediction (single − saving) and against a proportional one
(single × busy / alone on /metadata), and their medians: which model of the wake-up holds here.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twin.capacity import calibrate as cb  # noqa: E402
from twin.capacity import directload as dl  # noqa: E402
from twin.capacity.pipeline import IDLE_S, peak_hour, scenario_trace  # noqa: E402
from twin.loadtest.httpload import build_request, run_load  # noqa: E402
from twin.loadtest.runner import LocalServer  # noqa: E402

PLAN = (("metadata-1", 1), ("metadata-4", 4), ("mix-1", 1), ("mix-2", 2), ("mix-16", 16))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "kol-10k.toml"))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--window-s", type=float, default=1.0, help="measured seconds per window")
    p.add_argument("--results", default=str(ROOT / "results"))
    args = p.parse_args()
    scenario = Path(args.scenario)
    trace = scenario_trace(scenario, Path(args.results))
    peak = peak_hour(trace)
    rows: dict[str, list[tuple[float, ...]]] = {label: [] for label, _ in PLAN}
    with tempfile.TemporaryDirectory() as tmp:
        server = LocalServer.start(scenario, Path(tmp) / "twin.db", quiet=True)
        pid = server.process.pid
        try:
            teams = sorted(trace.citizens["team_id"].astype(int).unique())
            fresh = dl.FreshPools(lambda: dl.build_pools(server.base_url, peak.sessions, teams, seed=1,
                                                         submissions=int(args.rounds * 3 * args.window_s * 800)))
            mix = dl.direct_mix(peak.mix, fresh.pools)
            c0, t0 = cb.event_loop_cpu_s(pid), time.monotonic()
            time.sleep(IDLE_S)  # the server at rest: its timers' CPU, as the capacity pipeline measures it
            idle_per_s = cb.idle_cpu_rate(cb.event_loop_cpu_s(pid) - c0, time.monotonic() - t0)
            metadata = [build_request("GET", f"{fresh.pools.host}:{fresh.pools.port}", dl.BUSY_LOOP_PATH)]

            def window(label: str, clients: int, seed: int) -> None:
                pools = fresh.get(args.window_s)
                endpoints = None
                if label.startswith("metadata"):
                    requests = metadata
                else:
                    endpoints = dl.endpoint_sequence(mix, int(max(args.window_s * 3000, 500)), seed)
                    requests = pools.sequence(endpoints)
                k0, t0 = cb.server_counters(pid, server.base_url), time.monotonic()
                res = asyncio.run(run_load(pools.host, pools.port, requests, clients, args.window_s, 0.1))
                k1, wall = cb.server_counters(pid, server.base_url), time.monotonic() - t0
                if endpoints is not None:  # drop the submissions sent, so none is sent twice
                    used = int((endpoints[: res.sent] == "submit_measurement").sum())
                    pools.by_endpoint["submit_measurement"] = pools.by_endpoint["submit_measurement"][used:]
                per = lambda c: (k1[c] - k0[c]) / max(res.sent, 1)  # noqa: E731
                cpu_ms = per("loop_cpu_ms") - 1000.0 * idle_per_s * wall / max(res.sent, 1)
                rows[label].append((cpu_ms, per("loop_sleeps"), per("triage_ms"), per("commit_ms"), res.rps))

            for k in range(args.rounds):
                for j, (label, clients) in enumerate(PLAN if k % 2 == 0 else PLAN[::-1]):
                    window(label, clients, 1000 * k + j)
                print(f"round {k + 1}: " + ", ".join(f"{label} {rows[label][-1][0]:.3f}" for label, _ in PLAN)
                      + " ms/req", flush=True)
        finally:
            server.stop()
    print(f"idle timers {100 * idle_per_s:.1f} % of the loop")
    for label, _ in PLAN:
        a = np.array(rows[label])
        print(f"{label:11s} loop CPU {np.median(a[:, 0]):.3f} ms/req (quartiles {np.percentile(a[:, 0], 25):.3f}–"
              f"{np.percentile(a[:, 0], 75):.3f}), sleeps {np.median(a[:, 1]):.2f}, triage {np.median(a[:, 2]):.3f} ms, "
              f"COMMITs {np.median(a[:, 3]):.3f} ms per request, {np.median(a[:, 4]):.0f} req/s")
    alone, busy = (np.array(rows[k])[:, 0] for k in ("metadata-1", "metadata-4"))
    single, saturated = (np.array(rows[k])[:, 0] for k in ("mix-1", "mix-16"))
    print(f"single - saturated: median {np.median(single - saturated):.3f} ms (per round "
          f"{np.round(single - saturated, 3).tolist()}); /metadata saving: median {np.median(alone - busy):.3f} ms")
    for name, predicted in (("additive (single - saving)", single - (alone - busy)),
                            ("proportional (single x busy / alone)", single * busy / alone)):
        err = saturated / predicted - 1  # = predicted saturation / measured - 1
        print(f"saturation error, {name}: median {100 * np.median(err):+.0f} %, mean |error| "
              f"{100 * np.mean(np.abs(err)):.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
