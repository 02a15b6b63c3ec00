"""Tokens: the stand-in for FUT's Keycloak / NemLog-in, and the access checks every request makes.

How FUT authenticates (reference/fut-infrastructure.md §3, §6)
----------------------------------------------------------------
Every call to a FUT FHIR service carries ``Authorization: Bearer <JWT>``. The JWT is issued by
Keycloak in one of two **realms**:

* ``nemlogin`` — citizens, who log in with MitID through NemLog-in (``user_type`` PATIENT);
* ``ehealth`` — practitioners, who log in through SEB / a regional IdP (``user_type`` PRACTITIONER),
  and the platform's own service accounts (``user_type`` SYSTEM).

The token's claims say who the caller is and what it may do:

* ``user_type`` and ``user_id`` — PATIENT / PRACTITIONER / SYSTEM, and the absolute FHIR URL of the
  caller's Patient or Practitioner resource;
* ``realm_access.roles`` — **permission strings**, one per resource interaction or operation:
  ``Observation.read``, ``Task.patch``, ``$submit-measurement``,
  ``EpisodeOfCare$create-episode-of-care``. A practitioner's set follows from the CareTeam
  participant roles SEB gives them (``monitoringAssistor``, ``clinicalViewer``, …;
  :data:`ROLE_PERMISSIONS`); a citizen's is fixed (:data:`CITIZEN_PERMISSIONS`);
* ``context`` — *where* the caller is acting: ``organization_id``, ``care_team_id``,
  ``patient_id``, ``episode_of_care_id``, each an absolute URL. A fresh login has no context. The
  client then calls the token endpoint again with the refresh token plus the context it wants
  (once per patient or episode opened); Keycloak asks the platform whether this user may act
  there (``EpisodeOfCare/$is-context-allowed``) and returns a new token scoped to it
  (:meth:`TokenService.refresh`).

The FHIR services then check, per request: the token is genuine and current (401 otherwise); the
permission for the interaction is present (403 ``SECURITY_TOKEN_INSUFFICIENT_PERMISSION``); the
context the call needs is present (403 ``SECURITY_TOKEN_CONTEXT_MISSING``); search parameters and
resources match the context (403 ``SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT`` /
``SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT``). The 403 codes and message texts are FUT's
(reference/fut-examples/systematic-error-messages.md, "ehealth-security"). FUT's gateway answers
a bad or missing token with a bare 401; the twin gives those the codes ``SECURITY_TOKEN_MISSING``,
``SECURITY_TOKEN_INVALID`` and ``SECURITY_TOKEN_EXPIRED`` in the same style (its own, not FUT's).

What the twin does differently
------------------------------
Keycloak signs with RS256 and publishes its keys; the twin signs with **HS256, one secret key per
realm** (:func:`derive_keys` makes them from the one ``TWIN_SECRET``), because the issuer and the
verifier are the same service. Only HS256 is ever accepted (never ``alg: none``, never a key
chosen by the token), and the realm's key is the one named by the token's ``iss``. Tokens are
not revocable and FUT's ``team_on_eoc`` context flag and ``scope`` coexistence tags are not
modelled.

Verification is on every request's path, so :class:`TokenService` keeps the decoded
:class:`Claims` of recently seen tokens in a bounded LRU cache keyed by the token string; expiry
and realm are still checked against the clock on every hit (decoding is a pure function of the
token and the keys, so caching it is sound).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt

REALMS = ("nemlogin", "ehealth")
"""Keycloak realms: citizens log in in ``nemlogin``, practitioners and systems in ``ehealth``."""

USER_TYPES = ("PATIENT", "PRACTITIONER", "SYSTEM")
REALM_OF_USER_TYPE = MappingProxyType({"PATIENT": "nemlogin", "PRACTITIONER": "ehealth", "SYSTEM": "ehealth"})
USER_RESOURCE = MappingProxyType({"PATIENT": "Patient", "PRACTITIONER": "Practitioner"})
"""The FHIR type ``user_id`` points to; a SYSTEM user's ``user_id`` is a bare id (as in the IG examples)."""

