"""The careplan service's ``$create-episode-of-care``: a care team enrols a citizen.

How FUT does it (reference/fut-infrastructure.md §2 call 15, §6; IG
``OperationDefinition--s-create-episode-of-care``)
--------------------------------------------------
Enrolment is three calls in FUT: ``Patient/$createPatient`` finds the citizen in the CPR registry
(or creates the Patient), ``$create-episode-of-care`` stores the course, and
``PlanDefinition/{id}/$apply`` turns the chosen plan (its ActivityDefinitions carry the measurement
codes, schedule and default thresholds) into a CarePlan and its ServiceRequests. The episode call
takes ``Parameters{episodeOfCareAndProvenances = Bundle}``: exactly one EpisodeOfCare, in status
``planned``, the Conditions its ``diagnosis`` names (same patient), and at least one Provenance
whose target is the episode and whose ``policy`` is a privacy policy (*sundhedsloven* or
*serviceloven*: under which law the data is processed). The server gives the resources ids, adds
an *origin* Provenance recording who created the episode, and answers with a Bundle of what it
stored (the bodies only with ``Prefer: return=representation``).

What the twin does
------------------
One call, one transaction, all or nothing — the twin folds the three FUT calls together:

* the Bundle may also hold a **Patient** (``urn:uuid:`` fullUrl, CPR identifier of system
  ``urn:oid:1.2.208.176.1.2``) that the EpisodeOfCare's ``patient`` points to: a citizen already
  known by that CPR number is reused (200 in the answer), a new one is created (201), as
  ``$createPatient`` would. The episode may instead point to a stored Patient by URL;
* Parameter ``planDefinition`` (``valueString`` or ``valueCanonical``, the id or
  ``…/PlanDefinition/{id}``) names one of :data:`PLAN_DEFINITIONS` (the cohort's plan:
  measurements, the cohort's Questionnaire, the national standard thresholds); optional
  ``weekdays`` (``valueString``, ``mon+thu``) sets the agreed measurement days. The CarePlan and one
  ServiceRequest per measurement plus one for the questionnaire are created with it, with the
  thresholds as ``ehealth-referenceRange`` RELRAL/RELGAL (a clinician individualises them later:
  :mod:`twin.server.routes_service_request`);
* the episode's ``managingOrganization`` and ``team`` are the token's organisation and care team
  (filled in when absent; anything else is 403);
* status ``planned`` as in FUT, or ``active`` — the twin's shortcut for FUT's later activation
  (a PATCH after a ``PITEOC`` Consent, neither modelled): only an active episode takes
  measurements. The CarePlan and ServiceRequests are ``active`` with an active episode, ``draft``
  with a planned one;
* **the citizen's login**: FUT's citizens log in with MitID; the twin creates a ``nemlogin``
  account for a Patient that has none, username ``citizen-<patient id>`` (written into the
  Patient as identifier ``urn:fut-twin:username``), password from the Patient entry's extension
  ``urn:fut-twin:StructureDefinition:initial-password`` (removed before storing) or else ``twin``,
  the seeded accounts' documented test password. The citizen's token is scoped to their active
  episode at login, so they can submit at once.

A practitioner needs permission ``EpisodeOfCare$create-episode-of-care`` (care-team role
``citizenEnroller``) and a token scoped to a care team they are a member of. Errors are FUT's
codes where the IG has one (``EPISODEOFCARE_CREATE_*``, ``CAREPLAN_APPLY_NO_PLANDEFINITION``);
a refused request stores nothing. Audit: one ``E`` row for the patient.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.rules import ReferenceRanges
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request, unprocessable
from twin.server.routes_organization import EXT_INITIAL_PASSWORD
from twin.server.search import ParamSpec, read_parameters
from twin.server.service import Service, fhir_response, now_iso, password_hash, read_json
from twin.server.storage import Filter, Row, Tx, new_id

OPERATION = "$create-episode-of-care"
PERMISSION = "EpisodeOfCare$create-episode-of-care"
CODE = "EPISODEOFCARE_CREATE_"
PARAMS: ParamSpec = {
    "episodeOfCareAndProvenances": (("resource",), False),
    "planDefinition": (("valueString", "valueCanonical"), False),
    "weekdays": (("valueString",), False),
}
PRIVACY_POLICIES = frozenset({"http://ehealth.sundhed.dk/policy/dk/sundhedsloven",
                              "http://ehealth.sundhed.dk/policy/dk/serviceloven"})  # IG opdef: privacy-Provenance
ORIGIN_POLICY = "urn:fut-twin:policy:origin"  # twin's own: marks the Provenance the server adds (FUT: origin-Provenance)
ENTRY_TYPES = ("Patient", "EpisodeOfCare", "Condition", "Provenance")
MAX_ENTRIES = 20  # one patient, one episode, a few conditions and provenances
CITIZEN_PASSWORD = "twin"  # the seeded accounts' documented test password (twin.seed)
INF = math.inf


@dataclass(frozen=True)
class PlanDefinition:
    """A cohort's monitoring plan: FUT's PlanDefinition with its ActivityDefinitions, in short.

    ``ranges`` are the national standard thresholds per measurement (the ActivityDefinition's
    template), ``None`` where the standard is relative only (weight: a change from the citizen's
    own normal, set by a clinician)."""

    id: str
    title: str
    disease: str  # key of fr.DISEASE_CONDITION
    questionnaire_id: str  # the cohort's Questionnaire (twin seed: q-<cohort>)
    ranges: dict[str, ReferenceRanges | None]  # measurement → standard thresholds, in the plan's order
    weekdays: tuple[str, ...]  # default agreed measurement days


def _standard(red_low: float, yellow_low: float, yellow_high: float, red_high: float) -> ReferenceRanges | None:
    return None if all(math.isinf(b) for b in (red_low, yellow_low, yellow_high, red_high)) else \
        ReferenceRanges(red_low, yellow_low, yellow_high, red_high)


# The national standard sets of twin/defaults/defaults.toml ([rules.copd-national] and
# [rules.heart-failure-national]; a test checks they agree) and the measurements of the regimes
# copd-standard / heart-failure-standard.
PLAN_DEFINITIONS: dict[str, PlanDefinition] = {
    "copd": PlanDefinition("copd", "KOL telemonitorering", "copd", "q-copd", {
        "spo2": _standard(88.0, 91.0, 100.0, 100.0),
        "pulse": _standard(45.0, 50.0, 100.0, 120.0),
        "weight": _standard(-INF, -INF, INF, INF),
        "sbp": _standard(90.0, 100.0, 160.0, 180.0),
        "dbp": _standard(50.0, 60.0, 95.0, 110.0),
    }, ("mon", "thu")),
    "heart-failure": PlanDefinition("heart-failure", "Hjertesvigt telemonitorering", "heart-failure",
                                    "q-heart-failure", {
                                        "weight": _standard(-INF, -INF, INF, INF),
                                        "pulse": _standard(40.0, 50.0, 100.0, 120.0),
                                        "sbp": _standard(85.0, 95.0, 160.0, 180.0),
                                        "dbp": None,
                                        "spo2": _standard(88.0, 92.0, 100.0, 100.0),
                                    }, ("mon", "wed", "fri")),
}


@dataclass
class Enrolment:
    """A validated request: what to store."""

    patient_ref: str  # the EpisodeOfCare's patient reference: a urn:uuid of the Patient entry, or a URL
    patient_entry: dict | None  # the Patient entry's resource, when the bundle has one
    cpr: str | None
    password: str
    episode: dict
    episode_full_url: str
    conditions: dict[str, dict]  # fullUrl → Condition
    provenances: list[dict]
    plan: PlanDefinition
    weekdays: tuple[str, ...]


# ------------------------------------------------------------------------------------ validation
def _plan(params: dict) -> PlanDefinition:
    if "planDefinition" not in params:
        raise bad_request("CAREPLAN_APPLY_PLAN_DEFINITION_REFERENCE_NOT_SPECIFIED",
                          "PlanDefinition reference must be specified (parameter planDefinition)")
    raw = str(params["planDefinition"][0])
    plan_id = raw.rsplit("PlanDefinition/", 1)[-1]
    if plan_id not in PLAN_DEFINITIONS:
        raise unprocessable("CAREPLAN_APPLY_NO_PLANDEFINITION", f"There is no PlanDefinition with id {plan_id}; "
                            f"the twin's plans are {', '.join(sorted(PLAN_DEFINITIONS))}")
    return PLAN_DEFINITIONS[plan_id]


def _weekdays(params: dict, plan: PlanDefinition) -> tuple[str, ...]:
    if "weekdays" not in params:
        return plan.weekdays
    days = str(params["weekdays"][0]).split("+")
    if not days or any(d not in fr.WEEKDAYS for d in days) or len(set(days)) != len(days):
        raise bad_request("REQUEST_INVALID_PARAMETERS",
                          f"weekdays: distinct days of {', '.join(fr.WEEKDAYS)} joined by +, e.g. mon+thu")
    return tuple(sorted(days, key=fr.WEEKDAYS.index))


def _cpr(patient: dict) -> str:
    for ident in patient.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == fr.CPR_SYSTEM:
            value = ident.get("value")
            if isinstance(value, str) and re.fullmatch(r"\d{10}", value):
                return value
            raise unprocessable("PATIENT_CREATE_INVALID_CPR", "the CPR identifier must be ten digits")
    raise unprocessable("PATIENT_CREATE_CPR_MISSING",
                        f"a new Patient needs its CPR number as identifier of system {fr.CPR_SYSTEM}")


def _initial_password(patient: dict) -> str:
    """The citizen account's password (extension ``initial-password``), taken out of the Patient."""
    password = CITIZEN_PASSWORD
    kept = []
    for ext in patient.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == EXT_INITIAL_PASSWORD:
            value = ext.get("valueString")
            if not isinstance(value, str) or not 4 <= len(value) <= 200:
                raise unprocessable("PATIENT_CREATE_INVALID_PASSWORD", "initial-password must be 4-200 characters")
            password = value
        else:
            kept.append(ext)
    if kept:
        patient["extension"] = kept
    else:
        patient.pop("extension", None)
    return password


