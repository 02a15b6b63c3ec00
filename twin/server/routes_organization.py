"""The organization service's user management (Danish *brugerstyring*): who may work in which care team.

How FUT does it (reference/fut-infrastructure.md §3, §6)
---------------------------------------------------------
Practitioners, Organizations and CareTeams are independent of patients. A practitioner's identity
comes from SEB, the national health user management, and the roles they hold arrive at login as
OIO-BPP roles that FUT maps to CareTeam participant roles (``monitoringAssistor``,
``clinicalViewer``, ``careteamAdministrator``, …); ``$persist-login`` writes them into
``PractitionerRole`` and ``CareTeam.participant``. Each municipality or region administers its own
staff: an **organisation administrator** (participant role ``careteamAdministrator``) decides who
works in which of *its* care teams, never another organisation's. A practitioner then scopes a
token to one of their care teams (``care_team_id``) and sees that team's patients only.

What the twin does
------------------
There is no SEB: the administrator creates the practitioner here, and the twin makes the login
account at the same time (realm ``ehealth``; username = the Practitioner's identifier of system
``urn:fut-twin:username``; password from the extension
``urn:fut-twin:StructureDefinition:initial-password`` or, when absent, ``twin`` — the seeded
accounts' documented test password; never a real system). A **membership** is three things kept
in step in one transaction: the ``PractitionerRole`` resource (compartments organisation + team),
the row of the ``memberships`` table that the token endpoint and
:meth:`~twin.server.service.Service.require_membership` read, and the entry in the stored
``CareTeam.participant``. Removing it ends access at once: tokens already scoped to that team fail
on the next request that re-checks membership. The last ``careteamAdministrator`` membership of an
organisation cannot be removed (409): nobody would be left to manage its staff, or to undo it.

| method and path | permission | what |
|---|---|---|
| ``POST /organization/Practitioner`` | ``Practitioner.create`` | a practitioner of the administrator's organisation, and their account |
| ``POST /organization/PractitionerRole`` | ``PractitionerRole.create`` | a membership: practitioner + care team + role |
| ``GET /organization/PractitionerRole?organization=…`` | ``PractitionerRole.search`` | the memberships of the administrator's organisation |
| ``DELETE /organization/PractitionerRole/{id}`` | ``PractitionerRole.delete`` | remove a membership |

The caller must be a practitioner whose token is scoped to an organisation (``organization_id``,
by re-scoping) in which they hold a ``careteamAdministrator`` membership. The permission alone is
not enough: permissions are global to a token, while administration is per organisation, so an
administrator of one organisation who also works in a team of another gets no say there.

Account roles (the token's permission sets, :data:`twin.server.auth.ROLE_PERMISSIONS`) are those
the Practitioner was created with (extension ``urn:fut-twin:StructureDefinition:account-role``,
``valueCode``, repeatable) plus the role of every membership added since — FUT derives a
practitioner's permissions from their care-team roles the same way. A removed membership leaves the
role on the account: without a membership there is no context to use it in. An organisation can
grant ``careteamAdministrator``, ``clinicalViewer`` and ``monitoringAssistor``; ``auditor`` is a
national role, not an organisation's to give.

PractitionerRole ids are derived from (practitioner, care team, role), so the memberships written
by ``twin seed`` (which stores no PractitionerRole resources, as FUT writes them only at first
login) can be listed and removed like the ones created here: the search answers with the stored
resource where there is one and builds it from the membership where there is not.
"""

from __future__ import annotations

import functools
import json
import re
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from twin.server import auth
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request, not_found, operation_outcome, unprocessable
from twin.server.search import FHIR_ID
from twin.server.service import (
    Service,
    fhir_response,
    now_iso,
    page_count,
    page_offset,
    page_url,
    password_hash,
    read_json,
)
from twin.server.storage import Filter, Row

