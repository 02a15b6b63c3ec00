"""The citizen-app and clinician-app users, and the per-process replay they carry out.

Locust's users here are a **pool of workers, not the load**: each user takes the next due event of
its kind from this process's schedule (:mod:`loadtests.schedule`), sleeps until its time
(``at_s / speedup`` into the run) and makes that event's calls. Arrivals therefore follow the
trace whatever the server's latency (an open model); if every user is busy when an event is due,
the event starts late and the lag is counted and logged, so a too-small pool is visible.

Every request is named by its endpoint (``twin.api_calls.ENDPOINTS``, plus ``message_poll``), so
Locust's statistics are per endpoint, and carries ``context={"app": …}``, so
:class:`ReplayCounters` can count requests per citizen app (``clinician`` for the nurses).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import numpy as np
from locust import FastHttpUser, constant, task

from loadtests import payloads, schedule
from loadtests.shapes import StepPlan, due_s

log = logging.getLogger("loadtests")
TOKEN_PATH = "/auth/realms/{realm}/protocol/openid-connect/token"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FHIR = "application/fhir+json"
PRIORITY = {"triage_red": "asap", "triage_yellow": "urgent"}
TOKEN_MARGIN_S = 20.0  # refresh an access token this long before it expires (a request may queue)
LAG_LOG_EVERY_S = 10.0
LATE_S = 1.0  # an event starting more than this after its due time counts as late


# ------------------------------------------------------------------------------------ state
@dataclass
class Tokens:
    access: str
    refresh: str
    access_until: float  # time.monotonic() after which the access token is expired (minus a margin)
    refresh_until: float

    @classmethod
    def of(cls, body: dict) -> Tokens:
        now = time.monotonic()
        return cls(body["access_token"], body["refresh_token"], now + body["expires_in"] - TOKEN_MARGIN_S,
                   now + body["refresh_expires_in"] - TOKEN_MARGIN_S)

    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.access}"}


@dataclass
class ReplayCounters:
    """Per-app request counts and the schedule's lag, summed over processes (report_to_master)."""

    requests: Counter = field(default_factory=Counter)  # (app, endpoint) → requests
    failures: Counter = field(default_factory=Counter)  # (app, endpoint) → failed requests
    events: Counter = field(default_factory=Counter)  # event kind → events carried out
    skipped: Counter = field(default_factory=Counter)  # why an event could not be replayed → count
    late: int = 0  # events started more than LATE_S after their due time
    lag_max_s: float = 0.0
    lag_sum_s: float = 0.0

    def take(self) -> dict:
        """This process's counts since the last call, as plain data (and reset them)."""
        out = {"requests": [[a, e, n] for (a, e), n in self.requests.items()],
               "failures": [[a, e, n] for (a, e), n in self.failures.items()],
               "events": dict(self.events), "skipped": dict(self.skipped), "late": self.late,
               "lag_max_s": self.lag_max_s, "lag_sum_s": self.lag_sum_s}
        self.__init__()
        return out

    def add(self, data: dict) -> None:
        for a, e, n in data["requests"]:
            self.requests[(a, e)] += n
        for a, e, n in data["failures"]:
            self.failures[(a, e)] += n
        self.events.update(data["events"])
        self.skipped.update(data["skipped"])
        self.late += data["late"]
        self.lag_max_s = max(self.lag_max_s, data["lag_max_s"])
        self.lag_sum_s += data["lag_sum_s"]

    def summary(self) -> dict:
        apps = sorted({a for a, _ in self.requests})
        n_events = sum(self.events.values())
        return {
            "requests_per_app": {a: sum(n for (b, _), n in self.requests.items() if b == a) for a in apps},
            "requests_per_app_endpoint": [{"app": a, "endpoint": e, "requests": n, "failures": self.failures[(a, e)]}
                                          for (a, e), n in sorted(self.requests.items())],
            "events": dict(self.events), "skipped_events": dict(self.skipped),
            "late_events": self.late, "lag_max_s": round(self.lag_max_s, 3),
            "lag_mean_s": round(self.lag_sum_s / n_events, 4) if n_events else 0.0,
        }


