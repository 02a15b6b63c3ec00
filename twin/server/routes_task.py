"""The task service: the clinicians' worklist, acknowledging measurements, and their assessments.

How a FUT clinician handles a triaged submission (reference/fut-infrastructure.md §2 calls 10–12, §5)
---------------------------------------------------------------------------------------------------
The triage (:mod:`twin.server.triage_worker`) leaves, per submission, a ClinicalImpression
``TriagingResult`` (the rules' red / yellow / green) and a Task ``MeasurementForAssessment`` whose
``ehealth-task-responsible`` is the patient's CareTeam. The team's nurse then:

1. lists the team's worklist — ``GET /task/Task?responsible=CareTeam/…&status=ready&_sort=-priority
   &_include=Task:focus`` (the search must name the care team of the token: FUT searches carry
   every context dimension of the token, else 403; ``_include=Task:focus`` adds the triage
   ClinicalImpression each Task points to);
2. claims a Task: ``PATCH /task/Task/{id}`` with a JSON Patch (RFC 6902,
   ``application/json-patch+json``) setting ``/owner`` to her own Practitioner and ``/status`` to
   ``in-progress``. The CareTeam stays responsible, as a fallback if she does not finish;
3. records her assessment: ``POST /task/ClinicalImpression`` with code ``MeasurementAssessment``,
   ``previous`` → the triage ClinicalImpression and the decision extension (``approved`` or
   ``approved-for-sharing``);
4. completes the Task — ``PATCH`` ``/status`` = ``completed``. "Task is the mechanism through which
   a clinician acknowledges measurement submissions" (FUT's TaskAPI); a completed Task leaves the
   ``status=ready`` worklist.

A PATCH changes only what a clinician may change here — ``/status`` along the FHIR task state
machine (ready → in-progress → completed, ready → completed, any open state → cancelled),
``/owner`` (only ever to the caller: a nurse claims a Task for herself, she does not hand it to
somebody else) and ``/note`` — and stores a new version. Two nurses claiming the same Task are
kept apart by optimistic concurrency: ``If-Match: W/"<version>"`` (the ETag of the read) makes a
stale PATCH fail with 412 instead of silently overwriting the other nurse's claim.

The JSON Patch helpers here (:func:`read_patch`, :func:`check_if_match`, :func:`store_new_version`)
are shared with the patient service's message PATCH (:mod:`twin.server.routes_patient`).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import uuid
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth, jsonfast
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request, unprocessable
from twin.server.search import check_parameter_names
from twin.server.service import Service, fhir_response, now_iso, page_count, page_offset, read_json
from twin.server.storage import Filter, Listed, Row, Tx, new_id

# --------------------------------------------------------------------------------------------------
# JSON Patch (RFC 6902), shared with routes_patient
# --------------------------------------------------------------------------------------------------

JSON_PATCH = "application/json-patch+json"
RFC6902_OPS = ("add", "remove", "replace", "move", "copy", "test")
MAX_PATCH_OPS = 20  # a clinician's acknowledgement is 1-3 operations; more is a client bug or abuse
MAX_TEXT = 10_000  # characters of a note or message text (FUT ehealth-message payload)
MAX_NOTES = 100
_MISSING = object()
_IF_MATCH = re.compile(r'\s*(?:W/)?"?([0-9]{1,12})"?\s*')


@dataclass(frozen=True)
class PatchOp:
    """One JSON Patch operation, shape-checked; ``value`` is ``_MISSING`` for remove/move/copy."""

    op: str
    path: str
    value: object = _MISSING


def parse_json_patch(body: object) -> list[PatchOp]:
    """The operations of a JSON Patch document; 400 ``REQUEST_INVALID_PATCH`` unless it is one.

    Only the RFC 6902 shape is checked here: which operations a resource allows is the caller's
    business (a valid but refused operation is a 422, not a 400).
    """
    if not isinstance(body, list) or not body:
        raise bad_request("REQUEST_INVALID_PATCH", "a JSON Patch (RFC 6902) is a non-empty array of operations, "
                          'e.g. [{"op": "replace", "path": "/status", "value": "completed"}]')
    if len(body) > MAX_PATCH_OPS:
        raise bad_request("REQUEST_INVALID_PATCH", f"a patch may hold at most {MAX_PATCH_OPS} operations, "
                          f"this one has {len(body)}")
    ops = []
    for k, item in enumerate(body):
        where = f"operation [{k}]"
        if not isinstance(item, dict):
            raise bad_request("REQUEST_INVALID_PATCH", f"{where} is not an object")
        op, path = item.get("op"), item.get("path")
        if op not in RFC6902_OPS:
            raise bad_request("REQUEST_INVALID_PATCH", f"{where}: op must be one of {', '.join(RFC6902_OPS)}, "
                              f"got {str(op)[:40]!r}")
        if not isinstance(path, str) or (path and not path.startswith("/")):
            raise bad_request("REQUEST_INVALID_PATCH", f"{where}: path must be a JSON Pointer such as '/status'")
        if op in ("add", "replace", "test") and "value" not in item:
            raise bad_request("REQUEST_INVALID_PATCH", f"{where}: {op} needs a value")
        if op in ("move", "copy") and not isinstance(item.get("from"), str):
            raise bad_request("REQUEST_INVALID_PATCH", f"{where}: {op} needs a 'from' JSON Pointer")
        ops.append(PatchOp(op, path, item.get("value", _MISSING)))
    return ops


async def read_patch(self: Service, request: Request) -> list[PatchOp]:
    """The request's JSON Patch. FHIR also allows FHIRPath Patch (a ``Parameters`` resource sent as
    ``application/fhir+json``); FUT's clients send JSON Patch, so that is the one format taken."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != JSON_PATCH:
        raise FhirError(415, "REQUEST_UNSUPPORTED_MEDIA_TYPE",
                        f"PATCH takes a JSON Patch document ({JSON_PATCH}), not {ctype or 'no content type'!r}",
                        "not-supported")
    return parse_json_patch(await read_json(request, self.settings))


