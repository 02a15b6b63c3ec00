"""The token service: FUT claims, HS256 per realm, every forgery a 401, missing rights a FUT 403."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from twin.server.auth import (
    CITIZEN_PERMISSIONS,
    MESSAGES,
    REALMS,
    ROLE_PERMISSIONS,
    AuthError,
    Claims,
    Context,
    TokenService,
    derive_keys,
    generate_keys,
    id_from_url,
    permissions_for_roles,
)

BASE = "http://127.0.0.1:8080"
SERVICE = {"Patient": "patient", "Practitioner": "organization", "Organization": "organization",
           "CareTeam": "organization", "EpisodeOfCare": "careplan"}
T0_S = 1_700_000_000


def url_for(resource_type: str, id_: str) -> str:
    return f"{BASE}/{SERVICE[resource_type]}/{resource_type}/{id_}"


class FakeClock:
    def __init__(self, now_s: float = T0_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> dict[str, bytes]:
    return generate_keys()


@pytest.fixture
def service(keys, clock) -> TokenService:
    return TokenService(keys, url_for, clock=clock)


NO_CONTEXT = Context()
NURSE_CONTEXT = Context(organization_id="org1", care_team_id="ct7", patient_id="pat3", episode_of_care_id="eoc12")


def nurse_tokens(service: TokenService, context: Context = NURSE_CONTEXT) -> dict:
    return service.issue("PRACTITIONER", "prac5", "ehealth", permissions_for_roles(["monitoringAssistor"]), context)


def citizen_tokens(service: TokenService, context: Context = NO_CONTEXT) -> dict:
    return service.issue("PATIENT", "pat3", "nemlogin", CITIZEN_PERMISSIONS, context)


def payload_of(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def assert_auth_error(exc_info, status: int, code: str, in_message: str = "") -> None:
    error = exc_info.value
    assert (error.status, error.code) == (status, code), error
    assert in_message in error.message


# -- issue and verify ---------------------------------------------------------------------------------------

def test_token_response_is_an_oidc_token_response(service):
    response = nurse_tokens(service)
    assert set(response) == {"access_token", "refresh_token", "token_type", "expires_in", "refresh_expires_in",
                             "scope"}
    assert response["token_type"] == "Bearer"
    assert (response["expires_in"], response["refresh_expires_in"]) == (300, 1800)
    assert response["scope"] == "openid profile practitioner"
    assert citizen_tokens(service)["scope"] == "openid profile offline_access"


def test_access_token_carries_the_fut_claims(service):
    payload = payload_of(nurse_tokens(service)["access_token"])
    assert jwt.get_unverified_header(nurse_tokens(service)["access_token"])["alg"] == "HS256"
    assert payload["iss"] == f"{BASE}/auth/realms/ehealth"
    assert (payload["sub"], payload["typ"], payload["user_type"]) == ("prac5", "Bearer", "PRACTITIONER")
    assert payload["user_id"] == f"{BASE}/organization/Practitioner/prac5"
    assert (payload["iat"], payload["exp"]) == (T0_S, T0_S + 300)
    assert payload["azp"] and payload["jti"]
    assert payload["context"] == {
        "organization_id": f"{BASE}/organization/Organization/org1",
        "care_team_id": f"{BASE}/organization/CareTeam/ct7",
        "patient_id": f"{BASE}/patient/Patient/pat3",
        "episode_of_care_id": f"{BASE}/careplan/EpisodeOfCare/eoc12",
    }
    roles = payload["realm_access"]["roles"]
    assert roles == sorted(ROLE_PERMISSIONS["monitoringAssistor"])


def test_refresh_token_has_no_context_and_lives_longer(service):
    payload = payload_of(nurse_tokens(service)["refresh_token"])
    assert payload["typ"] == "Refresh" and "context" not in payload
    assert (payload["sub"], payload["iss"]) == ("prac5", f"{BASE}/auth/realms/ehealth")
    assert payload["exp"] == T0_S + 1800
    assert payload["realm_access"]["roles"] == sorted(ROLE_PERMISSIONS["monitoringAssistor"])


def test_verify_round_trip(service):
    claims = service.verify(nurse_tokens(service)["access_token"], "ehealth")
    assert claims == Claims(user_type="PRACTITIONER", user_id="prac5", realm="ehealth",
                            roles=ROLE_PERMISSIONS["monitoringAssistor"], context=NURSE_CONTEXT,
                            issued_at=T0_S, expires_at=T0_S + 300, token_id=claims.token_id)
    assert claims.token_id
    citizen = service.verify(citizen_tokens(service)["access_token"])
    assert (citizen.user_type, citizen.user_id, citizen.realm) == ("PATIENT", "pat3", "nemlogin")
    assert citizen.roles == CITIZEN_PERMISSIONS and citizen.context == Context()


def test_system_user_id_is_a_bare_id(service):
    tokens = service.issue("SYSTEM", "triage-worker", "ehealth", ["Task.create", "Task.search"])
    assert payload_of(tokens["access_token"])["user_id"] == "triage-worker"
    assert service.verify(tokens["access_token"]).user_id == "triage-worker"


def test_tokens_are_unique(service):
    first, second = nurse_tokens(service), nurse_tokens(service)
    assert first["access_token"] != second["access_token"]
    assert service.verify(first["access_token"]).token_id != service.verify(second["access_token"]).token_id


# -- every bad token is a 401 with its own reason ------------------------------------------------------------

@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(service, token):
    with pytest.raises(AuthError) as e:
        service.verify(token)
    assert_auth_error(e, 401, "SECURITY_TOKEN_MISSING", "Security token missing")


def test_alg_none_is_rejected(service):
    genuine = nurse_tokens(service)["access_token"]
    _, payload_b64, signature = genuine.split(".")
    for forged in (f"{b64url({'alg': 'none'})}.{payload_b64}.",
                   f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{payload_b64}.{signature}",
                   f"{b64url({'alg': 'None'})}.{payload_b64}."):
        with pytest.raises(AuthError) as e:
            service.verify(forged)
        assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "algorithm")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_other_algorithms_are_rejected_even_with_the_right_key(service, keys):
    payload = payload_of(nurse_tokens(service)["access_token"])
    forged = jwt.encode(payload, keys["ehealth"], algorithm="HS512")
    with pytest.raises(AuthError) as e:
        service.verify(forged)
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "'HS512' not accepted")


def test_wrong_key_is_rejected(service, clock):
    impostor = TokenService(generate_keys(), url_for, clock=clock)
    with pytest.raises(AuthError) as e:
        service.verify(nurse_tokens(impostor)["access_token"])
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "signature")


def test_the_realm_key_follows_the_issuer(service, keys):
    """A token signed with the citizen realm's key but claiming the practitioner realm fails."""
    payload = payload_of(nurse_tokens(service)["access_token"])
    forged = jwt.encode(payload, keys["nemlogin"], algorithm="HS256")
    with pytest.raises(AuthError) as e:
        service.verify(forged)
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "signature")