ADMIN_ROLE = "careteamAdministrator"
ASSIGNABLE_ROLES = frozenset(auth.ROLE_PERMISSIONS) - {"auditor"}  # auditor: national, not an organisation's
EXT_ACCOUNT_ROLE = "urn:fut-twin:StructureDefinition:account-role"  # twin's own: no SEB to say it
EXT_INITIAL_PASSWORD = "urn:fut-twin:StructureDefinition:initial-password"  # twin's own; never stored
DEFAULT_PASSWORD = "twin"  # = twin.seed.SEED_PASSWORD: the twin's documented test password
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{2,63}")
_ROLE_ID_NAMESPACE = uuid.UUID("1d9a4c52-7f0e-5b8b-a6f3-0c2e5d7b9e41")  # twin's own uuid5 namespace


def role_id(practitioner_id: str, care_team_id: str, role: str) -> str:
    """The PractitionerRole id of a membership: the same for the same membership, on every server."""
    return "prr-" + uuid.uuid5(_ROLE_ID_NAMESPACE, f"{practitioner_id}|{care_team_id}|{role}").hex


# -- access ---------------------------------------------------------------------------------------

async def _authorise(self: Service, request: Request, permission: str) -> tuple[auth.Claims, str]:
    """Token, still-valid context, permission, organisation context and administrator membership,
    in that order (a withdrawn context fails first, whatever was asked). Returns the claims and the
    administered organisation's id. Runs in a short transaction of its own so that a request body
    is read without holding the database."""
    claims = self.claims(request)
    async with self.storage.transaction() as tx:
        await self.require_membership(tx, claims)
        claims.require(permission)
        return claims, await _administered_org(tx, claims)


async def _administered_org(tx, claims: auth.Claims) -> str:
    claims.require_user_type("PRACTITIONER")
    (org,) = claims.require_context("Organization")
    rows = await tx.fetch("SELECT 1 FROM memberships WHERE practitioner = ? AND org = ? AND role = ? LIMIT 1",
                          (claims.user_id, org, ADMIN_ROLE))
    if not rows:
        raise auth.AuthError.of("SECURITY_USER_NOT_ALLOWED",
                                f"Practitioner/{claims.user_id} is not a {ADMIN_ROLE} of Organization/{org}")
    return org


def _not_ours(type_: str, id_: str) -> FhirError:
    return FhirError(403, "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT",
                     f"Resource not matching security token context: {type_}/{id_}", "forbidden")


# -- request parsing ------------------------------------------------------------------------------

def _resource(body: object, type_: str) -> dict:
    if not isinstance(body, dict) or body.get("resourceType") != type_:
        got = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", f"the body must be a {type_} resource, got {got!r}")
    return body


def _objects(resource: dict, key: str) -> list[dict]:
    """``resource[key]`` as a list of JSON objects (absent: empty); a wrong shape is a 400."""
    value = resource.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad_request("REQUEST_INVALID_RESOURCE", f"{resource['resourceType']}.{key} must be an array of objects")
    return value


def _extension_values(resource: dict, url: str, value_key: str) -> list:
    values = [e.get(value_key) for e in _objects(resource, "extension") if e.get("url") == url]
    if not all(isinstance(v, str) for v in values):
        raise unprocessable("ORGANIZATION_INVALID_EXTENSION", f"extension {url} needs a {value_key}")
    return values


def _reference(self: Service, value: object, type_: str, where: str) -> str:
    """The id in a Reference ``{"reference": …}`` to a ``type_``."""
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        raise unprocessable("ORGANIZATION_REFERENCE_MISSING", f"{where} must be a Reference to a {type_}")
    try:
        got_type, id_ = self.refs.parse(ref)
    except ValueError as exc:
        raise unprocessable("ORGANIZATION_INVALID_REFERENCE", f"{where}: {exc}") from None
    if got_type != type_:
        raise unprocessable("ORGANIZATION_INVALID_REFERENCE", f"{where} must reference a {type_}, got {ref!r}")
    return id_


def _check_roles(roles: list[str]) -> list[str]:
    bad = sorted(set(roles) - ASSIGNABLE_ROLES)
    if bad:
        raise unprocessable("ORGANIZATION_ROLE_NOT_ASSIGNABLE",
                            f"role(s) {', '.join(bad)} cannot be given by an organisation; use one of "
                            f"{', '.join(sorted(ASSIGNABLE_ROLES))}")
    return sorted(set(roles))