def check_if_match(request: Request, row: Row) -> None:
    """Optimistic concurrency: ``If-Match: W/"<version>"`` must name the stored version (412 if stale)."""
    header = request.headers.get("if-match")
    if header is None or header.strip() == "*":
        return
    m = _IF_MATCH.fullmatch(header)
    if not m:
        raise bad_request("REQUEST_INVALID_IF_MATCH", f'If-Match must be an ETag such as W/"3", got {header[:40]!r}')
    if int(m.group(1)) != row.version:
        raise FhirError(412, "REQUEST_VERSION_CONFLICT",
                        f"{row.type}/{row.id} is at version {row.version}, not {m.group(1)}: read it again and "
                        "retry the change on the current version", "conflict")


async def store_new_version(tx: Tx, row: Row, body: dict, now: str, status: str | None) -> Row:
    """Store ``body`` as the next version of ``row`` (meta and the ``status`` search column follow).

    ``Tx.update`` writes only if the stored version is still ``row.version`` and says how many rows
    it changed. On PostgreSQL a concurrent PATCH that committed between our read and our write
    leaves our UPDATE matching nothing: a lost race, raised as :class:`LostRace` (412), which rolls
    this transaction back and which :func:`with_retry_on_lost_race` retries when the client sent
    no If-Match.
    """
    version = row.version + 1
    # meta.source names the request that wrote a version (HAPI writes "#<request id>" too).
    body["meta"] = {**(body.get("meta") or {}), "versionId": str(version), "lastUpdated": now,
                    "source": f"#{uuid.uuid4().hex[:16]}"}
    new = Row(row.type, row.id, version, now, row.patient, row.episode, row.team, row.org, status, row.code,
              row.effective, row.priority, row.ident, json.dumps(body))
    if await tx.update(new) != 1:
        raise LostRace(412, "REQUEST_VERSION_CONFLICT",
                       f"{row.type}/{row.id} was changed by another request meanwhile: read it again and retry",
                       "conflict")
    return new


class LostRace(FhirError):
    """Another request stored a new version between our read and our write."""


LOST_RACE_RETRIES = 8  # each loss means another writer got through: n writers need at most n tries


async def with_retry_on_lost_race(request: Request, work):
    """Run ``work()`` (one transaction); a lost race is retried on the new version when the client
    did not ask for a version with If-Match (it then wants its change applied to whatever is current,
    as the read-modify-write it would otherwise do itself). With If-Match the 412 is the answer."""
    for attempt in range(LOST_RACE_RETRIES):
        try:
            return await work()
        except LostRace:
            if request.headers.get("if-match") is not None or attempt == LOST_RACE_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