def test_tampered_payload_is_rejected(service):
    genuine = citizen_tokens(service)["access_token"]
    header_b64, _, signature = genuine.split(".")
    payload = payload_of(genuine)
    for change in ({"realm_access": {"roles": sorted(ROLE_PERMISSIONS["monitoringAssistor"])}},
                   {"exp": payload["exp"] + 86_400},
                   {"context": {"patient_id": f"{BASE}/patient/Patient/someone-else"}}):
        forged = f"{header_b64}.{b64url({**payload, **change})}.{signature}"
        with pytest.raises(AuthError) as e:
            service.verify(forged)
        assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "signature")


def test_expired_token(service, clock):
    token = nurse_tokens(service)["access_token"]
    clock.now_s = T0_S + 299.9
    assert service.verify(token).user_id == "prac5"  # now in the cache
    clock.now_s = T0_S + 300
    with pytest.raises(AuthError) as e:
        service.verify(token)
    assert_auth_error(e, 401, "SECURITY_TOKEN_EXPIRED", "access token expired 0 s ago")
    clock.now_s = T0_S + 420
    with pytest.raises(AuthError) as e:
        service.verify(token)
    assert_auth_error(e, 401, "SECURITY_TOKEN_EXPIRED", "expired 120 s ago")


def test_refresh_token_is_not_an_access_token(service):
    tokens = nurse_tokens(service)
    with pytest.raises(AuthError) as e:
        service.verify(tokens["refresh_token"])
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "refresh token used as access token")
    with pytest.raises(AuthError) as e:
        service.refresh(tokens["access_token"], Context(), lambda claims, context: True)
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "access token used as refresh token")


