"""The service described as OpenAPI 3.1: ``GET /openapi.json``, for clients, load tests and fuzzing.

FUT publishes its API as a FHIR implementation guide (profiles, OperationDefinitions, a
CapabilityStatement per service — the twin serves one at ``/metadata``). A CapabilityStatement
says *which* interactions exist; it does not say which parameters a search takes, which status
codes come back or which bodies are refused, and generic HTTP tools (schemathesis, load
generators, client generators) read OpenAPI, not FHIR. So the twin describes itself twice.

The document is built from the running application: :func:`build` walks the Starlette app's
routes (so nothing served is left out, and nothing not served is described) and takes, for each
``(method, path)``, the human part — summary, FUT background, query parameters, body, status codes —
from :data:`OPERATIONS`. A route without an entry there is still listed, marked
``x-twin-undocumented``, and :func:`undocumented` names it: the test suite fails until somebody
writes its entry. Entries for routes no longer served are reported by :func:`unserved`.

Conventions of every operation:

* security: ``bearerAuth`` (a JWT from the token endpoint) unless the entry says ``public``;
* bodies are FHIR JSON objects (``application/fhir+json``; JSON Patch for PATCH), only their
  ``resourceType`` is constrained here — the FHIR profiles are the contract for the rest;
* every error is an ``OperationOutcome`` whose ``issue[0].details.coding[0].code`` is the FUT-style
  error code (:mod:`twin.server.errors`); 401 always carries ``WWW-Authenticate: Bearer``;
* 500 is listed everywhere because the service answers an unexpected failure with an
  OperationOutcome too; the test suite treats any 500 as a bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

import twin
from twin.server import auth
from twin.server.service import MAX_COUNT, SERVICE_OF

OPENAPI_VERSION = "3.1.0"
FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"

# -- the parts entries are made of ----------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    description: str
    schema: dict = field(default_factory=lambda: {"type": "string"})
    required: bool = False
    repeated: bool = False  # ``date=ge…&date=lt…``: an array, one value per occurrence
    where: str = "query"  # or "header"


@dataclass(frozen=True)
class Op:
    """What a route does, for :data:`OPERATIONS`. ``ok`` maps success statuses to descriptions;
    ``errors`` lists the error statuses (each an OperationOutcome); ``body`` is the resource type
    of a FHIR JSON body (``"JSONPatch"`` for a JSON Patch array, ``"form"`` for the token form)."""

    summary: str
    description: str
    ok: dict[int, str]
    errors: tuple[int, ...]
    query: tuple[Param, ...] = ()
    body: str | None = None
    result: str = "Resource"  # schema name of the success body: Resource, Bundle, Token, Health, OpenAPI, None
    public: bool = False
    example: dict | None = None


def _ref_param(name: str, type_: str, what: str, required: bool = False) -> Param:
    return Param(name, f"{what} — `{type_}/{{id}}`, an absolute URL of this server, or an id",
                 {"type": "string", "examples": [f"{type_}/example-1"]}, required)


COUNT = Param("_count", f"page size, 1 to {MAX_COUNT} (FUT's careplan server caps pages at about 200)",
              {"type": "integer", "minimum": 1, "maximum": MAX_COUNT})
OFFSET = Param("_offset", "how many matches to skip (the `next` link carries it)",
               {"type": "integer", "minimum": 0, "maximum": 1_000_000})
STATUS = Param("status", "comma-separated status codes (any of them matches)")
DATE = Param("date", "`[eq|ge|gt|le|lt]YYYY-MM-DD[Thh:mm[:ss[.sss]][Z|±hh:mm]]`; a day means the whole Danish "
                     "day; repeat for a range", {"type": "string", "pattern": r"^(eq|ge|gt|le|lt)?\d{4}-\d{2}-\d{2}"},
             repeated=True)
IF_MATCH = Param("If-Match", 'optimistic concurrency: `W/"<version>"` (the ETag of the read); a stale one is 412',
                 where="header")
PUBLIC_ERRORS = (500,)
READ_ERRORS = (400, 401, 403, 404, 500)
SEARCH_ERRORS = (400, 401, 403, 500)
WRITE_ERRORS = (400, 401, 403, 409, 413, 415, 422, 500)

# -- the table: one entry per (method, path) the app serves -----------------------------------------

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/health"): Op(
        "Liveness and database check",
        "Not a FUT interaction: load balancers and the test harness poll it. Answers once the database answers.",
        {200: "the service and its database are up"}, PUBLIC_ERRORS, result="Health", public=True),
    ("GET", "/metadata"): Op(
        "CapabilityStatement",
        "The FHIR CapabilityStatement of the twin: resource types, interactions and operations served.",
        {200: "a FHIR R4 CapabilityStatement"}, PUBLIC_ERRORS, public=True),
    ("GET", "/openapi.json"): Op(
        "This OpenAPI document",
        "Built from the running application's routes (twin.server.openapi).",
        {200: "an OpenAPI 3.1 document"}, PUBLIC_ERRORS, result="OpenAPI", public=True),
    ("POST", "/auth/realms/{realm}/protocol/openid-connect/token"): Op(
        "Log in, or re-scope a token to a context (Keycloak stand-in)",
        "OAuth 2.0 token endpoint of realm `nemlogin` (citizens) or `ehealth` (practitioners). "
        "`grant_type=password` logs a seeded account in; `grant_type=refresh_token` with `organization_id`, "
        "`care_team_id`, `patient_id`, `episode_of_care_id` returns a token scoped to that context if the user may "
        "act there (a practitioner's care-team memberships, a citizen's own episodes), else 403 "
        "`SECURITY_TOKEN_CONTEXT_NOT_ALLOWED`.",
        {200: "an OIDC token response"}, (400, 401, 403, 404, 413, 415, 500), body="form", result="Token",
        public=True),
    ("POST", "/measurement/$submit-measurement"): Op(
        "Submit a citizen's measurements (one submission)",
        "FUT `$submit-measurement`: a `Parameters` whose `bundle` is a transaction of Observations and at most one "
        "QuestionnaireResponse, validated whole and stored in one transaction with one Provenance; triage follows "
        "asynchronously. A resubmission of the same entries answers 200 with the original locations and "
        "`X-Twin-Duplicate: true`.",
        {201: "stored: a transaction-response Bundle", 200: "already stored: the original locations"},
        WRITE_ERRORS, body="Parameters", result="Bundle"),
    ("POST", "/measurement/$search-measurements"): Op(
        "A citizen's submissions, one nested Bundle per submission",
        "FUT `$search-measurements`: `Parameters{patient | episodeOfCare, start XOR end | period, count}`. A "
        "`collection` Bundle of `collection` Bundles, one per submission (its Observations, QuestionnaireResponse, "
        "the Questionnaire answered, the Provenance), selected by Provenance.recorded.",
        {200: "a collection Bundle"}, WRITE_ERRORS, body="Parameters", result="Bundle"),
    ("POST", "/measurement/$search-measurements-bundle-limit"): Op(
        "A citizen's submissions, at most `count` of them",
        "FUT `$search-measurements-bundle-limit`: as `$search-measurements` with `start` or `end` and a required "
        "`count` (1-100).",
        {200: "a collection Bundle"}, WRITE_ERRORS, body="Parameters", result="Bundle"),
    ("GET", "/measurement/Observation"): Op(
        "Search observations of one citizen or episode",
        "How a clinician's app draws a graph of one measurement type. `subject`/`patient` or `episodeOfCare` is "
        "required (400 `GENERAL_SUBJECT_AND_CONTEXT_NOT_PROVIDED`) and must lie in the token's context; unknown "
        "parameters are a 400 `SEARCH_UNKNOWN_PARAMETER`.",
        {200: "a searchset Bundle of Observation"}, SEARCH_ERRORS,
        (_ref_param("subject", "Patient", "the citizen"), _ref_param("patient", "Patient", "the citizen"),
         _ref_param("episodeOfCare", "EpisodeOfCare", "the episode"),
         Param("code", "tokens `system|code`, `code` or `system|`; comma = or; repeat = and", repeated=True),
         DATE, Param("_sort", "`date` or `-date`", {"type": "string", "enum": ["date", "-date"]}), COUNT, OFFSET),
        result="Bundle"),
    ("POST", "/careplan/$get-patient-procedures"): Op(
        "The citizen's to-do list: ServiceRequests resolved into timing slots",
        "FUT `$get-patient-procedures`: `Parameters{patient, start, end}` (optionally `episodeOfCare`, `extra`), "
        "at most 31 days. A `collection` Bundle with the CarePlans and ServiceRequests involved and one Parameters "
        "whose `item_n` rows are the slots, with the measurements already submitted in each.",
        {200: "a collection Bundle"}, WRITE_ERRORS, body="Parameters", result="Bundle"),
    ("POST", "/careplan/$create-episode-of-care"): Op(
        "Enrol a citizen: Patient (found by CPR or created), EpisodeOfCare, CarePlan and ServiceRequests",
        "FUT `$create-episode-of-care` (`Parameters{episodeOfCareAndProvenances = Bundle}`: one EpisodeOfCare in "
        "status `planned` (the twin also takes `active`), the Conditions of its `diagnosis`, Provenances targeting "
        "it with a privacy policy), folded together with `Patient/$createPatient` (an optional Patient entry with a "
        "CPR identifier: reused when known) and `PlanDefinition/$apply` (parameter `planDefinition`: `copd` or "
        "`heart-failure`; optional `weekdays`, e.g. `mon+thu`), in one transaction. The episode is managed by the "
        "token's organisation and followed by its care team. A new citizen gets a `nemlogin` account "
        "`citizen-<patient id>` (password: extension `urn:fut-twin:StructureDefinition:initial-password` on the "
        "Patient entry, else `twin`). Permission `EpisodeOfCare$create-episode-of-care` (role `citizenEnroller`). "
        "The answer is a transaction-response Bundle (resources with `Prefer: return=representation`). Errors: 400 "
        "malformed Parameters/Bundle; 403 no permission, no care-team context, organisation or team not the "
        "token's; 409 `EPISODEOFCARE_CREATE_ALREADY_ENROLLED`; 422 `EPISODEOFCARE_CREATE_*` (WRONG_EOC_COUNT, "
        "UNSUPPORTED_RESOURCE_TYPE, EPISODE_OF_CARE_IN_NON_PLANNED_STATUS, INCORRECT_CONDITION_SUBJECT, "
        "INCORRECT_PROVENANCE_TARGET, NO_REQUIRED_PROVENANCE_POLICIES, PATIENT_MUST_NOT_BE_DECEASED), "
        "`PATIENT_CREATE_CPR_MISSING`, `CAREPLAN_APPLY_NO_PLANDEFINITION`.",
        {201: "a transaction-response Bundle: Patient (201 created / 200 reused), EpisodeOfCare, CarePlan, "
              "Conditions, Provenances (the client's and the server's origin Provenance), ServiceRequests"},
        WRITE_ERRORS, (Param("Prefer", "`return=representation` puts the stored resources into the answer",
                             where="header"),), body="Parameters", result="Bundle"),
    ("PUT", "/careplan/ServiceRequest/{id}"): Op(
        "Change a citizen's thresholds (the whole ServiceRequest)",
        "Only the `ehealth-referenceRange` extensions may differ from the stored version (else 422 "
        "`SERVICEREQUEST_UPDATE_NOT_ALLOWED`): RELRAL (red) and RELGAL (yellow), low < high, inside the device's "
        "range, red outside yellow (else 422 `SERVICEREQUEST_INVALID_REFERENCE_RANGE`). The next submission is "
        "triaged with them. Permission `ServiceRequest.update` (role `monitoring_adjuster`), token scoped to the "
        "care team following the episode (another team 403 `SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT`).",
        {200: "the ServiceRequest, new version (ETag)"}, READ_ERRORS + (409, 412, 413, 415, 422), (IF_MATCH,),
        body="ServiceRequest"),
    ("PATCH", "/careplan/ServiceRequest/{id}"): Op(
        "Change a citizen's thresholds (JSON Patch)",
        "RFC 6902 add / remove / replace / test on the ServiceRequest, e.g. `replace "
        "/extension/3/extension/0/valueQuantity/value`; the result is checked as for PUT. Permission "
        "`ServiceRequest.patch` (role `monitoring_adjuster`).",
        {200: "the ServiceRequest, new version (ETag)"}, READ_ERRORS + (409, 412, 413, 415, 422), (IF_MATCH,),
        body="JSONPatch"),
    ("PATCH", "/task/Task/{id}"): Op(
        "Claim, complete or annotate a Task (JSON Patch)",
        "`/status` along the task state machine, `/owner` (only to the caller), `/note`. A nurse claims a Task by "
        "setting owner to herself and status `in-progress`, and completes it after her assessment.",
        {200: "the Task, new version"}, READ_ERRORS + (409, 412, 413, 415, 422), (IF_MATCH,), body="JSONPatch"),
    ("GET", "/task/ClinicalImpression"): Op(
        "Search triage results and assessments",
        "ClinicalImpressions (`TriagingResult`, `MeasurementAssessment`) of a citizen or episode in the token's "
        "context.",
        {200: "a searchset Bundle of ClinicalImpression"}, SEARCH_ERRORS,
        (_ref_param("patient", "Patient", "the citizen"), _ref_param("episodeOfCare", "EpisodeOfCare", "the episode"),
         Param("code", "comma-separated codes (`TriagingResult`, `MeasurementAssessment`)"), STATUS, COUNT, OFFSET),
        result="Bundle"),
    ("POST", "/task/ClinicalImpression"): Op(
        "Record a nurse's assessment of a submission",
        "A ClinicalImpression `MeasurementAssessment` whose `previous` is the triage ClinicalImpression, with the "
        "decision extension (`approved` or `approved-for-sharing`).",
        {201: "the ClinicalImpression created"}, WRITE_ERRORS + (404,), body="ClinicalImpression"),
    ("GET", "/patient/Communication"): Op(
        "Search messages",
        "A conversation about a citizen (`patient`) or an inbox (`recipient`: the citizen's own, a care team's, a "
        "practitioner's), newest first; one of the two is mandatory.",
        {200: "a searchset Bundle of Communication"}, SEARCH_ERRORS,
        (_ref_param("patient", "Patient", "the citizen the messages are about"),
         Param("recipient", "`Patient/{id}`, `Practitioner/{id}` or `CareTeam/{id}`"), STATUS, COUNT, OFFSET),
        result="Bundle"),
    ("POST", "/patient/Communication"): Op(
        "Send a message",
        "FUT ehealth-message: a citizen writes to their care team (extension recipientCareTeam), a practitioner to "
        "a citizen of the token's team.",
        {201: "the Communication created"}, WRITE_ERRORS + (404,), body="Communication"),
    ("PATCH", "/patient/Communication/{id}"): Op(
        "Mark a message read (JSON Patch of /status to completed)",
        "Only a recipient of the message may mark it read.",
        {200: "the Communication, new version"}, READ_ERRORS + (409, 412, 413, 415, 422), (IF_MATCH,),
        body="JSONPatch"),
    ("GET", "/careplan/EpisodeOfCare"): Op(
        "Search episodes of care",
        "A citizen searches their own (`patient` = the token's patient); a practitioner their care team's roster "
        "(`team` = the token's care team). FUT: a search must carry every context dimension of the token, else "
        "403 `SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT`.",
        {200: "a searchset Bundle of EpisodeOfCare"}, SEARCH_ERRORS,
        (_ref_param("patient", "Patient", "the citizen (citizens must give their own)"),
         _ref_param("team", "CareTeam", "the care team (practitioners must give the token's)"), STATUS, COUNT),
        result="Bundle"),
    ("GET", "/task/Task"): Op(
        "The care team's worklist",
        "Tasks for which the care team is responsible (`ehealth-task-responsible`), e.g. `status=ready&"
        "_sort=-priority&_include=Task:focus`: red submissions first, each with its triage ClinicalImpression. "
        "`responsible` must be the token's care team.",
        {200: "a searchset Bundle of Task (and ClinicalImpression with _include)"}, SEARCH_ERRORS,
        (_ref_param("responsible", "CareTeam", "the responsible care team (the token's)"), STATUS,
         _ref_param("patient", "Patient", "only this citizen's Tasks"),
         _ref_param("episodeOfCare", "EpisodeOfCare", "only this episode's Tasks"),
         Param("_sort", "`-priority`: most urgent first", {"type": "string", "enum": ["-priority"]}),
         Param("_include", "`Task:focus` adds each Task's focus", {"type": "string", "enum": ["Task:focus"]},
               repeated=True), COUNT, OFFSET),
        result="Bundle"),
    ("GET", "/{service}/{type}/{id}"): Op(
        "Read a resource by id",
        "`GET {base}/{service}/{Type}/{id}` on the service that holds the type (FUT references are absolute URLs "
        "of that form). A citizen reads their own data, a practitioner that of the token's care team "
        "(else 403 `SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT`); the ETag is the version.",
        {200: "the resource"}, READ_ERRORS),
    ("POST", "/organization/Practitioner"): Op(
        "Create a practitioner of the administrator's organisation (user management)",
        "Organisation administrators only (`careteamAdministrator` membership in the token's organisation). "
        "Creates the Practitioner and its login account in realm `ehealth`: username = the identifier of system "
        "`urn:fut-twin:username`; password = extension `urn:fut-twin:StructureDefinition:initial-password` or "
        "`twin`; account roles = extensions `urn:fut-twin:StructureDefinition:account-role` (valueCode). The "
        "practitioner can act nowhere until a PractitionerRole adds them to a care team.",
        {201: "the Practitioner created"}, WRITE_ERRORS, body="Practitioner",
        example={"resourceType": "Practitioner",
                 "identifier": [{"system": "urn:fut-twin:username", "value": "nurse-new-1"}],
                 "name": [{"text": "Nurse New"}],
                 "extension": [{"url": "urn:fut-twin:StructureDefinition:account-role",
                                "valueCode": "monitoringAssistor"}]}),
    ("POST", "/organization/PractitionerRole"): Op(
        "Add a practitioner to a care team of the organisation",
        "A membership: `practitioner`, the care team in extension "
        "`http://ehealth.sundhed.dk/fhir/StructureDefinition/ehealth-ext-careteam`, one role `code` "
        "(careteam-participant-role: monitoringAssistor, clinicalViewer or careteamAdministrator). Team and "
        "practitioner must belong to the administrator's organisation (else 403 "
        "`SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT`). The practitioner can re-scope to the team at once.",
        {201: "the PractitionerRole created"}, WRITE_ERRORS, body="PractitionerRole",
        example={"resourceType": "PractitionerRole",
                 "extension": [{"url": "http://ehealth.sundhed.dk/fhir/StructureDefinition/ehealth-ext-careteam",
                                "valueReference": {"reference": "CareTeam/ct-0"}}],
                 "practitioner": {"reference": "Practitioner/pr-0-0"},
                 "code": [{"coding": [{"system": "http://ehealth.sundhed.dk/cs/careteam-participant-role",
                                       "code": "clinicalViewer"}]}]}),
    ("GET", "/organization/PractitionerRole"): Op(
        "List the memberships of the administrator's organisation",
        "`organization` is mandatory and must be the token's organisation (FUT: searches carry the token's context).",
        {200: "a searchset Bundle of PractitionerRole"}, SEARCH_ERRORS,
        (_ref_param("organization", "Organization", "the token's organisation", required=True),
         _ref_param("practitioner", "Practitioner", "only this practitioner's memberships"),
         Param("role", "comma-separated careteam-participant-role codes"), COUNT, OFFSET),
        result="Bundle"),
    ("DELETE", "/organization/PractitionerRole/{id}"): Op(
        "Remove a membership",
        "Ends the practitioner's access to the care team at once: tokens scoped to it fail on the next request "
        "that re-checks membership, and re-scoping to it is refused.",
        {200: "an informational OperationOutcome"}, READ_ERRORS + (409,), result="OperationOutcome"),
    ("GET", "/audit/AuditEvent"): Op(
        "Search the audit trail (national auditor only)",
        "One AuditEvent per patient touched per request (FUT §7): type `rest`, action C/R/U/D/E, the user and "
        "the token's organisation as requestor, entities patient (role 1), resource (role 4, search parameters in "
        "`query`, base64, CPR numbers masked) and trace id (role 21). Permission `AuditEvent.search` (role "
        "`auditor`); anyone else 403.",
        {200: "a searchset Bundle of AuditEvent"}, SEARCH_ERRORS,
        (_ref_param("patient", "Patient", "only events about this citizen"), DATE,
         Param("action", "comma-separated action codes: C R U D E"),
         Param("_sort", "`date` (oldest first, the default) or `-date`", {"type": "string", "enum": ["date", "-date"]}),
         COUNT, OFFSET),
        result="Bundle"),
}

# -- schemas --------------------------------------------------------------------------------------

_ERRORS = {400: ("BadRequest", "the request is malformed (an OperationOutcome names the problem)"),
           401: ("Unauthorized", "no valid token (missing, malformed, wrong signature or realm, expired)"),
           403: ("Forbidden", "the token lacks the permission, or the context does not match"),
           404: ("NotFound", "no such resource, or no such path"),
           409: ("Conflict", "conflicts with what is stored (duplicate, concurrent change)"),
           412: ("PreconditionFailed", "If-Match names an older version"),
           413: ("PayloadTooLarge", "the body or the transaction is too large"),
           415: ("UnsupportedMediaType", "the content type is not accepted"),
           422: ("Unprocessable", "well-formed, but breaks a business rule of FUT"),
           500: ("ServerError", "an unexpected failure (a bug: never a client mistake)")}


def _components() -> dict:
    resource = {"type": "object", "required": ["resourceType"],
                "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
                "additionalProperties": True}
    outcome = {"type": "object", "required": ["resourceType", "issue"], "additionalProperties": True,
               "properties": {
                   "resourceType": {"const": "OperationOutcome"},
                   "issue": {"type": "array", "minItems": 1, "items": {
                       "type": "object", "required": ["severity", "code"], "additionalProperties": True,
                       "properties": {
                           "severity": {"enum": ["fatal", "error", "warning", "information"]},
                           "code": {"type": "string"},
                           "diagnostics": {"type": "string"},
                           "details": {"type": "object", "properties": {
                               "text": {"type": "string"},
                               "coding": {"type": "array", "items": {"type": "object", "properties": {
                                   "system": {"type": "string"}, "code": {"type": "string"}}}}}}}}}}}
    bundle = {"type": "object", "required": ["resourceType", "type"], "additionalProperties": True,
              "properties": {"resourceType": {"const": "Bundle"}, "type": {"type": "string"},
                             "total": {"type": "integer", "minimum": 0},
                             "link": {"type": "array", "items": {"type": "object"}},
                             "entry": {"type": "array", "items": {"type": "object"}}}}
    token = {"type": "object", "required": ["access_token", "refresh_token", "token_type", "expires_in"],
             "properties": {"access_token": {"type": "string"}, "refresh_token": {"type": "string"},
                            "token_type": {"const": "Bearer"}, "expires_in": {"type": "integer"},
                            "refresh_expires_in": {"type": "integer"}, "scope": {"type": "string"}}}
    form = {"type": "object", "required": ["grant_type"], "properties": {
        "grant_type": {"enum": ["password", "refresh_token"]},
        "username": {"type": "string"}, "password": {"type": "string"}, "client_id": {"type": "string"},
        "refresh_token": {"type": "string"},
        **{k: {"type": "string", "description": f"re-scope: the {t} id or URL"} for k, t in auth.CONTEXT_TYPES.items()}}}
    health = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}},
              "additionalProperties": True}
    patch = {"type": "array", "items": {"type": "object", "required": ["op", "path"], "properties": {
        "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]}, "path": {"type": "string"},
        "from": {"type": "string"}, "value": {}}}}
    schemas = {"Resource": resource, "OperationOutcome": outcome, "Bundle": bundle, "Token": token,
               "TokenRequest": form, "Health": health, "OpenAPI": {"type": "object", "required": ["openapi"]},
               "JSONPatch": patch}
    responses = {name: {"description": text, "content": {FHIR_JSON: {"schema": {"$ref": "#/components/schemas/"
                                                                                        "OperationOutcome"}}}}
                 for name, text in _ERRORS.values()}
    responses["Unauthorized"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"},
                                                                 "description": "always `Bearer`"}}
    return {"securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                               "description": "an access token from the token endpoint"}},
            "schemas": schemas, "responses": responses}


def _path_params(path: str) -> list[dict]:
    """Starlette's ``{name}`` / ``{name:convertor}`` segments as OpenAPI path parameters."""
    schemas = {"service": {"type": "string", "enum": sorted(set(SERVICE_OF.values()))},
               "type": {"type": "string", "enum": sorted(SERVICE_OF)},
               "realm": {"type": "string", "enum": list(auth.REALMS)}}
    return [{"name": name, "in": "path", "required": True,
             "schema": schemas.get(name, {"type": "string", "pattern": ID_PATTERN})}
            for name in re.findall(r"{([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?}", path)]


