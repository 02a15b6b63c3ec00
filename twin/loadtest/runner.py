"""Run a Locust replay of a scenario's trace and collect per-endpoint statistics.

    run_loadtest(LoadTestRun(scenario=Path("scenarios/pilot-100.toml"), window="peak-hour", speedup=60))

1. The trace: ``results/<scenario>/trace`` when its resolved scenario equals this one, else a fresh
   ``twin run`` (one replication, no report) writes it.
2. The server: with no ``target``, a local ``twin serve`` on a new SQLite file at 127.0.0.1 on a
   free port, seeded with ``twin seed``; with a target, nothing is started — the target must answer
   ``/health`` and know a citizen of the trace (login works, their Patient exists).
3. Locust, headless, in a subprocess, with a hard time limit (``-t``, ``--stop-timeout``, and a
   kill after that), writing ``--csv`` with ``--csv-full-history`` to ``results/<scenario>/loadtest/``.
4. Tidy tables beside Locust's CSVs: ``endpoint_summary.csv`` (one row per endpoint: requests,
   failures, throughput, p50/p95/p99), ``endpoint_over_time.csv`` (one row per endpoint and
   second) and ``summary.json`` (the run's settings, the per-endpoint table, per-app request
   counts and the schedule's lag).
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from twin.scenario import load_scenario
from twin.validation import ScenarioError

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10  # Locust's --stop-timeout: users may finish their current event this long
KILL_MARGIN_S = 30.0  # after -t and --stop-timeout, the subprocess is killed


class LoadTestError(RuntimeError):
    """The load test cannot run; the message is one line for the operator."""


@dataclass
class LoadTestRun:
    scenario: Path
    target: str | None = None
    window: str = "peak-hour"
    speedup: float = 1.0
    duration_s: float | None = None  # cap on the run; default: the window ÷ speedup (or the step plan) + drain
    processes: int = 0  # Locust worker processes (0: one process)
    users: int = 200  # the pool carrying out arrivals, not the load (loadtests/users.py)
    clinicians: int = 5
    step: str | None = None  # RATE,SECONDS,STEPS
    step_p95_ms: float = 1000.0
    step_max_fail_ratio: float = 0.01
    drain_s: float = 15.0
    out: Path | None = None
    results: Path = Path("results")
    name: str | None = None  # the scenario's directory under results (default: the file's stem; `twin run --out`)
    quiet: bool = False
    message_polls: bool = True  # False: leave out the apps' inbox polls (not in the trace or the platform model)
    latency_log: bool = False  # every request to <out>/requests.csv (loadtests/latency_log.py), for calibration


def loadtests_module(name: str):
    """A module of the repository's ``loadtests`` package (``schedule``, ``shapes``, ``payloads``:
    pure, no Locust). The package lives beside the locustfile Locust runs, in the checkout, not in
    the installed ``twin``; one place puts the checkout on the path and says so when it is missing."""
    if not LOCUSTFILE.exists():
        raise LoadTestError(f"{LOCUSTFILE} not found: `twin loadtest` runs from a checkout of the repository")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"loadtests.{name}")


def _loadtests():
    return loadtests_module("schedule"), loadtests_module("shapes")


def run_loadtest(run: LoadTestRun) -> dict:
    """Carry out one load test; returns the summary written to ``summary.json``."""
    schedule, shapes = _loadtests()
    load_trace, resolve_window, StepPlan = schedule.load_trace, schedule.resolve_window, shapes.StepPlan

    name = run.name or Path(run.scenario).stem
    scenario = load_scenario(run.scenario)
    out = Path(run.out) if run.out else run.results / name / "loadtest"
    trace_dir = ensure_trace(run, name, scenario)
    trace = load_trace(trace_dir)
    try:
        window = resolve_window(run.window, trace)
        plan = StepPlan.parse(run.step, run.step_p95_ms, run.step_max_fail_ratio) if run.step else None
    except ValueError as e:
        raise LoadTestError(str(e)) from None
    planned_s = (plan.duration_s if plan else window.duration_s / run.speedup) + run.drain_s
    limit_s = max(1, int(round(min(planned_s, run.duration_s) if run.duration_s else planned_s)))
    probe = int(trace.sessions["citizen_id"].iloc[0]) if len(trace.sessions) else 0
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    server = None
    with tempfile.TemporaryDirectory(prefix="twin-loadtest-") as tmp:
        try:
            if run.target:
                base = run.target.rstrip("/")
            else:
                server = LocalServer.start(run.scenario, Path(tmp) / "twin.db", quiet=run.quiet)
                base = server.base_url
            check_target(base, probe)
            _say(run, f"{name}: replaying {window.name} {window.start} .. {window.end} against {base} "
                      f"for at most {limit_s} s -> {out}")
            started = time.monotonic()
            code = run_locust(run, base, trace_dir, out, limit_s)
            wall_s = time.monotonic() - started
        finally:
            if server is not None:
                server.stop()
    summary = collect(out, run, name, window, base, limit_s, wall_s, code)
    return summary


def _say(run: LoadTestRun, text: str) -> None:
    if not run.quiet:
        print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- trace
def ensure_trace(run: LoadTestRun, name: str, scenario) -> Path:
    """The scenario's trace: reused when the resolved scenario beside it is this scenario."""
    results = run.results / name
    trace_dir, resolved = results / "trace", results / "scenario.toml"
    if trace_dir.is_dir() and resolved.exists():
        try:
            if load_scenario(resolved) == scenario:
                return trace_dir
        except ScenarioError:
            pass  # written by an older twin: simulate again
    _say(run, f"{name}: no matching trace in {results}, running the twin first")
    proc = subprocess.run([sys.executable, "-m", "twin.cli", "run", str(run.scenario), "--replications", "1",
                           "--no-report", "--quiet", "--out", str(results)], cwd=os.getcwd(), capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise LoadTestError(f"twin run {run.scenario} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return trace_dir


# ------------------------------------------------------------------------------------ server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    base_url: str
    process: subprocess.Popen

    @classmethod
    def start(cls, scenario: Path, db: Path, quiet: bool = True) -> LocalServer:
        """``twin seed`` then ``twin serve`` on SQLite at 127.0.0.1 on a free port."""
        port = free_port()
        base, database = f"http://127.0.0.1:{port}", f"sqlite:///{db}"
        seeded = subprocess.run([sys.executable, "-m", "twin.cli", "seed", str(scenario), "--database", database,
                                 "--base-url", base], capture_output=True, text=True, timeout=600)
        if seeded.returncode != 0:
            raise LoadTestError(f"twin seed failed: {seeded.stderr.strip()}")
        # The nightly missing-measurement job keys on the wall clock, not the replayed trace's time.
        env = {**os.environ, "TWIN_SECRET": secrets.token_hex(32), "TWIN_NIGHTLY_JOBS": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "twin.cli", "serve", "--database", database, "--port",
                                 str(port), "--base-url", base, "--log-level", "error"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        server = cls(base, proc)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LoadTestError(f"twin serve exited: {proc.stderr.read().strip()[-300:]}")
            if _get(f"{base}/health", timeout_s=1.0)[0] == 200:
                return server
            time.sleep(0.1)  # waiting for a real process to listen
        server.stop()
        raise LoadTestError(f"twin serve did not answer /health within {STARTUP_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM (a server drains and closes its database), SIGKILL if it has not ended in ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout_s)


def _get(url: str, headers: dict | None = None, timeout_s: float = 5.0) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return None, b""


def check_target(base: str, citizen_id: int) -> None:
    """The target answers and holds this trace's seed: a citizen of the trace logs in and their
    Patient exists (a server seeded from another scenario or seed fails here, not mid-run)."""
    status, _ = _get(f"{base}/health")
    if status != 200:
        raise LoadTestError(f"target {base} is unreachable (GET /health: {status or 'no answer'})")
    form = urllib.parse.urlencode({"grant_type": "password", "username": f"citizen-{citizen_id}",
                                   "password": "twin"}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"{base}/auth/realms/nemlogin/protocol/openid-connect/token", data=form), timeout=5) as r:
            token = json.loads(r.read())["access_token"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        raise LoadTestError(f"target {base} is not seeded with this scenario: citizen-{citizen_id} cannot log in "
                            "(run `twin seed SCENARIO` against it)") from None
    status, _ = _get(f"{base}/patient/Patient/p-{citizen_id}", {"Authorization": f"Bearer {token}"})
    if status != 200:
        raise LoadTestError(f"target {base} is not seeded with this scenario: Patient/p-{citizen_id} is missing "
                            f"({status})")


# ------------------------------------------------------------------------------------ locust
def locust_command(run: LoadTestRun, base: str, trace_dir: Path, out: Path, limit_s: int) -> list[str]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", base,
           "--trace-dir", str(trace_dir), "--scenario", str(trace_dir.parent / "scenario.toml"),
           "--window", run.window, "--speedup", str(run.speedup), "-u", str(run.users),
           "--clinicians", str(run.clinicians), "--drain-s", str(run.drain_s),
           "--run-tag", dt.datetime.now().strftime("run%Y%m%dT%H%M%S") + secrets.token_hex(2),
           "--replay-report", str(out / "replay.json"), "--csv", str(out / "locust"), "--csv-full-history",
           "--only-summary", "-t", f"{limit_s}s", "--stop-timeout", str(STOP_TIMEOUT_S), "--loglevel", "WARNING"]
    if run.step:
        cmd += ["--step", run.step, "--step-p95-ms", str(run.step_p95_ms),
                "--step-max-fail-ratio", str(run.step_max_fail_ratio)]
    if run.processes > 1:
        cmd += ["--processes", str(run.processes)]
    if not run.message_polls:
        cmd += ["--no-message-polls"]
    if run.latency_log:
        cmd += ["--latency-log", str(out / "requests.csv")]
    return cmd


def run_locust(run: LoadTestRun, base: str, trace_dir: Path, out: Path, limit_s: int) -> int:
    """Locust in a subprocess, killed if it outlives its own limits; returns its exit code
    (1 when any request failed — the summary tells which)."""
    cmd = locust_command(run, base, trace_dir.resolve(), out.resolve(), limit_s)
    with (out / "locust.log").open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout=limit_s + STOP_TIMEOUT_S + KILL_MARGIN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise LoadTestError(f"locust did not stop within its time limit; killed (log: {out / 'locust.log'})") \
                from None


# ---------------------------------------------------------------------------------- results
def tidy_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Locust's ``_stats.csv`` → one row per endpoint (and the aggregate), units in names."""
    return pd.DataFrame({
        "endpoint": stats["Name"], "method": stats["Type"].fillna(""),
        "requests": stats["Request Count"].astype(int), "failures": stats["Failure Count"].astype(int),
        "throughput_rps": stats["Requests/s"].astype(float), "failures_per_s": stats["Failures/s"].astype(float),
        "p50_ms": stats["50%"], "p95_ms": stats["95%"], "p99_ms": stats["99%"],
        "mean_ms": stats["Average Response Time"].astype(float).round(2), "max_ms": stats["Max Response Time"],
    })


def tidy_history(history: pd.DataFrame) -> pd.DataFrame:
    """Locust's ``_stats_history.csv`` (with --csv-full-history) → one row per endpoint per second."""
    h = history[history["Name"] != "Aggregated"] if (history["Name"] != "Aggregated").any() else history
    t0 = history["Timestamp"].min()
    numeric = lambda c: pd.to_numeric(h[c], errors="coerce")  # noqa: E731 - Locust writes "N/A" before data
    return pd.DataFrame({
        "time_s": h["Timestamp"] - t0, "endpoint": h["Name"], "users": h["User Count"],
        "throughput_rps": numeric("Requests/s"), "failures_per_s": numeric("Failures/s"),
        "p50_ms": numeric("50%"), "p95_ms": numeric("95%"), "p99_ms": numeric("99%"),
        "requests_total": h["Total Request Count"], "failures_total": h["Total Failure Count"],
    }).reset_index(drop=True)


def collect(out: Path, run: LoadTestRun, name: str, window, base: str, limit_s: int, wall_s: float,
            code: int) -> dict:
    stats_csv, history_csv = out / "locust_stats.csv", out / "locust_stats_history.csv"
    if not stats_csv.exists():
        tail = (out / "locust.log").read_text(encoding="utf-8").strip().splitlines()[-1:] if (out / "locust.log").exists() else []
        raise LoadTestError(f"locust wrote no statistics (exit {code}): {' '.join(tail)}")
    summary_table = tidy_summary(pd.read_csv(stats_csv))
    summary_table.to_csv(out / "endpoint_summary.csv", index=False)
    if history_csv.exists():
        tidy_history(pd.read_csv(history_csv)).to_csv(out / "endpoint_over_time.csv", index=False)
    replay = json.loads((out / "replay.json").read_text(encoding="utf-8")) if (out / "replay.json").exists() else {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(run).items()}
    summary = {"scenario": name, "target": base, "window": {"name": window.name, "start": str(window.start),
                                                             "end": str(window.end), "trace_s": window.duration_s},
               "settings": settings, "time_limit_s": limit_s, "wall_s": round(wall_s, 2), "locust_exit_code": code,
               "endpoints": summary_table.to_dict("records"), **{k: v for k, v in replay.items()
                                                                 if k not in ("window", "speedup", "step")}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return summary