COUNTERS = ReplayCounters()


def count_request(name: str, context: dict | None = None, exception=None, **_kw) -> None:
    """Locust ``request`` listener: requests (and failures) per app and endpoint."""
    app = (context or {}).get("app")
    if app is not None:
        COUNTERS.requests[(app, name)] += 1
        if exception is not None:
            COUNTERS.failures[(app, name)] += 1


@dataclass
class Options:
    """The replay's settings (from locustfile command-line options or the environment)."""

    trace_dir: Path
    window: str = "peak-hour"
    speedup: float = 1.0
    seed: int | None = None  # app assignment and poll phases; default: the scenario's run.seed
    scenario: Path | None = None  # resolved scenario beside the trace (for apps and questions)
    step: StepPlan | None = None
    run_tag: str = ""
    message_polls: bool = True  # the apps' background inbox polls (not in the trace: off for model comparisons)
    part: schedule.Part = field(default_factory=schedule.Part)


class Replay:
    """One process's schedule and the apps' state (tokens, caches, claimed Tasks)."""

    def __init__(self, opts: Options, base_url: str) -> None:
        from twin.apps import assign_apps
        from twin.scenario import load_scenario

        self.opts, self.base = opts, base_url.rstrip("/")
        trace = schedule.load_trace(opts.trace_dir)
        scenario_path = opts.scenario or Path(opts.trace_dir).parent / "scenario.toml"
        scenario = load_scenario(scenario_path)
        self.seed = opts.seed if opts.seed is not None else scenario.run.seed
        self.questions = {c.name: tuple(scenario.regimes[c.regime].questions) for c in scenario.cohorts}
        self.apps = scenario.apps.vendors
        ids = trace.citizens["citizen_id"].to_numpy()
        app_index = assign_apps(ids, scenario.apps, self.seed)
        self.app_of = dict(zip(ids.tolist(), app_index.tolist(), strict=True))
        self.window = schedule.resolve_window(opts.window, trace)
        part = opts.part
        if opts.step is None:
            citizen = schedule.citizen_events(trace, self.window, part)
            polls = {c: self.apps[a].message_poll_min for c, a in self.app_of.items()
                     if self.apps[a].message_poll_min is not None} if opts.message_polls else {}
            self.citizen_queue = schedule.merge(citizen, schedule.poll_events(trace, self.window, polls, self.seed,
                                                                              part))
            self.clinician_queue = iter(schedule.clinician_events(trace, self.window, part))
            wanted = {e.key for e in citizen}
        else:
            # Step load: trace sessions of the window, cycled, at the plan's arrival times; this
            # worker takes every count-th arrival.
            in_window = schedule.citizen_events(trace, self.window)
            order = [e.key for e in in_window if e.kind == schedule.SESSION_START]
            if not order:
                raise ValueError(f"window {opts.window}: no sessions start in it, nothing to step with")
            self.step_order = order
            arrivals = ((t, j) for j, t in enumerate(opts.step.arrivals()) if j % part.count == part.index)
            # the speedup does not apply to a step plan: its times are already run seconds
            self.citizen_queue = (schedule.Event(t * opts.speedup, "step_session", j) for t, j in arrivals)
            self.clinician_queue = iter(())
            wanted = set(order)
        s = trace.sessions[trace.sessions["session_id"].isin(wanted)]
        self.sessions = {int(r["session_id"]): r for r in s.to_dict("records")}
        a = trace.actions
        self.actions = {int(r["action_id"]): r for r in a[a["start_time"].notna()].to_dict("records")}
        self.team_citizens = self._team_citizens(trace)
        self.citizen_tokens: dict[int, Tokens] = {}
        self.nurse_tokens: dict[tuple[int, int], Tokens] = {}
        self.procedures_read: set[int] = set()
        self.uploaded: set[int] = set()  # sessions uploaded (201) in this replay
        self.uploaded_citizens: set[int] = set()
        self.claims: dict[int, tuple] = {}  # action → task id, triage id, version, token, citizen
        self.t0 = time.monotonic()
        self._last_lag_log = 0.0

    def _team_citizens(self, trace: schedule.Trace) -> dict[int, np.ndarray]:
        """Citizens a team follows during the window (whom routine review looks at)."""
        c = trace.citizens
        day = (self.window.start - trace.run_start).total_seconds() / schedule.S_PER_DAY
        c = c[(c["enrol_day"] <= day) & (c["exit_day"] > day)]
        return {int(t): np.sort(g["citizen_id"].to_numpy()) for t, g in c.groupby("team_id")}

    def claimed_task_ids(self) -> set[str]:
        """Tasks claimed here and not yet completed (their claim may still be in flight)."""
        return {c[0] for c in self.claims.values()}

    def app_name(self, citizen_id: int) -> str:
        return self.apps[self.app_of[citizen_id]].name

    def due_in_s(self, event: schedule.Event) -> float:
        return self.t0 + due_s(event.at_s, self.opts.speedup) - time.monotonic()

    def note_lag(self, lag_s: float) -> None:
        COUNTERS.lag_sum_s += max(lag_s, 0.0)
        COUNTERS.lag_max_s = max(COUNTERS.lag_max_s, lag_s)
        if lag_s > LATE_S:
            COUNTERS.late += 1
            now = time.monotonic()
            if now - self._last_lag_log > LAG_LOG_EVERY_S:
                self._last_lag_log = now
                log.warning("replay is behind its schedule: an event started %.1f s late (%d late so far); "
                            "more users (-u) or a smaller speedup keep up", lag_s, COUNTERS.late)