CLIENT_IDS = MappingProxyType({"nemlogin": "citizen-app", "ehealth": "practitioner-app"})  # ``azp``; the twin's names
SCOPES = MappingProxyType({"nemlogin": "openid profile offline_access", "ehealth": "openid profile practitioner"})

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
MAX_TOKEN_CHARS = 8192
"""Longer bearer strings are rejected before any parsing (an issued token is well under 2 KiB)."""

ACCESS, REFRESH = "Bearer", "Refresh"  # the ``typ`` claim, as Keycloak writes it

# -- errors ---------------------------------------------------------------------------------------

MESSAGES: Mapping[str, tuple[int, str]] = MappingProxyType({
    # the twin's own 401s (FUT's gateway answers these with a bare 401)
    "SECURITY_TOKEN_MISSING": (401, "Security token missing"),
    "SECURITY_TOKEN_INVALID": (401, "Security token invalid: %s"),
    "SECURITY_TOKEN_EXPIRED": (401, "Security token expired: %s"),
    # FUT's ehealth-security codes and texts (systematic-error-messages.md)
    "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED": (403, "Security token context not allowed: %s"),
    "SECURITY_TOKEN_INSUFFICIENT_PERMISSION": (403, "Insufficient permission for %s for %s"),
    "SECURITY_USER_NOT_ALLOWED": (403, "Resource not allowed for user: %s"),
    "SECURITY_TOKEN_CONTEXT_MISSING": (403, "Security token context missing for user type: %s"),
    "SECURITY_TOKEN_CONTEXT_MISSING_CONTEXT": (403, "Security token context missing for context type: %s"),
    "SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT": (403, "Resource not matching security token context: %s"),
    "SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE": (403, "Operation not allowed for user type: %s"),
    "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT": (
        403, "Search parameters not matching security token context: %s"),
    "SECURITY_SEARCH_PARAMS_MANDATORY": (
        403, "Search parameters mandatory with current user type and combination of search parameters: %s"),
})
"""FUT error code → (HTTP status, message template with ``%s`` placeholders)."""


