"""The patient service's messages: FUT's ehealth-message, a Communication with category ``message``.

How messaging works in FUT (reference/fut-infrastructure.md §2 call 13, IG ehealth-message)
-----------------------------------------------------------------------------------------
A message is always *about* one citizen (``subject`` → Patient) and belongs to one of their
episodes of care (extension ``workflow-episodeOfCare``). It goes between the citizen and the care
team that follows that episode:

* a citizen writes to their **care team**, not to a person: the recipient is the CareTeam, in the
  extension ``ehealth-communication-recipientCareTeam`` (the profile allows only Patient,
  Practitioner or Device in ``recipient``). Whoever of the team is on duty reads it;
* a practitioner writes to a citizen of their team: ``sender`` is the Practitioner, the extension
  ``ehealth-communication-senderCareTeam`` the team they write for, ``recipient`` the Patient;
* the triage writes a red alert to the team on the citizen's behalf
  (:mod:`twin.server.triage_worker`).

A new message is ``in-progress`` (unread); its recipient marks it read with a JSON Patch of
``/status`` to ``completed`` (FUT's apps also flip the ``ehealth-administrative-status``; the twin
models the read mark with the status alone). Messages are searched by ``patient`` (the whole
conversation about a citizen) or ``recipient`` (an inbox: the citizen's own, a care team's, a
practitioner's), newest first, paged with ``_count`` / ``_offset``.

The recipient is a stored, indexed column (``Type/id``; a twin message has exactly one recipient),
so an inbox is one index range, not a scan of message bodies. A writer that does not set it (the
triage worker's red alerts, rows stored before the column existed) leaves it NULL; the next inbox
search fills those in from the bodies before it searches (:func:`fill_unset_recipients`).

Access follows the same compartments as every other resource (patient, episode, team,
organisation, stored with the message): a citizen reaches the messages about themselves, a
practitioner those of their token's care team.

Endpoints: ``POST /patient/Communication``, ``GET /patient/Communication``,
``PATCH /patient/Communication/{id}``; reading one message by id is the generic read.
"""

from __future__ import annotations

import functools
import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request, unprocessable
from twin.server.routes_task import (
    MAX_TEXT,
    body_reference,
    check_if_match,
    read_patch,
    store_new_version,
    version_headers,
    with_retry_on_lost_race,
)
from twin.server.service import Service, fhir_response, now_iso, page_count, page_offset, read_json
from twin.server.storage import Filter, Row, Tx, new_id

STATUSES = ("in-progress", "completed")  # unread / read (FHIR event-status codes FUT's messages use)
MAX_TITLE = 200
FILL_BATCH = 500  # messages without a recipient column filled per step (usually a few red alerts)


def _forbidden(what: str) -> FhirError:
    return FhirError(403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
                     f"Resource not matching security token context: {what}", "forbidden")


def _extension(resource: dict, url: str) -> dict | None:
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            return ext
    return None


def _string_extension(body: dict, url: str, what: str) -> str | None:
    ext = _extension(body, url)
    if ext is None:
        return None
    value = ext.get("valueString")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TITLE:
        raise unprocessable("COMMUNICATION_INVALID_EXTENSION",
                            f"{what} ({url}) must be a valueString of 1-{MAX_TITLE} characters")
    return value


def recipients(refs, message: dict) -> set[tuple[str, str]]:
    """``(type, id)`` of everyone a message is addressed to: ``recipient`` and ``recipientCareTeam``."""
    out = set()
    refs_ = [r.get("reference") for r in message.get("recipient") or [] if isinstance(r, dict)]
    ext = _extension(message, fr.EXT_RECIPIENT_CARETEAM)
    if ext is not None:
        refs_.append((ext.get("valueReference") or {}).get("reference"))
    for r in refs_:
        try:
            out.add(refs.parse(r))
        except ValueError:
            continue
    return out


def recipient_key(type_: str, id_: str) -> str:
    """The stored ``recipient`` column: ``CareTeam/ct-3``, ``Patient/p-0``, ``Practitioner/pr-0-0``."""
    return f"{type_}/{id_}"


