"""Care teams: one team per organisation and disease area, staffed in proportion to its caseload.

A municipality's telemedicine team follows its own citizens; each region's hospital team follows
the sickest citizens of its region (P5). Staffing is ``nurses_per_1000_citizens`` of the team's
caseload at the start of the run, in full-time equivalents, at least ``min_fte_per_team``: 1.4 FTE
is one full-time nurse and one on telemedicine duty for 40 % of each shift (a small municipality's
telemedicine nurse does other work the rest of the day). The work a team does is its
alerts (triage of yellow and red sessions, with a phone call for red) and the routine review of
every citizen's data on its review days (T7, T17, T18).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twin.care.calendar import MINUTES_PER_DAY, ShiftCalendar
from twin.care.nurse_work import PRIORITY_RED, PRIORITY_ROUTINE, PRIORITY_YELLOW, WorkItems
from twin.organisations import Organisations
from twin.scenario import Care


@dataclass
class Teams:
    org: np.ndarray  # int organisation index
    cohort: np.ndarray  # int cohort index
    name: np.ndarray  # str
    fte: np.ndarray  # float: staffing in full-time equivalents
    nurses: np.ndarray  # int: head count (whole nurses plus a part-timer)
    caseload_at_start: np.ndarray  # int

    def __len__(self) -> int:
        return len(self.org)


def build_teams(cohort_names: list[str], cohort_org: list[np.ndarray], cohort_active_at_start: list[np.ndarray],
                care: Care, orgs: Organisations) -> tuple[Teams, list[np.ndarray]]:
    """Teams for every (cohort, organisation) with citizens, and each citizen's team index."""
    org_l, cohort_l, name_l, fte_l, load_l, team_of = [], [], [], [], [], []
    for k, (cname, org, active) in enumerate(zip(cohort_names, cohort_org, cohort_active_at_start, strict=True)):
        present = np.unique(org)
        lookup = np.full(len(orgs.code), -1)
        lookup[present] = np.arange(len(present)) + len(org_l)
        team_of.append(lookup[org])
        load = np.bincount(org[active], minlength=len(orgs.code))[present]
        for o, caseload in zip(present, load, strict=True):
            org_l.append(o)
            cohort_l.append(k)
            name_l.append(f"{orgs.name[o]} {cname} team")
            fte_l.append(max(care.min_fte_per_team, caseload * care.nurses_per_1000_citizens / 1000))
            load_l.append(int(caseload))
    fte = np.array(fte_l, dtype=float)
    teams = Teams(np.array(org_l, dtype=int), np.array(cohort_l, dtype=int), np.array(name_l, dtype=object),
                  fte, np.ceil(fte - 1e-9).astype(int), np.array(load_l, dtype=int))
    return teams, team_of


def active_caseload(team: np.ndarray, enrol_day: np.ndarray, exit_day: np.ndarray, n_teams: int,
                    duration_days: int) -> np.ndarray:
    """(team, day) → citizens enrolled and not exited on that day."""
    diff = np.zeros((n_teams, duration_days + 1), dtype=np.int64)
    s = np.clip(np.ceil(enrol_day), 0, duration_days).astype(int)
    e = np.clip(np.ceil(exit_day), 0, duration_days).astype(int)
    keep = e > s
    np.add.at(diff, (team[keep], s[keep]), 1)
    np.add.at(diff, (team[keep], e[keep]), -1)
    return np.cumsum(diff[:, :duration_days], axis=1)


def build_work_items(alert_team: np.ndarray, alert_release_min: np.ndarray, alert_level: np.ndarray,
                     caseload: np.ndarray, care: Care, calendar: ShiftCalendar,
                     rng: np.random.Generator) -> tuple[WorkItems, np.ndarray, np.ndarray]:
    """Alerts plus routine-review blocks, sorted by release time.

    Returns the items, the index of the alert each item came from (-1 for routine review) and the
    day of each routine block's review (-1 for alerts)."""
    n_alerts = alert_team.size
    median = np.where(alert_level >= 2, care.triage_time_median_min["red"], care.triage_time_median_min["yellow"])
    alert_service = median * rng.lognormal(0, care.triage_time_sigma, n_alerts)
    alert_priority = np.where(alert_level >= 2, PRIORITY_RED, PRIORITY_YELLOW)

    # Routine review: caseload x minutes per citizen on each review day, in blocks of chunk_min.
    n_teams, n_days = caseload.shape
    review_days = [d for d in range(n_days) if calendar.is_working_day(d) and calendar.weekday_name(d) in care.review_days]
    r_team, r_day, r_service = [], [], []
    for d in review_days:
        work = caseload[:, d] * care.routine_review_min_per_citizen
        chunks = np.ceil(work / care.routine_review_chunk_min).astype(int)
        teams = np.repeat(np.arange(n_teams), chunks)
        last = np.cumsum(chunks) - 1
        service = np.full(teams.size, care.routine_review_chunk_min)
        service[last[chunks > 0]] = work[chunks > 0] - (chunks[chunks > 0] - 1) * care.routine_review_chunk_min
        r_team.append(teams)
        r_day.append(np.full(teams.size, d))
        r_service.append(service)
    r_team = np.concatenate(r_team) if r_team else np.zeros(0, int)
    r_day = np.concatenate(r_day) if r_day else np.zeros(0, int)
    r_service = np.concatenate(r_service) if r_service else np.zeros(0)
    r_release = r_day * MINUTES_PER_DAY + care.shift_start_hour * 60

    team = np.concatenate([alert_team, r_team]).astype(int)
    release = np.concatenate([alert_release_min, r_release]).astype(float)
    priority = np.concatenate([alert_priority, np.full(r_team.size, PRIORITY_ROUTINE)]).astype(np.int8)
    service = np.concatenate([alert_service, r_service]).astype(float)
    source = np.concatenate([np.arange(n_alerts), np.full(r_team.size, -1)])
    day = np.concatenate([np.full(n_alerts, -1), r_day])
    order = np.argsort(release, kind="stable")
    items = WorkItems(team[order], release[order], priority[order], service[order])
    return items, source[order], day[order]