def version_headers(row: Row) -> dict:
    return {"ETag": f'W/"{row.version}"', "Last-Modified": _http_date(row.last_updated)}


def _http_date(iso: str) -> str:
    try:
        t = dt.datetime.fromisoformat(iso)
    except ValueError:  # stored by another writer in another format: leave the header out of it
        return iso
    return t.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def body_reference(refs, value: object, expected: tuple[str, ...], what: str) -> tuple[str, str]:
    """``(type, id)`` of a Reference in a request body; 400 ``REQUEST_INVALID_REFERENCE`` otherwise."""
    reference = value.get("reference") if isinstance(value, dict) else None
    try:
        type_, id_ = refs.parse(reference)
    except ValueError:
        raise bad_request("REQUEST_INVALID_REFERENCE", f"{what} must be a Reference to a "
                          f"{' or '.join(expected)} on this server, got {str(value)[:120]!r}") from None
    if type_ not in expected:
        raise bad_request("REQUEST_INVALID_REFERENCE", f"{what} must reference a {' or '.join(expected)}, "
                          f"not a {type_}")
    return type_, id_


def check_annotation(value: object, what: str, code: str) -> dict:
    """An Annotation with text (≤ 10,000 characters); 422 ``code`` otherwise."""
    if not isinstance(value, dict) or not isinstance(value.get("text"), str) or not value["text"].strip():
        raise unprocessable(code, f"{what} must be an Annotation with a non-empty text")
    if len(value["text"]) > MAX_TEXT:
        raise unprocessable(code, f"{what}: text is limited to {MAX_TEXT} characters, got {len(value['text'])}")
    unknown = set(value) - {"text", "time", "authorReference", "authorString"}
    if unknown:
        raise unprocessable(code, f"{what}: unexpected elements {sorted(unknown)}")
    time = value.get("time")
    if time is not None:
        try:
            ok = isinstance(time, str) and dt.datetime.fromisoformat(time.replace("Z", "+00:00")).tzinfo is not None
        except ValueError:
            ok = False
        if not ok:
            raise unprocessable(code, f"{what}: time must be a FHIR dateTime with a zone")
    return value


# --------------------------------------------------------------------------------------------------
# Task: worklist search and PATCH
# --------------------------------------------------------------------------------------------------

TASK_STATUSES = ("draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
                 "on-hold", "failed", "completed", "entered-in-error")  # FHIR R4 task-status
FINAL_TASK_STATUSES = frozenset({"completed", "cancelled", "failed", "rejected", "entered-in-error"})
TASK_TRANSITIONS = {"ready": {"in-progress", "completed"}, "in-progress": {"completed"}}  # plus → cancelled


def task_transition_allowed(old: str, new: str) -> bool:
    """The clinician's part of the FHIR task state machine. Setting the status a Task already has is
    allowed (a retried PATCH whose answer was lost must not fail); a finished Task stays finished."""
    if old == new:
        return True
    if new == "cancelled":
        return old not in FINAL_TASK_STATUSES
    return new in TASK_TRANSITIONS.get(old, ())


TASK_SEARCH_PARAMS = frozenset({"responsible", "status", "patient", "episodeOfCare", "_sort", "_include", "_count",
                                "_offset", "_format", "_pretty"})
TASK_SORTS = ("-priority", "_lastUpdated")
TASK_INCLUDES = ("Task:focus",)


def _check_task_search(q) -> None:
    """A filter the service does not know must not be dropped silently (the nurse would get more
    than she asked for): unknown parameters, sorts, includes and status codes are a 400."""
    check_parameter_names(q, TASK_SEARCH_PARAMS, "Task search", ("responsible", "_sort", "_count", "_offset"))
    sort = q.get("_sort")
    if sort is not None and sort not in TASK_SORTS:
        raise bad_request("SEARCH_INVALID_SORT", f"_sort={sort!r}: Task search sorts by {' or '.join(TASK_SORTS)}")
    for include in q.getlist("_include"):
        if include not in TASK_INCLUDES:
            raise bad_request("SEARCH_INVALID_INCLUDE", f"_include={include!r}: Task search includes {TASK_INCLUDES[0]}")
    for status in (q.get("status") or "").split(",") if q.get("status") is not None else ():
        if status not in TASK_STATUSES:
            raise bad_request("SEARCH_INVALID_CODE", f"status={status!r} is not a Task status "
                              f"({', '.join(TASK_STATUSES)})")