async def fill_unset_recipients(self: Service, tx: Tx) -> None:
    """Give every message stored without a ``recipient`` column its value, read from its body.

    The partial index ``resources_recipient_unset`` holds exactly these rows, so when there are none
    (every writer sets the column) this is one empty index probe. A message addressed to nobody
    known gets ``""``: it matches no inbox and is not looked at again."""
    while True:
        rows = await tx.fetch("SELECT id, body FROM resources WHERE type = 'Communication' AND recipient IS NULL "
                              "LIMIT ?", (FILL_BATCH,))
        for id_, body in rows:
            to = sorted(recipients(self.refs, json.loads(body)))
            await tx.execute("UPDATE resources SET recipient = ? WHERE type = 'Communication' AND id = ?",
                             (recipient_key(*to[0]) if to else "", id_))
        if len(rows) < FILL_BATCH:
            return


def _named_recipients(self: Service, body: dict) -> set[tuple[str, str]]:
    """The recipients a new message names, strictly: a malformed one is refused, not ignored."""
    given = body.get("recipient", [])
    if not isinstance(given, list):
        raise unprocessable("COMMUNICATION_INVALID_RECIPIENT", "recipient must be a list of References")
    named = {body_reference(self.refs, r, ("Patient", "Practitioner"), f"recipient[{k}]") for k, r in enumerate(given)}
    ext = _extension(body, fr.EXT_RECIPIENT_CARETEAM)
    if ext is not None:
        named.add(body_reference(self.refs, ext.get("valueReference"), ("CareTeam",), "recipientCareTeam"))
    return named


def _message_text(body: dict) -> str:
    payload = body.get("payload")
    if not isinstance(payload, list) or not payload:
        raise unprocessable("COMMUNICATION_PAYLOAD_MISSING", "a message needs a payload with a contentString")
    texts = []
    for k, item in enumerate(payload):
        if not isinstance(item, dict) or "contentString" not in item:
            raise unprocessable("COMMUNICATION_PAYLOAD_NOT_TEXT",
                                f"payload[{k}]: the twin's messages carry text (contentString) only")
        if not isinstance(item["contentString"], str):
            raise unprocessable("COMMUNICATION_PAYLOAD_NOT_TEXT", f"payload[{k}].contentString must be a string")
        texts.append(item["contentString"])
    text = "\n\n".join(texts)
    if not text.strip():
        raise unprocessable("COMMUNICATION_PAYLOAD_EMPTY", "the message text is empty")
    if len(text) > MAX_TEXT:
        raise unprocessable("COMMUNICATION_PAYLOAD_TOO_LONG",
                            f"a message is limited to {MAX_TEXT} characters, this one has {len(text)}")
    return text


async def _episode_for(self: Service, tx: Tx, claims: auth.Claims, patient: str) -> Row:
    """The episode a new message belongs to: the token's when it has one, else the patient's active
    episode followed by the caller's care team (a citizen: any active episode of their own)."""
    ctx = claims.context
    if ctx.episode_of_care_id is not None:
        episode = await tx.get("EpisodeOfCare", ctx.episode_of_care_id)
        if episode is None or episode.patient != patient:
            raise _forbidden(f"EpisodeOfCare/{ctx.episode_of_care_id} is not an episode of Patient/{patient}")
    else:
        filters = [Filter("patient", "=", patient), Filter("status", "=", "active")]
        if claims.user_type == "PRACTITIONER":
            filters.append(Filter("team", "=", ctx.care_team_id))
        found = await tx.search("EpisodeOfCare", filters, [("id", False)], limit=1)
        episode = found[0] if found else None
    if claims.user_type == "PRACTITIONER" and (episode is None or episode.team != ctx.care_team_id):
        raise _forbidden(f"Patient/{patient} is not followed by CareTeam/{ctx.care_team_id}")
    if episode is None:
        raise unprocessable("COMMUNICATION_NO_ACTIVE_EPISODE",
                            f"Patient/{patient} has no active episode of care to send a message in")
    if episode.team is None:
        raise unprocessable("COMMUNICATION_NO_CARE_TEAM", f"EpisodeOfCare/{episode.id} has no care team to write to")
    return episode


