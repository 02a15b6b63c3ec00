"""Where one API call's server time goes: the benchmark's load on one endpoint, sampled by py-spy.

    pip install py-spy
    python benchmarks/profile_api.py submit [--database sqlite|postgresql] [--duration 8] [--top 30]

Seeds pilot-1000 and starts ``twin serve`` as ``benchmark_api.py`` does, drives one endpoint
(``submit``, ``worklist`` or ``episode``) in a closed loop of 32 connections, and meanwhile
records the server with ``py-spy record --format raw`` (collapsed stacks, main thread and
others). It prints, per function, the share of the server's samples in which it is on the stack
(inclusive) and at the top (self), plus the share per thread: the guide for what to make cheaper
next. Measure the change itself with ``benchmark_api.py`` (throughput and CPU per request against
the bare baseline in the same run); a profiler slows the server and only says where, not how much.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import benchmark_api as ba  # noqa: E402

from twin.loadtest.httpload import run_load  # noqa: E402
from twin.loadtest.runner import stop_process  # noqa: E402
from twin.scenario import load_scenario  # noqa: E402
from twin.seed import seed  # noqa: E402


def _label(frame: str) -> str:
    """``handle (/x/y/twin/server/app.py:120)`` -> ``handle (app.py)``: one entry per function, not per line."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})" if where else func


def callers(raw: Path, function: str, depth: int = 3) -> str:
    """The stacks leading to ``function`` (its ``depth`` nearest callers), by share of its samples."""
    paths: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        labels = [_label(f) for f in stack.split(";")[1:]]
        hits = [k for k, name in enumerate(labels) if name.startswith(function + " (")]
        if not hits:
            continue
        k = hits[0]
        paths[" <- ".join(reversed(labels[max(0, k - depth):k]))] += int(count)
        total += int(count)
    return "\n".join([f"callers of {function} ({total} samples):"]
                     + [f"{100 * c / max(total, 1):6.1f}%  {path}" for path, c in paths.most_common(15)])


def aggregate(raw: Path, top: int) -> str:
    """Inclusive and self shares per function from py-spy's collapsed stacks (``frame;frame;… count``)."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        threads[frames[0]] += n  # py-spy puts the thread first with --threads
        seen = set()
        for name in map(_label, frames[1:]):
            if name not in seen:
                inclusive[name] += n
                seen.add(name)
        own[_label(frames[-1])] += n
    lines = [f"{total} samples"]
    lines.append("threads: " + ", ".join(f"{t} {100 * c / total:.0f} %" for t, c in threads.most_common(6)))
    lines.append(f"{'inclusive':>9s} {'self':>6s}  function")
    for name, c in inclusive.most_common(top):
        lines.append(f"{100 * c / total:8.1f}% {100 * own[name] / total:5.1f}%  {name}")
    lines.append("-- most self time --")
    for name, c in own.most_common(top // 2):
        lines.append(f"{100 * inclusive[name] / total:8.1f}% {100 * c / total:5.1f}%  {name}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("endpoint", choices=("submit", "worklist", "episode"))
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--callers", action="append", default=[], metavar="FUNCTION",
                   help="also show what calls FUNCTION (e.g. _SqliteTx._fetch); repeatable")
    args = p.parse_args()
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        name = f"twin_profile_{os.getpid()}"
        port = ba.free_port()
        base, host = f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"
        database = ba.fresh_database(args.database, Path(tmp), name)
        seed(load_scenario(ROOT / "scenarios" / "pilot-1000.toml"), database, base)
        env = {**os.environ, "TWIN_SECRET": ba.SECRET, "TWIN_NIGHTLY_JOBS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "serve", "--database", database, "--port",
                                 str(port), "--base-url", base], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            ba.wait_healthy(f"{base}/health", proc)
            pools = ba.prepare_requests(base, host, citizens=300, submissions=int(args.duration * 2500) + 5000)
            if args.endpoint != "submit":
                asyncio.run(run_load("127.0.0.1", port, pools["submit"][:3000], args.concurrency, 2.0))
                ba.wait_triage_idle(base)
            raw = Path(tmp) / "profile.txt"
            spy_proc = subprocess.Popen([spy, "record", "--pid", str(proc.pid), "--rate", str(args.rate), "--format",
                                         "raw", "--threads", "--nonblocking", "--duration",
                                         str(int(args.duration) + 1), "--output", str(raw)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res, cpu_ms, split = ba.measured_run(proc.pid, port, pools[args.endpoint], args)
            spy_proc.wait(timeout=args.duration + 30)
            ba.report(args.database, args.endpoint, res, cpu_ms, split)
            print(aggregate(raw, args.top))
            for function in args.callers:
                print(callers(raw, function))
        finally:
            stop_process(proc)
            ba.drop_database(args.database, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