def parse_enrolment(body: object) -> Enrolment:
    """The request, checked without the database: shape, counts, internal references."""
    params = read_parameters(body, OPERATION, PARAMS)
    if "episodeOfCareAndProvenances" not in params:
        raise bad_request("REQUEST_INVALID_PARAMETERS", f"{OPERATION} needs the Bundle episodeOfCareAndProvenances")
    bundle = params["episodeOfCareAndProvenances"][0]
    plan = _plan(params)
    weekdays = _weekdays(params, plan)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle" \
            or bundle.get("type") not in ("collection", "transaction"):
        raise bad_request("REQUEST_INVALID_BUNDLE", "episodeOfCareAndProvenances must be a collection or transaction "
                          "Bundle")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or len(entries) > MAX_ENTRIES:
        raise bad_request("REQUEST_INVALID_BUNDLE", f"the Bundle needs 1-{MAX_ENTRIES} entries")
    by_type: dict[str, list[tuple[str, dict]]] = {t: [] for t in ENTRY_TYPES}
    seen = set()
    for k, e in enumerate(entries):
        resource = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(resource, dict):
            raise bad_request("REQUEST_INVALID_BUNDLE", f"entry[{k}] has no resource")
        type_ = resource.get("resourceType")
        if type_ not in ENTRY_TYPES:
            raise unprocessable(f"{CODE}UNSUPPORTED_RESOURCE_TYPE",
                                f"Bundle contains unsupported resource type: {str(type_)[:40]}")
        full_url = e.get("fullUrl")
        if not isinstance(full_url, str) or not full_url.startswith("urn:uuid:") or full_url in seen:
            raise bad_request("REQUEST_INVALID_BUNDLE", f"entry[{k}].fullUrl must be a urn:uuid: unique in the Bundle")
        seen.add(full_url)
        by_type[type_].append((full_url, json.loads(json.dumps(resource))))  # a copy we may change
    if len(by_type["EpisodeOfCare"]) != 1:
        raise unprocessable(f"{CODE}WRONG_EOC_COUNT", "Bundle has to contain only one Episode of Care")
    if len(by_type["Patient"]) > 1:
        raise unprocessable(f"{CODE}UNSUPPORTED_RESOURCE_TYPE", "Bundle contains more than one Patient")
    (episode_url, episode), = by_type["EpisodeOfCare"]
    if episode.get("status") not in ("planned", "active"):
        raise unprocessable(f"{CODE}EPISODE_OF_CARE_IN_NON_PLANNED_STATUS",
                            "It is only possible to create an episode of care in status 'Planned' (the twin also "
                            "takes 'active')")
    if episode.get("statusHistory"):
        raise unprocessable(f"{CODE}STATUS_HISTORY_NOT_EMPTY", "It is not allowed to fill status history manually")
    patient_ref = (episode.get("patient") or {}).get("reference")
    if not isinstance(patient_ref, str):
        raise unprocessable(f"{CODE}PATIENT_MISSING", "EpisodeOfCare.patient must reference the citizen")
    patient_entry = next((r for url, r in by_type["Patient"] if url == patient_ref), None)
    if by_type["Patient"] and patient_entry is None:
        raise unprocessable(f"{CODE}PATIENT_DOESNT_MATCH_BUNDLE", "the Bundle's Patient is not EpisodeOfCare.patient")
    if patient_ref.startswith("urn:uuid:") and patient_entry is None:
        raise unprocessable(f"{CODE}PATIENT_MISSING", f"EpisodeOfCare.patient {patient_ref} is not in the Bundle")
    cpr = password = None
    if patient_entry is not None:
        if patient_entry.get("deceasedBoolean") is True or "deceasedDateTime" in patient_entry:
            raise unprocessable(f"{CODE}PATIENT_MUST_NOT_BE_DECEASED",
                                "Patient.deceased must be false to create episode of care")
        cpr = _cpr(patient_entry)
        password = _initial_password(patient_entry)
    conditions = dict(by_type["Condition"])
    for d in episode.get("diagnosis") or []:
        ref = ((d or {}).get("condition") or {}).get("reference")
        if ref not in conditions:
            raise unprocessable(f"{CODE}INCORRECT_CONDITION_REFERENCE",
                                f"EpisodeOfCare.diagnosis must reference a Condition of the Bundle, got {str(ref)[:80]}")
    for url, condition in conditions.items():
        if ((condition.get("subject") or {}).get("reference")) != patient_ref:
            raise unprocessable(f"{CODE}INCORRECT_CONDITION_SUBJECT",
                                "EpisodeOfCare and Condition doesn't point to the same Patient")
        if not (condition.get("code") or {}).get("coding"):
            raise unprocessable(f"{CODE}CONDITION_CODE_MISSING", f"Condition {url} needs a code")
    provenances = [p for _, p in by_type["Provenance"]]
    for p in provenances:
        targets = [(t or {}).get("reference") for t in p.get("target") or []]
        if not targets or any(t != episode_url for t in targets):
            raise unprocessable(f"{CODE}INCORRECT_PROVENANCE_TARGET", "Provenance has incorrect target")
    if not any(set(p.get("policy") or []) & PRIVACY_POLICIES for p in provenances):
        raise unprocessable(f"{CODE}NO_REQUIRED_PROVENANCE_POLICIES", "No provenance with required policies")
    return Enrolment(patient_ref, patient_entry, cpr, password or CITIZEN_PASSWORD, episode, episode_url, conditions,
                     provenances, plan, weekdays)