def _operation(method: str, path: str, op: Op | None) -> dict:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    segments = [s for s in path.split("/") if s]
    tag = segments[0] if segments and not segments[0].startswith("{") else "fhir"
    out: dict = {"operationId": f"{method.lower()}_{slug}", "tags": [tag]}
    params = _path_params(path)
    if op is None:
        out.update(summary=f"{method} {path}", description="Not yet described in twin.server.openapi.OPERATIONS.",
                   responses={"default": {"description": "see the route's module"}})
        out["x-twin-undocumented"] = True
        if params:
            out["parameters"] = params
        return out
    out["summary"], out["description"] = op.summary, op.description
    for p in op.query:
        schema = {"type": "array", "items": p.schema} if p.repeated else p.schema
        params.append({"name": p.name, "in": p.where, "required": p.required, "description": p.description,
                       "schema": schema, **({"explode": True, "style": "form"} if p.repeated else {})})
    if params:
        out["parameters"] = params
    if op.body == "form":
        out["requestBody"] = {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"$ref": "#/components/schemas/TokenRequest"}}}}
    elif op.body == "JSONPatch":
        out["requestBody"] = {"required": True, "content": {JSON_PATCH: {
            "schema": {"$ref": "#/components/schemas/JSONPatch"}}}}
    elif op.body is not None:
        schema = {"allOf": [{"$ref": "#/components/schemas/Resource"},
                            {"type": "object", "properties": {"resourceType": {"const": op.body}}}]}
        media: dict = {"schema": schema}
        if op.example is not None:
            media["example"] = op.example
        out["requestBody"] = {"required": True, "description": f"a FHIR {op.body} resource",
                              "content": {FHIR_JSON: media}}
    responses: dict = {}
    for status, text in op.ok.items():
        media_type = "application/json" if op.result in ("Token", "Health", "OpenAPI") else FHIR_JSON
        responses[str(status)] = {"description": text} if op.result == "None" else {
            "description": text, "content": {media_type: {"schema": {"$ref": f"#/components/schemas/{op.result}"}}}}
    for status in op.errors:
        responses[str(status)] = {"$ref": f"#/components/responses/{_ERRORS[status][0]}"}
    out["responses"] = responses
    if op.public:
        out["security"] = []
    return out