async def search_tasks(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Task.search")
    q = request.query_params
    _check_task_search(q)
    count, offset = page_count(q), page_offset(q)
    filters = []
    if claims.user_type != "PRACTITIONER":
        raise FhirError(403, "SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE",
                        f"Operation not allowed for user type: {claims.user_type}", "forbidden")
    claims.require_context("CareTeam")
    team = self.ref_id(q.get("responsible"), "CareTeam", "responsible")
    if team != claims.context.care_team_id:
        raise FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                        "Search parameters not matching security token context: responsible", "forbidden")
    filters.append(Filter("team", "=", team))
    if q.get("status"):
        filters.append(Filter("status", "in", q.get("status").split(",")))
    # narrower views of the same team's list (FUT: patient, episodeOfCare are Task search parameters)
    patient = self.ref_id(q.get("patient"), "Patient", "patient")
    if patient:
        filters.append(Filter("patient", "=", patient))
    episode = self.ref_id(q.get("episodeOfCare"), "EpisodeOfCare", "episodeOfCare")
    if episode:
        filters.append(Filter("episode", "=", episode))
    order = [("priority", True), ("last_updated", False)] if q.get("_sort") == "-priority" else [("last_updated", False)]
    order.append(("id", False))  # a total order, so that _offset pages neither repeat nor skip
    included: list[Listed] = []
    async with self.storage.transaction(one_write=True) as tx:
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        rows = await tx.search_listed("Task", filters, order, limit=count + 1, offset=offset)
        more, rows = len(rows) > count, rows[:count]
        if "Task:focus" in q.getlist("_include"):
            by_type: dict[str, list[str]] = {}
            for r in rows:
                focus = (jsonfast.loads(r.body).get("focus") or {}).get("reference")
                try:
                    type_, id_ = self.refs.parse(focus)
                except ValueError:  # a focus this server cannot resolve is simply not included
                    continue
                if id_ not in by_type.setdefault(type_, []):
                    by_type[type_].append(id_)
            for type_, ids in by_type.items():  # one query per focus type, not one per Task
                found = {f.id: f for f in await tx.search_listed(type_, [Filter("id", "in", ids)], limit=len(ids))}
                included += [found[i] for i in ids if i in found and found[i].team == team]
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "Task", query=str(q))
    return self.searchset(request, rows, included, next_offset=offset + count if more else None)