# ------------------------------------------------------------------------------------- the work
async def find_patient_by_cpr(tx: Tx, cpr: str) -> Row | None:
    """The Patient with this CPR number. Patients created here carry it in the unique ``ident``
    column; seeded ones do not, so those are found by a text search of the Patient bodies (enrolment
    is rare; the match is confirmed on the parsed identifier)."""
    found = await tx.get_by_ident("Patient", [f"cpr:{cpr}"])
    if found:
        return found[0]
    for (id_,) in await tx.fetch("SELECT id FROM resources WHERE type = 'Patient' AND body LIKE ?", (f"%{cpr}%",)):
        row = await tx.get("Patient", id_)
        if row is not None and any(i.get("system") == fr.CPR_SYSTEM and i.get("value") == cpr
                                   for i in json.loads(row.body).get("identifier") or []):
            return row
    return None


def _row(type_: str, body: dict, now: str, patient: str, episode: str | None, team: str, org: str,
         status: str | None = None, code: str | None = None, ident: str | None = None) -> Row:
    body["meta"] = {**(body.get("meta") or {}), "versionId": "1", "lastUpdated": now}
    # effective stays NULL: $search-measurements selects submissions' Provenances by it, never these
    return Row(type_, body["id"], 1, now, patient, episode, team, org, status, code, None, None, ident,
               json.dumps(body))