class AuthError(Exception):
    """A request refused for its token: 401 (no usable token) or 403 (token lacks what is needed).

    ``code`` is the FUT error code, ``message`` FUT's text with the placeholders filled, and
    ``issue_type`` the FHIR OperationOutcome issue type (``login`` / ``forbidden``).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        if status not in (401, 403):
            raise ValueError(f"AuthError status {status}: must be 401 or 403")
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def issue_type(self) -> str:
        return "login" if self.status == 401 else "forbidden"

    @classmethod
    def of(cls, code: str, *args: object) -> AuthError:
        """The error for FUT ``code`` (a key of :data:`MESSAGES`), its placeholders filled with ``args``."""
        status, template = MESSAGES[code]
        return cls(status, code, template % args if args else template)


def _invalid(reason: str) -> AuthError:
    return AuthError.of("SECURITY_TOKEN_INVALID", reason)


# -- permissions ----------------------------------------------------------------------------------

_PERMISSION = re.compile(r"\$[a-z][a-z0-9-]*|[A-Z][A-Za-z]*(\.[a-z][a-z-]*|\$[a-z][a-z0-9-]*)")


def _crud(resource: str, *interactions: str) -> set[str]:
    return {f"{resource}.{interaction}" for interaction in interactions}


CITIZEN_PERMISSIONS = frozenset({
    "$submit-measurement", "$search-measurements", "$get-patient-procedures",
    *_crud("EpisodeOfCare", "read", "search"), "ServiceRequest.read", *_crud("CarePlan", "read", "search"),
    *_crud("Observation", "read", "search"), "QuestionnaireResponse.read",
    *_crud("Communication", "read", "search", "create", "patch"), "Patient.read", "Questionnaire.read",
})
"""What every citizen token carries (``nemlogin``); which data they reach is limited by context."""

_CLINICAL_RESOURCES = ("EpisodeOfCare", "CarePlan", "ServiceRequest", "Observation", "QuestionnaireResponse",
                       "Patient", "Condition")

ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = MappingProxyType({
    # triage nurse: reads the patient's data, works the Task list, assesses, messages the citizen
    "monitoringAssistor": frozenset({
        *(p for r in _CLINICAL_RESOURCES for p in _crud(r, "read", "search")),
        *_crud("Task", "read", "search", "patch"), *_crud("ClinicalImpression", "create", "read", "search"),
        *_crud("Communication", "create", "read", "search", "patch"), "$search-measurements",
        "$get-patient-procedures", "Questionnaire.read",
    }),
    # looks, never touches
    "clinicalViewer": frozenset({
        *(p for r in (*_CLINICAL_RESOURCES, "Task", "ClinicalImpression", "Communication")
          for p in _crud(r, "read", "search")),
        "$search-measurements", "$get-patient-procedures", "Questionnaire.read",
    }),
    # enrols citizens (``$create-episode-of-care``) and sees what the enrolment made
    "citizenEnroller": frozenset({
        "EpisodeOfCare$create-episode-of-care", *_crud("Patient", "read", "search"),
        *_crud("EpisodeOfCare", "read", "search"), *_crud("CarePlan", "read", "search"), "ServiceRequest.read",
        "Condition.read",
    }),
    # adjusts a citizen's monitoring: the thresholds on their ServiceRequests
    "monitoring_adjuster": frozenset({
        *(p for r in _CLINICAL_RESOURCES for p in _crud(r, "read", "search")),
        *_crud("ServiceRequest", "update", "patch"), "$search-measurements", "$get-patient-procedures",
    }),
    # the organisation's user management: no patient data
    "careteamAdministrator": frozenset({
        *_crud("Practitioner", "create", "read", "search"),
        *_crud("PractitionerRole", "create", "read", "search", "delete"),
        *_crud("CareTeam", "read", "search", "patch"),
    }),
    "auditor": frozenset(_crud("AuditEvent", "read", "search")),
})
"""CareTeam participant roles (FUT ConceptMap oio-bpp-roles-to-careteam-participant-roles) → permissions."""


def permissions_for_roles(roles: Iterable[str]) -> frozenset[str]:
    """The union of the permission sets of ``roles``; an unknown role is a ValueError."""
    if isinstance(roles, str):
        raise TypeError(f"roles must be an iterable of role names, not the string {roles!r}")
    granted: set[str] = set()
    for role in roles:
        if role not in ROLE_PERMISSIONS:
            raise ValueError(f"unknown role {role!r}: known roles are {', '.join(sorted(ROLE_PERMISSIONS))}")
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)


def permission_name(permission: str, resource_type: str | None = None) -> str:
    """``("read", "Observation")`` → ``Observation.read``; ``("$apply", "PlanDefinition")`` →
    ``PlanDefinition$apply``; a full permission string with no resource type is returned as is."""
    if resource_type is None:
        return permission
    return f"{resource_type}{permission}" if permission.startswith("$") else f"{resource_type}.{permission}"


# -- context --------------------------------------------------------------------------------------

CONTEXT_TYPES = MappingProxyType({"organization_id": "Organization", "care_team_id": "CareTeam",
                                  "patient_id": "Patient", "episode_of_care_id": "EpisodeOfCare"})
"""Context claim key → the FHIR type its URL points to."""
_CONTEXT_FIELD = MappingProxyType({t: f.removesuffix("_id") for f, t in CONTEXT_TYPES.items()})
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

UrlFor = Callable[[str, str], str]
"""``url_for(resource_type, id)`` → the absolute URL of that resource on this service."""
IdOf = Callable[[str, str], str]
"""``id_of(resource_type, url)`` → the id; ValueError if ``url`` is not a URL of that type."""


def id_from_url(resource_type: str, url: str) -> str:
    """The id of an absolute or relative reference ``…/{resource_type}/{id}`` (the default ``id_of``)."""
    head, _, id_ = url.rpartition("/")
    if head.rpartition("/")[2] != resource_type or not _FHIR_ID.fullmatch(id_):
        raise ValueError(f"{url!r} is not a reference to a {resource_type}")
    return id_


@dataclass(frozen=True, slots=True)
class Context:
    """Where a token's holder acts: ids (not URLs) of organisation, care team, patient, episode."""

    organization_id: str | None = None
    care_team_id: str | None = None
    patient_id: str | None = None
    episode_of_care_id: str | None = None

    def __post_init__(self) -> None:
        for key in CONTEXT_TYPES:
            value = getattr(self, key)
            if value is not None and not (isinstance(value, str) and _FHIR_ID.fullmatch(value)):
                raise ValueError(f"context {key} {value!r}: must be a FHIR id (1-64 of A-Z a-z 0-9 - .)")

    def to_claim(self, url_for: UrlFor) -> dict[str, str]:
        """The FUT ``context`` claim: key → absolute URL, keys without a value left out."""
        return {key: url_for(type_, value) for key, type_ in CONTEXT_TYPES.items()
                if (value := getattr(self, key)) is not None}

    @classmethod
    def from_claim(cls, claim: Mapping[str, Any], id_of: IdOf = id_from_url) -> Context:
        """Inverse of :meth:`to_claim`; keys the twin does not model (``team_on_eoc``) are ignored."""
        if not isinstance(claim, Mapping):
            raise ValueError(f"context claim must be an object, got {type(claim).__name__}")
        ids = {}
        for key, type_ in CONTEXT_TYPES.items():
            url = claim.get(key)
            if url is not None:
                if not isinstance(url, str):
                    raise ValueError(f"context {key} must be a URL string")
                ids[key] = id_of(type_, url)
        return cls(**ids)

    def id_for(self, resource_type: str) -> str | None:
        """The context's id for ``"Organization"``, ``"CareTeam"``, ``"Patient"`` or ``"EpisodeOfCare"``."""
        try:
            return getattr(self, _CONTEXT_FIELD[resource_type] + "_id")
        except KeyError:
            raise ValueError(f"{resource_type!r} is not a context type: use one of {', '.join(_CONTEXT_FIELD)}"
                             ) from None

    def describe(self) -> str:
        """``"CareTeam/7, EpisodeOfCare/12"`` (``"empty"`` for no context), for messages."""
        parts = [f"{type_}/{value}" for key, type_ in CONTEXT_TYPES.items() if (value := getattr(self, key))]
        return ", ".join(parts) or "empty"