def _parse_practitioner(body: object) -> tuple[str, str, list[str], str]:
    """(username, name, account roles, password) of a Practitioner to create."""
    resource = _resource(body, "Practitioner")
    usernames = [i.get("value") for i in _objects(resource, "identifier") if i.get("system") == fr.USERNAME_SYSTEM]
    if len(usernames) != 1:
        raise unprocessable("ORGANIZATION_PRACTITIONER_USERNAME_MISSING",
                            f"a Practitioner needs exactly one identifier of system {fr.USERNAME_SYSTEM} "
                            f"(the login name), got {len(usernames)}")
    username = usernames[0]
    if not isinstance(username, str) or not _USERNAME.fullmatch(username):
        raise unprocessable("ORGANIZATION_PRACTITIONER_USERNAME_INVALID",
                            "the username must be 3-64 characters of A-Z a-z 0-9 . _ @ -, starting with a letter "
                            "or digit")
    name = username
    names = _objects(resource, "name")
    if names:
        first = names[0]
        given = first.get("given", [])
        parts = [*given, first.get("family")] if isinstance(given, list) else [first.get("family")]
        text = first.get("text") or " ".join(p for p in parts if isinstance(p, str) and p)
        if not isinstance(text, str) or not text.strip() or len(text) > 200:
            raise unprocessable("ORGANIZATION_PRACTITIONER_NAME_INVALID",
                                "Practitioner.name[0] needs a text or given/family names, at most 200 characters")
        name = " ".join(text.split())
    roles = _check_roles(_extension_values(resource, EXT_ACCOUNT_ROLE, "valueCode"))
    passwords = _extension_values(resource, EXT_INITIAL_PASSWORD, "valueString")
    password = passwords[0] if passwords else DEFAULT_PASSWORD
    if len(passwords) > 1 or not 4 <= len(password) <= 128:
        raise unprocessable("ORGANIZATION_PRACTITIONER_PASSWORD_INVALID",
                            "give at most one initial password, of 4-128 characters")
    return username, name, roles, password


def _parse_role(self: Service, body: object, org: str) -> tuple[str, str, str]:
    """(practitioner id, care team id, role code) of a PractitionerRole to create."""
    resource = _resource(body, "PractitionerRole")
    practitioner_id = _reference(self, resource.get("practitioner"), "Practitioner", "PractitionerRole.practitioner")
    teams = [e.get("valueReference") for e in _objects(resource, "extension") if e.get("url") == fr.EXT_CARETEAM]
    if len(teams) != 1:
        raise unprocessable("ORGANIZATION_PRACTITIONERROLE_CARETEAM_MISSING",
                            f"a PractitionerRole needs exactly one extension {fr.EXT_CARETEAM} naming the care team")
    team_id = _reference(self, teams[0], "CareTeam", f"extension {fr.EXT_CARETEAM}")
    if "organization" in resource:
        org_id = _reference(self, resource["organization"], "Organization", "PractitionerRole.organization")
        if org_id != org:
            raise _not_ours("Organization", org_id)
    codes = [c.get("code") for concept in _objects(resource, "code")
             for c in (concept.get("coding") if isinstance(concept.get("coding"), list) else [])
             if isinstance(c, dict) and c.get("system") in (fr.CARETEAM_ROLE_SYSTEM, None)]
    if len(codes) != 1 or not isinstance(codes[0], str):
        raise unprocessable("ORGANIZATION_PRACTITIONERROLE_ROLE_MISSING",
                            f"a PractitionerRole needs exactly one code of system {fr.CARETEAM_ROLE_SYSTEM}")
    return practitioner_id, team_id, _check_roles(codes)[0]


# -- storage helpers ------------------------------------------------------------------------------

def _with_meta(body: dict, version: int, now: str) -> str:
    body.setdefault("meta", {}).update({"versionId": str(version), "lastUpdated": now})
    return json.dumps(body, separators=(",", ":"))