REPLAY: Replay | None = None


def start_replay(opts: Options, base_url: str) -> Replay:
    global REPLAY
    REPLAY = Replay(opts, base_url)
    return REPLAY


# ------------------------------------------------------------------------------------- users
class _AppUser(FastHttpUser):
    """What both apps share: taking due events, logging in, naming and counting requests."""

    abstract = True
    wait_time = constant(0)
    app_label = "?"

    def next_event(self):
        raise NotImplementedError

    @task
    def carry_out_next_event(self) -> None:
        replay = REPLAY
        event = self.next_event() if replay is not None else None
        if event is None:
            gevent.sleep(1.0)  # schedule done (the shape ends the run) or not yet built
            return
        wait_s = replay.due_in_s(event)
        if wait_s > 0:
            gevent.sleep(wait_s)
        replay.note_lag(-wait_s)
        COUNTERS.events[event.kind] += 1
        self.handle(replay, event)

    def handle(self, replay: Replay, event: schedule.Event) -> None:
        raise NotImplementedError

    def call(self, endpoint: str, method: str, path: str, app: str, ok: tuple[int, ...] = (200,), **kw):
        """One request named by its endpoint; a status outside ``ok`` is a failure with the
        server's OperationOutcome code, so the statistics say why."""
        with self.client.request(method, path, name=endpoint, context={"app": app}, catch_response=True,
                                 **kw) as r:
            if r.status_code not in ok:
                r.failure(f"{r.status_code} {_outcome_code(r)}")
            return r

    def login(self, realm: str, username: str, app: str) -> Tokens | None:
        r = self.call("token", "POST", TOKEN_PATH.format(realm=realm), app, headers=FORM,
                      data=urllib.parse.urlencode({"grant_type": "password", "username": username,
                                                   "password": "twin", "client_id": app}))
        return Tokens.of(r.json()) if r.status_code == 200 else None

    def rescope(self, realm: str, tokens: Tokens, app: str, **context) -> Tokens | None:
        r = self.call("refresh_context", "POST", TOKEN_PATH.format(realm=realm), app, headers=FORM,
                      data=urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": tokens.refresh,
                                                   **context}))
        return Tokens.of(r.json()) if r.status_code == 200 else None

    def fresh(self, realm: str, username: str, tokens: Tokens | None, app: str, **context) -> Tokens | None:
        """A usable token, as an app keeps one: as is, refreshed, or by logging in again."""
        now = time.monotonic()
        if tokens is not None and now < tokens.access_until:
            return tokens
        if tokens is not None and now < tokens.refresh_until:
            return self.rescope(realm, tokens, app, **context)
        t = self.login(realm, username, app)
        return self.rescope(realm, t, app, **context) if t is not None and context else t


