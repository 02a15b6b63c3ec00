"""Calibration is traceable: every number in the defaults file stands with its source."""

from __future__ import annotations

import re
import tomllib

from twin.outcomes import load_targets
from twin.scenario import DEFAULTS_PATH

# A source is a row id of calibration.md (P9, X13, F10, T12, D3, C20 …) or an explicit E/D/S type.
SOURCE = re.compile(r"#.*(\b[PXFTDC]\d{1,2}\b|\bE\b|\(E|\(D|\(S|label only|physical maximum|relative only|"
                    r"no relative|any integer|calendar year|one year|key into)")
ASSIGNMENT = re.compile(r"^\s*[\w\"+-]+\s*=\s*[^\[{]")


def test_every_default_value_has_a_source():
    missing = []
    for number, line in enumerate(DEFAULTS_PATH.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "[")):
            continue
        is_value = ASSIGNMENT.match(line) or re.match(r"^\s*[\w\"+-]+\s*=\s*[\[{]", line)
        if is_value and not SOURCE.search(line):
            missing.append(f"line {number}: {stripped}")
    assert not missing, "values without a source in defaults.toml:\n" + "\n".join(missing)


def test_defaults_parse_and_calibration_targets_cover_c1_to_c20():
    with DEFAULTS_PATH.open("rb") as fh:
        tomllib.load(fh)
    ids = {k.split("_")[0] for k in load_targets()}
    assert ids == {f"C{i}" for i in range(1, 21)}