async def _audit_admin(tx, claims: auth.Claims, action: str, subtype: str, type_: str, id_: str, now: str) -> None:
    """One audit row without a patient. FUT's audit is per patient touched (``Service.audit`` writes
    none for zero patients), but changing who may see patient data is worth a trace of its own: the
    auditor finds these by searching without ``patient``."""
    await tx.audit((now, uuid.uuid4().hex, claims.user_type, claims.user_id, claims.context.organization_id, action,
                    subtype, type_, id_, None), [])


async def _set_participant(self: Service, tx, team: Row, practitioner_id: str, org: str, role: str, present: bool,
                           now: str) -> None:
    """Add or remove (practitioner, role) in the stored CareTeam.participant, as a new version.

    The update is conditional on the version read; a concurrent change of the same CareTeam makes
    it match nothing, and the whole membership change is refused (409) rather than half applied."""
    body = json.loads(team.body)
    member = self.refs.url("Practitioner", practitioner_id)
    before = body.get("participant", [])

    def is_it(p: dict) -> bool:
        codes = {c.get("code") for r in p.get("role", []) for c in r.get("coding", [])}
        return (p.get("member") or {}).get("reference") == member and role in codes

    after = [p for p in before if not is_it(p)]
    if present:
        after.append({"role": [{"coding": [{"system": fr.CARETEAM_ROLE_SYSTEM, "code": role}]}],
                      "member": {"reference": member}, "onBehalfOf": self.refs.ref("Organization", org)})
    if after == before:
        return
    if after:
        body["participant"] = after
    else:
        body.pop("participant", None)
    version = team.version + 1
    rows = await tx.fetch("UPDATE resources SET version = ?, last_updated = ?, body = ? "
                          "WHERE type = ? AND id = ? AND version = ? RETURNING version",
                          (version, now, _with_meta(body, version, now), "CareTeam", team.id, team.version))
    if not rows:
        raise FhirError(409, "RESOURCE_VERSION_CONFLICT",
                        f"CareTeam/{team.id} changed while this membership was written; send the request again",
                        "conflict")


async def _grant_account_role(tx, practitioner_id: str, role: str) -> None:
    """The role joins the account's roles, so the next login's token carries its permissions."""
    for username, roles in await tx.fetch("SELECT username, roles FROM accounts WHERE user_id = ? AND realm = ?",
                                          (practitioner_id, "ehealth")):
        current = json.loads(roles)
        if role not in current:
            await tx.execute("UPDATE accounts SET roles = ? WHERE username = ?",
                             (json.dumps(sorted({*current, role})), username))


# -- handlers -------------------------------------------------------------------------------------

async def create_practitioner(self: Service, request: Request) -> Response:
    claims, org = await _authorise(self, request, "Practitioner.create")
    username, name, roles, password = _parse_practitioner(await read_json(request, self.settings))
    now = now_iso()
    practitioner_id = f"pr-{uuid.uuid4().hex}"
    body = fr.practitioner(self.refs, practitioner_id, name, username)
    text = _with_meta(body, 1, now)
    async with self.storage.transaction() as tx:
        await _administered_org(tx, claims)  # again, in the writing transaction: it may have changed meanwhile
        if await tx.fetch("SELECT 1 FROM accounts WHERE username = ?", (username,)):
            raise FhirError(409, "ORGANIZATION_PRACTITIONER_USERNAME_IN_USE",
                            f"the username {username!r} is taken; choose another", "duplicate")
        await tx.insert([Row("Practitioner", practitioner_id, 1, now, None, None, None, org, "active", None, None,
                             None, None, text)])
        # A parallel request for the same username loses on the accounts primary key; `guarded`
        # runs this handler again, which then answers 409 above.
        await tx.execute("INSERT INTO accounts (username, realm, user_type, user_id, roles, password_hash) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (username, "ehealth", "PRACTITIONER", practitioner_id, json.dumps(roles),
                          password_hash(username, password)))
        await _audit_admin(tx, claims, "C", "create", "Practitioner", practitioner_id, now)
    location = self.refs.url("Practitioner", practitioner_id)
    return fhir_response(body, 201, {"Location": f"{location}/_history/1", "ETag": 'W/"1"'})


