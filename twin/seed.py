"""``twin seed``: load a scenario's population into the service's database.

The citizens are drawn with the same random streams as ``twin run`` (the same seed gives the same
citizens, organisations, care teams and thresholds as the trace), and every id is derived from the
trace's ids, so a load test can go from a trace row to the API without a lookup:

| resource | id |
|---|---|
| Organization | ``org-<municipality or region code>`` |
| CareTeam | ``ct-<team_id>`` |
| Practitioner | ``pr-<team_id>-<k>`` (nurses of the team, k = 0 …) and ``pr-admin-<org code>`` |
| Patient / EpisodeOfCare / CarePlan | ``p-<citizen_id>`` / ``e-<citizen_id>`` / ``cp-<citizen_id>`` |
| ServiceRequest | ``sr-<citizen_id>-<measurement>`` and ``sr-<citizen_id>-questionnaire`` |
| Questionnaire | ``q-<cohort>`` |

Accounts (password ``twin`` for all, documented for tests and load tests — never a real system):
citizens ``citizen-<citizen_id>`` in realm ``nemlogin``; nurses ``nurse-<team_id>-<k>``
(role ``monitoringAssistor``) and organisation administrators ``admin-<org code>``
(``careteamAdministrator``) in realm ``ehealth``; one ``auditor`` (``auditor``).

The database is written directly (one transaction), not through HTTP: 10,000 citizens are about
100,000 resources, and seeding is set-up, not the load under test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass

import numpy as np

from twin.care.teams import build_teams
from twin.clinical.population import MEASURED_VITALS, sample_citizens
from twin.organisations import load_organisations
from twin.rng import Streams
from twin.rules.thresholds import ReferenceRanges
from twin.scenario import Scenario
from twin.server import fhir as fr
from twin.server.service import password_hash
from twin.server.storage import Row, Storage

SEED_PASSWORD = "twin"
NURSE_ROLE, ADMIN_ROLE, AUDITOR_ROLE = "monitoringAssistor", "careteamAdministrator", "auditor"


@dataclass
class SeedSummary:
    organizations: int
    care_teams: int
    practitioners: int
    citizens: int
    resources: int
    accounts: int
    wall_s: float


def _row(type_: str, body: dict, now: str, *, patient=None, episode=None, team=None, org=None, status=None,
         code=None, ident=None) -> Row:
    body.setdefault("meta", {}).update({"versionId": "1", "lastUpdated": now})
    return Row(type_, body["id"], 1, now, patient, episode, team, org, status, code, None, None, ident,
               json.dumps(body, separators=(",", ":")))


def build_seed_rows(scenario: Scenario, base_url: str) -> tuple[list[Row], list[tuple], list[tuple], dict]:
    """Resources, accounts and memberships of the scenario's population."""
    refs = fr.Refs(base_url)
    orgs = load_organisations()
    streams = Streams(scenario.run.seed)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    cohorts = []
    for cohort in scenario.cohorts:
        disease, regime, rules = (scenario.diseases[cohort.disease], scenario.regimes[cohort.regime],
                                  scenario.rules[cohort.rules])
        citizens = sample_citizens(cohort, disease, regime, rules, scenario.devices, orgs, scenario.run.duration_days,
                                   streams.get(f"{cohort.name}/population"))
        cohorts.append((cohort, regime, rules, citizens))
    teams, team_of = build_teams([c.name for c in scenario.cohorts], [c.org for *_, c in cohorts],
                                 [c.enrol_day <= 0 for *_, c in cohorts], scenario.care, orgs)

    rows: list[Row] = []
    accounts: list[tuple] = []
    memberships: list[tuple] = []
    used_orgs = sorted(set(teams.org.tolist()))
    for o in used_orgs:
        code = int(orgs.code[o])
        rows.append(_row("Organization", fr.organization(refs, f"org-{code}", str(orgs.name[o]), str(code), str(orgs.kind[o])),
                         now, org=f"org-{code}"))
        admin = f"pr-admin-{code}"
        rows.append(_row("Practitioner", fr.practitioner(refs, admin, f"Administrator {orgs.name[o]}", f"admin-{code}"), now,
                         org=f"org-{code}"))
        accounts.append((f"admin-{code}", "ehealth", "PRACTITIONER", admin, json.dumps([ADMIN_ROLE])))
    practitioners = len(used_orgs)
    for t in range(len(teams)):
        code = int(orgs.code[teams.org[t]])
        org_id, team_id = f"org-{code}", f"ct-{t}"
        nurses = [f"pr-{t}-{k}" for k in range(int(teams.nurses[t]))]
        for k, pid in enumerate(nurses):
            rows.append(_row("Practitioner", fr.practitioner(refs, pid, f"Nurse {k + 1}, {teams.name[t]}", f"nurse-{t}-{k}"), now,
                             org=org_id, team=team_id))
            accounts.append((f"nurse-{t}-{k}", "ehealth", "PRACTITIONER", pid, json.dumps([NURSE_ROLE])))
            memberships.append((pid, team_id, org_id, NURSE_ROLE))
        memberships.append((f"pr-admin-{code}", team_id, org_id, ADMIN_ROLE))
        practitioners += len(nurses)
        participants = [(p, NURSE_ROLE) for p in nurses] + [(f"pr-admin-{code}", ADMIN_ROLE)]
        rows.append(_row("CareTeam", fr.care_team(refs, team_id, str(teams.name[t]), org_id, participants), now, team=team_id,
                         org=org_id))
    accounts.append(("auditor", "ehealth", "PRACTITIONER", "pr-auditor", json.dumps([AUDITOR_ROLE])))
    rows.append(_row("Practitioner", fr.practitioner(refs, "pr-auditor", "National auditor", "auditor"), now))

    offset = 0
    n_citizens = 0
    for (cohort, regime, rules, c), team in zip(cohorts, team_of, strict=True):
        q_id = f"q-{cohort.name}"
        rows.append(_row("Questionnaire", fr.questionnaire(refs, q_id, list(regime.questions), list(rules.question_rules())),
                         now, code="questionnaire"))
        rng = np.random.default_rng([scenario.run.seed, 4711])  # CPR-like numbers only; not a model stream
        for i in range(len(c)):
            cid = offset + i
            pid, eid, cpid = f"p-{cid}", f"e-{cid}", f"cp-{cid}"
            team_id, org_code = f"ct-{int(team[i])}", int(orgs.code[c.org[i]])
            org_id = f"org-{org_code}"
            birth = dt.date(1956, 1, 1) - dt.timedelta(days=int((c.age_years[i] - 70) * 365.25))
            cpr = f"{birth:%d%m%y}{int(rng.integers(0, 10_000)):04d}"
            compartments = {"patient": pid, "episode": eid, "team": team_id, "org": org_id}
            rows.append(_row("Patient", fr.patient(refs, pid, cpr, f"Borger {cid}", bool(c.female[i]), birth.isoformat()), now,
                             patient=pid, team=team_id, org=org_id))
            rows.append(_row("EpisodeOfCare", fr.episode_of_care(refs, eid, pid, org_id, team_id, "active", "2020-01-01"), now,
                             status="active", **compartments))
            measures = [m for m in regime.measurements if m in MEASURED_VITALS
                        and (m not in ("sbp", "dbp") or bool(c.measures_bp[i]))]
            weekdays = [d for w, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
                        if int(c.weekday_bits[i]) >> w & 1]
            sr_ids = []
            for m in [*measures, "questionnaire"]:
                sr_id = f"sr-{cid}-{m}"
                sr_ids.append(sr_id)
                ranges = None
                if m in c.thresholds:
                    th = c.thresholds[m]
                    ranges = ReferenceRanges(*(float(th[b][i]) for b in ("red_low", "yellow_low", "yellow_high",
                                                                           "red_high")))
                body = fr.service_request(refs, sr_id, pid, eid, cpid, m, ranges, weekdays, int(c.sessions_per_week[i]))
                code = ((body.get("code") or {}).get("coding") or [{}])[0].get("code")
                rows.append(_row("ServiceRequest", body, now, status="active", code=code, **compartments))
            rows.append(_row("CarePlan", fr.care_plan(refs, cpid, pid, eid, team_id, sr_ids), now, status="active",
                             **compartments))
            accounts.append((f"citizen-{cid}", "nemlogin", "PATIENT", pid, "[]"))
        offset += len(c)
        n_citizens += len(c)
    counts = {"organizations": len(used_orgs), "care_teams": len(teams), "practitioners": practitioners + 1,
              "citizens": n_citizens}
    return rows, accounts, memberships, counts


