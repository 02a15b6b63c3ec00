"""Fuzz every operation of the served OpenAPI document (``GET /openapi.json``) with schemathesis.

Requests generated from the document (positive: as described; negative: violating it) go to the
real server on SQLite and PostgreSQL with a valid bearer token of a citizen and of a nurse (the
token endpoint without one). Whatever the input, the answer must not be a 5xx, and an error must be
an OperationOutcome with a code. Bounded for CI: a fixed number of examples per operation, mode
and role, derandomized (the same examples every run), no shrinking, no example database.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.server.test_api import login, rescope

EXAMPLES = 12  # per operation, generation mode and role: about 650 requests per role and database
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
CITIZEN = 26  # ct-1: a citizen and team no other module writes for


def case_mode(case) -> str:
    meta = getattr(case, "meta", None)
    return str(getattr(getattr(meta, "generation", None), "mode", "")) if meta else ""


def _fuzz(base_url: str, schema, token: str | None, failures: list, counter: list) -> None:
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except Exception as exc:  # noqa: BLE001 - an operation schemathesis cannot generate for
                failures.append(f"{operation.method.upper()} {operation.path}: no strategy ({exc})")
                continue

            @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
            @given(strategy)
            def run(case):
                counter[0] += 1
                try:
                    r = case.call(base_url=base_url, session=session, headers=headers, timeout=15)
                except requests.exceptions.InvalidHeader:
                    return  # a header value the HTTP client itself refuses to send
                label = f"{case.method} {case.formatted_path} [{case_mode(case)}]"
                if r.status_code >= 500:
                    failures.append(f"{label}: {r.status_code} {r.text[:200]} query={case.query!r} "
                                    f"body={str(case.body)[:200]!r}")
                elif r.status_code >= 400 and case.method != "HEAD":
                    try:
                        body = r.json()
                        code = body["issue"][0]["details"]["coding"][0]["code"]
                    except (ValueError, KeyError, IndexError, TypeError):
                        failures.append(f"{label}: {r.status_code} is not an OperationOutcome: {r.text[:200]}")
                    else:
                        assert body["resourceType"] == "OperationOutcome" and code

            with contextlib.suppress(Unsatisfiable):  # nothing to violate (negative mode, no parameters or body)
                run()


@pytest.fixture(scope="module")
def tokens(server):
    with server.client() as c:
        citizen = login(c, "nemlogin", f"citizen-{CITIZEN}")
        nurse = rescope(c, "ehealth", login(c, "ehealth", "nurse-1-0"), care_team_id="ct-1")
    return {"citizen": citizen["access_token"], "nurse": nurse["access_token"]}


@pytest.mark.parametrize("role", ["citizen", "nurse"])
def test_no_input_makes_a_5xx(server, tokens, role):
    with server.client() as c:
        document = c.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    counter = [0]
    started = time.monotonic()
    _fuzz(server.base_url, schema, tokens[role], failures, counter)
    elapsed = time.monotonic() - started
    print(f"{server.kind} {role}: {counter[0]} examples in {elapsed:.1f} s, {len(failures)} failures")
    with server.client() as c:
        assert c.get("/health").json()["status"] == "ok"
    assert counter[0] >= 100
    assert not failures, json.dumps(failures[:20], indent=1)
