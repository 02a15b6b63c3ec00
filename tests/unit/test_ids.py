"""Server-assigned resource ids: time-ordered, unique, and never CPR-like."""

from __future__ import annotations

import re

from twin.server.storage import new_id

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def test_ids_sort_by_creation_are_unique_and_valid_fhir_ids():
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(FHIR_ID.match(i) for i in ids)


def test_ids_never_contain_a_cpr_like_digit_run():
    # An audit query carrying a resource id is CPR-masked; an id with ten digits in a row would be mangled.
    assert not any(re.search(r"\d{6}-?\d{4}", new_id()) for _ in range(20000))