def test_token_of_another_realm(service):
    with pytest.raises(AuthError) as e:
        service.verify(citizen_tokens(service)["access_token"], realm="ehealth")
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "realm 'nemlogin' presented to realm 'ehealth'")


def test_unknown_issuer(service, keys, clock):
    elsewhere = TokenService(keys, url_for, issuer="https://saml.example/auth", clock=clock)
    with pytest.raises(AuthError) as e:
        service.verify(nurse_tokens(elsewhere)["access_token"])
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "unknown issuer")
    payload = payload_of(nurse_tokens(service)["access_token"])
    unknown_realm = jwt.encode({**payload, "iss": f"{BASE}/auth/realms/master"}, keys["ehealth"], algorithm="HS256")
    with pytest.raises(AuthError) as e:
        service.verify(unknown_realm)
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "unknown issuer")


@pytest.mark.parametrize("garbage", ["abc", "a.b.c", "a.b", "...", "Bearer x.y.z", "e30.e30.", "W10.W10.",
                                     "eyJhbGciOiJIUzI1NiJ9.!!!!.abc", "x" * 10_000, b"a.b.c", 42,
                                     f"{b64url({'alg': 'HS256'})}.{base64.urlsafe_b64encode(b'[' * 5000).decode()}.x",
                                     f"{b64url({'alg': 'HS256'})}.{b64url({'iss': 'x' * 5000})}.x"])
def test_garbage_is_a_401_never_a_crash(service, garbage):
    with pytest.raises(AuthError) as e:
        service.verify(garbage)
    assert e.value.status == 401 and e.value.code == "SECURITY_TOKEN_INVALID"


@pytest.mark.parametrize("change", [
    {"user_type": None}, {"user_type": "ADMIN"}, {"user_type": "PATIENT"}, {"typ": "ID"},
    {"user_id": f"{BASE}/patient/Patient/prac5"}, {"sub": "someone-else"}, {"realm_access": {"roles": "all"}},
    {"context": {"episode_of_care_id": f"{BASE}/careplan/CarePlan/1"}}, {"exp": "never"}, {"jti": None},
])
def test_well_signed_but_malformed_claims_are_rejected(service, keys, change):
    """A token we could not have issued is refused even when signed with the realm's key."""
    payload = {**payload_of(nurse_tokens(service)["access_token"]), **change}
    with pytest.raises(AuthError) as e:
        service.verify(jwt.encode(payload, keys["ehealth"], algorithm="HS256"))
    assert e.value.status == 401 and e.value.code == "SECURITY_TOKEN_INVALID"


def test_verified_tokens_are_cached(service):
    token = nurse_tokens(service)["access_token"]
    first = service.verify(token)
    assert service.verify("".join(list(token))) is first  # an equal string from another request
    info = service.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_without_cache_verification_still_works(keys, clock):
    service = TokenService(keys, url_for, clock=clock, cache_size=0)
    token = nurse_tokens(service)["access_token"]
    assert service.verify(token) == service.verify(token)
    assert service.cache_info().hits == 0


# -- re-scoping ----------------------------------------------------------------------------------------------

