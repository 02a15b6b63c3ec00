"""Direct load: the trace's calls as pre-built HTTP requests, sent by a light asyncio client.

The capacity measurements must push the server to saturation. On this 2-core machine a Locust
process spends milliseconds of CPU per call (its users build payloads and keep state) and tops out
near 600 trace requests/s, about half of what one server worker answers — Locust would measure
itself. So the measurements here use :mod:`twin.loadtest.httpload`: requests are built once, before
the clock starts (real logins, real tokens, real FUT bodies from the trace's sessions via
:mod:`loadtests.payloads`), and the client spends ~0.05 ms per request. Locust keeps the realism
runs: whole call sequences, apps and clinicians (``twin loadtest``).

Endpoints covered (:data:`DIRECT_ENDPOINTS`): every call of a citizen session, the apps' inbox
polls and the clinicians' reads — about 97 % of the peak hour's calls. The clinicians' writes (claim, assessment, complete,
message) change state that a pre-built request cannot follow; the calibration gives them the
service times of the measured writes, and says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from twin.capacity.calibrate import event_loop_cpu_s, event_loop_sleeps, thread_schedstat_s
from twin.loadtest.httpload import (
    _read_response,
    build_request,
    collector_paused,
    poisson_schedule,
    run_load,
    run_open_load,
)
from twin.server.auth import ACCESS_LIFETIME_S

DIRECT_ENDPOINTS = ("token", "refresh_context", "episodeofcare_search", "get_patient_procedures",
                    "servicerequest_read", "submit_measurement", "careteam_roster", "task_worklist",
                    "search_measurements", "message_poll")
TOKEN_PATH = "/auth/realms/{realm}/protocol/openid-connect/token"
FHIR = "application/fhir+json"
FORM = "application/x-www-form-urlencoded"


def _post_form(base: str, realm: str, fields: Mapping[str, str]) -> dict:
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(base + TOKEN_PATH.format(realm=realm), data=data, headers={"Content-Type": FORM})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@dataclass
class RequestPools:
    """Pre-built requests per endpoint; submissions are unique (each is a new session)."""

    host: str
    port: int
    by_endpoint: dict[str, list[bytes]]

    def endpoints(self) -> list[str]:
        return [e for e in DIRECT_ENDPOINTS if self.by_endpoint.get(e)]

    def sequence(self, endpoints: Sequence[str]) -> list[bytes]:
        """The request for each arrival: the next one of its endpoint's pool (cycled; submissions
        are never repeated — a repeat would be a resubmission, a different, cheaper request)."""
        next_of = dict.fromkeys(self.by_endpoint, 0)
        out = []
        for e in endpoints:
            pool = self.by_endpoint[e]
            k = next_of[e]
            if e == "submit_measurement" and k >= len(pool):
                raise ValueError(f"only {len(pool)} pre-built submissions; the run needs more")
            out.append(pool[k % len(pool)])
            next_of[e] = k + 1
        return out


def build_pools(base: str, sessions: pd.DataFrame, teams: Sequence[int], citizens: int = 150,
                submissions: int = 5000, seed: int = 0) -> RequestPools:
    """Log ``citizens`` of the trace's citizens and a nurse per team in, and build the requests.

    Citizens are those with sessions in ``sessions`` (the window's, so their episodes are active);
    each submission carries a real session's readings and answers (canonical values, docs/TRACE.md)
    under new identifiers."""
    from twin.loadtest.runner import loadtests_module

    payloads = loadtests_module("payloads")

    parsed = urllib.parse.urlsplit(base)
    host, port = parsed.hostname, parsed.port
    hostport = f"{host}:{port}"
    rng = np.random.default_rng(seed)
    rows = sessions.drop_duplicates("citizen_id")
    rows = rows.iloc[rng.permutation(len(rows))[:citizens]]
    questions = sorted(c.removeprefix("q_") for c in sessions.columns if c.startswith("q_"))
    pools: dict[str, list[bytes]] = {e: [] for e in DIRECT_ENDPOINTS}
    today = dt.date.today()
    session_rows = sessions.sample(n=submissions, replace=len(sessions) < submissions,
                                   random_state=seed).to_dict("records")
    citizen_ids = rows["citizen_id"].astype(int).tolist()
    tokens = {}
    for cid in citizen_ids:
        login = {"grant_type": "password", "username": f"citizen-{cid}", "password": "twin"}
        t = _post_form(base, "nemlogin", login)
        context = {"grant_type": "refresh_token", "refresh_token": t["refresh_token"], "patient_id": f"p-{cid}",
                   "episode_of_care_id": f"e-{cid}"}
        tokens[cid] = _post_form(base, "nemlogin", context)["access_token"]
        auth = {"Authorization": f"Bearer {tokens[cid]}"}
        pools["token"].append(build_request("POST", hostport, TOKEN_PATH.format(realm="nemlogin"),
                                            {"Content-Type": FORM}, urllib.parse.urlencode(login).encode()))
        pools["refresh_context"].append(build_request("POST", hostport, TOKEN_PATH.format(realm="nemlogin"),
                                                      {"Content-Type": FORM}, urllib.parse.urlencode(context).encode()))
        pools["episodeofcare_search"].append(build_request(
            "GET", hostport, f"/careplan/EpisodeOfCare?patient=Patient/p-{cid}&status=active", auth))
        pools["get_patient_procedures"].append(build_request(
            "POST", hostport, "/careplan/$get-patient-procedures", {**auth, "Content-Type": FHIR},
            json.dumps(payloads.patient_procedures(base, cid, today)).encode()))
        row = rows[rows["citizen_id"] == cid].iloc[0].to_dict()
        first = next(iter(payloads.session_readings(row)), "questionnaire")
        pools["servicerequest_read"].append(build_request("GET", hostport, f"/careplan/ServiceRequest/sr-{cid}-{first}",
                                                          auth))
        pools["message_poll"].append(build_request(
            "GET", hostport, f"/patient/Communication?recipient=Patient/p-{cid}&_count=20", auth))
        pools["search_measurements"].append(build_request(
            "POST", hostport, "/measurement/$search-measurements", {**auth, "Content-Type": FHIR},
            json.dumps(payloads.search_measurements(base, cid, payloads.now_iso())).encode()))
    by_citizen = set(citizen_ids)
    effective = payloads.now_iso()
    for row in session_rows:
        cid = int(row["citizen_id"])
        if cid not in by_citizen:  # send it as one of the logged-in citizens: same shape, their kit
            cid = citizen_ids[int(row["session_id"]) % len(citizen_ids)]
            row = {**rows[rows["citizen_id"] == cid].iloc[0].to_dict(), "session_id": row["session_id"]}
        body = payloads.submission(base, lambda _entry: f"urn:uuid:{uuid.uuid4()}", cid,
                                   payloads.session_readings(row), payloads.session_answers(row, questions),
                                   f"q-{row['cohort']}", effective)
        pools["submit_measurement"].append(build_request(
            "POST", hostport, "/measurement/$submit-measurement",
            {"Authorization": f"Bearer {tokens[cid]}", "Content-Type": FHIR}, json.dumps(body).encode()))
    for team in teams:
        try:
            t = _post_form(base, "ehealth", {"grant_type": "password", "username": f"nurse-{team}-0", "password": "twin"})
            t = _post_form(base, "ehealth", {"grant_type": "refresh_token", "refresh_token": t["refresh_token"],
                                             "care_team_id": f"ct-{team}"})
        except OSError:  # a team without a nurse account (none in the seed): skip it
            continue
        auth = {"Authorization": f"Bearer {t['access_token']}"}
        pools["task_worklist"].append(build_request(
            "GET", hostport, f"/task/Task?responsible=CareTeam/ct-{team}&status=ready&_sort=-priority"
                             "&_include=Task:focus", auth))
        pools["careteam_roster"].append(build_request(
            "GET", hostport, f"/careplan/EpisodeOfCare?team=CareTeam/ct-{team}&status=planned,active"
                             "&_include=EpisodeOfCare:condition&_count=100", auth))
    return RequestPools(host, port, pools)


class FreshPools:
    """Pre-built requests whose tokens outlive the run about to use them.

    A pre-built request carries an access token, which the server refuses once it expires
    (``ACCESS_LIFETIME_S``): a long capacity run (``twin capacity --budget 400``) would measure
    fast 401s instead of the endpoints. ``get(run_s)`` rebuilds the pools — new logins, new
    submissions — whenever a run of ``run_s`` seconds would end within ``margin_s`` of the oldest
    token's expiry."""

    def __init__(self, build: Callable[[], RequestPools], margin_s: float = 30.0) -> None:
        self.build, self.margin_s = build, margin_s
        self.pools, self.built_at, self.builds = build(), time.monotonic(), 1

    def get(self, run_s: float) -> RequestPools:
        if time.monotonic() - self.built_at + run_s > ACCESS_LIFETIME_S - self.margin_s:
            self.built_at = time.monotonic()  # the tokens' clock starts at the logins, not after them
            self.pools, self.builds = self.build(), self.builds + 1
        return self.pools


def direct_mix(mix: Mapping[str, float], pools: RequestPools) -> dict[str, float]:
    """The trace's endpoint mix restricted to what the pools can send, renormalised."""
    kept = {e: float(s) for e, s in mix.items() if e in pools.endpoints() and s > 0}
    total = sum(kept.values())
    if total <= 0:
        raise ValueError("no endpoint of the mix can be sent directly")
    return {e: s / total for e, s in kept.items()}


def endpoint_sequence(mix: Mapping[str, float], n: int, seed: int) -> np.ndarray:
    """``n`` endpoint names drawn independently from ``mix`` (seeded)."""
    names = list(mix)
    p = np.array([mix[e] for e in names], dtype=float)
    return np.array(names, dtype=object)[np.random.default_rng(seed).choice(len(names), size=n, p=p / p.sum())]


def open_run(pools: RequestPools, mix: Mapping[str, float], rate_per_s: float, duration_s: float,
             seed: int) -> pd.DataFrame:
    """Poisson arrivals at ``rate_per_s`` for ``duration_s``, endpoints drawn from ``mix``; one row per
    request: ``start_s`` (sent), ``due_s``, ``lag_ms``, ``end_s``, ``endpoint``, ``latency_ms``
    (from sent), ``status``, ``ok``."""
    due, phase = poisson_schedule([(duration_s, rate_per_s)], seed)
    endpoints = endpoint_sequence(mix, len(due), seed + 1)
    waited_before = client_runqueue_s()
    res = asyncio.run(run_open_load(pools.host, pools.port, pools.sequence(endpoints), schedule=(due, phase),
                                    warm_connections=warm_connections(rate_per_s)))
    waited_s = client_runqueue_s() - waited_before
    # What the server saw: when each request was written, and its time from then to the answer.
    # The client's lateness (a busy client, or waiting for a connection) is kept apart as lag_ms,
    # so a slow generator does not pass for a slow server.
    out = pd.DataFrame({"start_s": res.sent_s, "due_s": due, "endpoint": endpoints.astype(str),
                        "latency_ms": res.service_ms, "lag_ms": res.lag_ms, "status": res.status})
    out = out[np.isfinite(out["start_s"])].sort_values("start_s", kind="stable").reset_index(drop=True)
    out["end_s"] = out["start_s"] + out["latency_ms"] / 1000.0
    out["ok"] = ((out["status"] >= 200) & (out["status"] < 300)).astype(int)
    out.attrs["client_runqueue_s"] = waited_s
    return out


def warm_connections(rate_per_s: float) -> int:
    """Keep-alive connections to open before an open run starts: the requests in flight at
    ``rate_per_s`` with 10 ms each (Little's law, a generous latency), plus a few, at most 64."""
    return int(min(64, 4 + math.ceil(rate_per_s * 0.010)))


def client_runqueue_s() -> float:
    """Seconds this thread (the load generator's loop) was ready to run but waited for a CPU
    (the kernel's schedstat; 0 where there is none). Answers that arrive meanwhile are timestamped
    late: a busy machine, not a slow server — the pipeline reports it beside each run."""
    try:
        return thread_schedstat_s(os.getpid(), threading.get_native_id())[1]
    except (OSError, IndexError, ValueError):
        return 0.0


def single_client_run(pools: RequestPools, mix: Mapping[str, float], duration_s: float, seed: int,
                      warmup_s: float = 0.5) -> pd.DataFrame:
    """One client, one request at a time, for ``duration_s``: every request finds the server idle
    (no queueing) yet warm — the single-user baseline of load testing, and the calibration's
    measurement. One row per request as :func:`open_run` (``start_s`` from the run's start)."""
    endpoints = endpoint_sequence(mix, int(max(duration_s * 4000, 200)), seed)
    requests = pools.sequence(endpoints)

    async def go() -> list[tuple[float, float, int]]:
        reader, writer = await asyncio.open_connection(pools.host, pools.port)
        out = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for req in requests:
                t0 = loop.time()
                if t0 - start >= warmup_s + duration_s:
                    break
                writer.write(req)
                status = await _read_response(reader)
                out.append((t0 - start, (loop.time() - t0) * 1000.0, status))
        finally:
            writer.close()
        return out

    with collector_paused():  # the client's own GC pauses must not pass for the server's latency
        rows = asyncio.run(go())
    sent = len(rows)
    used = int((endpoints[:sent] == "submit_measurement").sum())
    pools.by_endpoint["submit_measurement"] = pools.by_endpoint["submit_measurement"][used:]
    out = pd.DataFrame(rows, columns=["start_s", "latency_ms", "status"])
    out["endpoint"] = endpoints[:sent].astype(str)
    out = out[out["start_s"] >= warmup_s].reset_index(drop=True)
    out["end_s"] = out["start_s"] + out["latency_ms"] / 1000.0
    out["ok"] = ((out["status"] >= 200) & (out["status"] < 300)).astype(int)
    return out


BUSY_LOOP_PATH = "/metadata"  # a static answer: the loop's own cost per request, hardly any of the app's
BUSY_LOOP_CLIENTS = 4  # enough that the loop always finds the next request waiting


def busy_loop_saving(host: str, port: int, pid: int, step_s: float = 0.5, warmup_s: float = 0.1,
                     rounds: int = 3) -> dict:
    """What a request costs the event loop less when the loop is busy than when it is alone.

    Alone (one client, one request at a time) the loop blocks in ``epoll_wait`` after every answer
    and the next request wakes it: a context switch, and on a virtual machine the wake-up of an
    idle virtual CPU; each request also has a loop iteration to itself. Kept busy, the loop finds
    the next request waiting and shares its iterations — a saturated server pays none of this, the
    single-client calibration pays it for every request. Measured on a near-free endpoint
    (``BUSY_LOOP_PATH``), so the difference is the loop's alone: CPU per request with one client
    less CPU per request with ``BUSY_LOOP_CLIENTS``; with the loop's sleeps per request in each.

    In ``rounds`` pairs of short windows, alternating which goes first, and the median of the
    pairs' differences: one pair of 1-s windows moved between 0.02 and 0.11 ms from one minute to
    the next on this machine (the machine's speed changes within seconds)."""
    request = [build_request("GET", f"{host}:{port}", BUSY_LOOP_PATH)]
    per_round: dict[str, list[float]] = {}
    for k in range(rounds):
        order = (("alone", 1), ("busy", BUSY_LOOP_CLIENTS))
        for label, clients in (order if k % 2 == 0 else order[::-1]):
            cpu0, sleeps0 = event_loop_cpu_s(pid), event_loop_sleeps(pid)
            res = asyncio.run(run_load(host, port, request, clients, step_s, warmup_s))
            sent = max(res.sent, 1)
            per_round.setdefault(f"{label}_ms", []).append(1000.0 * (event_loop_cpu_s(pid) - cpu0) / sent)
            per_round.setdefault(f"{label}_sleeps_per_request", []).append((event_loop_sleeps(pid) - sleeps0) / sent)
            per_round.setdefault(f"{label}_per_s", []).append(res.rps)
    out: dict = {key: float(np.median(v)) for key, v in per_round.items()}
    differences = np.array(per_round["alone_ms"]) - np.array(per_round["busy_ms"])
    out["saving_ms"] = max(float(np.median(differences)), 0.0)
    out["saving_ms_by_round"] = [float(d) for d in differences]
    return out


def closed_sweep(pools: RequestPools, mix: Mapping[str, float], concurrencies: Sequence[int], step_s: float,
                 seed: int, warmup_s: float = 0.5,
                 probe: Callable[[], Mapping[str, float]] | None = None) -> pd.DataFrame:
    """Closed loop at each concurrency N (N connections, each sending its next request when the last
    is answered): one row per N with throughput, mean/p50/p95 latency, errors — the points of a
    scalability (USL) fit, with N known exactly.

    ``probe`` reads the server's counters (e.g. its CPU seconds, its COMMITs); each row then also
    has their change over the step, per request sent (warm-up included, as the counters are):
    ``<counter>_per_request``."""
    rows = []
    for k, n in enumerate(concurrencies):
        count = int(max(step_s * 3000, 500))  # more than the server can answer in the step
        endpoints = endpoint_sequence(mix, count, seed + 10 + k)
        before = dict(probe()) if probe else {}
        res = asyncio.run(run_load(pools.host, pools.port, pools.sequence(endpoints), n, step_s, warmup_s))
        after = dict(probe()) if probe else {}
        lat = res.latencies_ms
        rows.append({"step": k, "concurrency": int(n), "throughput_per_s": res.rps, "offered_per_s": res.rps,
                     "requests": res.requests, "failed": res.errors,
                     "mean_ms": float(lat.mean()) if lat.size else np.nan,
                     "p50_ms": res.percentile_ms(50), "p95_ms": res.percentile_ms(95),
                     **{f"{c}_per_request": (after[c] - before[c]) / max(res.sent, 1) for c in before}})
        # the sweep consumed submissions from the front of the pool; drop them so none is sent twice
        used = int((endpoints[: res.sent] == "submit_measurement").sum())
        pools.by_endpoint["submit_measurement"] = pools.by_endpoint["submit_measurement"][used:]
    return pd.DataFrame(rows)
