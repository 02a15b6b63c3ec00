"""docs/TRACE.md describes exactly what a run writes: every column documented, nothing documented missing."""

from __future__ import annotations

import re

import pytest

from tests.conftest import ROOT
from twin.model import simulate
from twin.scenario import load_scenario
from twin.trace import read_trace, write_trace

DOC = (ROOT / "docs" / "TRACE.md").read_text(encoding="utf-8")


def documented_columns(file_name: str) -> list[str]:
    section = DOC.split(f"## `{file_name}`", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        m = re.match(r"^\| (`[^|]+`) \|", line)
        if m:
            names += re.findall(r"`([^`]+)`", m.group(1))
    return names


def matches(column: str, name: str) -> bool:
    pattern = "^" + re.sub(r"<[^>]+>", ".+", re.escape(name).replace(r"\<", "<").replace(r"\>", ">")) + "$"
    return re.match(pattern, column) is not None


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    from tests.conftest import SCENARIOS

    scenario = load_scenario(SCENARIOS / "national-growth.toml")
    from twin.scenario import replace_path

    small = replace_path(replace_path(scenario, "cohorts.0.citizens", 150), "cohorts.1.citizens", 100)
    small = replace_path(small, "run.duration_days", 60)
    out = tmp_path_factory.mktemp("trace")
    write_trace(simulate(small), out)
    return read_trace(out)


@pytest.mark.parametrize("table", ["sessions", "clinician_actions", "demand_per_minute", "citizens", "teams"])
def test_schema_matches_docs(trace, table):
    documented = documented_columns(f"{table}.parquet")
    columns = list(trace[table].columns)
    undocumented = [c for c in columns if not any(matches(c, d) for d in documented)]
    assert not undocumented, f"{table}: columns missing from docs/TRACE.md: {undocumented}"
    literal = [d for d in documented if "<" not in d]
    missing = [d for d in literal if d not in columns]
    assert not missing, f"{table}: documented but not written: {missing}"


def test_call_sequences_columns(trace):
    assert list(trace["call_sequences"].columns) == ["call_sequence", "order", "endpoint", "phase", "method",
                                                       "service", "path"]


def test_demand_adds_up(trace):
    d = trace["demand_per_minute"]
    s = trace["sessions"]
    assert d["sessions_started"].sum() == len(s)
    assert d["submit_measurement"].sum() == s["upload_time"].notna().sum() + s["duplicate_time"].notna().sum()
    endpoint_cols = [c for c in d.columns if c not in ("minute", "sessions_started", "requests")]
    assert (d[endpoint_cols].sum(axis=1) == d["requests"]).all()


def test_multi_cohort_trace_has_both_question_sets(trace):
    s = trace["sessions"]
    assert {"q_dyspnoea", "q_cough", "q_sputum", "q_oedema"} <= set(s.columns)
    hf = s[s["cohort"] == "heart-failure"]
    assert not hf["q_sputum"].any() and hf["q_oedema"].any()
