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


def test_base26_is_fixed_width_and_reads_back_as_the_number():
    import random

    from twin.server.storage import _base26

    rng = random.Random(7)
    for width in (1, 2, 8, 11):
        edges = [n for n in (0, 1, 25, 26, 675, 676) if n < 26**width] + [26**width - 1]
        for n in edges + [rng.randrange(26**width) for _ in range(500)]:
            text = _base26(n, width)
            assert len(text) == width and text.isalpha() and text.islower()
            assert sum((ord(c) - 97) * 26**k for k, c in enumerate(reversed(text))) == n
