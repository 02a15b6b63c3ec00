"""The measurement service: ``$submit-measurement``, Observation search and ``$search-measurements``.

**Submitting** (:mod:`twin.server.submission`): a citizen's readings and answers arrive together in
one ``$submit-measurement``; the server stores them with one implicit **Provenance** whose
``target`` lists them — FUT's notion of *one submission*. A resubmission of the same bundle (same
entry identifiers) stores nothing new and is answered 200 with the original locations and
``X-Twin-Duplicate: true``; a parallel copy that loses the race on the unique identifier index is
answered the same way (:func:`twin.server.app.guarded` runs the handler again).

**Reading, one resource at a time** — ``GET /measurement/Observation?subject=|patient=…
&episodeOfCare=…&code=…&date=…`` (fut-infrastructure.md §2 call 14), how a clinician's app draws a
graph of one measurement type. FUT refuses a search that names neither the patient nor the episode
(400 ``GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED``: an Observation search over everybody is never
legitimate) and one outside the token's context (403, :func:`twin.server.search.access_scope`).
The twin supports ``subject``/``patient``, ``episodeOfCare``, ``code`` (token: ``system|code``,
``code``, ``system|``; comma = or), ``date`` (prefixes ``eq ge gt le lt``; the value is the interval
its precision names, so ``date=eq2025-03-03`` is that whole Danish day), ``_count``, ``_offset`` and
``_sort=date|-date``; like a strict FHIR server it answers any other parameter with 400
``SEARCH_UNKNOWN_PARAMETER`` rather than silently ignoring a filter the client relies on
(``_format`` and ``_pretty`` are presentation only and ignored). The answer is a ``searchset`` with
``total`` and a ``next`` link while there are more pages.

**Reading, one submission at a time** — ``POST /measurement/$search-measurements`` and
``$search-measurements-bundle-limit`` (§2 call 8; IG ``OperationDefinition--s-search-measurements``
and ``…-bundle-limit``). Body ``Parameters{patient | episodeOfCare, start XOR end, count}`` (the
plain operation takes FUT's ``period`` instead of start/end too). The answer, as in FUT's examples,
is a ``collection`` Bundle of nested ``collection`` Bundles, one per submission: its Observations
and QuestionnaireResponse, the Questionnaire answered, and the Provenance. ``start`` finds the
submissions recorded at or after it, oldest first; ``end`` those recorded before it, newest first
(the IG's rule); a ``period`` those recorded within it, newest first. ``count`` is 1–100 (required
by the bundle-limit variant; the twin also bounds the plain operation at 100, the reason FUT added
the variant). The twin selects submissions by **Provenance.recorded** — the bundle-limit
operation's description; FUT's parameter texts also mention the measurements' effective time,
which for a live submission is the same moment.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections import defaultdict

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth, jsonfast
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request
from twin.server.search import (
    ParamSpec,
    access_scope,
    check_parameter_names,
    parse_instant,
    read_parameters,
    reference_id,
    reference_param,
    storage_instant,
)
from twin.server.service import (
    Service,
    audit_record,
    fhir_response,
    now_iso,
    page_count,
    page_offset,
    read_json,
)
from twin.server.storage import Filter, OutboxItem, new_id
from twin.server.submission import (
    BY_CODE,
    check_submission,
    load_ranges,
    parse_submission,
    read_stored,
    store_rows,
    submission_key,
    submission_targets,
    triage_input,
)


async def submit_measurement(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("$submit-measurement")
    body = await read_json(request, self.settings)
    entries, idents = parse_submission(body, self.refs)
    targets = submission_targets(entries, claims, self.refs)
    now = now_iso()
    # A parallel copy of the same submission that commits first makes our insert violate the
    # unique identifier index; `guarded` then runs this handler again, which answers 200 as a
    # resubmission. Either way the submission is stored once. One read (was it stored before, its
    # episode, its ServiceRequests) and one write: the resources, the outbox item that makes the
    # triage happen, and the audit record.
    async with self.storage.transaction(one_write=True) as tx:
        stored = await read_stored(tx, targets, submission_key(idents))
        if stored.provenance_id is not None:
            return await _already_submitted(self, tx, claims, idents, stored.provenance_id)
        plan = check_submission(entries, idents, targets, stored, self.refs)
        await load_ranges(plan, tx)
        rows, locations = store_rows(plan, self.refs, now)
        triage = OutboxItem(new_id(), "triage", jsonfast.dumps({
            "patient": plan.patient_id, "episode": plan.episode_id, "team": plan.team_id, "org": plan.org_id,
            "resources": [[r.type, r.id] for r in rows if r.type != "Provenance"], **triage_input(plan)}), now)
        await tx.store(rows, triage, audit_record(claims, "C", "$submit-measurement", [plan.patient_id], "Bundle"))
    self.triage.wake.set()
    return fhir_response(fr.bundle_transaction_response([(loc, now, "201 Created") for loc in locations]), 201)


async def _already_submitted(self: Service, tx, claims: auth.Claims, idents: list[str], provenance_id: str) -> Response:
    """The answer to a resubmission: the stored submission's locations, in the order of ``idents``;
    409 if the stored submission that shares the first identifier is not this one."""
    provenance = await tx.get("Provenance", provenance_id)
    if provenance is None:  # resources are never deleted; a Provenance found a moment ago is there
        raise AssertionError(f"Provenance/{provenance_id} vanished")
    by_id: dict[str, tuple[str, str]] = {}  # resource id -> (type, the client's identifier)
    for target in jsonfast.loads(provenance.body).get("target") or []:
        try:
            type_, id_ = self.refs.parse(target.get("reference"))
        except ValueError:
            continue
        by_id[id_] = (type_, (target.get("identifier") or {}).get("value"))
    rows = []
    for t in ("Observation", "QuestionnaireResponse"):
        rows += await tx.search(t, [Filter("id", "in", [i for i, (ty, _) in by_id.items() if ty == t])],
                                limit=len(by_id))
    # a submission stored before the Provenance named the identifiers kept them in the ident column
    by_ident = {by_id[r.id][1] or r.ident: r for r in rows}
    if (set(by_ident) != set(idents) or len(rows) != len(idents)
            or (claims.user_type == "PATIENT" and provenance.patient != claims.context.patient_id)):
        raise FhirError(409, "MEASUREMENT_SUBMITMEASUREMENT_CONFLICTING_RESUBMISSION",
                        "some of these resources were submitted before, in another submission", "conflict")
    entries = [(f"{self.refs.url(by_ident[i].type, by_ident[i].id)}/_history/{by_ident[i].version}",
                by_ident[i].last_updated, "200 OK") for i in idents]
    bundle = fr.bundle_transaction_response(entries)
    return fhir_response(bundle, 200, headers={"X-Twin-Duplicate": "true"})


# ------------------------------------------------------------------------------ Observation search
SEARCH_PARAMS = frozenset({"subject", "patient", "episodeOfCare", "code", "date", "_count", "_offset", "_sort"})
SINGLE_PARAMS = ("subject", "patient", "episodeOfCare", "_count", "_offset", "_sort")  # code and date may repeat (and)
IGNORED_PARAMS = frozenset({"_format", "_pretty"})  # presentation only
SORTS = {"date": False, "-date": True}
DATE_PREFIXES = ("eq", "ge", "gt", "le", "lt")


def _check_parameter_names(q) -> None:
    check_parameter_names(q, SEARCH_PARAMS | IGNORED_PARAMS, "Observation search", SINGLE_PARAMS)


def code_filter(value: str) -> Filter:
    """One ``code`` parameter: comma-separated tokens, any of which may match. The stored ``code``
    column has no system, so a ``system|code`` token matches only when that pair is a measurement
    the twin knows; an unknown pair (or injected text) simply matches nothing."""
    codes: set[str] = set()
    for token in value.split(","):
        if not token:
            raise bad_request("SEARCH_INVALID_TOKEN", f"code={value!r} has an empty token")
        if "|" not in token:
            codes.add(token)
            continue
        system, code = token.split("|", 1)
        if not system:  # |code: a code without a system
            codes.add(code)
        elif not code:  # system|: every code of that system
            codes |= {c for s, c in BY_CODE if s == system}
        elif (system, code) in BY_CODE:
            codes.add(code)
    return Filter("code", "in", sorted(codes))


def date_filters(value: str) -> list[Filter]:
    """One ``date`` parameter as filters on the stored (UTC) ``effective`` column: the value names
    an interval ``[lo, hi)`` at its precision, and the prefix says how ``effective`` relates to it."""
    prefix = value[:2] if value[:2].isalpha() else "eq"
    text = value[2:] if value[:2].isalpha() else value
    if prefix not in DATE_PREFIXES:
        raise bad_request("SEARCH_INVALID_DATE", f"date={value!r}: the prefix {prefix!r} is not supported; use "
                          f"{', '.join(DATE_PREFIXES)}")
    try:
        lo, hi = parse_instant(text)
    except ValueError as e:
        raise bad_request("SEARCH_INVALID_DATE", f"date={value!r}: {e}") from None
    lo_s, hi_s = storage_instant(lo), storage_instant(hi)
    return {"eq": [Filter("effective", ">=", lo_s), Filter("effective", "<", hi_s)],
            "ge": [Filter("effective", ">=", lo_s)], "gt": [Filter("effective", ">=", hi_s)],
            "le": [Filter("effective", "<", hi_s)], "lt": [Filter("effective", "<", lo_s)]}[prefix]


async def search_observations(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Observation.search")
    q = request.query_params
    _check_parameter_names(q)
    count, offset = page_count(q), page_offset(q)
    patients = sorted({p for p in (reference_id(self, q.get("subject"), "Patient", "subject"),
                                   reference_id(self, q.get("patient"), "Patient", "patient")) if p})
    episode = reference_id(self, q.get("episodeOfCare"), "EpisodeOfCare", "episodeOfCare")
    if not patients and episode is None:
        raise bad_request("GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED",
                          "At least one of subject and context must be provided.")
    filters = [code_filter(v) for v in q.getlist("code")]
    for v in q.getlist("date"):
        filters += date_filters(v)
    sort = q.get("_sort", "date")
    if sort not in SORTS:
        raise bad_request("SEARCH_INVALID_SORT", f"_sort={sort!r}: Observation search sorts by date or -date")
    order = [("effective", SORTS[sort]), ("id", SORTS[sort])]  # id: a stable order across pages
    async with self.storage.transaction(one_write=True) as tx:
        filters += await access_scope(self, tx, claims, patients, [episode] if episode else [])
        total = await tx.count("Observation", filters)
        rows = await tx.search_listed("Observation", filters, order, limit=count, offset=offset)
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "Observation", query=str(q))
    return self.searchset(request, rows, total=total, next_offset=offset + count if offset + len(rows) < total else None)


# --------------------------------------------------------------------------- $search-measurements
SM = "MEASUREMENT_SEARCHMEASUREMENT_"  # FUT's codes (systematic-error-messages, ehealth-measurement)
MAX_BUNDLES = 100
BUNDLE_LIMIT = "$search-measurements-bundle-limit"
SEARCH = "$search-measurements"
_REFERENCE, _INSTANT = ("valueReference",), ("valueDateTime", "valueDate")
SEARCH_SPEC: dict[str, ParamSpec] = {
    BUNDLE_LIMIT: {"patient": (_REFERENCE, False), "episodeOfCare": (_REFERENCE, False),
                   "count": (("valueInteger",), False), "start": (_INSTANT, False), "end": (_INSTANT, False)},
}
SEARCH_SPEC[SEARCH] = {**SEARCH_SPEC[BUNDLE_LIMIT], "period": (("valuePeriod",), False)}
NOT_MODELLED = ("device", "based-on", "_tag")
SUBMISSION_TYPES = ("Observation", "QuestionnaireResponse")


def _instant(value: object, name: str) -> tuple:
    try:
        return parse_instant(value)
    except ValueError as e:
        raise bad_request("REQUEST_INVALID_DATETIME", f"{name}: {e}") from None


def _recorded_window(operation: str, params: dict) -> tuple[list[Filter], bool]:
    """Filters on Provenance.recorded (the row's ``effective``) and whether newest come first."""
    start, end = params.get("start", [None])[0], params.get("end", [None])[0]
    if "period" in params:
        if start is not None or end is not None:
            raise bad_request(f"{SM}PERIOD_AND_START_OR_END_SPECIFIED", "Give either period or start/end, not both")
        period = params["period"][0] if isinstance(params["period"][0], dict) else {}
        if not period.get("start") and not period.get("end"):
            raise bad_request(f"{SM}PERIOD_NOT_SPECIFIED", "Period must be specified")
        filters = []
        if period.get("start"):
            filters.append(Filter("effective", ">=", storage_instant(_instant(period["start"], "period.start")[0])))
        if period.get("end"):
            filters.append(Filter("effective", "<", storage_instant(_instant(period["end"], "period.end")[1])))
        return filters, True
    if start is not None and end is not None:
        raise bad_request(f"{SM}START_AND_END_BOTH_SPECIFIED", "Both start and end cannot be specified")
    if start is not None:
        return [Filter("effective", ">=", storage_instant(_instant(start, "start")[0]))], False
    if end is not None:
        return [Filter("effective", "<", storage_instant(_instant(end, "end")[1]))], True
    if operation == SEARCH:
        raise bad_request(f"{SM}PERIOD_NOT_SPECIFIED", "Period must be specified (or start or end)")
    raise bad_request(f"{SM}START_OR_END_NOT_SPECIFIED", "Either start or end must be provided, but none was provided")


def _count(operation: str, params: dict) -> int:
    if "count" not in params:
        if operation == SEARCH:
            return MAX_BUNDLES
        raise bad_request(f"{SM}COUNT_NOT_SPECIFIED", "A positive number for Count must be specified")
    count = params["count"][0]
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise bad_request(f"{SM}COUNT_NOT_SPECIFIED", "A positive number for Count must be specified")
    if count > MAX_BUNDLES:
        raise bad_request(f"{SM}COUNT_LIMIT_EXCEEDED", f"Count limit of {MAX_BUNDLES} exceeded")
    return count


async def search_measurements(self: Service, operation: str, request: Request) -> Response:
    claims = self.claims(request)
    claims.require(SEARCH)  # FUT guards both variants with the one permission
    params = read_parameters(await read_json(request, self.settings), operation, SEARCH_SPEC[operation],
                             unsupported=NOT_MODELLED)
    unsupported = f"{SM}UNSUPPORTED_REFERENCE"
    patient = (reference_param(self, params["patient"][0], "Patient", "patient", unsupported)
               if "patient" in params else None)
    episode = (reference_param(self, params["episodeOfCare"][0], "EpisodeOfCare", "episodeOfCare", unsupported)
               if "episodeOfCare" in params else None)
    if patient is None and episode is None:
        raise bad_request(f"{SM}PATIENT_AND_EPISODE_NOT_SPECIFIED", "At least patient or episodeOfCare must be specified")
    window, newest_first = _recorded_window(operation, params)
    count = _count(operation, params)
    async with self.storage.transaction(one_write=True) as tx:
        scope = await access_scope(self, tx, claims, [patient] if patient else [], [episode] if episode else [])
        # One Provenance per submission, on the patient/episode index ordered by recorded time;
        # then one search per target type and one for the Questionnaires answered.
        provenances = await tx.search("Provenance", [*scope, *window],
                                      [("effective", newest_first), ("id", newest_first)], limit=count)
        targets: dict[str, list[tuple[str, str]]] = {}
        wanted: dict[str, set[str]] = defaultdict(set)
        for p in provenances:
            refs = []
            for t in jsonfast.loads(p.body).get("target") or []:
                try:
                    type_, id_ = self.refs.parse((t or {}).get("reference"))
                except ValueError:
                    continue
                if type_ in SUBMISSION_TYPES:
                    refs.append((type_, id_))
                    wanted[type_].add(id_)
            targets[p.id] = refs
        found = {}
        for type_, ids in wanted.items():
            for row in await tx.search(type_, [*scope, Filter("id", "in", sorted(ids))], limit=len(ids)):
                found[(type_, row.id)] = jsonfast.loads(row.body)
        questionnaire_ids = set()
        for (type_, _), body in found.items():
            if type_ == "QuestionnaireResponse":
                with contextlib.suppress(ValueError):  # a QuestionnaireResponse without a readable questionnaire
                    questionnaire_ids.add(self.refs.parse(body.get("questionnaire"))[1])
        questionnaires = {}
        if questionnaire_ids:
            for row in await tx.search("Questionnaire", [Filter("id", "in", sorted(questionnaire_ids))],
                                       limit=len(questionnaire_ids)):
                questionnaires[row.id] = jsonfast.loads(row.body)
        await self.audit(tx, claims, "E", operation, [p.patient for p in provenances], "Bundle")
    entries = []
    for p in provenances:
        inner, seen = [], set()
        for type_, id_ in targets[p.id]:
            body = found.get((type_, id_))
            if body is None:
                continue
            inner.append({"fullUrl": self.refs.url(type_, id_), "resource": body})
            q_url = body.get("questionnaire") if type_ == "QuestionnaireResponse" else None
            q_id = q_url.rsplit("/", 1)[-1] if isinstance(q_url, str) else None
            if q_id in questionnaires and q_id not in seen:
                seen.add(q_id)
                inner.append({"fullUrl": self.refs.url("Questionnaire", q_id), "resource": questionnaires[q_id]})
        inner.append({"fullUrl": self.refs.url("Provenance", p.id), "resource": jsonfast.loads(p.body)})
        # A stable urn for the nested bundle: the same submission has the same fullUrl in every answer.
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, self.refs.url('Provenance', p.id))}",
                        "resource": {"resourceType": "Bundle", "type": "collection", "entry": inner}})
    bundle: dict = {"resourceType": "Bundle", "type": "collection"}
    if entries:
        bundle["entry"] = entries
    return fhir_response(bundle)


def routes(service: Service, guarded) -> list[Route]:
    return [Route("/measurement/$submit-measurement", guarded(functools.partial(submit_measurement, service),
                                                              retry_on_conflict=True), methods=["POST"]),
            Route("/measurement/Observation", guarded(functools.partial(search_observations, service)),
                  methods=["GET"]),
            Route(f"/measurement/{SEARCH}", guarded(functools.partial(search_measurements, service, SEARCH)),
                  methods=["POST"]),
            Route(f"/measurement/{BUNDLE_LIMIT}",
                  guarded(functools.partial(search_measurements, service, BUNDLE_LIMIT)), methods=["POST"])]