def test_refresh_scopes_a_new_pair_to_the_context(service, clock):
    login = nurse_tokens(service, Context(organization_id="org1", care_team_id="ct7"))
    seen = []

    def allowed(claims: Claims, context: Context) -> bool:
        seen.append((claims, context))
        return True

    clock.now_s = T0_S + 60
    wanted = Context(organization_id="org1", care_team_id="ct7", episode_of_care_id="eoc12")
    rescoped = service.refresh(login["refresh_token"], wanted, allowed, realm="ehealth")
    (asker, asked), = seen
    assert (asker.user_id, asker.user_type, asker.context, asked) == ("prac5", "PRACTITIONER", Context(), wanted)
    claims = service.verify(rescoped["access_token"])
    assert claims.context == wanted and claims.roles == ROLE_PERMISSIONS["monitoringAssistor"]
    assert claims.issued_at == T0_S + 60
    again = service.refresh(rescoped["refresh_token"], NURSE_CONTEXT, allowed)
    assert service.verify(again["access_token"]).context == NURSE_CONTEXT


def test_refresh_into_a_context_not_allowed(service):
    login = citizen_tokens(service)
    wanted = Context(patient_id="pat9", episode_of_care_id="eoc44")
    with pytest.raises(AuthError) as e:
        service.refresh(login["refresh_token"], wanted, lambda claims, context: context.patient_id == claims.user_id)
    assert_auth_error(e, 403, "SECURITY_TOKEN_CONTEXT_NOT_ALLOWED",
                      "Security token context not allowed: Patient/pat9, EpisodeOfCare/eoc44")
    own = service.refresh(login["refresh_token"], Context(patient_id="pat3"),
                          lambda claims, context: context.patient_id == claims.user_id)
    assert service.verify(own["access_token"], "nemlogin").context.patient_id == "pat3"


def test_refresh_token_expires_and_keeps_its_realm(service, clock):
    login = citizen_tokens(service)
    with pytest.raises(AuthError) as e:
        service.refresh(login["refresh_token"], Context(), lambda *_: True, realm="ehealth")
    assert_auth_error(e, 401, "SECURITY_TOKEN_INVALID", "realm")
    clock.now_s = T0_S + 1800
    with pytest.raises(AuthError) as e:
        service.refresh(login["refresh_token"], Context(), lambda *_: True)
    assert_auth_error(e, 401, "SECURITY_TOKEN_EXPIRED", "refresh token expired")
    with pytest.raises(AuthError) as e:
        service.refresh("", Context(), lambda *_: True)
    assert_auth_error(e, 401, "SECURITY_TOKEN_MISSING")


# -- permissions and context: FUT's 403s ---------------------------------------------------------------------

def test_permission_check_names_permission_and_user_type(service):
    viewer = service.verify(service.issue("PRACTITIONER", "prac6", "ehealth",
                                          permissions_for_roles(["clinicalViewer"]))["access_token"])
    viewer.require("Observation.read")
    viewer.require("read", "Observation")
    viewer.require("$search-measurements")
    assert viewer.permits("search", "Task") and not viewer.permits("patch", "Task")
    with pytest.raises(AuthError) as e:
        viewer.require("patch", "Task")
    assert_auth_error(e, 403, "SECURITY_TOKEN_INSUFFICIENT_PERMISSION")
    assert e.value.message == "Insufficient permission for Task.patch for PRACTITIONER"
    assert e.value.issue_type == "forbidden"
    with pytest.raises(AuthError) as e:
        viewer.require("$apply", "PlanDefinition")
    assert e.value.message == "Insufficient permission for PlanDefinition$apply for PRACTITIONER"


def test_citizen_cannot_touch_the_worklist(service):
    citizen = service.verify(citizen_tokens(service)["access_token"])
    citizen.require("$submit-measurement")
    with pytest.raises(AuthError) as e:
        citizen.require("Task.search")
    assert e.value.message == "Insufficient permission for Task.search for PATIENT"