def _task_patch(task: dict, ops: list[PatchOp], claims: auth.Claims, refs, now: str) -> dict:
    """``task`` with ``ops`` applied, all or nothing (RFC 6902: a patch is atomic); 422 on a refused op."""
    out = json.loads(json.dumps(task))
    author = refs.ref("Practitioner", claims.user_id) if claims.user_type == "PRACTITIONER" else None
    for k, p in enumerate(ops):
        where = f"operation [{k}] ({p.op} {p.path})"
        if p.path == "/status" and p.op in ("add", "replace"):
            if not isinstance(p.value, str) or p.value not in TASK_STATUSES:
                raise unprocessable("TASK_INVALID_STATUS", f"{where}: {str(p.value)[:40]!r} is not a FHIR task-status "
                                    f"code ({', '.join(TASK_STATUSES)})")
            old = out.get("status")
            if not task_transition_allowed(old, p.value):
                raise unprocessable("TASK_STATUS_TRANSITION_NOT_ALLOWED",
                                    f"{where}: a Task goes ready → in-progress → completed, ready → completed, or "
                                    f"from an open status to cancelled; not {old} → {p.value}")
            if old != p.value:
                out["status"] = p.value
                period = out.setdefault("executionPeriod", {})
                if p.value == "in-progress":
                    period.setdefault("start", now)
                elif p.value in FINAL_TASK_STATUSES:
                    period["end"] = now
        elif p.path == "/owner" and p.op in ("add", "replace"):
            type_, id_ = body_reference(refs, p.value, ("Practitioner",), f"{where}: value")
            if claims.user_type != "PRACTITIONER" or id_ != claims.user_id:
                raise unprocessable("TASK_OWNER_NOT_CALLER",
                                    f"{where}: a Task is claimed by the practitioner doing the work: owner must be "
                                    f"your own Practitioner ({claims.user_id}), not {type_}/{id_}")
            out["owner"] = refs.ref("Practitioner", id_)  # stored as an absolute URL, like every reference
        elif (p.path, p.op) in (("/note", "add"), ("/note", "replace"), ("/note/-", "add")):
            existing = out.get("note") or []
            if p.path == "/note/-":
                notes = [*existing, check_annotation(p.value, f"{where}: value", "TASK_INVALID_NOTE")]
            elif isinstance(p.value, list):
                notes = [check_annotation(v, f"{where}: value[{i}]", "TASK_INVALID_NOTE") for i, v in enumerate(p.value)]
            else:
                raise unprocessable("TASK_INVALID_NOTE", f"{where}: value must be a list of Annotations "
                                    "(append one with path /note/-)")
            if len(notes) > MAX_NOTES:
                raise unprocessable("TASK_INVALID_NOTE", f"a Task holds at most {MAX_NOTES} notes")
            stamped = []
            for n in notes:
                if n in existing:  # notes already on the Task keep their author and time
                    stamped.append(n)
                    continue
                # a new note is the caller's: nobody writes in another clinician's name
                if "authorString" in n or n.get("authorReference") not in (None, author):
                    raise unprocessable("TASK_INVALID_NOTE", f"{where}: a new note's author is the caller")
                stamped.append({**({"authorReference": author} if author else {}), "time": n.get("time") or now,
                                "text": n["text"]})
            out["note"] = stamped
            if not stamped:
                del out["note"]
        else:
            raise unprocessable("TASK_PATCH_NOT_ALLOWED",
                                f"{where}: a Task PATCH may add or replace /status, /owner or /note (append with "
                                "add /note/-), nothing else")
    return out


async def patch_task(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Task.patch")
    if claims.user_type == "PRACTITIONER":
        claims.require_context("CareTeam")
    elif claims.user_type != "SYSTEM":
        raise auth.AuthError.of("SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE", claims.user_type)
    id_ = request.path_params["id"]
    ops = await read_patch(self, request)  # a malformed patch is refused before the database is touched

    async def work() -> Row:
        now = now_iso()
        async with self.storage.transaction() as tx:
            row = await self.get_for(tx, claims, "Task", id_)  # the Task's team must be the token's care team
            check_if_match(request, row)
            task = json.loads(row.body)
            patched = _task_patch(task, ops, claims, self.refs, now)
            if patched != task:
                patched["lastModified"] = now
                row = await store_new_version(tx, row, patched, now, patched.get("status"))
            await self.audit(tx, claims, "U", "patch", [row.patient], "Task", id_)
        return row

    row = await with_retry_on_lost_race(request, work)
    return fhir_response(json.loads(row.body), 200, version_headers(row))


# --------------------------------------------------------------------------------------------------
# ClinicalImpression: the practitioner's assessment, and search
# --------------------------------------------------------------------------------------------------

ASSESSMENT = "MeasurementAssessment"
DECISIONS = ("approved", "approved-for-sharing")  # IG CodeSystem-ehealth-clinicalimpression-decision-codes


def _codes(concept: object, system: str) -> list[str]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c.get("code") for c in codings or [] if isinstance(c, dict) and c.get("system") == system]


def _extension(resource: dict, url: str) -> dict | None:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def _investigation_refs(resource: dict) -> list[str]:
    return [i.get("reference") for inv in resource.get("investigation") or [] if isinstance(inv, dict)
            for i in inv.get("item") or [] if isinstance(i, dict) and isinstance(i.get("reference"), str)]