NO_CONTEXT = Context()
"""A fresh login's context: none."""


# -- claims ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Claims:
    """A verified token, decoded: who, in which realm, with which permissions, in which context."""

    user_type: str
    user_id: str
    realm: str
    roles: frozenset[str]
    context: Context = field(default_factory=Context)
    issued_at: int = 0
    expires_at: int = 0
    token_id: str = ""
    not_before: int = field(default=0, compare=False)  # max(iat, nbf): a token is refused before then (beyond CLOCK_SKEW_S)

    def permits(self, permission: str, resource_type: str | None = None) -> bool:
        return permission_name(permission, resource_type) in self.roles

    def require(self, permission: str, resource_type: str | None = None) -> None:
        """403 ``SECURITY_TOKEN_INSUFFICIENT_PERMISSION`` unless the token carries the permission.

        ``require("Observation.read")`` and ``require("read", "Observation")`` are the same check;
        ``require("$apply", "PlanDefinition")`` checks ``PlanDefinition$apply``.
        """
        name = permission_name(permission, resource_type)
        if name not in self.roles:
            raise AuthError.of("SECURITY_TOKEN_INSUFFICIENT_PERMISSION", name, self.user_type)

    def require_context(self, *kinds: str) -> tuple[str, ...]:
        """The context ids of ``kinds`` (FHIR types: ``"EpisodeOfCare"``, ``"Patient"``, ``"CareTeam"``,
        ``"Organization"``), in order; 403 ``SECURITY_TOKEN_CONTEXT_MISSING`` naming those missing."""
        ids = tuple(self.context.id_for(kind) for kind in kinds)
        missing = [kind for kind, id_ in zip(kinds, ids, strict=True) if id_ is None]
        if missing:
            raise AuthError.of("SECURITY_TOKEN_CONTEXT_MISSING", ", ".join(missing))
        return ids  # type: ignore[return-value]  # no None left

    def require_user_type(self, *user_types: str) -> None:
        """403 ``SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE`` unless the caller is one of ``user_types``."""
        if self.user_type not in user_types:
            raise AuthError.of("SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE", self.user_type)