async def create_role(self: Service, request: Request) -> Response:
    claims, org = await _authorise(self, request, "PractitionerRole.create")
    practitioner_id, team_id, role = _parse_role(self, await read_json(request, self.settings), org)
    now = now_iso()
    id_ = role_id(practitioner_id, team_id, role)
    body = fr.practitioner_role(self.refs, id_, practitioner_id, org, team_id, role)
    async with self.storage.transaction() as tx:
        await _administered_org(tx, claims)
        team = await tx.get("CareTeam", team_id)
        if team is None:
            raise unprocessable("ORGANIZATION_UNKNOWN_REFERENCE", f"CareTeam/{team_id} is not known")
        if team.org != org:
            raise _not_ours("CareTeam", team_id)
        practitioner = await tx.get("Practitioner", practitioner_id)
        if practitioner is None:
            raise unprocessable("ORGANIZATION_UNKNOWN_REFERENCE", f"Practitioner/{practitioner_id} is not known")
        if practitioner.org != org:
            raise _not_ours("Practitioner", practitioner_id)
        if await tx.fetch("SELECT 1 FROM memberships WHERE practitioner = ? AND care_team = ? AND role = ?",
                          (practitioner_id, team_id, role)):
            raise FhirError(409, "ORGANIZATION_PRACTITIONERROLE_EXISTS",
                            f"Practitioner/{practitioner_id} is already {role} in CareTeam/{team_id} "
                            f"(PractitionerRole/{id_})", "duplicate")
        # memberships first: a parallel copy of this request loses on its primary key, and
        # `guarded` runs the handler again, which answers 409 above
        await tx.execute("INSERT INTO memberships (practitioner, care_team, org, role) VALUES (?, ?, ?, ?)",
                         (practitioner_id, team_id, org, role))
        old = await tx.get("PractitionerRole", id_)  # a stored copy of a membership removed outside this API
        version = old.version + 1 if old else 1
        row = Row("PractitionerRole", id_, version, now, None, None, team_id, org, "active", role, None, None, None,
                  _with_meta(body, version, now))
        if old is None:
            await tx.insert([row])
        elif await tx.update(row) != 1:  # another request re-stored it since our read: refuse, do not overwrite
            raise FhirError(409, "RESOURCE_VERSION_CONFLICT",
                            f"PractitionerRole/{id_} changed while this membership was written; send the request "
                            "again", "conflict")
        await _set_participant(self, tx, team, practitioner_id, org, role, True, now)
        await _grant_account_role(tx, practitioner_id, role)
        await _audit_admin(tx, claims, "C", "create", "PractitionerRole", id_, now)
    location = self.refs.url("PractitionerRole", id_)
    return fhir_response(body, 201, {"Location": f"{location}/_history/{version}", "ETag": f'W/"{version}"'})


async def delete_role(self: Service, request: Request) -> Response:
    id_ = request.path_params["id"]
    claims, org = await _authorise(self, request, "PractitionerRole.delete")
    now = now_iso()
    async with self.storage.transaction() as tx:
        await _administered_org(tx, claims)
        membership = await _find_membership(tx, id_, org)
        if membership is None:
            raise not_found("PractitionerRole", id_)
        practitioner_id, team_id, member_org, role = membership
        if member_org != org:
            raise _not_ours("PractitionerRole", id_)
        if role == ADMIN_ROLE and not await tx.fetch(
                "SELECT 1 FROM memberships WHERE org = ? AND role = ? AND NOT (practitioner = ? AND care_team = ?) "
                "LIMIT 1", (org, ADMIN_ROLE, practitioner_id, team_id)):
            # nobody would be left to manage the organisation's staff (nor to undo this)
            raise FhirError(409, "ORGANIZATION_LAST_ADMINISTRATOR",
                            f"PractitionerRole/{id_} is the last {ADMIN_ROLE} membership of Organization/{org}; "
                            "add another administrator first", "business-rule")
        await tx.execute("DELETE FROM memberships WHERE practitioner = ? AND care_team = ? AND role = ?",
                         (practitioner_id, team_id, role))
        await tx.execute("DELETE FROM resources WHERE type = ? AND id = ?", ("PractitionerRole", id_))
        team = await tx.get("CareTeam", team_id)
        if team is not None:
            await _set_participant(self, tx, team, practitioner_id, org, role, False, now)
        await _audit_admin(tx, claims, "D", "delete", "PractitionerRole", id_, now)
    message = f"PractitionerRole/{id_} deleted: Practitioner/{practitioner_id} is no longer {role} in CareTeam/{team_id}"
    return fhir_response(operation_outcome("RESOURCE_DELETED", message, "informational", "information"))