async def create_message(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Communication.create")
    claims.require_user_type("PATIENT", "PRACTITIONER")
    if claims.user_type == "PRACTITIONER":
        claims.require_context("CareTeam")
    body = await read_json(request, self.settings)
    if not isinstance(body, dict) or body.get("resourceType") != "Communication":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", "POST /patient/Communication expects a Communication")
    status = body.get("status")
    if status not in STATUSES:
        raise unprocessable("COMMUNICATION_INVALID_STATUS",
                            f"a new message is in-progress (unread) or completed, got {str(status)[:40]!r}")
    categories = [c for concept in body.get("category") or [] if isinstance(concept, dict)
                  for c in concept.get("coding") or [] if isinstance(c, dict)]
    if categories and not any(c.get("system") == fr.MESSAGE_CATEGORY_SYSTEM and c.get("code") == "message"
                              for c in categories):
        raise unprocessable("COMMUNICATION_INVALID_CATEGORY",
                            f"this endpoint takes messages: category {fr.MESSAGE_CATEGORY_SYSTEM}|message")
    text = _message_text(body)
    title = _string_extension(body, fr.EXT_MESSAGE_TITLE, "title")
    thread = _string_extension(body, fr.EXT_THREAD_ID, "thread id")
    if body.get("subject") is None:
        raise unprocessable("COMMUNICATION_SUBJECT_MISSING", "a message names the citizen it is about in 'subject'")
    _, patient = body_reference(self.refs, body["subject"], ("Patient",), "subject")
    named = _named_recipients(self, body)
    if claims.user_type == "PATIENT" and patient != claims.context.patient_id:
        raise _forbidden(f"Patient/{patient}")
    now = now_iso()
    resource_id = new_id()
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        if await tx.get("Patient", patient) is None:
            raise unprocessable("COMMUNICATION_SUBJECT_NOT_FOUND", f"subject: Patient/{patient} is not known")
        episode = await _episode_for(self, tx, claims, patient)
        if claims.user_type == "PATIENT":
            # a citizen writes to the care team of their episode; naming anybody else is refused
            if named - {("CareTeam", episode.team)}:
                raise unprocessable("COMMUNICATION_INVALID_RECIPIENT",
                                    f"a citizen's message goes to their care team, CareTeam/{episode.team}")
            sender, recipient = self.refs.url("Patient", patient), self.refs.url("CareTeam", episode.team)
        else:
            if named - {("Patient", patient)}:
                raise unprocessable("COMMUNICATION_INVALID_RECIPIENT",
                                    f"a practitioner's message goes to the citizen it is about, Patient/{patient}")
            sender, recipient = self.refs.url("Practitioner", claims.user_id), self.refs.url("Patient", patient)
        msg = fr.communication(self.refs, resource_id, patient, episode.id, sender, recipient, text, now, "message",
                               title, thread)
        if claims.user_type == "PRACTITIONER":  # the team the practitioner writes for: replies go back to it
            msg["extension"].insert(1, {"url": fr.EXT_SENDER_CARETEAM,
                                        "valueReference": self.refs.ref("CareTeam", episode.team)})
        msg["status"] = status
        msg["meta"] = {**msg["meta"], "versionId": "1", "lastUpdated": now}
        row = Row("Communication", resource_id, 1, now, patient, episode.id, episode.team, episode.org, status, "message",
                  now, None, None, json.dumps(msg))
        await tx.insert([row])
        await tx.execute("UPDATE resources SET recipient = ? WHERE type = 'Communication' AND id = ?",
                         (recipient_key(*self.refs.parse(recipient)), resource_id))
        await self.audit(tx, claims, "C", None, [patient], "Communication", resource_id)
    url = self.refs.url("Communication", resource_id)
    return fhir_response(msg, 201, {"Location": f"{url}/_history/1", **version_headers(row)})


async def _scope(self: Service, tx: Tx, claims: auth.Claims, q) -> list[Filter]:
    """Filters for a search within the token's context."""
    patient = self.ref_id(q.get("patient"), "Patient", "patient")
    recipient = q.get("recipient") or None
    if patient is None and recipient is None:
        raise auth.AuthError.of("SECURITY_SEARCH_PARAMS_MANDATORY", "patient or recipient")
    target = None
    if recipient is not None:
        try:
            target = self.refs.parse(recipient)
        except ValueError:
            raise bad_request("SEARCH_INVALID_REFERENCE", f"recipient={recipient!r} is not a reference") from None
        if target[0] not in ("Patient", "Practitioner", "CareTeam"):
            raise bad_request("SEARCH_INVALID_REFERENCE", "recipient must reference a Patient, Practitioner or CareTeam")

    def mismatch(param: str) -> FhirError:
        return FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                         f"Search parameters not matching security token context: {param}", "forbidden")

    filters = []
    if claims.user_type == "PATIENT":
        own = claims.context.patient_id
        if own is None or patient not in (None, own):
            raise mismatch("patient")
        if target is not None and target != ("Patient", own):
            raise mismatch("recipient")  # a citizen's inbox is their own
        filters.append(Filter("patient", "=", own))
    elif claims.user_type == "PRACTITIONER":
        (team,) = claims.require_context("CareTeam")
        followed = [p for p in (patient, target[1] if target and target[0] == "Patient" else None) if p]
        for p in followed:
            if not await tx.count("EpisodeOfCare", [Filter("patient", "=", p), Filter("team", "=", team)]):
                raise mismatch("patient" if p == patient else "recipient")
        if target is not None and target[0] == "CareTeam" and target[1] != team:
            raise mismatch("recipient")
        if target is not None and target[0] == "Practitioner" and target[1] != claims.user_id:
            raise mismatch("recipient")  # a practitioner's inbox is their own; the team's is shared
        filters.append(Filter("team", "=", team))
        if target is not None and target[0] == "Patient":
            filters.append(Filter("patient", "=", target[1]))
    if patient is not None:
        filters.append(Filter("patient", "=", patient))
    if q.get("status"):
        filters.append(Filter("status", "in", q.get("status").split(",")))
    if target is not None:
        await fill_unset_recipients(self, tx)
        filters.append(Filter("recipient", "=", recipient_key(*target)))
    return filters