def served(routes) -> list[tuple[str, str]]:
    """``(method, path)`` of every route the app serves (HEAD, which Starlette adds to GET, left out)."""
    found = []
    for route in routes:
        if isinstance(route, Route):
            found += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
        else:  # a Mount or a WebSocket route: not described by this module, so it must be noticed
            found.append(("?", getattr(route, "path", repr(route))))
    return found


def undocumented(routes) -> list[tuple[str, str]]:
    """Routes the app serves that :data:`OPERATIONS` has no entry for."""
    return [key for key in served(routes) if key not in OPERATIONS]


def unserved(routes) -> list[tuple[str, str]]:
    """Entries of :data:`OPERATIONS` for routes the app does not serve (stale descriptions)."""
    live = set(served(routes))
    return [key for key in OPERATIONS if key not in live]


def _routing(routes) -> dict[str, dict[str, str]]:
    """OpenAPI path → {method → the path of the route that serves it}, as Starlette routes.

    Mostly a route's own path and methods; but a concrete path can also reach a more general route
    for another method — ``GET /task/Task/{id}`` is the generic read ``/{service}/{type}/{id}``,
    though ``/task/Task/{id}`` itself is only PATCH — and a client (or a fuzzer checking that
    undocumented methods answer 405) must see that too. So each path is tried, with sample values,
    for every method the app serves, against the routes in Starlette's order."""
    table: dict[str, dict[str, str]] = {}
    for method, path in served(routes):
        if method != "?":
            table.setdefault(re.sub(r"{([A-Za-z_][A-Za-z0-9_]*):[a-z]+}", r"{\1}", path), {})[method] = path
    methods = {m for entry in table.values() for m in entry}
    for oas_path, entry in table.items():
        if "{" not in oas_path:
            continue
        sample = re.sub(r"{[^}]+}", "x", oas_path)
        for method in sorted(methods - set(entry)):
            scope = {"type": "http", "path": sample, "method": method}
            target = next((r for r in routes if isinstance(r, Route) and r.matches(scope)[0] == Match.FULL), None)
            if target is not None:
                entry[method] = target.path
    return table


def build(routes, base_url: str) -> dict:
    """The OpenAPI 3.1 document of ``routes`` (a Starlette app's ``app.routes``)."""
    paths: dict[str, dict] = {}
    for oas_path, entry in _routing(routes).items():
        for method, route_path in sorted(entry.items()):
            paths.setdefault(oas_path, {})[method.lower()] = _operation(method, oas_path,
                                                                        OPERATIONS.get((method, route_path)))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "FUT twin API", "version": twin.__version__,
                 "description": "A faithful subset of Denmark's national telemedicine infrastructure (FUT) as one "
                                "FHIR R4 service: Keycloak-style tokens, the patient, careplan, measurement, task and "
                                "organization services, and the audit trail. See docs/API.md."},
        "servers": [{"url": base_url}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": t} for t in sorted({op["tags"][0] for ops in paths.values() for op in ops.values()})],
        "paths": paths,
        "components": _components(),
    }


async def endpoint(request: Request) -> Response:
    """``GET /openapi.json``: built on first use and kept (the routes do not change while running)."""
    app = request.app
    document = getattr(app.state, "openapi", None)
    if document is None:
        document = build(app.routes, app.state.service.settings.base_url)
        app.state.openapi = document
    return JSONResponse(document)
