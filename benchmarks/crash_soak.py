"""Crash soak: submissions from concurrent clients, SIGKILL of the server mid-run, restart, verify.

    python benchmarks/crash_soak.py --rounds 20 [--database postgresql://…] [--clients 6]

One round: start ``twin serve`` on the database (seeded from pilot-100 once), let ``clients``
citizens submit back to back, SIGKILL the server a random 0.3-1.5 s after the first 10 answers, restart it on the same
database, wait (bounded) until its triage worker has drained the outbox, and check:

- every submission answered 201 (or 200-duplicate) is stored — each of its locations resolves over
  HTTP — exactly once (one row per entry identifier, one Provenance naming them), triaged exactly once (one
  triage ClinicalImpression naming its resources, one Task on that), and audited (an audit row of
  action C for its patient: the audit rows of ``$submit-measurement`` per patient equal its stored
  submissions);
- nothing is half-written: every Provenance's targets exist, every Observation and
  QuestionnaireResponse has a Provenance, the outbox is empty;
- no duplicates.

Submissions whose answer was lost in the crash may or may not be stored; when stored they must
pass the same checks. Prints per round and in total: answered, lost (answered but not stored),
duplicated, unanswered-but-stored, and broken invariants. Exit status 1 if anything was lost,
duplicated or broken. ``tests/server/test_crash_safety.py`` runs three short rounds in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server.dbprobe import Probe  # noqa: E402
from twin.loadtest.runner import stop_process  # noqa: E402
from twin.server import audit_index  # noqa: E402
from twin.server import fhir as fr  # noqa: E402

TOKEN_PATH = "/auth/realms/nemlogin/protocol/openid-connect/token"
SUBMIT = "/measurement/$submit-measurement"
SECRET = "crash-soak-" + "x" * 40
# citizens of pilot-100 that no other test module submits for (tests use 0-29 sparsely; these are free)
CITIZENS = (40, 41, 42, 43, 44, 45, 46, 47, 48, 49)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``twin serve`` in a subprocess; stderr kept in a file (read to look for CPR numbers, errors)."""

    def __init__(self, database: str, port: int, log_path: Path, log_level: str = "info") -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        env = {**os.environ, "TWIN_SECRET": SECRET, "TWIN_NIGHTLY_JOBS": "0"}
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "twin.cli", "serve", "--database", database,
                                         "--port", str(port), "--base-url", self.base_url, "--log-level", log_level],
                                        cwd=ROOT, env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twin serve exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # waiting for a real process to listen
        self.kill()
        raise RuntimeError("twin serve did not become healthy in 30 s")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@dataclass
class Sent:
    citizen: int
    idents: list[str]
    status: int | None = None  # None: no answer (the server died first)
    locations: list[str] = field(default_factory=list)


def submission_body(base_url: str, n: int, rng: random.Random) -> dict:
    values = {"spo2": rng.choice((84, 90, 95, 97)), "pulse": rng.choice((60, 80, 125)), "weight": 72.0}
    srs = {m: f"sr-{n}-{m}" for m in values} | {"questionnaire": f"sr-{n}-questionnaire"}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return fr.submission(fr.Refs(base_url), str(uuid.uuid4()), f"p-{n}", f"e-{n}", srs, "q-copd", values,
                         {"dyspnoea": rng.random() < 0.3, "cough": False, "sputum": False}, now)