async def _page(tx: Tx, filters: list[Filter], offset: int, count: int) -> tuple[list[Row], bool]:
    """One page of messages, newest first, and whether there are more."""
    rows = await tx.search("Communication", filters, [("effective", True), ("id", False)], limit=count + 1,
                           offset=offset)
    return rows[:count], len(rows) > count


async def search_messages(self: Service, request: Request) -> Response:
    claims = self.claims(request)
    claims.require("Communication.search")
    claims.require_user_type("PATIENT", "PRACTITIONER")
    q = request.query_params
    count, offset = page_count(q), page_offset(q)
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)  # a withdrawn team membership ends access now
        filters = await _scope(self, tx, claims, q)
        rows, more = await _page(tx, filters, offset, count)
        await self.audit(tx, claims, "R", "search", [r.patient for r in rows], "Communication", query=str(q))
    return self.searchset(request, rows, next_offset=offset + count if more else None)


async def patch_message(self: Service, request: Request) -> Response:
    """Mark a message read: ``[{"op": "replace", "path": "/status", "value": "completed"}]``.

    Only a recipient marks a message read — the citizen a message is addressed to, or (for a message
    to a care team or to themselves) a practitioner of that team — so a sender cannot make their
    own message look read.
    """
    claims = self.claims(request)
    claims.require("Communication.patch")
    claims.require_user_type("PATIENT", "PRACTITIONER")
    if claims.user_type == "PRACTITIONER":
        claims.require_context("CareTeam")
    id_ = request.path_params["id"]
    ops = await read_patch(self, request)
    for k, p in enumerate(ops):
        if p.path != "/status" or p.op not in ("add", "replace"):
            raise unprocessable("COMMUNICATION_PATCH_NOT_ALLOWED",
                                f"operation [{k}] ({p.op} {p.path}): a message PATCH may only set /status "
                                "(completed = read)")
        if p.value != "completed":
            raise unprocessable("COMMUNICATION_INVALID_STATUS",
                                f"operation [{k}]: a message is marked read with status completed, "
                                f"got {str(p.value)[:40]!r}")

    async def work() -> Row:
        now = now_iso()
        async with self.storage.transaction() as tx:
            row = await self.get_for(tx, claims, "Communication", id_)
            msg = json.loads(row.body)
            to = recipients(self.refs, msg)
            me = {("Patient", claims.context.patient_id)} if claims.user_type == "PATIENT" else {
                ("CareTeam", claims.context.care_team_id), ("Practitioner", claims.user_id)}
            if not to & me:
                raise FhirError(403, "COMMUNICATION_NOT_RECIPIENT",
                                f"only a recipient marks Communication/{id_} read", "forbidden")
            check_if_match(request, row)
            if msg.get("status") != "completed":  # already read: nothing to store, the answer is the same
                msg["status"] = "completed"
                msg["received"] = now  # FHIR Communication.received: when the recipient got it
                row = await store_new_version(tx, row, msg, now, "completed")
            await self.audit(tx, claims, "U", "patch", [row.patient], "Communication", id_)
        return row

    row = await with_retry_on_lost_race(request, work)
    return fhir_response(json.loads(row.body), 200, version_headers(row))


def routes(service: Service, guarded) -> list[Route]:
    def r(path, handler, method):
        return Route(path, guarded(functools.partial(handler, service)), methods=[method])

    return [r("/patient/Communication", search_messages, "GET"),
            r("/patient/Communication", create_message, "POST"),
            r("/patient/Communication/{id}", patch_message, "PATCH")]