async def create_clinical_impression(self: Service, request: Request) -> Response:
    """``POST /task/ClinicalImpression``: the nurse's ``MeasurementAssessment`` of a triage.

    The stored resource is rebuilt from the validated request with the same builder the rest of the
    twin uses, so what is stored is always well-formed: subject, episode and compartments come from
    the triage ClinicalImpression it follows (``previous``), the assessor is the caller, the time is
    the server's.
    """
    claims = self.claims(request)
    claims.require("ClinicalImpression.create")
    claims.require_user_type("PRACTITIONER")  # an assessment has a practitioner as its assessor
    claims.require_context("CareTeam")
    body = await read_json(request, self.settings)
    if not isinstance(body, dict) or body.get("resourceType") != "ClinicalImpression":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", "POST /task/ClinicalImpression expects a ClinicalImpression")
    if ASSESSMENT not in _codes(body.get("code"), fr.CI_CODE_SYSTEM):
        raise unprocessable("CLINICALIMPRESSION_INVALID_CODE",
                            f"a practitioner records code {fr.CI_CODE_SYSTEM}|{ASSESSMENT}; the triage's "
                            "TriagingResult is written by the system")
    status = body.get("status", "completed")
    if status not in ("in-progress", "completed"):
        raise unprocessable("CLINICALIMPRESSION_INVALID_STATUS",
                            f"status must be in-progress or completed, got {str(status)[:40]!r}")
    if body.get("previous") is None:
        raise unprocessable("CLINICALIMPRESSION_PREVIOUS_MISSING",
                            "an assessment names the triage it assesses in 'previous'")
    _, previous_id = body_reference(self.refs, body["previous"], ("ClinicalImpression",), "previous")
    decision_ext = _extension(body, fr.EXT_CI_DECISION)
    decisions = _codes((decision_ext or {}).get("valueCodeableConcept"), fr.CI_DECISION_SYSTEM)
    if len(decisions) != 1 or decisions[0] not in DECISIONS:
        raise unprocessable("CLINICALIMPRESSION_INVALID_DECISION",
                            f"extension {fr.EXT_CI_DECISION} must carry one decision code of {fr.CI_DECISION_SYSTEM}: "
                            f"{' or '.join(DECISIONS)}")
    if body.get("assessor") is not None:
        _, assessor = body_reference(self.refs, body["assessor"], ("Practitioner",), "assessor")
        if assessor != claims.user_id:
            raise unprocessable("CLINICALIMPRESSION_ASSESSOR_NOT_CALLER",
                                f"the assessor is the practitioner recording the assessment ({claims.user_id})")
    notes = body.get("note") or []
    if not isinstance(notes, list):
        raise unprocessable("CLINICALIMPRESSION_INVALID_NOTE", "note must be a list of Annotations")
    notes = [check_annotation(n, f"note[{i}]", "CLINICALIMPRESSION_INVALID_NOTE")["text"] for i, n in enumerate(notes)]
    if len(notes) > MAX_NOTES:
        raise unprocessable("CLINICALIMPRESSION_INVALID_NOTE", f"at most {MAX_NOTES} notes")
    now = now_iso()
    resource_id = new_id()
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        prev = await tx.get("ClinicalImpression", previous_id)
        if prev is None:
            raise unprocessable("CLINICALIMPRESSION_PREVIOUS_NOT_FOUND", f"previous: ClinicalImpression/{previous_id} "
                                "is not known")
        self.check_row_access(claims, prev)  # only the triage of one's own team's patients
        if prev.code != "TriagingResult":
            raise unprocessable("CLINICALIMPRESSION_PREVIOUS_NOT_TRIAGE",
                                f"previous must be a TriagingResult, ClinicalImpression/{previous_id} is a {prev.code}")
        if body.get("subject") is not None:
            _, subject = body_reference(self.refs, body["subject"], ("Patient",), "subject")
            if subject != prev.patient:
                raise unprocessable("CLINICALIMPRESSION_SUBJECT_MISMATCH",
                                    f"subject must be the patient of the triage, Patient/{prev.patient}")
        episode_ext = _extension(body, fr.EXT_EPISODE_OF_CARE)
        if episode_ext is not None:
            _, episode = body_reference(self.refs, episode_ext.get("valueReference"), ("EpisodeOfCare",),
                                        "extension episodeOfCare")
            if episode != prev.episode:
                raise unprocessable("CLINICALIMPRESSION_EPISODE_MISMATCH",
                                    f"the episode of care must be the triage's, EpisodeOfCare/{prev.episode}")
        triaged = _investigation_refs(json.loads(prev.body))
        assessed = _investigation_refs(body) or triaged
        if not set(assessed) <= set(triaged):
            raise unprocessable("CLINICALIMPRESSION_INVESTIGATION_NOT_IN_PREVIOUS",
                                "investigation may only name measurements of the triage being assessed")
        ci = fr.clinical_impression_assessment(self.refs, resource_id, prev.patient, prev.episode, previous_id,
                                               claims.user_id, now, decisions[0], None, assessed)
        ci["status"] = status
        if notes:
            ci["note"] = [{"authorReference": self.refs.ref("Practitioner", claims.user_id), "time": now, "text": t}
                          for t in notes]
        ci["meta"] = {**ci["meta"], "versionId": "1", "lastUpdated": now}
        row = Row("ClinicalImpression", resource_id, 1, now, prev.patient, prev.episode, prev.team, prev.org, status,
                  ASSESSMENT, now, None, None, json.dumps(ci))
        await tx.insert([row])
        await self.audit(tx, claims, "C", None, [prev.patient], "ClinicalImpression", resource_id)
    url = self.refs.url("ClinicalImpression", resource_id)
    return fhir_response(ci, 201, {"Location": f"{url}/_history/1", **version_headers(row)})