def test_context_check_names_what_is_missing(service):
    team_only = service.verify(nurse_tokens(service, Context(organization_id="org1", care_team_id="ct7"))
                               ["access_token"])
    assert team_only.require_context("CareTeam") == ("ct7",)
    assert team_only.require_context("Organization", "CareTeam") == ("org1", "ct7")
    with pytest.raises(AuthError) as e:
        team_only.require_context("EpisodeOfCare")
    assert_auth_error(e, 403, "SECURITY_TOKEN_CONTEXT_MISSING")
    assert e.value.message == "Security token context missing for user type: EpisodeOfCare"
    with pytest.raises(AuthError) as e:
        team_only.require_context("CareTeam", "Patient", "EpisodeOfCare")
    assert e.value.message == "Security token context missing for user type: Patient, EpisodeOfCare"
    with pytest.raises(ValueError, match="not a context type"):
        team_only.require_context("Task")


def test_user_type_check(service):
    citizen = service.verify(citizen_tokens(service)["access_token"])
    citizen.require_user_type("PATIENT", "PRACTITIONER")
    with pytest.raises(AuthError) as e:
        citizen.require_user_type("PRACTITIONER")
    assert_auth_error(e, 403, "SECURITY_OPERATION_NOT_ALLOWED_FOR_USER_TYPE")
    assert e.value.message == "Operation not allowed for user type: PATIENT"


@pytest.mark.parametrize("code,args,message", [
    ("SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT", ("episodeOfCare",),
     "Search parameters not matching security token context: episodeOfCare"),
    ("SECURITY_RESOURCE_NOT_MATCHING_TOKEN_CONTEXT", ("Observation/5",),
     "Resource not matching security token context: Observation/5"),
    ("SECURITY_TOKEN_CONTEXT_NOT_ALLOWED", ("CareTeam/9",), "Security token context not allowed: CareTeam/9"),
    ("SECURITY_TOKEN_MISSING", (), "Security token missing"),
])
def test_errors_carry_fut_texts(code, args, message):
    error = AuthError.of(code, *args)
    assert (error.code, error.message) == (code, message)
    assert error.status == MESSAGES[code][0]
    assert str(error) == f"{code}: {message}"


def test_auth_errors_are_401_or_403():
    with pytest.raises(ValueError):
        AuthError(500, "X", "y")


# -- permission sets ---------------------------------------------------------------------------------------

def test_citizen_permissions_are_the_fut_set():
    expected = {
        "$submit-measurement", "$search-measurements", "$get-patient-procedures", "EpisodeOfCare.read",
        "EpisodeOfCare.search", "ServiceRequest.read", "CarePlan.read", "CarePlan.search", "Observation.read",
        "Observation.search", "QuestionnaireResponse.read", "Communication.read", "Communication.search",
        "Communication.create", "Communication.patch", "Patient.read", "Questionnaire.read",
    }
    assert expected == CITIZEN_PERMISSIONS


def test_roles_union_into_permissions():
    assert permissions_for_roles([]) == frozenset()
    assert permissions_for_roles(["auditor"]) == {"AuditEvent.read", "AuditEvent.search"}
    both = permissions_for_roles(["clinicalViewer", "auditor"])
    assert both == ROLE_PERMISSIONS["clinicalViewer"] | ROLE_PERMISSIONS["auditor"]
    assert permissions_for_roles(("monitoringAssistor", "monitoringAssistor")) == ROLE_PERMISSIONS["monitoringAssistor"]
    with pytest.raises(ValueError, match="unknown role 'nurse'"):
        permissions_for_roles(["clinicalViewer", "nurse"])
    with pytest.raises(TypeError):
        permissions_for_roles("auditor")


def test_role_sets_match_their_jobs():
    nurse, viewer, admin = (ROLE_PERMISSIONS[r] for r in ("monitoringAssistor", "clinicalViewer",
                                                           "careteamAdministrator"))
    assert {"Task.patch", "ClinicalImpression.create", "Communication.create", "$search-measurements"} <= nurse
    assert all(p.endswith((".read", ".search")) or p in ("$search-measurements", "$get-patient-procedures") for p in viewer)
    assert viewer < nurse
    assert {"Practitioner.create", "PractitionerRole.delete", "CareTeam.patch"} <= admin
    patient_data = ("Patient", "EpisodeOfCare", "CarePlan", "Observation", "QuestionnaireResponse", "Task",
                    "Communication", "ClinicalImpression", "$")
    assert not any(p.startswith(patient_data) for p in admin)


