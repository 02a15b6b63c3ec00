"""Against the real server (SQLite, seeded with pilot-100): a short Locust replay, the target
checks, and the quality bar — replaying a simulated day through the API gives exactly the alerts
the twin counted, per team and colour."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from loadtests import payloads
from loadtests import schedule as sc
from tests.conftest import SCENARIOS
from tests.loadtests.conftest import seeded_server, stop
from tests.server.test_api import bearer, login, rescope
from twin.loadtest import LoadTestError, LoadTestRun, run_loadtest
from twin.loadtest.runner import check_target
from twin.scenario import load_scenario

PRIORITY = {"red": "asap", "yellow": "urgent", "green": "routine"}
CATEGORY_SYSTEM = "http://ehealth.sundhed.dk/cs/task-category"


async def _count(database: str, type_: str) -> int:
    from twin.server.storage import Storage

    storage = Storage.connect(database)
    await storage.open()
    try:
        async with storage.transaction() as tx:
            return (await tx.fetch("SELECT COUNT(*) FROM resources WHERE type = ?", (type_,)))[0][0]
    finally:
        await storage.close()


WINDOW = "2026-03-02T07:00..2026-03-02T11:00"


@pytest.mark.parametrize("processes", [0, 2], ids=["one-process", "distributed"])
def test_short_locust_replay_succeeds_per_endpoint_and_stores_submissions(tmp_path_factory, pilot_results,
                                                                          pilot_trace, processes):
    # distributed: a Locust master and two workers, each replaying its own part of the schedule
    server = seeded_server(tmp_path_factory, f"locust-{processes}")
    try:
        out = tmp_path_factory.mktemp("loadtest")
        summary = run_loadtest(LoadTestRun(
            scenario=SCENARIOS / "pilot-100.toml", target=server.base_url, processes=processes,
            window=WINDOW, speedup=1440, drain_s=3, users=30, clinicians=3,
            results=pilot_results.parent, out=out, quiet=True))
        stored = asyncio.run(_count(server.database, "Provenance"))
    finally:
        stop(server)
    by_endpoint = {e["endpoint"]: e for e in summary["endpoints"]}
    for name in ("token", "refresh_context", "episodeofcare_search", "get_patient_procedures", "servicerequest_read",
                 "submit_measurement", "message_poll", "task_worklist", "search_measurements", "careteam_roster"):
        assert by_endpoint[name]["requests"] > 0, name
    assert all(e["failures"] == 0 for e in summary["endpoints"]), [e for e in summary["endpoints"] if e["failures"]]
    assert summary["locust_exit_code"] == 0
    # every upload of the window was sent — by one worker only — and stored once (one Provenance each)
    scheduled = Counter(e.kind for e in sc.citizen_events(pilot_trace, sc.resolve_window(WINDOW, pilot_trace)))
    assert summary["events"]["upload"] == scheduled[sc.UPLOAD] > 0
    assert summary["events"]["session_start"] == scheduled[sc.SESSION_START]
    assert stored == summary["events"]["upload"]
    apps = {a.name for a in load_scenario(SCENARIOS / "pilot-100.toml").apps.vendors}
    assert set(summary["requests_per_app"]) == apps | {"clinician"}
    assert (out / "locust_stats_history.csv").exists() and (out / "endpoint_over_time.csv").exists()
    assert summary["wall_s"] < 30


def test_unreachable_or_unseeded_targets_fail_with_one_line(tmp_path_factory, pilot_results):
    with pytest.raises(LoadTestError, match="unreachable"):
        check_target("http://127.0.0.1:9", 0)
    server = seeded_server(tmp_path_factory, "unseeded-check")
    try:
        with pytest.raises(LoadTestError, match="not seeded with this scenario"):
            check_target(server.base_url, 999_999)  # a citizen pilot-100's seed does not have
        check_target(server.base_url, 0)
    finally:
        stop(server)


def test_replaying_a_day_gives_the_alerts_the_twin_counted(tmp_path_factory, pilot_trace):
    """Every upload (and duplicate) of the busiest Monday, in trace order, with the session's real
    readings and answers; then the Tasks per team and priority equal the trace's colours."""
    window = sc.resolve_window("monday", pilot_trace)
    events = [e for e in sc.citizen_events(pilot_trace, window) if e.kind in (sc.UPLOAD, sc.DUPLICATE)]
    sessions = pilot_trace.sessions.set_index("session_id")
    questions = tuple(load_scenario(SCENARIOS / "pilot-100.toml").regimes["copd-standard"].questions)
    server = seeded_server(tmp_path_factory, "day")
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as c:
            tokens: dict[int, dict] = {}
            for e in events:
                row = sessions.loc[e.key].to_dict()
                cid = int(row["citizen_id"])
                tokens.setdefault(cid, login(c, "nemlogin", f"citizen-{cid}"))
                body = payloads.submission(server.base_url, lambda entry, sid=e.key: payloads.submission_key("", sid, entry),
                                           cid, payloads.session_readings(row), payloads.session_answers(row, questions),
                                           "q-copd", payloads.now_iso())
                r = c.post("/measurement/$submit-measurement", json=body, headers=bearer(tokens[cid]))
                assert r.status_code == (201 if e.kind == sc.UPLOAD else 200), r.text
            uploads = sum(e.kind == sc.UPLOAD for e in events)
            deadline = time.monotonic() + 20
            while c.get("/health").json()["triaged"] < uploads and time.monotonic() < deadline:
                time.sleep(0.1)  # the real triage worker, off the request path: bounded wait
            got = Counter()
            for team in sorted(pilot_trace.sessions["team_id"].unique()):
                nurse = rescope(c, "ehealth", login(c, "ehealth", f"nurse-{team}-0"), care_team_id=f"ct-{team}")
                url = f"/task/Task?responsible=CareTeam/ct-{team}&status=ready,in-progress,completed&_count=100"
                while url:
                    r = c.get(url, headers=bearer(nurse))
                    assert r.status_code == 200, r.text
                    for entry in r.json().get("entry", []):
                        task = entry["resource"]
                        codes = [x["valueCodeableConcept"]["coding"][0]["code"] for x in task["extension"]
                                 if x.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("system")
                                 == CATEGORY_SYSTEM]
                        if codes == ["MeasurementForAssessment"]:
                            got[(int(team), task["priority"])] += 1
                    url = next((lk["url"].replace(server.base_url, "") for lk in r.json().get("link", [])
                                if lk["relation"] == "next"), None)
    finally:
        stop(server)
    s = pilot_trace.sessions
    day = s[(s["upload_time"] >= window.start) & (s["upload_time"] < window.end)]
    expected = Counter({(int(t), PRIORITY[str(col)]): int(n)
                        for (t, col), n in day.groupby(["team_id", "colour"], observed=True).size().items() if n})
    assert sum(expected[k] for k in expected if k[1] != "routine") > 0  # the day has alerts to compare
    assert got == expected


def test_twin_loadtest_without_a_target_starts_and_seeds_its_own_server(tmp_path, pilot_results):
    # `twin loadtest SCENARIO` alone: a local server on SQLite, seeded from the scenario, Locust
    # headless against it, the per-endpoint statistics in results/<scenario>/loadtest/
    (tmp_path / "results").symlink_to(pilot_results.parent, target_is_directory=True)  # the trace is there
    run = subprocess.run([sys.executable, "-m", "twin.cli", "loadtest", str(SCENARIOS / "pilot-100.toml"),
                          "--window", WINDOW, "--speedup", "1440", "--duration", "12", "--users", "30",
                          "--clinicians", "3", "--quiet"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)  # a hang guard
    assert run.returncode == 0, run.stderr + run.stdout
    out = pilot_results / "loadtest"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"].startswith("http://127.0.0.1:") and summary["locust_exit_code"] == 0
    assert summary["events"]["upload"] > 0 and (out / "locust_stats_history.csv").exists()
    assert "submit_measurement" in run.stdout and "-> results/pilot-100/loadtest/summary.json" in run.stdout