def _outcome_code(r) -> str:
    try:
        return r.json()["issue"][0]["details"]["coding"][0]["code"]
    except Exception:  # noqa: BLE001 - any non-OperationOutcome body: report the start of the text
        return (r.text or "")[:80]


class CitizenAppUser(_AppUser):
    """A citizen's app: opens, logs in, reads the todo list and thresholds (as its vendor does),
    uploads the session's real readings and answers, and polls the inbox in the background."""

    weight = 10

    def next_event(self):
        return next(REPLAY.citizen_queue, None)

    def handle(self, replay: Replay, event: schedule.Event) -> None:
        if event.kind == schedule.POLL:
            self.poll(replay, event.key)
            return
        if event.kind == "step_session":
            j = event.key
            n = len(replay.step_order)
            row = replay.sessions[replay.step_order[j % n]]
            tag = f"{replay.opts.run_tag}/step{j // n}"
            if self.open_app(replay, row):
                self.upload(replay, row, tag, duplicate=False)
            return
        row = replay.sessions[event.key]
        if event.kind == schedule.SESSION_START:
            self.open_app(replay, row)
        else:
            self.upload(replay, row, replay.opts.run_tag, duplicate=event.kind == schedule.DUPLICATE)

    def open_app(self, replay: Replay, row: dict) -> bool:
        cid = int(row["citizen_id"])
        app = replay.app_name(cid)
        tokens = self.login("nemlogin", f"citizen-{cid}", app)
        if tokens is None:
            return False
        tokens = self.rescope("nemlogin", tokens, app, patient_id=f"p-{cid}", episode_of_care_id=f"e-{cid}")
        if tokens is None:
            return False
        replay.citizen_tokens[cid] = tokens
        h = tokens.bearer()
        self.call("episodeofcare_search", "GET", f"/careplan/EpisodeOfCare?patient=Patient/p-{cid}&status=active",
                  app, headers=h)
        if replay.apps[replay.app_of[cid]].rereads_procedures or cid not in replay.procedures_read:
            body = payloads.patient_procedures(replay.base, cid, dt.date.today())
            self.call("get_patient_procedures", "POST", "/careplan/$get-patient-procedures", app,
                      headers={**h, "Content-Type": FHIR}, data=json.dumps(body))
            first = next(iter(payloads.session_readings(row)), "questionnaire")
            self.call("servicerequest_read", "GET", f"/careplan/ServiceRequest/sr-{cid}-{first}", app, headers=h)
            replay.procedures_read.add(cid)
        return True

    def citizen_tokens(self, replay: Replay, cid: int, app: str) -> Tokens | None:
        """The citizen's usable token, kept for their next call. An expired one is renewed into the
        citizen's own context: a plain refresh would lose the context (403 on the next call)."""
        tokens = self.fresh("nemlogin", f"citizen-{cid}", replay.citizen_tokens.get(cid), app,
                            patient_id=f"p-{cid}", episode_of_care_id=f"e-{cid}")
        if tokens is not None:
            replay.citizen_tokens[cid] = tokens
        return tokens

    def upload(self, replay: Replay, row: dict, tag: str, duplicate: bool) -> None:
        cid, sid = int(row["citizen_id"]), int(row["session_id"])
        app = replay.app_name(cid)
        tokens = self.citizen_tokens(replay, cid, app)
        if tokens is None:
            return
        body = payloads.submission(replay.base, lambda entry: payloads.submission_key(tag, sid, entry), cid,
                                   payloads.session_readings(row),
                                   payloads.session_answers(row, replay.questions[str(row["cohort"])]),
                                   f"q-{row['cohort']}", payloads.now_iso())
        original_replayed = sid in replay.uploaded
        with self.client.request("POST", "/measurement/$submit-measurement", name="submit_measurement",
                                 context={"app": app}, catch_response=True, data=json.dumps(body),
                                 headers={**tokens.bearer(), "Content-Type": FHIR}) as r:
            stored_before = r.status_code == 200 and r.headers.get("X-Twin-Duplicate") == "true"
            if r.status_code not in (200, 201):
                r.failure(f"{r.status_code} {_outcome_code(r)}")
            elif duplicate and original_replayed and not stored_before:
                r.failure("a duplicate upload was stored as new: the server's idempotency failed")
            elif not duplicate and stored_before:
                r.failure("the server already holds this session: replayed twice into one database? "
                          "(give another --run-tag)")
        if not duplicate and r.status_code == 201:
            replay.uploaded.add(sid)
            replay.uploaded_citizens.add(cid)

    def poll(self, replay: Replay, cid: int) -> None:
        app = replay.app_name(cid)
        tokens = self.citizen_tokens(replay, cid, app)
        if tokens is None:
            return
        self.call("message_poll", "GET", f"/patient/Communication?recipient=Patient/p-{cid}&_count=20", app,
                  headers=tokens.bearer())