# -- keys -----------------------------------------------------------------------------------------

def generate_keys() -> dict[str, bytes]:
    """A fresh random 32-byte HS256 key per realm (tests, and a server without a configured secret)."""
    return {realm: secrets.token_bytes(MIN_KEY_BYTES) for realm in REALMS}


def derive_keys(secret: str | bytes) -> dict[str, bytes]:
    """One 32-byte key per realm from one server secret (HMAC-SHA256 of the realm name), so that
    worker processes given the same ``TWIN_SECRET`` sign and verify alike while realms stay apart."""
    raw = secret.encode() if isinstance(secret, str) else bytes(secret)
    if len(raw) < MIN_KEY_BYTES:
        raise ValueError(f"secret must be at least {MIN_KEY_BYTES} bytes, got {len(raw)}")
    return {realm: hmac.new(raw, f"twin-token-key/{realm}".encode(), hashlib.sha256).digest() for realm in REALMS}


# -- the token service ----------------------------------------------------------------------------

_MAX_ROLE_SETS = 1024
CLOCK_SKEW_S = 60  # tolerated difference between the issuer's clock and ours
_REQUIRED_CLAIMS = ("iss", "sub", "typ", "iat", "exp", "jti", "user_type", "user_id", "realm_access")


ACCESS_LIFETIME_S = 300  # an access token's life: Keycloak's default, as FUT's realms use