async def _find_membership(tx, id_: str, org: str) -> tuple[str, str, str, str] | None:
    """(practitioner, care team, org, role) of the membership whose PractitionerRole id is ``id_``.

    The id is a hash of the membership, so it is matched against the memberships: those of the
    caller's organisation first (the usual case); then all, only to tell another organisation's
    membership (403) from none (404)."""
    if not FHIR_ID.fullmatch(id_):
        return None
    for where, params in (("WHERE org = ?", (org,)), ("", ())):
        for practitioner_id, team_id, member_org, role in await tx.fetch(
                f"SELECT practitioner, care_team, org, role FROM memberships {where}", params):
            if role_id(practitioner_id, team_id, role) == id_:
                return practitioner_id, team_id, member_org, role
    return None


async def search_roles(self: Service, request: Request) -> Response:
    claims, org = await _authorise(self, request, "PractitionerRole.search")
    q = request.query_params
    asked = self.ref_id(q.get("organization"), "Organization", "organization")
    if asked is None:
        # FUT: a search must carry every context dimension of the token
        raise auth.AuthError.of("SECURITY_SEARCH_PARAMS_MANDATORY", "organization")
    if asked != org:
        raise auth.AuthError.of("SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", "organization")
    count, offset = page_count(q), page_offset(q)
    where, params = ["org = ?"], [org]
    practitioner = self.ref_id(q.get("practitioner"), "Practitioner", "practitioner")
    if practitioner is not None:
        where.append("practitioner = ?")
        params.append(practitioner)
    if q.get("role"):
        roles = q["role"].split(",")
        if len(roles) > len(auth.ROLE_PERMISSIONS):
            raise bad_request("SEARCH_TOO_MANY_VALUES", f"role takes at most {len(auth.ROLE_PERMISSIONS)} codes")
        where.append(f"role IN ({', '.join('?' for _ in roles)})")
        params += roles
    sql_where = " AND ".join(where)
    async with self.storage.transaction() as tx:
        total = int((await tx.fetch(f"SELECT COUNT(*) FROM memberships WHERE {sql_where}", params))[0][0])
        page = await tx.fetch(f"SELECT practitioner, care_team, role FROM memberships WHERE {sql_where} "
                              "ORDER BY care_team, practitioner, role LIMIT ? OFFSET ?", [*params, count, offset])
        ids = [role_id(p, t, r) for p, t, r in page]
        stored = {r.id: r for r in await tx.search("PractitionerRole", [Filter("id", "in", ids)], limit=len(ids) + 1)}
    entries = []
    for (practitioner_id, team_id, role), id_ in zip(page, ids, strict=True):
        resource = (json.loads(stored[id_].body) if id_ in stored
                    else fr.practitioner_role(self.refs, id_, practitioner_id, org, team_id, role))
        entries.append({"fullUrl": self.refs.url("PractitionerRole", id_), "resource": resource, "mode": "match"})
    # Staff lists hold no patient data: FUT's audit is per patient touched, so this search writes none.
    next_url = page_url(request, offset + len(page)) if offset + len(page) < total else None
    return fhir_response(fr.bundle_searchset(entries, total, str(request.url), next_url))


def routes(service: Service, guarded) -> list[Route]:
    def bind(handler, **kw):
        return guarded(functools.partial(handler, service), **kw)

    return [
        Route("/organization/Practitioner", bind(create_practitioner, retry_on_conflict=True), methods=["POST"]),
        Route("/organization/PractitionerRole", bind(create_role, retry_on_conflict=True), methods=["POST"]),
        Route("/organization/PractitionerRole", bind(search_roles), methods=["GET"]),
        Route("/organization/PractitionerRole/{id}", bind(delete_role), methods=["DELETE"]),
    ]