def _client_loop(base_url: str, n: int, token: str, stop: threading.Event, out: list[Sent], seed: int) -> None:
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    with httpx.Client(base_url=base_url, timeout=5.0) as c:
        while not stop.is_set():
            body = submission_body(base_url, n, rng)
            sent = Sent(n, [e["fullUrl"] for e in body["parameter"][0]["resource"]["entry"]])
            out.append(sent)
            try:
                r = c.post(SUBMIT, json=body, headers=headers)
            except httpx.HTTPError:
                return  # the server is gone
            sent.status = r.status_code
            if r.status_code in (200, 201):
                sent.locations = [e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"]]


@dataclass
class RoundResult:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    unanswered_stored: int = 0
    broken: list[str] = field(default_factory=list)

    def add(self, other: RoundResult) -> None:
        self.sent += other.sent
        self.answered += other.answered
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.unanswered_stored += other.unanswered_stored
        self.broken += other.broken


def audit_submissions(probe: Probe, patients: list[str]) -> Counter:
    """Audit rows of ``$submit-measurement`` per patient, whatever the audit tables' layout."""
    marks = ",".join("?" * len(patients))
    if "audit_patient" in probe.tables():
        # SQLite's requests hold their keys (a JSON array in the request row; the by-patient index
        # is a copy), PostgreSQL's are in audit_patient
        keys = (f"({audit_index.REQUEST_KEYS_SQL})" if "audit_patient_log" in probe.tables() else "audit_patient")
        rows = probe.fetch(f"SELECT p.patient, COUNT(*) FROM {keys} p JOIN audit_request r ON r.id = p.request "
                           f"WHERE r.action = 'C' AND r.subtype = '$submit-measurement' AND p.patient IN ({marks}) "
                           "GROUP BY p.patient", *patients)
    else:
        rows = probe.fetch(f"SELECT patient, COUNT(*) FROM audit WHERE action = 'C' AND subtype = '$submit-measurement' "
                           f"AND patient IN ({marks}) GROUP BY patient", *patients)
    return Counter({p: int(n) for p, n in rows})


def verify(probe: Probe, base_url: str, sent: list[Sent], tokens: dict[int, str], citizens: list[int]) -> RoundResult:
    res = RoundResult(sent=len(sent))
    answered = [s for s in sent if s.status in (200, 201)]
    res.answered = len(answered)
    res.broken += [f"answer {s.status} for a valid submission" for s in sent if s.status not in (None, 200, 201)]
    patients = [f"p-{n}" for n in citizens]
    marks = ",".join("?" * len(patients))
    provenances = probe.fetch(f"SELECT ident, body FROM resources WHERE type = 'Provenance' AND patient IN ({marks})",
                              *patients)
    # a stored entry's client identifier: the Provenance's target names it (older versions kept it
    # in the row's ident column; a row no Provenance names falls back to its body's identifier)
    named = {t["reference"]: (t.get("identifier") or {}).get("value")
             for _ident, body in provenances for t in json.loads(body).get("target", [])}

    refs = fr.Refs(base_url)

    def client_ident(type_: str, id_: str, ident: str | None, body: str) -> str | None:
        return ident or named.get(refs.url(type_, id_)) or ((json.loads(body).get("identifier") or [{}])[0].get("value"))

    # every row of a submitted resource type for these citizens, by identifier
    rows = [(t, i, client_ident(t, i, ident, body)) for t, i, ident, body in probe.fetch(
        f"SELECT type, id, ident, body FROM resources WHERE type IN ('Observation', 'QuestionnaireResponse') "
        f"AND patient IN ({marks})", *patients)]
    by_ident = Counter(r[2] for r in rows)
    url_of = {r[2]: refs.url(r[0], r[1]) for r in rows}
    res.duplicated += sum(1 for n in by_ident.values() if n > 1)
    prov_by_ident = Counter(p[0] for p in provenances)
    res.duplicated += sum(1 for n in prov_by_ident.values() if n > 1)
    targets = Counter()
    known_urls = set(url_of.values())
    for _ident, body in provenances:
        for t in json.loads(body).get("target", []):
            targets[t["reference"]] += 1
            if t["reference"] not in known_urls:
                res.broken.append(f"Provenance target {t['reference']} does not exist")
    res.broken += [f"{url} has no Provenance" for url in known_urls if targets[url] != 1]
    # triage: ClinicalImpressions naming the submission's resources, and a Task on each
    triages = probe.fetch(f"SELECT id, body FROM resources WHERE type = 'ClinicalImpression' AND code = 'TriagingResult' "
                          f"AND patient IN ({marks})", *patients)
    triaged = Counter()
    for _id, body in triages:
        items = [i["reference"] for inv in json.loads(body).get("investigation", []) for i in inv.get("item", [])]
        if items:
            triaged[items[0]] += 1
    focus = Counter()
    for (body,) in probe.fetch(f"SELECT body FROM resources WHERE type = 'Task' AND patient IN ({marks})", *patients):
        focus[(json.loads(body).get("focus") or {}).get("reference", "").rsplit("/", 1)[-1]] += 1
    res.broken += [f"triage ClinicalImpression/{i} has {focus[i]} Tasks" for i, _ in triages if focus[i] != 1]
    stored_here = 0
    for s in sent:
        present = [by_ident[i] for i in s.idents]
        if s.status in (200, 201):
            if not all(present):
                res.lost += 1
                continue
        elif not any(present):
            continue
        elif not all(present):
            res.broken.append(f"unanswered submission {s.idents[0]} half stored: {present}")
            continue
        else:
            res.unanswered_stored += 1
        stored_here += 1
        if prov_by_ident[f"provenance:{s.idents[0]}"] != 1:
            res.broken.append(f"submission {s.idents[0]} has {prov_by_ident[f'provenance:{s.idents[0]}']} Provenances")
        first = url_of[s.idents[0]]
        if triaged[first] != 1:
            res.broken.append(f"submission {s.idents[0]} triaged {triaged[first]} times")
    # audited: the $submit-measurement audit rows of each citizen equal its stored submissions
    stored_per_patient = Counter(r[0] for r in probe.fetch(
        f"SELECT patient FROM resources WHERE type = 'QuestionnaireResponse' AND patient IN ({marks})", *patients))
    audited = audit_submissions(probe, patients)
    for p in patients:
        if audited[p] != stored_per_patient[p]:
            res.broken.append(f"{p}: {stored_per_patient[p]} submissions stored, {audited[p]} audited")
    if probe.scalar("SELECT COUNT(*) FROM outbox"):
        res.broken.append("the outbox is not empty after the drain")
    # the locations of answered submissions resolve over HTTP
    with httpx.Client(base_url=base_url, timeout=10.0) as c:
        for s in answered:
            if not s.locations:
                continue
            headers = {"Authorization": f"Bearer {tokens[s.citizen]}"}
            for url in s.locations:
                r = c.get(url.replace(base_url, ""), headers=headers)
                if r.status_code != 200:
                    res.broken.append(f"{url}: {r.status_code}")
    return res


def _login(base_url: str, n: int) -> str:
    r = httpx.post(base_url + TOKEN_PATH, data={"grant_type": "password", "username": f"citizen-{n}", "password": "twin"},
                   timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def run_round(database: str, port: int, log_path: Path, citizens: list[int], rng: random.Random,
              kill_after: tuple[float, float] = (0.3, 1.5), drain_timeout: float = 30.0,
              min_answered: int = 10) -> RoundResult:
    server = ServerProcess(database, port, log_path)
    try:
        tokens = {n: _login(server.base_url, n) for n in citizens}
        stop, sent_lists, threads = threading.Event(), [], []
        for k, n in enumerate(citizens):
            out: list[Sent] = []
            sent_lists.append(out)
            t = threading.Thread(target=_client_loop, args=(server.base_url, n, tokens[n], stop, out, rng.randrange(2**32) + k),
                                 daemon=True)
            threads.append(t)
            t.start()
        deadline = time.monotonic() + 20  # a loaded machine may need a while for the first answers
        while (sum(1 for out in sent_lists for s in out if s.status is not None) < min_answered
               and time.monotonic() < deadline):
            time.sleep(0.02)
        time.sleep(rng.uniform(*kill_after))  # let the clients run, then crash the server mid-flight
    finally:
        server.kill()
    stop.set()
    for t in threads:
        t.join(15)
    sent = [s for out in sent_lists for s in out]
    restarted = ServerProcess(database, port, log_path)
    try:
        with Probe(database) as probe:
            probe.quiet(drain_timeout)
            tokens = {n: _login(restarted.base_url, n) for n in citizens}
            return verify(probe, restarted.base_url, sent, tokens, citizens)
    finally:
        restarted.stop()


def prepare_database(database: str | None, workdir: Path, base_url: str) -> tuple[str, callable]:
    """A fresh pilot-100 database (SQLite file in ``workdir``, or a new PostgreSQL database) and its cleanup."""
    from twin.scenario import load_scenario
    from twin.seed import seed

    scenario = load_scenario(ROOT / "scenarios" / "pilot-100.toml")
    if database is None or database.startswith("sqlite"):
        url = database or f"sqlite:///{workdir / 'crash.db'}"
        seed(scenario, url, base_url)
        return url, lambda: None
    import asyncpg

    admin = database
    name = f"twin_crash_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def sql(statement: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(sql(f"CREATE DATABASE {name}"))
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    seed(scenario, url, base_url)
    return url, lambda: asyncio.run(sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=6, help="concurrent citizens submitting (at most 10)")
    ap.add_argument("--database", default=None,
                    help="sqlite:///file (default: a temporary file) or a PostgreSQL admin URL "
                         "(a fresh database is created on that server and dropped afterwards)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    total = RoundResult()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()  # one port for all rounds: the seed's references name it
        database, cleanup = prepare_database(args.database, Path(tmp), f"http://127.0.0.1:{port}")
        try:
            for k in range(args.rounds):
                started = time.monotonic()
                res = run_round(database, port, Path(tmp) / "server.log", list(CITIZENS[:args.clients]), rng)
                total.add(res)
                print(f"round {k + 1}: sent {res.sent}, answered {res.answered}, lost {res.lost}, duplicated "
                      f"{res.duplicated}, stored without answer {res.unanswered_stored}, broken {len(res.broken)} "
                      f"({time.monotonic() - started:.1f} s)", flush=True)
                for b in res.broken[:10]:
                    print("   ", b)
        finally:
            cleanup()
    print(f"total over {args.rounds} rounds: sent {total.sent}, answered {total.answered}, lost {total.lost}, "
          f"duplicated {total.duplicated}, stored without answer {total.unanswered_stored}, broken {len(total.broken)}")
    return 1 if total.lost or total.duplicated or total.broken else 0


if __name__ == "__main__":
    sys.exit(main())