async def search_scope(self: Service, tx: Tx, claims: auth.Claims, q) -> list[Filter]:
    """Compartment filters for a ``?patient=…`` / ``?episodeOfCare=…`` search within the token's
    context: a citizen their own patient, a practitioner the patients of their care team. A search
    parameter outside the context is a 403, as in FUT (not an empty result that would let a client
    probe for ids)."""
    patient = self.ref_id(q.get("patient"), "Patient", "patient")
    episode = self.ref_id(q.get("episodeOfCare"), "EpisodeOfCare", "episodeOfCare")
    if patient is None and episode is None:
        raise auth.AuthError.of("SECURITY_SEARCH_PARAMS_MANDATORY", "patient or episodeOfCare")
    mismatch = FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                         "Search parameters not matching security token context: "
                         + ", ".join(k for k in ("patient", "episodeOfCare") if q.get(k)), "forbidden")
    filters = []
    if claims.user_type == "PATIENT":
        own = claims.context.patient_id
        if own is None or patient not in (None, own):
            raise mismatch
        filters.append(Filter("patient", "=", own))
    elif claims.user_type == "PRACTITIONER":
        (team,) = claims.require_context("CareTeam")
        if patient is not None and not await tx.count("EpisodeOfCare", [Filter("patient", "=", patient),
                                                                         Filter("team", "=", team)]):
            raise mismatch
        filters.append(Filter("team", "=", team))
    if patient is not None:
        filters.append(Filter("patient", "=", patient))
    if episode is not None:
        row = await tx.get("EpisodeOfCare", episode)
        if row is None or (claims.user_type == "PATIENT" and row.patient != claims.context.patient_id) or (
                claims.user_type == "PRACTITIONER" and row.team != claims.context.care_team_id):
            raise mismatch
        filters.append(Filter("episode", "=", episode))
    return filters


async def search_clinical_impressions(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("ClinicalImpression.search")
    q = request.query_params
    count, offset = page_count(q), page_offset(q)
    codes = [c.rpartition("|")[2] for c in q.get("code", "").split(",") if c]
    async with self.storage.transaction(one_write=True) as tx:
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        filters = await search_scope(self, tx, claims, q)
        if codes:
            filters.append(Filter("code", "in", codes))
        if q.get("status"):
            filters.append(Filter("status", "in", q.get("status").split(",")))
        rows = await tx.search_listed("ClinicalImpression", filters, [("effective", True), ("id", False)],
                                      limit=count + 1, offset=offset)
        more, rows = len(rows) > count, rows[:count]
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "ClinicalImpression", query=str(q))
    return self.searchset(request, rows, next_offset=offset + count if more else None)


def routes(service: Service, guarded) -> list[Route]:
    def r(path, handler, method):
        return Route(path, guarded(functools.partial(handler, service)), methods=[method])

    return [r("/task/Task", search_tasks, "GET"),
            r("/task/Task/{id}", patch_task, "PATCH"),
            r("/task/ClinicalImpression", search_clinical_impressions, "GET"),
            r("/task/ClinicalImpression", create_clinical_impression, "POST")]
