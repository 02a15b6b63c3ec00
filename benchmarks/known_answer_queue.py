"""Known-answer check of the measurement chain: a server whose service times are known, request by request.

    python benchmarks/known_answer_queue.py [--mean-ms 1.5] [--duration 15] [--loads 0.2,0.5,0.8,0.9]

The capacity pipeline compares the platform model's latencies with a real event-loop server's.
When they disagree, is the queueing model wrong, or the measurement (the open-load client, the
loopback, the server's own overhead)? This answers it on a server with nothing unknown:
benchmarks/spin_app.py, run by the same uvicorn as ``twin serve``, keeps its event loop busy for
exactly the time each request asks. Poisson arrivals ask for exponential times (mean
``--mean-ms``), so the offered load is M/M/1; the direct client measures latency from each
request's due time (twin/loadtest/httpload.py, as the pipeline does).

Predictions, on exactly the arrivals and service times sent (Lindley's first-come-first-served
recursion, exact for one core):

* ``spins only`` — the requested times alone: what a model that ignores the server's own work
  predicts;
* ``model`` — each request's spin plus the server's CPU per request beyond the spins (its HTTP
  parsing, event loop and socket work: the main thread's CPU over the run, measured), plus the
  part of a request's latency that never queues (client and loopback), measured once at the
  lowest load as the median measured latency less the model's median.

Prints per load the measured utilisation, the server's overhead per request, measured and
predicted p50/p95 and the errors, and writes ``results/known_answer_queue.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from twin.capacity.calibrate import thread_schedstat_s  # noqa: E402
from twin.loadtest.httpload import build_request, poisson_schedule, run_load, run_open_load  # noqa: E402
from twin.loadtest.runner import stop_process  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fifo_latency_s(arrival_s: np.ndarray, service_s: np.ndarray) -> np.ndarray:
    """Lindley's recursion: each job's time in a first-come-first-served single-server queue."""
    out = np.empty(len(arrival_s))
    free_at = 0.0
    for i, (t, s) in enumerate(zip(arrival_s.tolist(), service_s.tolist(), strict=True)):
        free_at = max(t, free_at) + s
        out[i] = free_at - t
    return out


def wait_up(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("spin server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("spin server did not start")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mean-ms", type=float, default=1.5, help="mean of the exponential service times asked for")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    p.add_argument("--loads", default="0.2,0.5,0.8,0.9", help="offered loads: arrival rate x mean spin")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "results" / "known_answer_queue.json"))
    args = p.parse_args()
    loads = sorted(float(x) for x in args.loads.split(","))
    port = free_port()
    host = f"127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "spin_app:app", "--port", str(port), "--log-level",
                             "warning", "--no-access-log"], cwd=ROOT / "benchmarks")
    rng = np.random.default_rng(args.seed)
    rows, non_queueing_ms = [], None
    try:
        wait_up(port, proc)
        asyncio.run(run_load("127.0.0.1", port, [build_request("GET", host, "/spin?us=100")], 8, 1.0))  # warm
        for k, load in enumerate(loads):
            rate = load / (args.mean_ms / 1000.0)
            due_s, phase = poisson_schedule([(args.duration, rate)], seed=args.seed + k)
            spin_us = np.maximum(rng.exponential(args.mean_ms * 1000.0, len(due_s)).round(), 1).astype(int)
            requests = [build_request("GET", host, f"/spin?us={u}") for u in spin_us]
            cpu0 = thread_schedstat_s(proc.pid)[0]
            res = asyncio.run(run_open_load("127.0.0.1", port, requests, schedule=(due_s, phase), warm_connections=64))
            cpu_s = thread_schedstat_s(proc.pid)[0] - cpu0
            overhead_s = cpu_s / len(due_s) - spin_us.mean() / 1e6
            measured = res.latency_ms[res.status == 200]
            spins_only = 1000.0 * fifo_latency_s(due_s, spin_us / 1e6)
            model = 1000.0 * fifo_latency_s(due_s, spin_us / 1e6 + overhead_s)
            if non_queueing_ms is None:  # the lowest load: what never queues (client, loopback)
                non_queueing_ms = max(float(np.median(measured) - np.median(model)), 0.0)
            model += non_queueing_ms
            row = {"offered_load": load, "requests": int(len(due_s)), "answered": int(len(measured)),
                   "utilisation": cpu_s / args.duration, "server_overhead_ms": 1000.0 * overhead_s,
                   "non_queueing_ms": non_queueing_ms,
                   **{f"measured_p{q}_ms": float(np.percentile(measured, q)) for q in (50, 95)},
                   **{f"model_p{q}_ms": float(np.percentile(model, q)) for q in (50, 95)},
                   "spins_only_p95_ms": float(np.percentile(spins_only, 95))}
            row["p95_rel_error"] = row["model_p95_ms"] / row["measured_p95_ms"] - 1.0
            row["spins_only_p95_rel_error"] = row["spins_only_p95_ms"] / row["measured_p95_ms"] - 1.0
            rows.append(row)
            print(f"load {load:.2f}: utilisation {row['utilisation']:.2f}, server overhead "
                  f"{row['server_overhead_ms']:.3f} ms/request | p50 measured {row['measured_p50_ms']:6.2f} model "
                  f"{row['model_p50_ms']:6.2f} | p95 measured {row['measured_p95_ms']:6.2f} model "
                  f"{row['model_p95_ms']:6.2f} ({100 * row['p95_rel_error']:+.0f} %), spins only "
                  f"{row['spins_only_p95_ms']:6.2f} ({100 * row['spins_only_p95_rel_error']:+.0f} %)", flush=True)
    finally:
        stop_process(proc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"mean_ms": args.mean_ms, "duration_s": args.duration, "loads": rows,
                                          "at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2), encoding="utf-8")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