class ClinicianAppUser(_AppUser):
    """A nurse's app: the worklist, claiming and assessing a red or yellow alert, and routine review
    of the team's citizens (FUT calls 9–13). Nurses log in once and re-scope per team and patient."""

    weight = 1
    APP = "clinician"

    def next_event(self):
        return next(REPLAY.clinician_queue, None)

    def handle(self, replay: Replay, event: schedule.Event) -> None:
        action = replay.actions[event.key]
        team, nurse = int(action["team_id"]), max(int(action["nurse"]), 0)
        if event.kind == schedule.TRIAGE_START:
            self.triage_start(replay, event.key, action, team, nurse)
        elif event.kind == schedule.TRIAGE_END:
            self.triage_end(replay, event.key, action, team, nurse)
        elif event.kind == schedule.REVIEW_START:
            t = self.team_token(replay, team, nurse)
            if t is not None:
                self.call("careteam_roster", "GET", f"/careplan/EpisodeOfCare?team=CareTeam/ct-{team}"
                          "&status=planned,active&_include=EpisodeOfCare:condition&_count=100", self.APP,
                          headers=t.bearer())
        else:  # one citizen of a routine review block
            followed = replay.team_citizens.get(team)
            if followed is None or not len(followed):
                COUNTERS.skipped["review: team follows nobody"] += 1
                return
            cid = int(followed[(event.key * 7919 + event.sub) % len(followed)])  # spread over the team's citizens
            self.look_at_citizen(replay, team, nurse, cid)

    def team_token(self, replay: Replay, team: int, nurse: int) -> Tokens | None:
        """The nurse's token re-scoped to her team (refresh_context; a login when she has none)."""
        key = (team, nurse)
        tokens = replay.nurse_tokens.get(key)
        if tokens is None or time.monotonic() >= tokens.refresh_until:
            tokens = self.login("ehealth", f"nurse-{team}-{nurse}", self.APP)
            if tokens is None:
                return None
        scoped = self.rescope("ehealth", tokens, self.APP, care_team_id=f"ct-{team}")
        if scoped is not None:
            replay.nurse_tokens[key] = scoped
        return scoped

    def look_at_citizen(self, replay: Replay, team: int, nurse: int, cid: int) -> None:
        tokens = replay.nurse_tokens.get((team, nurse)) or self.team_token(replay, team, nurse)
        if tokens is None:
            return
        scoped = self.rescope("ehealth", tokens, self.APP, care_team_id=f"ct-{team}", patient_id=f"p-{cid}",
                              episode_of_care_id=f"e-{cid}")
        if scoped is None:
            return
        body = payloads.search_measurements(replay.base, cid, payloads.now_iso())
        self.call("search_measurements", "POST", "/measurement/$search-measurements", self.APP,
                  headers={**scoped.bearer(), "Content-Type": FHIR}, data=json.dumps(body))

    def find_task(self, replay: Replay, team: int, cid: int, priority: str, tokens: Tokens) -> dict | None:
        """The Task the nurse takes: the alert's own (the citizen's oldest ready Task of this
        priority) from the team's worklist, or, if the first page does not hold it, from the
        citizen's own list (the nurse opens the citizen). When the alert's upload lay before the
        window, its Task is not in this database: she takes the worklist's top Task of the same
        priority instead — the same calls and the same work for the server."""
        base = f"/task/Task?responsible=CareTeam/ct-{team}&status=ready&_sort=-priority&_include=Task:focus"
        claimed = replay.claimed_task_ids()
        fallback = None
        for path in (base, base + f"&patient=Patient/p-{cid}"):
            r = self.call("task_worklist", "GET", path, self.APP, headers=tokens.bearer())
            if r.status_code != 200:
                return None
            tasks = [e["resource"] for e in r.json().get("entry", [])
                     if e["resource"]["resourceType"] == "Task" and e["resource"].get("priority") == priority
                     and e["resource"]["id"] not in claimed]
            own = [t for t in tasks if t["for"]["reference"].endswith(f"/Patient/p-{cid}")]
            if own:
                return min(own, key=lambda t: (t.get("authoredOn", ""), t["id"]))
            fallback = fallback or (tasks[0] if tasks else None)
            if cid not in replay.uploaded_citizens:
                break  # her alert's upload was not replayed: no use opening the citizen
        if fallback is not None:
            COUNTERS.skipped["triage: took the worklist's top Task (the alert's upload lay before the window)"] += 1
        return fallback

    def triage_start(self, replay: Replay, action_id: int, action: dict, team: int, nurse: int) -> None:
        tokens = self.team_token(replay, team, nurse)
        if tokens is None:
            return
        task_ = self.find_task(replay, team, int(action["citizen_id"]), PRIORITY[str(action["kind"])], tokens)
        if task_ is None:
            COUNTERS.skipped["triage: no ready Task of this priority (uploads before the window, or not triaged yet)"] += 1
            return
        cid = int(task_["for"]["reference"].rsplit("/p-", 1)[1])
        # Triage writes each Task at version 1; a search may leave meta.versionId out.
        version = int(task_.get("meta", {}).get("versionId", 1))
        r = self.call("task_claim", "PATCH", f"/task/Task/{task_['id']}", self.APP,
                      headers={**tokens.bearer(), "Content-Type": "application/json-patch+json",
                               "If-Match": f'W/"{version}"'},
                      data=json.dumps(payloads.claim(f"pr-{team}-{nurse}", replay.base)))
        if r.status_code != 200:
            return
        triage_id = task_["focus"]["reference"].rsplit("/", 1)[1]
        etag = r.headers.get("ETag") or f'W/"{version + 1}"'
        replay.claims[action_id] = (task_["id"], triage_id, int(etag.strip('W/"')), tokens, cid)
        self.look_at_citizen(replay, team, nurse, cid)

    def triage_end(self, replay: Replay, action_id: int, action: dict, team: int, nurse: int) -> None:
        claim = replay.claims.pop(action_id, None)
        if claim is None:
            COUNTERS.skipped["triage end: its claim failed or was not replayed"] += 1
            return
        task_id, triage_id, version, tokens, cid = claim
        tokens = self.team_token(replay, team, nurse) if time.monotonic() >= tokens.access_until else tokens
        if tokens is None:
            return
        h = {**tokens.bearer(), "Content-Type": FHIR}
        now = payloads.now_iso()
        practitioner = f"pr-{team}-{nurse}"
        self.call("clinicalimpression_create", "POST", "/task/ClinicalImpression", self.APP, ok=(201,), headers=h,
                  data=json.dumps(payloads.assessment(replay.base, cid, triage_id, practitioner, now)))
        self.call("task_complete", "PATCH", f"/task/Task/{task_id}", self.APP,
                  headers={**tokens.bearer(), "Content-Type": "application/json-patch+json",
                           "If-Match": f'W/"{version}"'}, data=json.dumps(payloads.COMPLETE))
        if str(action["kind"]) == "triage_red":
            self.call("communication_create", "POST", "/patient/Communication", self.APP, ok=(201,), headers=h,
                      data=json.dumps(payloads.message_to_citizen(replay.base, cid, practitioner, now)))