# -- configuration -----------------------------------------------------------------------------------------

def test_keys_must_be_32_bytes_one_per_realm(keys):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenService({**keys, "ehealth": b"k" * 31}, url_for)
    with pytest.raises(ValueError, match="realms"):
        TokenService({"ehealth": keys["ehealth"]}, url_for)
    with pytest.raises(ValueError, match="own key"):
        TokenService(dict.fromkeys(REALMS, b"k" * 32), url_for)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenService({**keys, "ehealth": "k" * 40}, url_for)  # a str is not a key


def test_key_generation_and_derivation():
    generated = generate_keys()
    assert set(generated) == set(REALMS) and all(len(k) == 32 for k in generated.values())
    assert generated != generate_keys()
    derived = derive_keys("s" * 64)
    assert derived == derive_keys(b"s" * 64) and len(set(derived.values())) == len(REALMS)
    assert derived != derive_keys("t" * 64)
    TokenService(derived, url_for)
    with pytest.raises(ValueError):
        derive_keys("short")


def test_tokens_from_derived_keys_verify_across_instances(clock):
    """Worker processes built from the same secret accept each other's tokens."""
    one = TokenService(derive_keys("x" * 32), url_for, clock=clock)
    other = TokenService(derive_keys("x" * 32), url_for, clock=clock)
    assert other.verify(nurse_tokens(one)["access_token"]).user_id == "prac5"


@pytest.mark.parametrize("args,error", [
    (("PATIENT", "pat3", "ehealth", CITIZEN_PERMISSIONS), "logs in in realm 'nemlogin'"),
    (("PRACTITIONER", "prac5", "nemlogin", []), "logs in in realm 'ehealth'"),
    (("DOCTOR", "prac5", "ehealth", []), "user_type"),
    (("PRACTITIONER", "prac5", "master", []), "realm"),
    (("PRACTITIONER", "http://x/Practitioner/5", "ehealth", []), "FHIR id"),
    (("PRACTITIONER", "prac5", "ehealth", ["monitoringAssistor"]), "permissions_for_roles"),
])
def test_issue_rejects_what_keycloak_would_never_issue(service, args, error):
    with pytest.raises(ValueError, match=error):
        service.issue(*args)


def test_lifetimes_are_configurable(keys, clock):
    service = TokenService(keys, url_for, access_lifetime_s=60, refresh_lifetime_s=600, clock=clock)
    tokens = nurse_tokens(service)
    assert (tokens["expires_in"], tokens["refresh_expires_in"]) == (60, 600)
    assert service.verify(tokens["access_token"]).expires_at == T0_S + 60
    with pytest.raises(ValueError):
        TokenService(keys, url_for, access_lifetime_s=0)


# -- context claim -------------------------------------------------------------------------------------------

def test_context_claim_round_trip():
    claim = NURSE_CONTEXT.to_claim(url_for)
    assert Context.from_claim(claim, id_from_url) == NURSE_CONTEXT
    assert Context(patient_id="pat3").to_claim(url_for) == {"patient_id": f"{BASE}/patient/Patient/pat3"}
    assert Context().to_claim(url_for) == {}
    assert Context.from_claim({**claim, "team_on_eoc": False}) == NURSE_CONTEXT  # FUT's flag, not modelled
    assert NURSE_CONTEXT.describe() == "Organization/org1, CareTeam/ct7, Patient/pat3, EpisodeOfCare/eoc12"
    assert Context().describe() == "empty"


def test_context_urls_must_point_to_the_right_type():
    with pytest.raises(ValueError, match="not a reference to a Patient"):
        Context.from_claim({"patient_id": f"{BASE}/careplan/EpisodeOfCare/eoc12"}, id_from_url)
    with pytest.raises(ValueError):
        Context.from_claim({"patient_id": 7}, id_from_url)
    with pytest.raises(ValueError):
        Context(patient_id=f"{BASE}/patient/Patient/pat3")  # ids, not URLs
