"""Care teams' calendars and the nurse worklist, on simulated time (minutes)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from twin.care.calendar import ShiftCalendar
from twin.care.nurse_work import (
    PRIORITY_RED,
    PRIORITY_ROUTINE,
    PRIORITY_YELLOW,
    WorkItems,
    simulate_nurse_work,
)

MONDAY = dt.date(2026, 1, 5)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
DAY = 1440.0


def cal(start=MONDAY):
    return ShiftCalendar(start, 8.0, 15.5, WEEKDAYS)


def items(rows):
    team, release, prio, service = (np.array(c) for c in zip(*rows, strict=True))
    return WorkItems(team.astype(int), release.astype(float), prio.astype(np.int8), service.astype(float))


def test_shift_calendar():
    c = cal()
    assert c.on_shift(8 * 60) and not c.on_shift(15.5 * 60) and not c.on_shift(7.99 * 60)
    assert not c.on_shift(5 * DAY + 9 * 60)  # Saturday
    assert c.shift_starts(7 * DAY) == [d * DAY + 480 for d in range(5)]
    assert c.working_minutes_between(0, 7 * DAY) == pytest.approx(5 * 450)
    w = c.working_minutes_until(np.array([0.0, 9 * 60, 4 * DAY + 20 * 60, 7 * DAY]))
    assert w.tolist() == pytest.approx([0, 60, 5 * 450, 5 * 450])
    # A Thursday start shifts the working days.
    assert not ShiftCalendar(dt.date(2026, 1, 1), 8, 15.5, WEEKDAYS).is_working_day(2)


def test_red_goes_before_yellow_and_routine_and_fifo_within_a_colour():
    work = items([(0, 0.0, PRIORITY_ROUTINE, 30), (0, 1.0, PRIORITY_YELLOW, 5), (0, 2.0, PRIORITY_RED, 10),
                  (0, 3.0, PRIORITY_RED, 10)])
    done = simulate_nurse_work(work, np.array([1]), cal(), horizon_min=2 * DAY)
    # All arrive before the shift; at 08:00 the one nurse takes red, red, yellow, routine.
    assert done.start_min.tolist() == [480 + 25, 480 + 20, 480, 490]
    assert done.end_min.tolist() == [480 + 55, 480 + 25, 490, 500]


def test_no_work_off_shift_and_the_item_in_hand_is_finished():
    work = items([(0, 15 * 60, PRIORITY_RED, 60), (0, 15 * 60 + 10, PRIORITY_RED, 5),
                  (0, 4 * DAY + 16 * 60, PRIORITY_YELLOW, 5)])  # Friday 16:00
    done = simulate_nurse_work(work, np.array([1]), cal(), horizon_min=10 * DAY)
    assert done.start_min[0] == 15 * 60 and done.end_min[0] == 16 * 60  # overtime for the item in hand
    assert done.start_min[1] == DAY + 480  # not started after 15:30, but next morning
    assert done.start_min[2] == 7 * DAY + 480  # Friday evening -> Monday morning (no weekend cover)


def test_teams_are_independent_and_nurses_work_in_parallel():
    work = items([(0, 500, PRIORITY_RED, 60), (0, 500, PRIORITY_RED, 60), (1, 500, PRIORITY_RED, 60)])
    done = simulate_nurse_work(work, np.array([2, 1]), cal(), horizon_min=DAY)
    assert done.start_min.tolist() == [500, 500, 500]
    assert sorted(done.nurse[:2].tolist()) == [0, 1]


def test_a_part_time_nurse_works_the_first_part_of_the_shift():
    # 0.2 FTE: on duty 08:00-09:30 (shift 7.5 h). Items at 09:00 and 10:00 on Monday.
    work = items([(0, 540, PRIORITY_RED, 20), (0, 600, PRIORITY_RED, 20)])
    done = simulate_nurse_work(work, np.array([0.2]), cal(), horizon_min=3 * DAY)
    assert done.start_min[0] == 540  # within her hours
    assert done.start_min[1] == DAY + 480  # after her hours: next morning
    # 1.2 FTE: the full-timer takes the 10:00 item at once.
    done = simulate_nurse_work(work, np.array([1.2]), cal(), horizon_min=3 * DAY)
    assert done.start_min.tolist() == [540, 600]


def test_unfinished_work_stays_open_and_backlog_is_recorded():
    work = items([(0, 100, PRIORITY_YELLOW, 500), (0, 100, PRIORITY_YELLOW, 500)])
    done = simulate_nurse_work(work, np.array([1]), cal(), horizon_min=900)
    assert done.start_min[0] == 480 and np.isnan(done.end_min[0]) and np.isnan(done.start_min[1])
    assert done.backlog_items.tolist() == [2] and done.backlog_work_min.tolist() == [1000]


def test_items_must_be_sorted():
    with pytest.raises(ValueError, match="sorted"):
        simulate_nurse_work(items([(0, 5, 0, 1), (0, 1, 0, 1)]), np.array([1]), cal(), DAY)


def test_no_item_is_started_during_an_outage_and_the_backlog_is_taken_at_its_end():
    # Monday 09:00-11:00 the infrastructure is down. One nurse is busy with a 90-minute item from
    # 08:00, so she finishes it in the outage (08:00-09:30) and can open nothing until 11:00.
    work = items([(0, 0.0, PRIORITY_ROUTINE, 90), (0, 9 * 60 + 30, PRIORITY_RED, 10),
                  (0, 10 * 60, PRIORITY_YELLOW, 5), (0, 12 * 60, PRIORITY_RED, 5)])
    outage = np.array([[9 * 60, 11 * 60]], dtype=float)
    done = simulate_nurse_work(work, np.array([1]), cal(), horizon_min=2 * DAY, outages_min=outage)
    assert done.start_min[0] == 480 and done.end_min[0] == 570  # the item in hand is finished
    assert done.start_min[1] == 11 * 60 and done.start_min[2] == 11 * 60 + 10  # red first, at the outage's end
    assert done.start_min[3] == 12 * 60  # after the outage, work as usual
    without = simulate_nurse_work(work, np.array([1]), cal(), horizon_min=2 * DAY)
    assert without.start_min[1] == 570  # the same items without the outage: taken at once


def test_an_outage_off_shift_changes_nothing_and_an_idle_team_waits_for_its_end():
    work = items([(0, 20 * 60, PRIORITY_RED, 10), (0, DAY + 9 * 60, PRIORITY_RED, 10)])
    night = np.array([[21 * 60, 23 * 60]], dtype=float)
    assert (simulate_nurse_work(work, np.array([2]), cal(), 3 * DAY, outages_min=night).start_min
            == simulate_nurse_work(work, np.array([2]), cal(), 3 * DAY).start_min).all()
    # Tuesday 08:30-10:00 down: the idle team's item released at 09:00 waits for 10:00.
    morning = np.array([[DAY + 8.5 * 60, DAY + 10 * 60]], dtype=float)
    done = simulate_nurse_work(work, np.array([2]), cal(), 3 * DAY, outages_min=morning)
    assert done.start_min[1] == DAY + 10 * 60
