"""Idempotent submission: one submission sent 50 times at once is stored once and triaged once.

The client's entry identifiers (``urn:uuid:`` fullUrls) are the idempotency key
(``twin.server.submission``). 50 threads post the same body at the same moment; every answer must
be 201, or 200 with ``X-Twin-Duplicate: true``, and all carry the same locations. Afterwards the
database holds one set of Observations, one QuestionnaireResponse and one Provenance for it, the
triage made exactly one Task and one triage ClinicalImpression, and a later retry is answered
200-duplicate with the same locations. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.server.dbprobe import Probe
from tests.server.test_api import GREEN, bearer, login, outcome, submission

CITIZEN = 24  # used by no other test module
COPIES = 50


def _post_together(server, body: dict, token: dict, copies: int) -> list[httpx.Response]:
    barrier = threading.Barrier(copies)

    def post(_):
        with httpx.Client(base_url=server.base_url, timeout=30.0) as c:
            barrier.wait(timeout=30)
            return c.post("/measurement/$submit-measurement", json=body, headers=bearer(token))

    with ThreadPoolExecutor(copies) as pool:
        return list(pool.map(post, range(copies)))


def _locations(r: httpx.Response) -> list[str]:
    return [e["response"]["location"].rsplit("/_history", 1)[0] for e in r.json()["entry"]]


def test_fifty_parallel_copies_are_stored_and_triaged_once(server):
    body = submission(server, CITIZEN, dict(GREEN), {"dyspnoea": True})
    idents = [e["fullUrl"] for e in body["parameter"][0]["resource"]["entry"]]
    with server.client() as c:
        token = login(c, "nemlogin", f"citizen-{CITIZEN}")
    with Probe(server.database) as probe:
        probe.quiet()
        tasks_before = probe.scalar("SELECT COUNT(*) FROM resources WHERE type = 'Task' AND patient = ?", f"p-{CITIZEN}")
        triage_before = probe.scalar("SELECT COUNT(*) FROM resources WHERE type = 'ClinicalImpression' AND patient = ? "
                                     "AND code = 'TriagingResult'", f"p-{CITIZEN}")

        answers = _post_together(server, body, token, COPIES)

        statuses = sorted(r.status_code for r in answers)
        assert all(r.status_code in (200, 201) for r in answers), [(r.status_code, r.text[:200]) for r in answers]
        assert statuses.count(201) == 1, statuses
        assert all(r.headers.get("X-Twin-Duplicate") == "true" for r in answers if r.status_code == 200)
        locations = {tuple(_locations(r)) for r in answers}
        assert len(locations) == 1, locations
        (stored,) = locations
        assert len(stored) == len(idents)

        # a retry after an answered request: the same answer again
        with server.client() as c:
            again = c.post("/measurement/$submit-measurement", json=body, headers=bearer(token))
            assert again.status_code == 200 and again.headers["X-Twin-Duplicate"] == "true", again.text
            assert tuple(_locations(again)) == stored
            for url in stored:  # every location resolves
                assert c.get(url.replace(server.base_url, ""), headers=bearer(token)).status_code == 200

        probe.quiet()
        # each entry stored once: its identifier in exactly one Observation or QuestionnaireResponse
        for ident in idents:
            assert probe.fetch("SELECT type, COUNT(*) FROM resources WHERE type IN ('Observation', "
                               "'QuestionnaireResponse') AND patient = ? AND body LIKE ? GROUP BY type",
                               f"p-{CITIZEN}", f"%{ident}%") in ([("Observation", 1)], [("QuestionnaireResponse", 1)])
        assert probe.scalar("SELECT COUNT(*) FROM resources WHERE type = 'Provenance' AND ident = ?",
                            f"provenance:{idents[0]}") == 1
        assert probe.scalar("SELECT COUNT(*) FROM resources WHERE type = 'Task' AND patient = ?",
                            f"p-{CITIZEN}") == tasks_before + 1
        assert probe.scalar("SELECT COUNT(*) FROM resources WHERE type = 'ClinicalImpression' AND patient = ? "
                            "AND code = 'TriagingResult'", f"p-{CITIZEN}") == triage_before + 1
        assert probe.scalar("SELECT COUNT(*) FROM outbox") == 0


def test_a_different_submission_reusing_the_first_identifier_is_a_conflict_and_stores_nothing(server):
    """The key is the first entry's identifier; a bundle that repeats it with other entries is not a
    retry: 409, and nothing of it is stored."""
    first = submission(server, CITIZEN, dict(GREEN), {"dyspnoea": False})
    other = submission(server, CITIZEN, {**GREEN, "pulse": 91}, {"dyspnoea": True})
    entries = other["parameter"][0]["resource"]["entry"]
    entries[0]["fullUrl"] = first["parameter"][0]["resource"]["entry"][0]["fullUrl"]
    with server.client() as c:
        token = login(c, "nemlogin", f"citizen-{CITIZEN}")
        assert c.post("/measurement/$submit-measurement", json=first, headers=bearer(token)).status_code == 201
        with Probe(server.database) as probe:
            probe.quiet()
            before = probe.scalar("SELECT COUNT(*) FROM resources WHERE patient = ?", f"p-{CITIZEN}")
            r = c.post("/measurement/$submit-measurement", json=other, headers=bearer(token))
            outcome(r, 409, "MEASUREMENT_SUBMITMEASUREMENT_CONFLICTING_RESUBMISSION")
            probe.quiet()
            assert probe.scalar("SELECT COUNT(*) FROM resources WHERE patient = ?", f"p-{CITIZEN}") == before
