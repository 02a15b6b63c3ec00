"""The bad-input catalogue, as data: requests a client could get wrong, and the refusal each must get.

Each :class:`Case` names one request (method, path, query, headers, body bytes, whose token) and
the answer the API owes it: a 4xx status and the OperationOutcome code (docs/API.md). The test
(``test_bad_input_catalogue.py``) sends every case to the real server on SQLite and PostgreSQL and
checks the answer, that nothing was stored (resource rows and versions, outbox, audit, accounts,
memberships) and that ``/health`` still answers afterwards.

Bodies that need the running server's ids (its base URL, a Task of the nurse's team, …) are built
by a function of :class:`Ctx`; everything else is literal bytes. The citizens here (``CITIZEN``,
``OTHER_SAME_TEAM``, ``OTHER_ORG``) are ones no other test module writes for.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from twin.server import fhir as fr

CITIZEN = 20  # ct-0 / org-851, like world().a
OTHER_SAME_TEAM = 21  # ct-0
OTHER_ORG = 23  # ct-1 / org-1081
GREEN = {"spo2": 95, "pulse": 80, "weight": 72.0, "sbp": 130, "dbp": 80}
TOKEN = "/auth/realms/{realm}/protocol/openid-connect/token"
SUBMIT = "/measurement/$submit-measurement"
FHIR = "application/fhir+json"
PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"


@dataclass
class Ctx:
    """What the bodies need from the running server."""

    base: str
    tokens: dict[str, dict]  # role → token answer: citizen, nurse, admin, auditor, adjuster
    task: str  # a ready Task of the nurse's team (citizen CITIZEN's)
    triage: str  # its triage ClinicalImpression
    message: str  # a Communication the citizen sent to the team (the nurse may mark it read)
    role: str  # a PractitionerRole id of the admin's organisation
    practitioner: str  # a Practitioner of the admin's organisation without memberships

    @property
    def refs(self) -> fr.Refs:
        return fr.Refs(self.base)


Body = bytes | Callable[[Ctx], bytes] | None


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    status: int
    code: str
    body: Body = None
    auth: str | None = "citizen"  # whose token; None: no Authorization header
    content_type: str | None = FHIR
    params: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    xfail: str | None = None  # a known server bug in a file this suite may not change: the reason
    tags: frozenset = field(default_factory=frozenset)

    def build(self, ctx: Ctx) -> bytes | None:
        return self.body(ctx) if callable(self.body) else self.body


def js(obj) -> bytes:
    return json.dumps(obj).encode()


# ------------------------------------------------------------------------------------- submissions
def submission_body(ctx: Ctx, n: int = CITIZEN, values: dict | None = None, answers: dict | None = None) -> dict:
    values = dict(GREEN) if values is None else values
    srs = {m: f"sr-{n}-{m}" for m in values} | {"questionnaire": f"sr-{n}-questionnaire"}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return fr.submission(ctx.refs, str(uuid.uuid4()), f"p-{n}", f"e-{n}", srs, "q-copd", values,
                         {"dyspnoea": False} if answers is None else answers, now)


def _entries(b: dict) -> list[dict]:
    return b["parameter"][0]["resource"]["entry"]


def sub(change: Callable[[dict], object], n: int = CITIZEN) -> Callable[[Ctx], bytes]:
    """A valid submission of citizen ``n`` (spo2, pulse, weight, sbp, dbp + questionnaire), changed."""

    def build(ctx: Ctx) -> bytes:
        b = submission_body(ctx, n)
        out = change(b)
        return out if isinstance(out, bytes) else js(b)

    return build


def obs(k: int) -> Callable[[dict], dict]:
    return lambda b: _entries(b)[k]["resource"]


def set_obs(k: int, **kv) -> Callable[[dict], None]:
    return lambda b: obs(k)(b).update(kv)


def set_value(k: int, value) -> Callable[[dict], None]:
    return lambda b: obs(k)(b)["valueQuantity"].update(value=value)


def raw_value(k: int, literal: str) -> Callable[[dict], bytes]:
    """The submission with entry k's value replaced by a JSON literal (NaN, 1e400, …) as text."""

    def change(b: dict) -> bytes:
        obs(k)(b)["valueQuantity"]["value"] = 123456.789
        return json.dumps(b).replace("123456.789", literal, 1).encode()

    return change


def too_many_entries(b: dict) -> None:
    entry = _entries(b)[0]
    b["parameter"][0]["resource"]["entry"] = [{**copy.deepcopy(entry), "fullUrl": f"urn:uuid:{uuid.uuid4()}"}
                                              for _ in range(101)]


def mixing_patients(b: dict) -> None:
    """Entries of another citizen (same team) appended to a valid bundle."""
    other = fr.submission(fr.Refs(_base_of(b)), str(uuid.uuid4()), f"p-{OTHER_SAME_TEAM}", f"e-{OTHER_SAME_TEAM}",
                          {"spo2": f"sr-{OTHER_SAME_TEAM}-spo2", "questionnaire": f"sr-{OTHER_SAME_TEAM}-questionnaire"},
                          "q-copd", {"spo2": 95}, {"dyspnoea": False},
                          dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat())
    _entries(b).append(_entries(other)[0])


def mixing_episodes(b: dict) -> None:
    ext = obs(1)(b)["extension"][0]["valueReference"]
    ext["reference"] = ext["reference"].replace(f"e-{CITIZEN}", f"e-{OTHER_SAME_TEAM}")


def _base_of(b: dict) -> str:
    return obs(0)(b)["subject"]["reference"].split("/patient/")[0]


def nested(depth: int) -> bytes:
    return b'{"resourceType": "Parameters", "parameter": ' + b"[" * depth + b"]" * depth + b"}"


def deep_object(depth: int) -> bytes:
    return b'{"resourceType": "Parameters", "x": ' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"


NUL = "REQUEST_INVALID_CHARACTER"
SQL = "' OR 1=1; DROP TABLE resources; --"
SCRIPT = "<script>alert(1)</script>"

# ------------------------------------------------------------------------------ the other routes
def communication(ctx: Ctx, change: Callable[[dict], object] = lambda m: None) -> dict:
    body = fr.communication(ctx.refs, None, f"p-{CITIZEN}", None, f"Patient/p-{CITIZEN}", "CareTeam/ct-0", "Hej",
                            "2026-01-01T10:00:00+01:00")
    body["status"] = "in-progress"
    change(body)
    return body


def msg(change: Callable[[dict], object]) -> Callable[[Ctx], bytes]:
    return lambda ctx: js(communication(ctx, change))


def assessment(ctx: Ctx, change: Callable[[dict], object] = lambda ci: None) -> dict:
    body = fr.clinical_impression_assessment(ctx.refs, None, f"p-{CITIZEN}", f"e-{CITIZEN}", ctx.triage, "pr-0-0",
                                             "2026-01-01T10:00:00+01:00", "approved", "Called: ok")
    change(body)
    return body


def ci(change: Callable[[dict], object]) -> Callable[[Ctx], bytes]:
    return lambda ctx: js(assessment(ctx, change))


def practitioner(username: str, roles=("monitoringAssistor",), **extra) -> bytes:
    from tests.server.test_user_management import new_practitioner

    return js({**new_practitioner(username, roles), **extra})


def practitioner_role(change: Callable[[dict], object]) -> Callable[[Ctx], bytes]:
    def build(ctx: Ctx) -> bytes:
        from tests.server.test_user_management import new_role

        body = new_role(ctx.practitioner, "ct-0")
        change(body)
        return js(body)

    return build


def ops(*operations) -> bytes:
    return js(list(operations))


def params(*parameters) -> bytes:
    return js({"resourceType": "Parameters", "parameter": list(parameters)})


def enrolment(change: Callable[[dict], object]) -> Callable[[Ctx], bytes]:
    def build(ctx: Ctx) -> bytes:
        from tests.server.test_enrolment_and_thresholds import enrolment as make

        body = make()
        change(body)
        return js(body)

    return build