class TokenService:
    """Issues, verifies and re-scopes tokens for both realms (the twin's Keycloak).

    ``keys`` maps every realm in :data:`REALMS` to its own HS256 key (≥ 32 bytes). ``url_for`` and
    ``id_of`` translate between ids and the absolute URLs the claims carry. ``clock`` returns epoch
    seconds (inject a fake one in tests). ``cache_size`` bounds the verified-token cache (0: none).
    """

    def __init__(self, keys: Mapping[str, bytes], url_for: UrlFor, access_lifetime_s: int = ACCESS_LIFETIME_S,
                 refresh_lifetime_s: int = 1800, issuer: str = "http://127.0.0.1:8080/auth",
                 clock: Callable[[], float] = time.time, *, id_of: IdOf = id_from_url,
                 cache_size: int = 4096) -> None:
        if set(keys) != set(REALMS):
            raise ValueError(f"keys must be given for exactly the realms {REALMS}, got {sorted(keys)}")
        for realm, key in keys.items():
            if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
                raise ValueError(f"key of realm {realm!r} must be at least {MIN_KEY_BYTES} bytes")
        if len({bytes(key) for key in keys.values()}) != len(REALMS):
            raise ValueError("each realm needs its own key (derive_keys makes them from one secret)")
        if access_lifetime_s <= 0 or refresh_lifetime_s <= 0:
            raise ValueError("token lifetimes must be positive")
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._keys = {realm: bytes(key) for realm, key in keys.items()}
        self._url_for, self._id_of, self._clock = url_for, id_of, clock
        self.access_lifetime_s, self.refresh_lifetime_s = int(access_lifetime_s), int(refresh_lifetime_s)
        self.issuer = issuer.rstrip("/")
        self._realm_of_iss = {self.realm_issuer(realm): realm for realm in REALMS}
        self._role_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._decode_cached = functools.lru_cache(maxsize=cache_size)(self._decode)

    def realm_issuer(self, realm: str) -> str:
        """The ``iss`` of ``realm``'s tokens: ``{issuer}/realms/{realm}``, as Keycloak."""
        return f"{self.issuer}/realms/{realm}"

    # issuing

    def issue(self, user_type: str, user_id: str, realm: str, roles: Iterable[str],
              context: Context = NO_CONTEXT) -> dict[str, Any]:
        """An OIDC token response (access + refresh token) for a logged-in user.

        ``roles`` are permission strings (use :data:`CITIZEN_PERMISSIONS` or
        :func:`permissions_for_roles`), not role names.
        """
        if user_type not in USER_TYPES:
            raise ValueError(f"user_type {user_type!r}: must be one of {USER_TYPES}")
        if realm not in REALMS:
            raise ValueError(f"realm {realm!r}: must be one of {REALMS}")
        if REALM_OF_USER_TYPE[user_type] != realm:
            raise ValueError(f"a {user_type} logs in in realm {REALM_OF_USER_TYPE[user_type]!r}, not {realm!r}")
        if not isinstance(user_id, str) or not _FHIR_ID.fullmatch(user_id):
            raise ValueError(f"user_id {user_id!r}: must be a FHIR id")
        if isinstance(roles, str):
            raise TypeError("roles must be an iterable of permission strings, not a string")
        permissions = sorted(set(roles))
        bad = [p for p in permissions if not _PERMISSION.fullmatch(p)]
        if bad:
            raise ValueError(f"not permission strings (Resource.interaction or $operation): {bad}; "
                             "map role names with permissions_for_roles()")
        if not isinstance(context, Context):
            raise TypeError("context must be a Context")

        now_s = int(self._clock())
        user_claim = self._url_for(USER_RESOURCE[user_type], user_id) if user_type in USER_RESOURCE else user_id
        common = {"iss": self.realm_issuer(realm), "sub": user_id, "azp": CLIENT_IDS[realm], "iat": now_s,
                  "user_type": user_type, "user_id": user_claim, "realm_access": {"roles": permissions}}
        access = {**common, "typ": ACCESS, "exp": now_s + self.access_lifetime_s, "jti": str(uuid.uuid4()),
                  "context": context.to_claim(self._url_for)}
        refresh = {**common, "typ": REFRESH, "exp": now_s + self.refresh_lifetime_s, "jti": str(uuid.uuid4())}
        key = self._keys[realm]
        return {
            "access_token": jwt.encode(access, key, algorithm=ALGORITHM),
            "refresh_token": jwt.encode(refresh, key, algorithm=ALGORITHM),
            "token_type": "Bearer",
            "expires_in": self.access_lifetime_s,
            "refresh_expires_in": self.refresh_lifetime_s,
            "scope": SCOPES[realm],
        }

    # verifying

    def verify(self, token: str | None, realm: str | None = None) -> Claims:
        """The claims of a genuine, current access token (of ``realm`` when given), else AuthError 401."""
        return self._check(token, ACCESS, realm)

    def refresh(self, refresh_token: str, context: Context, allowed: Callable[[Claims, Context], bool],
                realm: str | None = None) -> dict[str, Any]:
        """Re-scope: a new access + refresh pair for ``context``, for the holder of ``refresh_token``.

        ``allowed(claims, context)`` is the platform's check that this user may act in that context
        (FUT ``EpisodeOfCare/$is-context-allowed``); False → 403 ``SECURITY_TOKEN_CONTEXT_NOT_ALLOWED``.
        ``realm`` is the realm of the token endpoint called, when known.
        """
        if not isinstance(context, Context):
            raise TypeError("context must be a Context")
        claims = self._check(refresh_token, REFRESH, realm)
        if not allowed(claims, context):
            raise AuthError.of("SECURITY_TOKEN_CONTEXT_NOT_ALLOWED", context.describe())
        return self.issue(claims.user_type, claims.user_id, claims.realm, claims.roles, context)

    def verify_refresh(self, refresh_token: str | None, realm: str | None = None) -> Claims:
        """The claims of a refresh token (the token endpoint loads what ``allowed`` needs from them)."""
        return self._check(refresh_token, REFRESH, realm)

    def cache_info(self):
        """Hits, misses and size of the verified-token cache (``functools.lru_cache`` statistics)."""
        return self._decode_cached.cache_info()

    def _check(self, token: str | None, expected_typ: str, realm: str | None) -> Claims:
        if not token:
            raise AuthError.of("SECURITY_TOKEN_MISSING")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise _invalid("not a compact JWT")
        # a refresh token is used once per re-scope: keep the cache for access tokens
        typ, claims = (self._decode_cached if expected_typ == ACCESS else self._decode)(token)
        if typ != expected_typ:
            raise _invalid("refresh token used as access token" if expected_typ == ACCESS
                           else "access token used as refresh token")
        if realm is not None and claims.realm != realm:
            raise _invalid(f"token of realm {claims.realm!r} presented to realm {realm!r}")
        now_s = self._clock()
        if claims.not_before > now_s + CLOCK_SKEW_S:
            raise _invalid("token not valid yet (iat or nbf lies in the future)")
        if now_s >= claims.expires_at:
            raise AuthError.of("SECURITY_TOKEN_EXPIRED", f"{'access' if typ == ACCESS else 'refresh'} token expired "
                                                         f"{now_s - claims.expires_at:.0f} s ago")
        return claims

    def _decode(self, token: str) -> tuple[str, Claims]:
        """Signature, algorithm, issuer and claim shapes; no clock (so the result can be cached)."""
        try:
            header_b64, payload_b64, _ = token.split(".")
            header = json.loads(_b64decode(header_b64))
            unverified = json.loads(_b64decode(payload_b64))
        except (ValueError, TypeError, RecursionError):  # binascii / JSON / UTF-8 errors are ValueErrors
            raise _invalid("not a compact JWT") from None
        if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
            alg = header.get("alg") if isinstance(header, dict) else None
            raise _invalid(f"algorithm {_short(alg)} not accepted (only {ALGORITHM})")
        iss = unverified.get("iss") if isinstance(unverified, dict) else None
        realm = self._realm_of_iss.get(iss) if isinstance(iss, str) else None
        if realm is None:
            raise _invalid(f"unknown issuer {_short(iss)}")
        try:
            payload = jwt.decode(token, self._keys[realm], algorithms=[ALGORITHM], issuer=iss,
                                 options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                                          "verify_aud": False, "require": list(_REQUIRED_CLAIMS)})
        except jwt.InvalidSignatureError:
            raise _invalid("signature verification failed") from None
        except jwt.MissingRequiredClaimError as e:
            raise _invalid(f"claim {e.claim!r} missing") from None
        except jwt.PyJWTError as e:
            raise _invalid(type(e).__name__) from None
        if payload["typ"] not in (ACCESS, REFRESH):
            raise _invalid(f"token type {payload['typ']!r} not accepted")
        try:
            return payload["typ"], self._claims(payload, realm)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise _invalid(f"malformed claims ({e})") from None

    def _claims(self, payload: dict[str, Any], realm: str) -> Claims:
        user_type = payload["user_type"]
        if user_type not in USER_TYPES or REALM_OF_USER_TYPE[user_type] != realm:
            raise ValueError(f"user_type {user_type!r} in realm {realm!r}")
        user_claim = payload["user_id"]
        user_id = self._id_of(USER_RESOURCE[user_type], user_claim) if user_type in USER_RESOURCE else user_claim
        if user_id != payload["sub"]:
            raise ValueError("user_id does not match sub")
        roles = payload["realm_access"]["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError("realm_access.roles must be a list of strings")
        issued_at, expires_at = payload["iat"], payload["exp"]
        not_before = payload.get("nbf", issued_at)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in (issued_at, expires_at, not_before)):
            raise ValueError("iat, nbf and exp must be integers")
        # the same few permission sets recur in every token: share one frozenset per distinct set
        key = tuple(roles)
        role_set = self._role_sets.get(key)
        if role_set is None:
            role_set = frozenset(key)
            if len(self._role_sets) < _MAX_ROLE_SETS:
                self._role_sets[key] = role_set
        return Claims(user_type=user_type, user_id=user_id, realm=realm, roles=role_set,
                      context=Context.from_claim(payload.get("context") or {}, self._id_of),
                      issued_at=issued_at, expires_at=expires_at, token_id=str(payload["jti"]),
                      not_before=max(issued_at, not_before))


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _short(value: object, limit: int = 80) -> str:
    """``repr`` of a value taken from an untrusted token, cut to fit in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