async def seed_database(scenario: Scenario, database: str, base_url: str) -> SeedSummary:
    import time

    started = time.perf_counter()
    rows, accounts, memberships, counts = build_seed_rows(scenario, base_url)
    storage = Storage.connect(database)
    await storage.open()
    try:
        await storage.migrate()
        async with storage.transaction() as tx:
            existing = await tx.fetch("SELECT COUNT(*) FROM accounts")
            if existing[0][0]:
                raise ValueError(f"{database}: already seeded ({existing[0][0]} accounts); seed an empty database")
            for k in range(0, len(rows), 5000):
                await tx.insert(rows[k:k + 5000])
            for username, realm, user_type, user_id, roles in accounts:
                await tx.execute("INSERT INTO accounts (username, realm, user_type, user_id, roles, password_hash) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 (username, realm, user_type, user_id, roles, password_hash(username, SEED_PASSWORD)))
            for m in memberships:
                await tx.execute("INSERT INTO memberships (practitioner, care_team, org, role) VALUES (?, ?, ?, ?)", m)
        await storage.analyze()
    finally:
        await storage.close()
    return SeedSummary(counts["organizations"], counts["care_teams"], counts["practitioners"], counts["citizens"],
                       len(rows), len(accounts), round(time.perf_counter() - started, 2))


def seed(scenario: Scenario, database: str, base_url: str) -> SeedSummary:
    return asyncio.run(seed_database(scenario, database, base_url))

