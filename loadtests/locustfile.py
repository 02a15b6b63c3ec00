"""Locust replay of the twin's session trace against the real API (open-model arrivals).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8080 \\
        --trace-dir results/pilot-100/trace --window peak-hour --speedup 60 -u 200

(web UI at http://localhost:8089; add ``--headless -t 10m`` for a run without it). Every option
also reads an environment variable (``TWIN_TRACE_DIR``, ``TWIN_WINDOW``, ``TWIN_SPEEDUP`` …) and
shows in the web UI. The server must be seeded with the trace's scenario (``twin seed``);
``twin loadtest`` does all of that for you.

* ``--window`` — ``peak-hour``, ``monday``, ``january-week``, ``outage`` or ``START..END``;
* ``--speedup`` — time compression: 60 replays an hour of trace in a minute;
* ``--step RATE,SECONDS,STEPS`` — instead of the trace's timing, raise the session arrival rate
  stepwise (sessions from the window, cycled) until p95 or errors exceed their limit;
* ``-u`` — the pool of users that carries the arrivals out (not the load: see loadtests/users.py);
  ``--clinicians`` of them are nurses' apps.

Distributed (``--processes N``, or master/workers with ``--expect-workers N``): each worker replays
its share of the schedule (citizens and clinician actions modulo N, by worker index).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from locust import LoadTestShape, events
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `loadtests` and `twin` from the repository

from loadtests import schedule  # noqa: E402
from loadtests.latency_log import LATENCY_LOG  # noqa: E402
from loadtests.shapes import StepPlan, replay_users  # noqa: E402
from loadtests.users import (  # noqa: E402
    COUNTERS,
    CitizenAppUser,
    ClinicianAppUser,
    Options,
    count_request,
    start_replay,
)

log = logging.getLogger("loadtests")
__all__ = ["CitizenAppUser", "ClinicianAppUser", "TraceShape"]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    g = parser.add_argument_group("twin trace replay")
    g.add_argument("--trace-dir", env_var="TWIN_TRACE_DIR", default="results/pilot-100/trace",
                   help="the session trace to replay (results/<scenario>/trace)")
    g.add_argument("--scenario", env_var="TWIN_SCENARIO", default="",
                   help="resolved scenario for the app mix and questions (default: scenario.toml beside the trace)")
    g.add_argument("--window", env_var="TWIN_WINDOW", default="peak-hour",
                   help="peak-hour | monday | january-week | outage | START..END")
    g.add_argument("--speedup", env_var="TWIN_SPEEDUP", type=float, default=1.0, help="trace seconds per run second")
    g.add_argument("--seed", env_var="TWIN_SEED", type=int, default=None,
                   help="seed of the app assignment and poll phases (default: the scenario's run.seed)")
    g.add_argument("--step", env_var="TWIN_STEP", default="", help="step load RATE,SECONDS,STEPS, e.g. 5,30,10")
    g.add_argument("--step-p95-ms", env_var="TWIN_STEP_P95_MS", type=float, default=1000.0,
                   help="step load stops after a step whose p95 exceeds this")
    g.add_argument("--step-max-fail-ratio", env_var="TWIN_STEP_MAX_FAIL_RATIO", type=float, default=0.01,
                   help="step load stops after a step whose failed share exceeds this")
    g.add_argument("--clinicians", env_var="TWIN_CLINICIANS", type=int, default=5,
                   help="users of the pool that are nurses' apps (the rest are citizens' apps)")
    g.add_argument("--drain-s", env_var="TWIN_DRAIN_S", type=float, default=15.0,
                   help="run this long after the window's last event, for calls in flight")
    g.add_argument("--run-tag", env_var="TWIN_RUN_TAG", default="",
                   help="part of every submission key: replaying into the same database again needs a new tag")
    g.add_argument("--replay-workers", env_var="TWIN_REPLAY_WORKERS", type=int, default=0,
                   help="workers sharing the schedule (default: --processes or --expect-workers)")
    g.add_argument("--replay-report", env_var="TWIN_REPLAY_REPORT", default="",
                   help="write per-app request counts, lag and steps to this JSON file at the end")
    g.add_argument("--no-message-polls", env_var="TWIN_NO_MESSAGE_POLLS", action="store_true", default=False,
                   help="leave out the apps' background inbox polls (they are not in the trace or the platform model)")
    g.add_argument("--latency-log", env_var="TWIN_LATENCY_LOG", default="",
                   help="write every request (end time, endpoint, latency, ok) to this CSV file (one per process)")


def options_of(environment) -> Options:
    o = environment.parsed_options
    return Options(trace_dir=Path(o.trace_dir), window=o.window, speedup=o.speedup, seed=o.seed,
                   scenario=Path(o.scenario) if o.scenario else None, step=step_plan(o), run_tag=o.run_tag,
                   message_polls=not getattr(o, "no_message_polls", False))


def step_plan(o) -> StepPlan | None:
    return StepPlan.parse(o.step, o.step_p95_ms, o.step_max_fail_ratio) if o.step else None


def worker_count(o) -> int:
    if o.replay_workers:
        return o.replay_workers
    if o.processes and o.processes > 0:
        return o.processes
    return max(getattr(o, "expect_workers", 1) or 1, 1)


@events.init.add_listener
def _init(environment, **_kw) -> None:
    o = environment.parsed_options
    if o is None:
        return
    ClinicianAppUser.fixed_count = 0 if o.step else max(o.clinicians, 0)
    environment.events.request.add_listener(count_request)
    if getattr(o, "latency_log", "") and not isinstance(environment.runner, MasterRunner):
        path = Path(o.latency_log)
        if isinstance(environment.runner, WorkerRunner):  # one file per worker process
            path = path.with_name(f"{path.stem}.{environment.runner.worker_index}{path.suffix}")
        LATENCY_LOG.open(path)
        environment.events.request.add_listener(LATENCY_LOG.record)
    if not isinstance(environment.runner, WorkerRunner):
        # Check the trace, window and step plan now: an error inside the shape would only be logged.
        try:
            step_plan(o)
            TraceShape.window_s = schedule.resolve_window(o.window, schedule.load_trace(o.trace_dir)).duration_s
        except (ValueError, FileNotFoundError) as e:
            sys.stderr.write(f"twin replay: {e}\n")
            sys.exit(2)
    if isinstance(environment.runner, WorkerRunner):
        @environment.events.report_to_master.add_listener
        def _report(client_id, data):
            data["twin_replay"] = COUNTERS.take()
    if isinstance(environment.runner, MasterRunner):
        @environment.events.worker_report.add_listener
        def _collect(client_id, data):
            if "twin_replay" in data:
                COUNTERS.add(data["twin_replay"])


@events.test_start.add_listener
def _start(environment, **_kw) -> None:
    if isinstance(environment.runner, MasterRunner):
        return
    opts = options_of(environment)
    if isinstance(environment.runner, WorkerRunner):
        opts.part = schedule.Part(environment.runner.worker_index, worker_count(environment.parsed_options))
    replay = start_replay(opts, environment.host)
    log.info("replaying %s %s .. %s (%.0f s of trace at speedup %g) as worker %d of %d", replay.window.name,
             replay.window.start, replay.window.end, replay.window.duration_s, opts.speedup, opts.part.index,
             opts.part.count)


@events.quitting.add_listener
def _quitting(environment, **_kw) -> None:
    o = environment.parsed_options
    LATENCY_LOG.close()
    if isinstance(environment.runner, WorkerRunner) or not o or not o.replay_report:
        return
    report = {"window": o.window, "speedup": o.speedup, "step": o.step, "run_tag": o.run_tag,
              **COUNTERS.summary(), "steps": TraceShape.steps_log}
    Path(o.replay_report).parent.mkdir(parents=True, exist_ok=True)
    Path(o.replay_report).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")


class TraceShape(LoadTestShape):
    """Keeps the user pool up for the replay (window ÷ speedup + drain) or the step plan, then stops.

    In step mode it also ends the run after the first step that saturates the service: that step's
    p95 (Locust's current window) or its share of failed requests over the limit."""

    steps_log: list[dict] = []
    window_s: float = 0.0  # set at init from the options (the window's length in trace seconds)

    def __init__(self) -> None:
        super().__init__()
        self._step_mark: tuple[int, int, int] | None = None  # step, requests, failures at its start

    def _users(self, o) -> int:
        return max(int(o.num_users or 100), (0 if o.step else o.clinicians) + 1)

    def tick(self):
        o = self.runner.environment.parsed_options
        elapsed = self.get_run_time()
        users = self._users(o)
        plan = step_plan(o)
        if plan is not None:
            return self._step_tick(plan, elapsed, users)
        n = replay_users(elapsed, users, self.window_s, o.speedup, o.drain_s)
        return None if n is None else (n, n)

    def _step_tick(self, plan: StepPlan, elapsed: float, users: int):
        step = plan.step_at(elapsed)
        total = self.runner.stats.total
        if self._step_mark is None:
            self._step_mark = (0, total.num_requests, total.num_failures)
        k, requests0, failures0 = self._step_mark
        if step is None or step != k:  # step k has just finished: judge it
            requests, failures = total.num_requests - requests0, total.num_failures - failures0
            p95 = total.get_current_response_time_percentile(0.95)
            fail_ratio = failures / requests if requests else 0.0
            self.steps_log.append({"step": k, "rate_sessions_per_s": (k + 1) * plan.rate_per_step,
                                   "requests": requests, "failures": failures, "p95_ms": p95,
                                   "fail_ratio": round(fail_ratio, 5)})
            log.info("step %d at %.1f sessions/s: %d requests, p95 %s ms, %.2f %% failed", k,
                     (k + 1) * plan.rate_per_step, requests, p95, 100 * fail_ratio)
            if plan.saturated(p95, fail_ratio) or step is None:
                return None
            self._step_mark = (step, total.num_requests, total.num_failures)
        return users, users