def _enrol_bundle(b: dict) -> dict:
    return b["parameter"][0]["resource"]


def _enrol_entry(b: dict, type_: str) -> dict:
    return next(e["resource"] for e in _enrol_bundle(b)["entry"] if e["resource"]["resourceType"] == type_)


def task_path(ctx: Ctx) -> str:
    return f"/task/Task/{ctx.task}"


T = "/task/Task/{task}"  # paths with {task}, {message}, {role} are filled from Ctx
M = "/patient/Communication/{message}"
SR = f"/careplan/ServiceRequest/sr-{CITIZEN}-spo2"
SMP = "MEASUREMENT_SUBMITMEASUREMENT_"
SM = "MEASUREMENT_SEARCHMEASUREMENT_"
EOC = "EPISODEOFCARE_CREATE_"

CASES: list[Case] = [
    # ---- $submit-measurement: JSON syntax, encoding, size, content type ----------------------------
    Case("submit: empty body", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", b""),
    Case("submit: truncated JSON", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", b'{"resourceType": "Param'),
    Case("submit: truncated valid submission", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         sub(lambda b: js(b)[:-7])),
    Case("submit: trailing garbage", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", sub(lambda b: js(b) + b"}")),
    Case("submit: two JSON documents", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", b"{}{}"),
    Case("submit: single quotes", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", b"{'resourceType': 'Parameters'}"),
    Case("submit: trailing comma", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         b'{"resourceType": "Parameters", "parameter": [],}'),
    Case("submit: invalid UTF-8", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         b'{"resourceType": "Parameters", "x": "\xff\xfe\xc3\x28"}'),
    Case("submit: lone surrogate escape", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         b'{"resourceType": "Param\\ud800eters"}'),
    Case("submit: UTF-16 body", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         '{"resourceType": "Parameters"}'.encode("utf-16")),
    Case("submit: NUL bytes", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", b'{"resourceType": "\x00"}'),
    Case("submit: nested 10,000 arrays", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", nested(10_000)),
    Case("submit: nested 10,000 objects", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", deep_object(10_000)),
    Case("submit: over-sized body", "POST", SUBMIT, 413, "REQUEST_TOO_LARGE",
         b'{"resourceType": "Parameters", "pad": "' + b"x" * 1_100_000 + b'"}'),
    Case("submit: Content-Length lies (too big)", "POST", SUBMIT, 413, "REQUEST_TOO_LARGE", b"{}",
         headers=(("Content-Length", "99999999999"),), tags=frozenset({"raw"})),
    Case("submit: text/plain", "POST", SUBMIT, 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE", sub(lambda b: None),
         content_type="text/plain"),
    Case("submit: no content type", "POST", SUBMIT, 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE", sub(lambda b: None),
         content_type=None),
    Case("submit: form content type", "POST", SUBMIT, 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE", b"a=b",
         content_type=FORM),
    Case("submit: XML", "POST", SUBMIT, 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
         b"<Parameters xmlns='http://hl7.org/fhir'/>", content_type="application/fhir+xml"),
    # ---- $submit-measurement: wrong shapes and types -------------------------------------------------
    Case("submit: JSON array", "POST", SUBMIT, 400, "REQUEST_WRONG_RESOURCE_TYPE", b"[]"),
    Case("submit: JSON string", "POST", SUBMIT, 400, "REQUEST_WRONG_RESOURCE_TYPE", b'"Parameters"'),
    Case("submit: JSON null", "POST", SUBMIT, 400, "REQUEST_WRONG_RESOURCE_TYPE", b"null"),
    Case("submit: Bundle instead of Parameters", "POST", SUBMIT, 400, "REQUEST_WRONG_RESOURCE_TYPE",
         sub(lambda b: js(b["parameter"][0]["resource"]))),
    Case("submit: unknown resource type", "POST", SUBMIT, 400, "REQUEST_WRONG_RESOURCE_TYPE",
         sub(lambda b: b.update(resourceType="Nonsense"))),
    Case("submit: no parameter", "POST", SUBMIT, 400, f"{SMP}MISSING_MEASUREMENT_PARAMETER",
         b'{"resourceType": "Parameters"}'),
    Case("submit: parameter is a number", "POST", SUBMIT, 400, f"{SMP}MISSING_MEASUREMENT_PARAMETER",
         b'{"resourceType": "Parameters", "parameter": 7}'),
    Case("submit: two measurement parameters", "POST", SUBMIT, 400, f"{SMP}MISSING_MEASUREMENT_PARAMETER",
         sub(lambda b: b["parameter"].append(b["parameter"][0]))),
    Case("submit: bundle of type batch", "POST", SUBMIT, 400, f"{SMP}INVALID_BUNDLE",
         sub(lambda b: b["parameter"][0]["resource"].update(type="batch"))),
    Case("submit: measurement is a string", "POST", SUBMIT, 400, f"{SMP}INVALID_BUNDLE",
         sub(lambda b: b["parameter"][0].update(resource="Bundle"))),
    Case("submit: empty bundle", "POST", SUBMIT, 400, f"{SMP}EMPTY_INPUT_BUNDLE",
         sub(lambda b: b["parameter"][0]["resource"].update(entry=[]))),
    Case("submit: entry is an object", "POST", SUBMIT, 400, f"{SMP}EMPTY_INPUT_BUNDLE",
         sub(lambda b: b["parameter"][0]["resource"].update(entry={"resource": {}}))),
    Case("submit: 101 entries", "POST", SUBMIT, 413, "TRANSACTION_TOO_MANY_ENTRIES", sub(too_many_entries)),
    Case("submit: entry without resource", "POST", SUBMIT, 400, f"{SMP}INVALID_BUNDLE",
         sub(lambda b: _entries(b)[0].pop("resource"))),
    Case("submit: entry is a string", "POST", SUBMIT, 400, f"{SMP}INVALID_BUNDLE",
         sub(lambda b: _entries(b).__setitem__(0, "Observation"))),
    Case("submit: Patient entry", "POST", SUBMIT, 400, f"{SMP}INPUT_BUNDLE_CONTAINS_INVALID_RESOURCES",
         sub(lambda b: obs(0)(b).update(resourceType="Patient"))),
    Case("submit: Task entry", "POST", SUBMIT, 400, f"{SMP}INPUT_BUNDLE_CONTAINS_INVALID_RESOURCES",
         sub(lambda b: obs(0)(b).update(resourceType="Task"))),
    Case("submit: entry without resourceType", "POST", SUBMIT, 400, f"{SMP}INPUT_BUNDLE_CONTAINS_INVALID_RESOURCES",
         sub(lambda b: obs(0)(b).pop("resourceType"))),
    Case("submit: fullUrl not urn:uuid", "POST", SUBMIT, 400, f"{SMP}INVALID_FULLURL",
         sub(lambda b: _entries(b)[0].update(fullUrl="http://example.org/Observation/1"))),
    Case("submit: fullUrl bad uuid", "POST", SUBMIT, 400, f"{SMP}INVALID_FULLURL",
         sub(lambda b: _entries(b)[0].update(fullUrl="urn:uuid:not-a-uuid"))),
    Case("submit: fullUrl missing", "POST", SUBMIT, 400, f"{SMP}INVALID_FULLURL",
         sub(lambda b: _entries(b)[0].pop("fullUrl"))),
    Case("submit: duplicate fullUrl", "POST", SUBMIT, 400, f"{SMP}DUPLICATE_FULLURL",
         sub(lambda b: _entries(b)[1].update(fullUrl=_entries(b)[0]["fullUrl"]))),
    Case("submit: request PUT", "POST", SUBMIT, 400, f"{SMP}INVALID_REQUEST",
         sub(lambda b: _entries(b)[0]["request"].update(method="PUT"))),
    Case("submit: request url of another type", "POST", SUBMIT, 400, f"{SMP}INVALID_REQUEST",
         sub(lambda b: _entries(b)[0]["request"].update(url="Patient"))),
    Case("submit: request is a list", "POST", SUBMIT, 400, f"{SMP}INVALID_REQUEST",
         sub(lambda b: _entries(b)[0].update(request=["POST"]))),
    # ---- $submit-measurement: references ---------------------------------------------------------------
    Case("submit: subject missing", "POST", SUBMIT, 400, f"{SMP}INPUT_SHOULD_REFERENCE_PATIENT",
         sub(lambda b: obs(0)(b).pop("subject"))),
    Case("submit: subject is a string", "POST", SUBMIT, 400, f"{SMP}INPUT_SHOULD_REFERENCE_PATIENT",
         sub(lambda b: obs(0)(b).update(subject="Patient/p-20"))),
    Case("submit: subject references an Observation", "POST", SUBMIT, 400, "REQUEST_INVALID_REFERENCE",
         sub(lambda b: obs(0)(b).update(subject={"reference": "Observation/o-1"}))),
    Case("submit: subject not a reference", "POST", SUBMIT, 400, "REQUEST_INVALID_REFERENCE",
         sub(lambda b: obs(0)(b).update(subject={"reference": "::::"}))),
    Case("submit: another patient (same team)", "POST", SUBMIT, 422, f"{SMP}INPUT_FOR_DIFFERENT_PATIENTS",
         sub(lambda b: obs(1)(b).update(subject={"reference": f"Patient/p-{OTHER_SAME_TEAM}"}))),
    Case("submit: bundle mixing two citizens' entries", "POST", SUBMIT, 422, f"{SMP}INPUT_FOR_DIFFERENT_PATIENTS",
         sub(mixing_patients)),
    Case("submit: bundle mixing episodes", "POST", SUBMIT, 422, f"{SMP}INPUT_NOT_PART_OF_SAME_EPISODEOFCARE",
         sub(mixing_episodes)),
    Case("submit: all for another citizen", "POST", SUBMIT, 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
         sub(lambda b: None, n=OTHER_ORG)),
    Case("submit: unknown ServiceRequest", "POST", SUBMIT, 422, "REQUEST_UNKNOWN_REFERENCE",
         sub(lambda b: obs(0)(b)["basedOn"][0].update(reference="ServiceRequest/sr-nobody"))),
    Case("submit: another citizen's ServiceRequest", "POST", SUBMIT, 422, "REQUEST_UNKNOWN_REFERENCE",
         sub(lambda b: obs(0)(b)["basedOn"][0].update(reference=f"ServiceRequest/sr-{OTHER_SAME_TEAM}-spo2"))),
    Case("submit: basedOn missing", "POST", SUBMIT, 400, f"{SMP}INPUT_SHOULD_REFERENCE_SERVICEREQUEST",
         sub(lambda b: obs(0)(b).pop("basedOn"))),
    Case("submit: basedOn is a string", "POST", SUBMIT, 400, f"{SMP}INPUT_SHOULD_REFERENCE_SERVICEREQUEST",
         sub(lambda b: obs(0)(b).update(basedOn="ServiceRequest/sr-20-spo2"))),
    Case("submit: episode extension missing", "POST", SUBMIT, 400, f"{SMP}INPUT_SHOULD_REFERENCE_EPISODEOFCARE",
         sub(lambda b: obs(0)(b).pop("extension"))),
    Case("submit: unknown episode", "POST", SUBMIT, 403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
         sub(lambda b: [e["resource"]["extension"][0]["valueReference"].update(reference="EpisodeOfCare/e-nobody")
                        for e in _entries(b)])),
    # ---- $submit-measurement: values, units, codes, statuses, times -------------------------------------
    Case("submit: SpO2 150 %", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE", sub(set_value(0, 150))),
    Case("submit: SpO2 -1 %", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE", sub(set_value(0, -1))),
    Case("submit: negative weight", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE", sub(set_value(2, -72.0))),
    Case("submit: weight 0", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE", sub(set_value(2, 0))),
    Case("submit: pulse 1e308", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE", sub(set_value(1, 1e308))),
    Case("submit: pulse 1e400 (out of range)", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON",
         sub(raw_value(1, "1e400"))),
    Case("submit: pulse as a 400-digit integer", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE",
         sub(raw_value(1, "1" + "0" * 400))),
    Case("submit: pulse 10^20 (an integer beyond int64)", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE",
         sub(raw_value(1, "1" + "0" * 20))),
    Case("submit: NaN literal", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", sub(raw_value(0, "NaN"))),
    Case("submit: Infinity literal", "POST", SUBMIT, 400, "REQUEST_MALFORMED_JSON", sub(raw_value(0, "Infinity"))),
    Case("submit: value as a string", "POST", SUBMIT, 400, f"{SMP}INVALID_VALUE", sub(set_value(0, "95"))),
    Case("submit: value true", "POST", SUBMIT, 400, f"{SMP}INVALID_VALUE", sub(set_value(0, True))),
    Case("submit: value null", "POST", SUBMIT, 400, f"{SMP}INVALID_VALUE", sub(set_value(0, None))),
    Case("submit: valueQuantity missing", "POST", SUBMIT, 400, f"{SMP}MISSING_VALUE",
         sub(lambda b: obs(0)(b).pop("valueQuantity"))),
    Case("submit: valueString instead", "POST", SUBMIT, 400, f"{SMP}MISSING_VALUE",
         sub(lambda b: obs(0)(b).update(valueQuantity=None, valueString="95"))),
    Case("submit: weight in lb", "POST", SUBMIT, 422, f"{SMP}INVALID_UNIT",
         sub(lambda b: obs(2)(b)["valueQuantity"].update(code="[lb_av]", unit="lb"))),
    Case("submit: SpO2 in kg", "POST", SUBMIT, 422, f"{SMP}INVALID_UNIT",
         sub(lambda b: obs(0)(b)["valueQuantity"].update(code="kg"))),
    Case("submit: unit system not UCUM", "POST", SUBMIT, 422, f"{SMP}INVALID_UNIT",
         sub(lambda b: obs(0)(b)["valueQuantity"].update(system="http://example.org/units"))),
    Case("submit: unknown code", "POST", SUBMIT, 422, f"{SMP}INVALID_OBSERVATION_CODE",
         sub(lambda b: obs(0)(b)["code"]["coding"][0].update(code="NPU99999"))),
    Case("submit: code of another measurement", "POST", SUBMIT, 422, f"{SMP}INVALID_OBSERVATION_CODE",
         sub(lambda b: obs(0)(b).update(code=obs(1)(b)["code"]))),
    Case("submit: code missing", "POST", SUBMIT, 422, f"{SMP}INVALID_OBSERVATION_CODE",
         sub(lambda b: obs(0)(b).pop("code"))),
    Case("submit: coding is a string", "POST", SUBMIT, 422, f"{SMP}INVALID_OBSERVATION_CODE",
         sub(lambda b: obs(0)(b).update(code={"coding": ["NPU03011"]}))),
    Case("submit: status preliminary", "POST", SUBMIT, 422, f"{SMP}INVALID_STATUS", sub(set_obs(0, status="preliminary"))),
    Case("submit: status missing", "POST", SUBMIT, 422, f"{SMP}INVALID_STATUS",
         sub(lambda b: obs(0)(b).pop("status"))),
    Case("submit: questionnaire status in-progress", "POST", SUBMIT, 422, f"{SMP}INVALID_STATUS",
         sub(lambda b: _entries(b)[-1]["resource"].update(status="in-progress"))),
    Case("submit: effective in 2099", "POST", SUBMIT, 422, f"{SMP}EFFECTIVE_IN_FUTURE",
         sub(set_obs(0, effectiveDateTime="2099-01-01T00:00:00Z"))),
    Case("submit: effective 31 February", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(set_obs(0, effectiveDateTime="2026-02-31T10:00:00Z"))),
    Case("submit: effective hour 25", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(set_obs(0, effectiveDateTime="2026-01-01T25:00:00Z"))),
    Case("submit: effective without zone", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(set_obs(0, effectiveDateTime="2026-01-01T10:00:00"))),
    Case("submit: effective is a number", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(set_obs(0, effectiveDateTime=1767261600))),
    Case("submit: effective 'yesterday'", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(set_obs(0, effectiveDateTime="yesterday"))),
    Case("submit: effective missing", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(lambda b: obs(0)(b).pop("effectiveDateTime"))),
    Case("submit: authored year 0", "POST", SUBMIT, 400, "REQUEST_INVALID_DATETIME",
         sub(lambda b: _entries(b)[-1]["resource"].update(authored="0000-01-01T00:00:00Z"))),
    Case("submit: answer is a string", "POST", SUBMIT, 422, f"{SMP}TOO_FEW_ANSWERS",
         sub(lambda b: _entries(b)[-1]["resource"]["item"][0].update(answer=[{"valueString": "yes"}]))),
    Case("submit: two answers", "POST", SUBMIT, 422, f"{SMP}TOO_MANY_ANSWERS",
         sub(lambda b: _entries(b)[-1]["resource"]["item"][0].update(
             answer=[{"valueBoolean": True}, {"valueBoolean": False}]))),
    Case("submit: answer list of a number", "POST", SUBMIT, 422, f"{SMP}TOO_FEW_ANSWERS",
         sub(lambda b: _entries(b)[-1]["resource"]["item"][0].update(answer=[1]))),
    Case("submit: item without linkId", "POST", SUBMIT, 400, f"{SMP}INVALID_BUNDLE",
         sub(lambda b: _entries(b)[-1]["resource"]["item"][0].pop("linkId"))),
    Case("submit: huge string element", "POST", SUBMIT, 422, f"{SMP}IMPOSSIBLE_VALUE",
         sub(lambda b: [obs(0)(b).update(note=[{"text": "x" * 900_000}]), set_value(0, 150)(b)])),
    Case("submit: no token", "POST", SUBMIT, 401, "SECURITY_TOKEN_MISSING", sub(lambda b: None), auth=None),
    Case("submit: nurse token", "POST", SUBMIT, 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION", sub(lambda b: None),
         auth="nurse"),
    # ---- wrong methods and paths -------------------------------------------------------------------
    Case("submit: GET", "GET", SUBMIT, 405, "REQUEST_METHOD_NOT_ALLOWED"),
    Case("submit: DELETE", "DELETE", SUBMIT, 405, "REQUEST_METHOD_NOT_ALLOWED"),
    Case("Observation search: POST", "POST", "/measurement/Observation", 405, "REQUEST_METHOD_NOT_ALLOWED", b"{}"),
    Case("Task: PUT", "PUT", T, 405, "REQUEST_METHOD_NOT_ALLOWED", b"{}", auth="nurse"),
    Case("Task: DELETE", "DELETE", T, 405, "REQUEST_METHOD_NOT_ALLOWED", auth="nurse"),
    Case("ClinicalImpression: DELETE", "DELETE", "/task/ClinicalImpression", 405, "REQUEST_METHOD_NOT_ALLOWED",
         auth="nurse"),
    Case("token: GET", "GET", TOKEN.format(realm="nemlogin"), 405, "REQUEST_METHOD_NOT_ALLOWED", auth=None),
    Case("Practitioner: GET collection", "GET", "/organization/Practitioner", 405, "REQUEST_METHOD_NOT_ALLOWED",
         auth="admin"),
    Case("unknown path", "GET", "/measurement/Nonsense/x/y", 404, "REQUEST_UNKNOWN_PATH"),
    Case("unknown service", "GET", "/nowhere", 404, "REQUEST_UNKNOWN_PATH"),
    Case("read: unknown type", "GET", "/measurement/Nonsense/1", 404, "RESOURCE_NOT_FOUND"),
    Case("read: type in the wrong service", "GET", f"/task/EpisodeOfCare/e-{CITIZEN}", 404, "RESOURCE_NOT_FOUND"),
    Case("read: unknown id", "GET", "/measurement/Observation/does-not-exist", 404, "RESOURCE_NOT_FOUND"),
    Case("read: SQL in id", "GET", "/measurement/Observation/x'%20OR%20'1'='1", 404, "RESOURCE_NOT_FOUND"),
    Case("read: 1,000-character id", "GET", "/measurement/Observation/" + "a" * 1000, 404, "RESOURCE_NOT_FOUND"),
    Case("read: another citizen's episode", "GET", f"/careplan/EpisodeOfCare/e-{OTHER_SAME_TEAM}", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT"),
    Case("read: another org's episode as nurse", "GET", f"/careplan/EpisodeOfCare/e-{OTHER_ORG}", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT", auth="nurse"),
    # ---- Observation search ------------------------------------------------------------------------------
    *[Case(f"Observation search: {label}", "GET", "/measurement/Observation", 400, code,
           params=(("patient", f"Patient/p-{CITIZEN}"), *extra))
      for label, extra, code in [
          ("_count=-1", (("_count", "-1"),), "SEARCH_INVALID_COUNT"),
          ("_count=0", (("_count", "0"),), "SEARCH_INVALID_COUNT"),
          ("_count=10^9", (("_count", "1000000000"),), "SEARCH_INVALID_COUNT"),
          ("_count=abc", (("_count", "abc"),), "SEARCH_INVALID_COUNT"),
          ("_count=1.5", (("_count", "1.5"),), "SEARCH_INVALID_COUNT"),
          ("_offset=abc", (("_offset", "abc"),), "SEARCH_INVALID_OFFSET"),
          ("_offset=-1", (("_offset", "-1"),), "SEARCH_INVALID_OFFSET"),
          ("_offset=10^12", (("_offset", "1000000000000"),), "SEARCH_INVALID_OFFSET"),
          ("unknown parameter", (("colour", "red"),), "SEARCH_UNKNOWN_PARAMETER"),
          ("SQL in a parameter name", ((SQL, "1"),), "SEARCH_UNKNOWN_PARAMETER"),
          ("modifier", (("code:text", "x"),), "SEARCH_UNSUPPORTED_MODIFIER"),
          ("chain", (("patient.name", "x"),), "SEARCH_UNSUPPORTED_MODIFIER"),
          ("date=yesterday", (("date", "yesterday"),), "SEARCH_INVALID_DATE"),
          ("date with SQL", (("date", "ge2026-01-01' OR '1'='1"),), "SEARCH_INVALID_DATE"),
          ("date=ge2026-13-01", (("date", "ge2026-13-01"),), "SEARCH_INVALID_DATE"),
          ("date=ap prefix", (("date", "ap2026-01-01"),), "SEARCH_INVALID_DATE"),
          ("empty code token", (("code", "NPU03011,"),), "SEARCH_INVALID_TOKEN"),
          ("empty code", (("code", ""),), "SEARCH_INVALID_TOKEN"),
          ("_sort=priority", (("_sort", "priority"),), "SEARCH_INVALID_SORT"),
          ("_sort=script", (("_sort", SCRIPT),), "SEARCH_INVALID_SORT"),
          ("patient twice", (("patient", f"Patient/p-{CITIZEN}"),), "SEARCH_REPEATED_PARAMETER"),
      ]],
    *[Case(f"Observation search: {label}", "GET", "/measurement/Observation", 400, code,
           params=(("patient", f"Patient/p-{CITIZEN}"), (name, value)))
      for label, name, value, code in [
          ("_count=² (superscript digit)", "_count", "²", "SEARCH_INVALID_COUNT"),
          ("_count=٣ (Arabic digit)", "_count", "٣", "SEARCH_INVALID_COUNT"),
          ("_offset=² (superscript digit)", "_offset", "²", "SEARCH_INVALID_OFFSET")]],
    Case("Observation search: no subject", "GET", "/measurement/Observation", 400,
         "GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED", auth="nurse"),
    Case("Observation search: SQL as patient", "GET", "/measurement/Observation", 400, "SEARCH_INVALID_REFERENCE",
         params=(("patient", SQL),), auth="nurse"),
    Case("Observation search: NUL in patient", "GET", "/measurement/Observation", 400, NUL, params=(("patient", "Patient/p-2\x000"),)),
    Case("Observation search: NUL in code", "GET", "/measurement/Observation", 400, NUL,
         params=(("patient", f"Patient/p-{CITIZEN}"), ("code", "NPU03011\x00"))),
    Case("EpisodeOfCare search: NUL in status", "GET", "/careplan/EpisodeOfCare", 400, NUL,
         params=(("patient", f"Patient/p-{CITIZEN}"), ("status", "active\x00"))),
    Case("Task search: NUL in status", "GET", "/task/Task", 400, NUL,
         params=(("responsible", "CareTeam/ct-0"), ("status", "ready\x00")), auth="nurse"),
    Case("AuditEvent search: NUL in patient", "GET", "/audit/AuditEvent", 400, NUL,
         params=(("patient", "Patient/p-\x00"),), auth="auditor"),
    Case("read: NUL in id", "GET", "/measurement/Observation/x%00y", 400, NUL),
    Case("token: NUL in context", "POST", TOKEN.format(realm="ehealth"), 400, "REQUEST_MALFORMED_FORM",
         b"grant_type=refresh_token&refresh_token=x&care_team_id=ct-%00", auth=None, content_type=FORM),
    Case("Practitioner: NUL in username", "POST", "/organization/Practitioner", 422,
         "ORGANIZATION_PRACTITIONER_USERNAME_INVALID", practitioner("catalogue\x00nul"), auth="admin"),
    Case("Observation search: another citizen", "GET", "/measurement/Observation", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("patient", f"Patient/p-{OTHER_SAME_TEAM}"),)),
    Case("Observation search: patient is an Observation", "GET", "/measurement/Observation", 400,
         "SEARCH_INVALID_REFERENCE", params=(("patient", "Observation/o-1"),)),
    # ---- EpisodeOfCare, Task, ClinicalImpression, Communication, PractitionerRole, AuditEvent searches --
    Case("EpisodeOfCare search: another citizen", "GET", "/careplan/EpisodeOfCare", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("patient", f"Patient/p-{OTHER_SAME_TEAM}"),)),
    Case("EpisodeOfCare search: _count=-1", "GET", "/careplan/EpisodeOfCare", 400, "SEARCH_INVALID_COUNT",
         params=(("patient", f"Patient/p-{CITIZEN}"), ("_count", "-1"))),
    Case("EpisodeOfCare search: another team as nurse", "GET", "/careplan/EpisodeOfCare", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("team", "CareTeam/ct-1"),), auth="nurse"),
    Case("Task search: citizen", "GET", "/task/Task", 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION",
         params=(("responsible", "CareTeam/ct-0"),)),
    Case("Task search: another team", "GET", "/task/Task", 403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
         params=(("responsible", "CareTeam/ct-1"),), auth="nurse"),
    Case("Task search: _count=10^9", "GET", "/task/Task", 400, "SEARCH_INVALID_COUNT",
         params=(("responsible", "CareTeam/ct-0"), ("_count", "1000000000")), auth="nurse"),
    Case("Task search: _offset=abc", "GET", "/task/Task", 400, "SEARCH_INVALID_OFFSET",
         params=(("responsible", "CareTeam/ct-0"), ("_offset", "abc")), auth="nurse"),
    Case("Task search: responsible not a reference", "GET", "/task/Task", 400, "SEARCH_INVALID_REFERENCE",
         params=(("responsible", "not/a reference"),), auth="nurse"),
    Case("Task search: SQL in _sort", "GET", "/task/Task", 400, "SEARCH_INVALID_SORT",
         params=(("responsible", "CareTeam/ct-0"), ("_sort", SQL)), auth="nurse"),
    Case("Task search: unknown _include", "GET", "/task/Task", 400, "SEARCH_INVALID_INCLUDE",
         params=(("responsible", "CareTeam/ct-0"), ("_include", "Task:owner")), auth="nurse"),
    Case("Task search: unknown parameter", "GET", "/task/Task", 400, "SEARCH_UNKNOWN_PARAMETER",
         params=(("responsible", "CareTeam/ct-0"), ("colour", "red")), auth="nurse"),
    Case("Task search: SQL in status", "GET", "/task/Task", 400, "SEARCH_INVALID_CODE",
         params=(("responsible", "CareTeam/ct-0"), ("status", SQL)), auth="nurse"),
    Case("ClinicalImpression search: no patient", "GET", "/task/ClinicalImpression", 403,
         "SECURITY_SEARCH_PARAMS_MANDATORY", auth="nurse"),
    Case("ClinicalImpression search: another org's patient", "GET", "/task/ClinicalImpression", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("patient", f"Patient/p-{OTHER_ORG}"),),
         auth="nurse"),
    Case("Communication search: no parameters", "GET", "/patient/Communication", 403,
         "SECURITY_SEARCH_PARAMS_MANDATORY"),
    Case("Communication search: script as recipient", "GET", "/patient/Communication", 400,
         "SEARCH_INVALID_REFERENCE", params=(("recipient", SCRIPT),)),
    Case("Communication search: another citizen", "GET", "/patient/Communication", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("patient", f"Patient/p-{OTHER_SAME_TEAM}"),)),
    Case("PractitionerRole search: another org", "GET", "/organization/PractitionerRole", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", params=(("organization", "Organization/org-1081"),),
         auth="admin"),
    Case("PractitionerRole search: no organization", "GET", "/organization/PractitionerRole", 403,
         "SECURITY_SEARCH_PARAMS_MANDATORY", auth="admin"),
    Case("AuditEvent search: date 30 February", "GET", "/audit/AuditEvent", 400, "SEARCH_INVALID_DATE",
         params=(("date", "ge2026-02-30"),), auth="auditor"),
    Case("AuditEvent search: _count=10^9", "GET", "/audit/AuditEvent", 400, "SEARCH_INVALID_COUNT",
         params=(("_count", "1000000000"),), auth="auditor"),
    Case("AuditEvent search: SQL in action", "GET", "/audit/AuditEvent", 400, "SEARCH_INVALID_CODE",
         params=(("action", SQL),), auth="auditor"),
    Case("AuditEvent search: citizen", "GET", "/audit/AuditEvent", 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION"),
    # ---- $search-measurements and $get-patient-procedures ----------------------------------------------
    Case("$search-measurements: no patient", "POST", "/measurement/$search-measurements", 400,
         f"{SM}PATIENT_AND_EPISODE_NOT_SPECIFIED", params({"name": "count", "valueInteger": 5})),
    Case("$search-measurements: count -1", "POST", "/measurement/$search-measurements", 400,
         f"{SM}COUNT_NOT_SPECIFIED", params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                                            {"name": "count", "valueInteger": -1},
                                            {"name": "start", "valueDateTime": "2026-01-01T00:00:00Z"})),
    Case("$search-measurements: count 10^9", "POST", "/measurement/$search-measurements-bundle-limit", 400,
         f"{SM}COUNT_LIMIT_EXCEEDED", params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                                             {"name": "count", "valueInteger": 10 ** 9},
                                             {"name": "start", "valueDateTime": "2026-01-01T00:00:00Z"})),
    Case("$search-measurements: unknown parameter", "POST", "/measurement/$search-measurements", 400,
         "REQUEST_UNKNOWN_PARAMETER", params({"name": "colour", "valueString": "red"})),
    Case("$search-measurements: parameter is an object", "POST", "/measurement/$search-measurements", 400,
         "REQUEST_INVALID_PARAMETERS", js({"resourceType": "Parameters", "parameter": {"name": "patient"}})),
    Case("$search-measurements: Bundle body", "POST", "/measurement/$search-measurements", 400,
         "REQUEST_WRONG_RESOURCE_TYPE", b'{"resourceType": "Bundle"}'),
    Case("$search-measurements: another citizen", "POST", "/measurement/$search-measurements", 403,
         "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
         params({"name": "patient", "valueReference": {"reference": f"Patient/p-{OTHER_SAME_TEAM}"}},
                {"name": "count", "valueInteger": 5}, {"name": "start", "valueDateTime": "2026-01-01T00:00:00Z"})),
    Case("$get-patient-procedures: no patient", "POST", "/careplan/$get-patient-procedures", 400,
         "CAREPLAN_GETPATIENTPROCEDURES_PATIENT_NOT_SPECIFIED",
         params({"name": "start", "valueDateTime": "2026-01-01T00:00:00Z"},
                {"name": "end", "valueDateTime": "2026-01-02T00:00:00Z"})),
    Case("$get-patient-procedures: end before start", "POST", "/careplan/$get-patient-procedures", 400,
         "CAREPLAN_GETPATIENTPROCEDURES_END_BEFORE_START",
         params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                {"name": "start", "valueDateTime": "2026-01-02T00:00:00Z"},
                {"name": "end", "valueDateTime": "2026-01-01T00:00:00Z"})),
    Case("$get-patient-procedures: ten years", "POST", "/careplan/$get-patient-procedures", 400,
         "CAREPLAN_GETPATIENTPROCEDURES_PERIOD_TOO_LONG",
         params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                {"name": "start", "valueDateTime": "2020-01-01T00:00:00Z"},
                {"name": "end", "valueDateTime": "2030-01-01T00:00:00Z"})),
    Case("$get-patient-procedures: start 2026-02-30", "POST", "/careplan/$get-patient-procedures", 400,
         "REQUEST_INVALID_DATETIME",
         params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                {"name": "start", "valueDateTime": "2026-02-30T00:00:00Z"},
                {"name": "end", "valueDateTime": "2026-03-01T00:00:00Z"})),
    Case("$get-patient-procedures: start is a number", "POST", "/careplan/$get-patient-procedures", 400,
         "REQUEST_INVALID_PARAMETER_TYPE",
         params({"name": "patient", "valueReference": {"reference": f"Patient/p-{CITIZEN}"}},
                {"name": "start", "valueInteger": 7}, {"name": "end", "valueDateTime": "2026-03-01T00:00:00Z"})),
    # ---- PATCH Task -----------------------------------------------------------------------------
    Case("Task PATCH: not a list", "PATCH", T, 400, "REQUEST_INVALID_PATCH", b'{"op": "replace"}', auth="nurse",
         content_type=PATCH),
    Case("Task PATCH: empty list", "PATCH", T, 400, "REQUEST_INVALID_PATCH", b"[]", auth="nurse", content_type=PATCH),
    Case("Task PATCH: unknown op", "PATCH", T, 400, "REQUEST_INVALID_PATCH",
         ops({"op": "frobnicate", "path": "/status", "value": "completed"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: path not a pointer", "PATCH", T, 400, "REQUEST_INVALID_PATCH",
         ops({"op": "replace", "path": "status", "value": "completed"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: replace without value", "PATCH", T, 400, "REQUEST_INVALID_PATCH",
         ops({"op": "replace", "path": "/status"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: 21 operations", "PATCH", T, 400, "REQUEST_INVALID_PATCH",
         ops(*[{"op": "test", "path": "/status", "value": "ready"}] * 21), auth="nurse", content_type=PATCH),
    Case("Task PATCH: unknown status", "PATCH", T, 422, "TASK_INVALID_STATUS",
         ops({"op": "replace", "path": "/status", "value": "exploded"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: status ready → draft", "PATCH", T, 422, "TASK_STATUS_TRANSITION_NOT_ALLOWED",
         ops({"op": "replace", "path": "/status", "value": "draft"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: change priority", "PATCH", T, 422, "TASK_PATCH_NOT_ALLOWED",
         ops({"op": "replace", "path": "/priority", "value": "routine"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: owner another practitioner", "PATCH", T, 422, "TASK_OWNER_NOT_CALLER",
         ops({"op": "add", "path": "/owner", "value": {"reference": "Practitioner/pr-0-1"}}), auth="nurse",
         content_type=PATCH),
    Case("Task PATCH: note is a string", "PATCH", T, 422, "TASK_INVALID_NOTE",
         ops({"op": "add", "path": "/note", "value": "x"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: huge note", "PATCH", T, 422, "TASK_INVALID_NOTE",
         ops({"op": "add", "path": "/note", "value": [{"text": "x" * 20_000}]}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: stale If-Match", "PATCH", T, 412, "REQUEST_VERSION_CONFLICT",
         ops({"op": "replace", "path": "/status", "value": "in-progress"}), auth="nurse", content_type=PATCH,
         headers=(("If-Match", 'W/"99"'),)),
    Case("Task PATCH: garbage If-Match", "PATCH", T, 400, "REQUEST_INVALID_IF_MATCH",
         ops({"op": "replace", "path": "/status", "value": "in-progress"}), auth="nurse", content_type=PATCH,
         headers=(("If-Match", "'; DROP TABLE"),)),
    Case("Task PATCH: fhir+json content type", "PATCH", T, 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
         ops({"op": "replace", "path": "/status", "value": "in-progress"}), auth="nurse"),
    Case("Task PATCH: malformed JSON", "PATCH", T, 400, "REQUEST_MALFORMED_JSON", b"[{", auth="nurse",
         content_type=PATCH),
    Case("Task PATCH: unknown Task", "PATCH", "/task/Task/no-such-task", 404, "RESOURCE_NOT_FOUND",
         ops({"op": "replace", "path": "/status", "value": "in-progress"}), auth="nurse", content_type=PATCH),
    Case("Task PATCH: citizen", "PATCH", T, 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION",
         ops({"op": "replace", "path": "/status", "value": "in-progress"}), content_type=PATCH),
    # ---- POST ClinicalImpression ---------------------------------------------------------------------
    Case("ClinicalImpression: a Task", "POST", "/task/ClinicalImpression", 400, "REQUEST_WRONG_RESOURCE_TYPE",
         b'{"resourceType": "Task"}', auth="nurse"),
    Case("ClinicalImpression: triage code", "POST", "/task/ClinicalImpression", 422, "CLINICALIMPRESSION_INVALID_CODE",
         ci(lambda b: b["code"]["coding"][0].update(code="TriagingResult")), auth="nurse"),
    Case("ClinicalImpression: code missing", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_INVALID_CODE", ci(lambda b: b.pop("code")), auth="nurse"),
    Case("ClinicalImpression: status draft", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_INVALID_STATUS", ci(lambda b: b.update(status="draft")), auth="nurse"),
    Case("ClinicalImpression: previous missing", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_PREVIOUS_MISSING", ci(lambda b: b.pop("previous")), auth="nurse"),
    Case("ClinicalImpression: previous unknown", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_PREVIOUS_NOT_FOUND",
         ci(lambda b: b.update(previous={"reference": "ClinicalImpression/nope"})), auth="nurse"),
    Case("ClinicalImpression: previous is an Observation", "POST", "/task/ClinicalImpression", 400,
         "REQUEST_INVALID_REFERENCE", ci(lambda b: b.update(previous={"reference": "Observation/o-1"})), auth="nurse"),
    Case("ClinicalImpression: unknown decision", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_INVALID_DECISION",
         ci(lambda b: [e.update(valueCodeableConcept={"coding": [{"system": "x", "code": "maybe"}]})
                       for e in b.get("extension", []) if "valueCodeableConcept" in e] or b.update(extension=[])),
         auth="nurse"),
    Case("ClinicalImpression: another patient", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_SUBJECT_MISMATCH",
         ci(lambda b: b.update(subject={"reference": f"Patient/p-{OTHER_SAME_TEAM}"})), auth="nurse"),
    Case("ClinicalImpression: another episode", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_EPISODE_MISMATCH",
         ci(lambda b: [e["valueReference"].update(reference=f"EpisodeOfCare/e-{OTHER_SAME_TEAM}")
                       for e in b["extension"] if "valueReference" in e]), auth="nurse"),
    Case("ClinicalImpression: note is a string", "POST", "/task/ClinicalImpression", 422,
         "CLINICALIMPRESSION_INVALID_NOTE", ci(lambda b: b.update(note="fine")), auth="nurse"),
    Case("ClinicalImpression: citizen", "POST", "/task/ClinicalImpression", 403,
         "SECURITY_TOKEN_INSUFFICIENT_PERMISSION", ci(lambda b: None)),
    # ---- POST and PATCH Communication ------------------------------------------------------------------
    Case("Communication: a Patient", "POST", "/patient/Communication", 400, "REQUEST_WRONG_RESOURCE_TYPE",
         b'{"resourceType": "Patient"}'),
    Case("Communication: status entered-in-error", "POST", "/patient/Communication", 422,
         "COMMUNICATION_INVALID_STATUS", msg(lambda m: m.update(status="entered-in-error"))),
    Case("Communication: no payload", "POST", "/patient/Communication", 422, "COMMUNICATION_PAYLOAD_MISSING",
         msg(lambda m: m.pop("payload"))),
    Case("Communication: empty text", "POST", "/patient/Communication", 422, "COMMUNICATION_PAYLOAD_EMPTY",
         msg(lambda m: m.update(payload=[{"contentString": "   "}]))),
    Case("Communication: text is a number", "POST", "/patient/Communication", 422, "COMMUNICATION_PAYLOAD_NOT_TEXT",
         msg(lambda m: m.update(payload=[{"contentString": 42}]))),
    Case("Communication: 100,000-character text", "POST", "/patient/Communication", 422,
         "COMMUNICATION_PAYLOAD_TOO_LONG", msg(lambda m: m.update(payload=[{"contentString": "x" * 100_000}]))),
    Case("Communication: no subject", "POST", "/patient/Communication", 422, "COMMUNICATION_SUBJECT_MISSING",
         msg(lambda m: m.pop("subject"))),
    Case("Communication: about another citizen", "POST", "/patient/Communication", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
         msg(lambda m: m.update(subject={"reference": f"Patient/p-{OTHER_SAME_TEAM}"}))),
    Case("Communication: recipient not a list", "POST", "/patient/Communication", 422,
         "COMMUNICATION_INVALID_RECIPIENT", msg(lambda m: m.update(recipient={"reference": "CareTeam/ct-0"}))),
    Case("Communication: recipient a CareTeam", "POST", "/patient/Communication", 400,
         "REQUEST_INVALID_REFERENCE", msg(lambda m: m.update(recipient=[{"reference": "CareTeam/ct-1"}]))),
    Case("Communication: recipient another org's citizen", "POST", "/patient/Communication", 422,
         "COMMUNICATION_INVALID_RECIPIENT", msg(lambda m: m.update(recipient=[{"reference": f"Patient/p-{OTHER_ORG}"}]))),
    Case("Communication: nurse about another org's citizen", "POST", "/patient/Communication", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
         msg(lambda m: m.update(subject={"reference": f"Patient/p-{OTHER_ORG}"},
                                recipient=[{"reference": f"Patient/p-{OTHER_ORG}"}], sender={"reference": "Practitioner/pr-0-0"})),
         auth="nurse"),
    Case("Communication PATCH: change the text", "PATCH", M, 422, "COMMUNICATION_PATCH_NOT_ALLOWED",
         ops({"op": "replace", "path": "/payload/0/contentString", "value": "forged"}), auth="nurse",
         content_type=PATCH),
    Case("Communication PATCH: unknown status", "PATCH", M, 422, "COMMUNICATION_INVALID_STATUS",
         ops({"op": "replace", "path": "/status", "value": "burnt"}), auth="nurse", content_type=PATCH),
    Case("Communication PATCH: sender marks read", "PATCH", M, 403, "COMMUNICATION_NOT_RECIPIENT",
         ops({"op": "replace", "path": "/status", "value": "completed"}), content_type=PATCH),
    Case("Communication PATCH: unknown message", "PATCH", "/patient/Communication/nope", 404, "RESOURCE_NOT_FOUND",
         ops({"op": "replace", "path": "/status", "value": "completed"}), auth="nurse", content_type=PATCH),
    # ---- ServiceRequest PUT/PATCH (thresholds) ----------------------------------------------------------
    Case("ServiceRequest PATCH: change the code", "PATCH", SR, 422, "SERVICEREQUEST_UPDATE_NOT_ALLOWED",
         ops({"op": "replace", "path": "/code/coding/0/code", "value": "NPU99999"}), auth="adjuster",
         content_type=PATCH),
    Case("ServiceRequest PATCH: remove the whole resource", "PATCH", SR, 422, "SERVICEREQUEST_PATCH_NOT_ALLOWED",
         ops({"op": "remove", "path": ""}), auth="adjuster", content_type=PATCH),
    Case("ServiceRequest PATCH: path not found", "PATCH", SR, 422, "REQUEST_PATCH_PATH_NOT_FOUND",
         ops({"op": "replace", "path": "/nothing/here", "value": 1}), auth="adjuster", content_type=PATCH),
    Case("ServiceRequest PATCH: failed test", "PATCH", SR, 422, "REQUEST_PATCH_TEST_FAILED",
         ops({"op": "test", "path": "/status", "value": "revoked"}), auth="adjuster", content_type=PATCH),
    Case("ServiceRequest PATCH: not a patch", "PATCH", SR, 400, "REQUEST_INVALID_PATCH", b"{}", auth="adjuster",
         content_type=PATCH),
    Case("ServiceRequest PUT: id mismatch", "PUT", SR, 400, "REQUEST_ID_MISMATCH",
         b'{"resourceType": "ServiceRequest", "id": "sr-other"}', auth="adjuster"),
    Case("ServiceRequest PUT: a Task", "PUT", SR, 400, "REQUEST_WRONG_RESOURCE_TYPE",
         b'{"resourceType": "Task", "id": "sr-20-spo2"}', auth="adjuster"),
    Case("ServiceRequest PUT: unknown", "PUT", "/careplan/ServiceRequest/sr-nobody", 404, "RESOURCE_NOT_FOUND",
         b'{"resourceType": "ServiceRequest", "id": "sr-nobody"}', auth="adjuster"),
    Case("ServiceRequest PUT: citizen", "PUT", SR, 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION",
         b'{"resourceType": "ServiceRequest", "id": "sr-20-spo2"}'),
    Case("ServiceRequest PUT: another org's", "PUT", f"/careplan/ServiceRequest/sr-{OTHER_ORG}-spo2", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT", f'{{"resourceType": "ServiceRequest", "id": '
         f'"sr-{OTHER_ORG}-spo2"}}'.encode(), auth="adjuster"),
    # ---- $create-episode-of-care -------------------------------------------------------------------------
    Case("enrolment: no bundle", "POST", "/careplan/$create-episode-of-care", 400, "REQUEST_INVALID_PARAMETERS",
         params({"name": "planDefinition", "valueString": "copd"}), auth="adjuster"),
    Case("enrolment: unknown plan", "POST", "/careplan/$create-episode-of-care", 422, "CAREPLAN_APPLY_NO_PLANDEFINITION",
         enrolment(lambda b: b["parameter"][1].update(valueString="astrology")), auth="adjuster"),
    Case("enrolment: two episodes", "POST", "/careplan/$create-episode-of-care", 422, f"{EOC}WRONG_EOC_COUNT",
         enrolment(lambda b: _enrol_bundle(b)["entry"].append(
             {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _enrol_entry(b, "EpisodeOfCare")})), auth="adjuster"),
    Case("enrolment: finished episode", "POST", "/careplan/$create-episode-of-care", 422,
         f"{EOC}EPISODE_OF_CARE_IN_NON_PLANNED_STATUS",
         enrolment(lambda b: _enrol_entry(b, "EpisodeOfCare").update(status="finished")), auth="adjuster"),
    Case("enrolment: 11-digit CPR", "POST", "/careplan/$create-episode-of-care", 422, "PATIENT_CREATE_INVALID_CPR",
         enrolment(lambda b: _enrol_entry(b, "Patient")["identifier"][0].update(value="01010112345")),
         auth="adjuster"),
    Case("enrolment: Observation entry", "POST", "/careplan/$create-episode-of-care", 422,
         f"{EOC}UNSUPPORTED_RESOURCE_TYPE",
         enrolment(lambda b: _enrol_bundle(b)["entry"].append(
             {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Observation"}})), auth="adjuster"),
    Case("enrolment: duplicate fullUrl", "POST", "/careplan/$create-episode-of-care", 400, "REQUEST_INVALID_BUNDLE",
         enrolment(lambda b: _enrol_bundle(b)["entry"][1].update(fullUrl=_enrol_bundle(b)["entry"][0]["fullUrl"])),
         auth="adjuster"),
    Case("enrolment: 101 entries", "POST", "/careplan/$create-episode-of-care", 400, "REQUEST_INVALID_BUNDLE",
         enrolment(lambda b: _enrol_bundle(b).update(entry=[
             {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": _enrol_entry(b, "Condition")} for _ in range(101)])),
         auth="adjuster"),
    Case("enrolment: citizen", "POST", "/careplan/$create-episode-of-care", 403,
         "SECURITY_TOKEN_INSUFFICIENT_PERMISSION", enrolment(lambda b: None)),
    # ---- token endpoint -------------------------------------------------------------------------------
    Case("token: unknown realm", "POST", TOKEN.format(realm="mordor"), 404, "AUTH_UNKNOWN_REALM",
         b"grant_type=password&username=citizen-20&password=twin", auth=None, content_type=FORM),
    Case("token: JSON body", "POST", TOKEN.format(realm="nemlogin"), 415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
         b'{"grant_type": "password"}', auth=None),
    Case("token: unknown grant", "POST", TOKEN.format(realm="nemlogin"), 400, "AUTH_UNSUPPORTED_GRANT",
         b"grant_type=client_credentials", auth=None, content_type=FORM),
    Case("token: no grant", "POST", TOKEN.format(realm="nemlogin"), 400, "AUTH_UNSUPPORTED_GRANT", b"",
         auth=None, content_type=FORM),
    Case("token: wrong password", "POST", TOKEN.format(realm="nemlogin"), 401, "AUTH_INVALID_CREDENTIALS",
         b"grant_type=password&username=citizen-20&password=wrong", auth=None, content_type=FORM),
    Case("token: SQL as username", "POST", TOKEN.format(realm="nemlogin"), 401, "AUTH_INVALID_CREDENTIALS",
         b"grant_type=password&username=%27%20OR%20%271%27%3D%271&password=x", auth=None, content_type=FORM),
    Case("token: NUL in username", "POST", TOKEN.format(realm="nemlogin"), 400, "REQUEST_MALFORMED_FORM",
         b"grant_type=password&username=citizen-20%00&password=twin", auth=None, content_type=FORM),
    Case("token: citizen in the practitioners' realm", "POST", TOKEN.format(realm="ehealth"), 401,
         "AUTH_INVALID_CREDENTIALS", b"grant_type=password&username=citizen-20&password=twin", auth=None,
         content_type=FORM),
    Case("token: form not UTF-8", "POST", TOKEN.format(realm="nemlogin"), 400, "REQUEST_MALFORMED_FORM",
         b"grant_type=password&username=\xff\xfe", auth=None, content_type=FORM),
    Case("token: 20 KiB form", "POST", TOKEN.format(realm="nemlogin"), 413, "REQUEST_TOO_LARGE",
         b"grant_type=password&username=" + b"a" * 20_000, auth=None, content_type=FORM),
    Case("token: context id not a FHIR id", "POST", TOKEN.format(realm="ehealth"), 400, "AUTH_INVALID_CONTEXT",
         b"grant_type=refresh_token&refresh_token=x&organization_id=a%7Cb", auth=None, content_type=FORM),
    Case("token: garbage refresh token", "POST", TOKEN.format(realm="ehealth"), 401, "SECURITY_TOKEN_INVALID",
         b"grant_type=refresh_token&refresh_token=garbage", auth=None, content_type=FORM),
    # ---- user management -------------------------------------------------------------------------------
    Case("Practitioner: a Patient", "POST", "/organization/Practitioner", 400, "REQUEST_WRONG_RESOURCE_TYPE",
         b'{"resourceType": "Patient"}', auth="admin"),
    Case("Practitioner: no username", "POST", "/organization/Practitioner", 422,
         "ORGANIZATION_PRACTITIONER_USERNAME_MISSING", b'{"resourceType": "Practitioner"}', auth="admin"),
    Case("Practitioner: username with spaces and script", "POST", "/organization/Practitioner", 422,
         "ORGANIZATION_PRACTITIONER_USERNAME_INVALID", practitioner(f"x {SCRIPT}"), auth="admin"),
    Case("Practitioner: username taken", "POST", "/organization/Practitioner", 409,
         "ORGANIZATION_PRACTITIONER_USERNAME_IN_USE", practitioner("nurse-0-0"), auth="admin"),
    Case("Practitioner: unknown role", "POST", "/organization/Practitioner", 422, "ORGANIZATION_ROLE_NOT_ASSIGNABLE",
         practitioner("catalogue-role", roles=("superuser",)), auth="admin"),
    Case("Practitioner: auditor role", "POST", "/organization/Practitioner", 422, "ORGANIZATION_ROLE_NOT_ASSIGNABLE",
         practitioner("catalogue-auditor", roles=("auditor",)), auth="admin"),
    Case("Practitioner: name is a string", "POST", "/organization/Practitioner", 400, "REQUEST_INVALID_RESOURCE",
         practitioner("catalogue-name", name="Ny Sygeplejerske"), auth="admin"),
    Case("Practitioner: nurse", "POST", "/organization/Practitioner", 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION",
         practitioner("catalogue-nurse"), auth="nurse"),
    Case("PractitionerRole: another org's team", "POST", "/organization/PractitionerRole", 403,
         "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
         practitioner_role(lambda r: r["extension"][0]["valueReference"].update(reference="CareTeam/ct-1")),
         auth="admin"),
    Case("PractitionerRole: unknown team", "POST", "/organization/PractitionerRole", 422,
         "ORGANIZATION_UNKNOWN_REFERENCE",
         practitioner_role(lambda r: r["extension"][0]["valueReference"].update(reference="CareTeam/ct-nope")),
         auth="admin"),
    Case("PractitionerRole: no role code", "POST", "/organization/PractitionerRole", 422,
         "ORGANIZATION_PRACTITIONERROLE_ROLE_MISSING", practitioner_role(lambda r: r.pop("code")), auth="admin"),
    Case("PractitionerRole: practitioner is a string", "POST", "/organization/PractitionerRole", 422,
         "ORGANIZATION_REFERENCE_MISSING", practitioner_role(lambda r: r.update(practitioner="Practitioner/x")),
         auth="admin"),
    Case("PractitionerRole DELETE: unknown", "DELETE", "/organization/PractitionerRole/nope", 404,
         "RESOURCE_NOT_FOUND", auth="admin"),
    Case("PractitionerRole DELETE: nurse", "DELETE", "/organization/PractitionerRole/{role}", 403,
         "SECURITY_TOKEN_INSUFFICIENT_PERMISSION", auth="nurse"),
    # ---- tokens on data routes ----------------------------------------------------------------------------
    Case("read: no token", "GET", f"/careplan/EpisodeOfCare/e-{CITIZEN}", 401, "SECURITY_TOKEN_MISSING", auth=None),
    Case("read: garbage token", "GET", f"/careplan/EpisodeOfCare/e-{CITIZEN}", 401, "SECURITY_TOKEN_INVALID",
         auth="garbage"),
    Case("read: Basic auth", "GET", f"/careplan/EpisodeOfCare/e-{CITIZEN}", 401, "SECURITY_TOKEN_MISSING",
         auth=None, headers=(("Authorization", "Basic Y2l0aXplbi0yMDp0d2lu"),)),
]


def path_of(case: Case, ctx: Ctx) -> str:
    return case.path.format(task=ctx.task, message=ctx.message, role=ctx.role)