async def _patient(self: Service, tx: Tx, e: Enrolment, now: str, team: str, org: str) -> tuple[Row, bool]:
    """The citizen's Patient row, and whether it is new."""
    if e.patient_entry is None:
        try:
            type_, id_ = self.refs.parse(e.patient_ref)
        except ValueError:
            raise bad_request("REQUEST_INVALID_REFERENCE", f"EpisodeOfCare.patient: {e.patient_ref[:80]!r}") from None
        row = await tx.get(type_, id_) if type_ == "Patient" else None
        if row is None:
            raise unprocessable("REQUEST_UNKNOWN_REFERENCE", f"EpisodeOfCare.patient {e.patient_ref[:80]} is not known")
        return row, False
    existing = await find_patient_by_cpr(tx, e.cpr)
    if existing is not None:
        return existing, False
    body = e.patient_entry
    body["id"] = new_id()
    body["meta"] = {"profile": [fr.PROFILE["Patient"]]}
    body.setdefault("active", True)
    body["identifier"] = [*body.get("identifier", []),
                          {"system": fr.USERNAME_SYSTEM, "value": f"citizen-{body['id']}"}]
    return _row("Patient", body, now, body["id"], None, team, org, ident=f"cpr:{e.cpr}"), True


async def _citizen_account(tx: Tx, patient_id: str, password: str) -> None:
    """A ``nemlogin`` account for a Patient that has none (the stand-in for MitID)."""
    if await tx.fetch("SELECT 1 FROM accounts WHERE user_id = ? AND realm = 'nemlogin'", (patient_id,)):
        return
    username = f"citizen-{patient_id}"
    await tx.execute("INSERT INTO accounts (username, realm, user_type, user_id, roles, password_hash) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (username, "nemlogin", "PATIENT", patient_id, "[]", password_hash(username, password)))


async def create_episode_of_care(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require(PERMISSION)
    claims.require_user_type("PRACTITIONER")
    org, team = claims.require_context("Organization", "CareTeam")
    e = parse_enrolment(await read_json(request, self.settings))
    for what, given, own in (("managingOrganization", e.episode.get("managingOrganization"), ("Organization", org)),
                             *(("team", t, ("CareTeam", team)) for t in e.episode.get("team") or [])):
        try:
            if self.refs.parse((given or {}).get("reference")) != own:
                raise ValueError
        except ValueError:
            if given is not None:
                raise FhirError(403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
                                f"Resource not matching security token context: EpisodeOfCare.{what} must be "
                                f"{own[0]}/{own[1]}", "forbidden") from None
    representation = "return=representation" in request.headers.get("prefer", "")
    now = now_iso()
    status = e.episode["status"]
    plan_status = "active" if status == "active" else "draft"
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)
        questionnaire = await tx.get("Questionnaire", e.plan.questionnaire_id)
        if questionnaire is None:
            raise unprocessable("CAREPLAN_APPLY_CAN_NOT_FIND_ACTIVITY_DEFINITION",
                                f"plan {e.plan.id}: its Questionnaire/{e.plan.questionnaire_id} is not stored")
        patient_row, patient_new = await _patient(self, tx, e, now, team, org)
        pid = patient_row.id
        if claims.context.patient_id not in (None, pid):
            raise FhirError(403, f"{CODE}PATIENT_DOESNT_MATCH_CONTEXT", "Episode of care patient doesn't match to "
                            "the context", "forbidden")
        if await tx.count("EpisodeOfCare", [Filter("patient", "=", pid), Filter("team", "=", team),
                                            Filter("status", "in", ["planned", "active"])]):
            raise FhirError(409, f"{CODE}ALREADY_ENROLLED", f"Patient/{pid} already has a planned or active episode "
                            f"of care with CareTeam/{team}", "duplicate")
        eid, cpid = new_id(), new_id()
        condition_ids = {url: new_id() for url in e.conditions}
        start = (e.episode.get("period") or {}).get("start") or now
        try:
            episode = fr.episode_of_care(self.refs, eid, pid, org, team, status, start)
        except ValueError as exc:
            raise unprocessable(f"{CODE}INVALID_PERIOD", f"EpisodeOfCare.period.start: {exc}") from None
        if condition_ids:
            episode["diagnosis"] = [{"condition": self.refs.ref("Condition", cid)} for cid in condition_ids.values()]
        compartments = {"patient": pid, "episode": eid, "team": team, "org": org}
        rows = [(patient_row, 201 if patient_new else 200)]  # (row, HTTP status of its answer entry)
        rows.append((_row("EpisodeOfCare", episode, now, status=status, **compartments), 201))
        for url, condition in e.conditions.items():
            condition.update(id=condition_ids[url], subject=self.refs.ref("Patient", pid))
            condition["meta"] = {"profile": [fr.PROFILE["Condition"]]}
            code = ((condition["code"].get("coding") or [{}])[0]).get("code")
            rows.append((_row("Condition", condition, now, code=code, **compartments), 201))
        episode_url = self.refs.url("EpisodeOfCare", eid)
        for p in [*e.provenances, {"policy": [ORIGIN_POLICY], "agent": [
                {"who": self.refs.ref("Practitioner", claims.user_id),
                 "onBehalfOf": self.refs.ref("Organization", org)}]}]:
            # the server records when (FUT's Provenances are server-stamped too); a client Provenance
            # without an agent gets the enrolling practitioner (R4 requires one)
            p.update(resourceType="Provenance", id=new_id(), target=[{"reference": episode_url}], recorded=now)
            p.setdefault("agent", [{"who": self.refs.ref("Practitioner", claims.user_id)}])
            rows.append((_row("Provenance", p, now, **compartments), 201))
        sr_ids = []
        for m, ranges in [*e.plan.ranges.items(), ("questionnaire", None)]:
            sr_id = new_id()
            sr_ids.append(sr_id)
            sr = fr.service_request(self.refs, sr_id, pid, eid, cpid, m, ranges, e.weekdays, len(e.weekdays),
                                    start=start, status=plan_status)
            code = sr["code"]["coding"][0]["code"]
            rows.append((_row("ServiceRequest", sr, now, status=plan_status, code=code, **compartments), 201))
        care_plan = fr.care_plan(self.refs, cpid, pid, eid, team, sr_ids, start=start, status=plan_status,
                                 condition_id=next(iter(condition_ids.values()), None))
        care_plan["title"] = e.plan.title
        rows.insert(2, (_row("CarePlan", care_plan, now, status=plan_status, **compartments), 201))
        await tx.insert([r for r, status_ in rows if status_ == 201])
        await _citizen_account(tx, pid, e.password)
        await self.audit(tx, claims, "E", OPERATION, [pid], "EpisodeOfCare", eid)
    entries = []
    for row, status_ in rows:
        location = f"{self.refs.url(row.type, row.id)}/_history/{row.version}"
        entry = fr.bundle_transaction_response([(location, row.last_updated, status_)])["entry"][0]
        if representation:
            entry = {"fullUrl": self.refs.url(row.type, row.id), "resource": json.loads(row.body), **entry}
        entries.append(entry)
    return fhir_response({"resourceType": "Bundle", "type": "transaction-response", "entry": entries}, 201,
                         {"Location": f"{episode_url}/_history/1"})


def routes(service: Service, guarded) -> list[Route]:
    # retry_on_conflict: two enrolments of one new CPR number race on the unique ident; the loser's
    # second run finds the winner's Patient and reuses it
    return [Route(f"/careplan/{OPERATION}", guarded(functools.partial(create_episode_of_care, service),
                                                    retry_on_conflict=True), methods=["POST"])]

