"""Specification of working-day arithmetic on the Russian production calendar.

The dates are facts of the official production calendars: 2026 (Labour Code art. 112
and the Government's transfer of 3 January to 9 January and 4 January to 31 December;
247 working days), 2025 (working Saturday 1 November, days off 2-4 November; 247 working
days) and 2024 (working Saturdays 27 April, 2 November and 28 December; 248 working
days). Weekdays were checked against the real calendar, not derived from the code.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from gateway import workdays
from gateway.workdays import (
    add_working_days,
    clarification_answer_due,
    is_working_day,
    processing_due,
    working_days_between,
)

MSK = timezone(timedelta(hours=3))


def days_of(year: int) -> list[date]:
    start = date(year, 1, 1)
    return [start + timedelta(days=n) for n in range((date(year + 1, 1, 1) - start).days)]


def test_new_year_holidays_2026_run_from_1_to_11_january():
    # 1-8 January are holidays (Christmas on the 7th), the 9th is moved from the 3rd,
    # the 10th and 11th are a weekend.
    assert not [d for d in days_of(2026)[:11] if is_working_day(d)]
    assert is_working_day(date(2026, 1, 12))


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 1, 9),    # Friday: the day off moved from Saturday 3 January
        date(2026, 2, 23),   # Monday: Defender of the Fatherland Day
        date(2026, 3, 9),    # Monday: 8 March fell on a Sunday
        date(2026, 5, 1),    # Friday: Spring and Labour Day
        date(2026, 5, 11),   # Monday: 9 May fell on a Saturday
        date(2026, 6, 12),   # Friday: Russia Day
        date(2026, 11, 4),   # Wednesday: Unity Day
        date(2026, 12, 31),  # Thursday: the day off moved from Sunday 4 January
        date(2025, 12, 31),  # Wednesday: the day off moved from Sunday 5 January 2025
        date(2025, 11, 3),   # Monday: moved from the working Saturday 1 November
    ],
)
def test_holidays_and_transferred_days_off_are_not_working_days(day):
    assert day.weekday() < 5
    assert not is_working_day(day)


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 1, 12),   # the first working day of 2026
        date(2026, 2, 24),
        date(2026, 3, 10),
        date(2026, 5, 8),    # the eve of Victory Day is worked (shortened, still counted)
        date(2026, 11, 5),
        date(2026, 12, 30),
    ],
)
def test_ordinary_weekdays_around_holidays_are_working_days(day):
    assert day.weekday() < 5
    assert is_working_day(day)


@pytest.mark.parametrize(
    "saturday",
    [date(2024, 4, 27), date(2024, 11, 2), date(2024, 12, 28), date(2025, 11, 1)],
)
def test_working_saturdays_are_working_days(saturday):
    assert saturday.weekday() == 5
    assert is_working_day(saturday)


def test_2026_has_no_working_weekend_days():
    assert not [d for d in days_of(2026) if d.weekday() >= 5 and is_working_day(d)]


def test_ordinary_weekends_are_not_working_days():
    assert not is_working_day(date(2026, 4, 18))  # Saturday
    assert not is_working_day(date(2026, 4, 19))  # Sunday


@pytest.mark.parametrize(("year", "count"), [(2024, 248), (2025, 247), (2026, 247)])
def test_working_days_in_a_year_match_the_production_calendar(year, count):
    assert working_days_between(date(year - 1, 12, 31), date(year, 12, 31)) == count


def test_friday_plus_one_is_the_next_monday():
    assert add_working_days(date(2026, 4, 17), 1) == date(2026, 4, 20)


def test_start_day_is_not_counted_even_when_it_is_a_holiday():
    assert add_working_days(date(2026, 6, 11), 1) == date(2026, 6, 15)
    assert add_working_days(date(2026, 6, 12), 1) == date(2026, 6, 15)


def test_adding_crosses_the_new_year_holidays():
    # 31 December 2025 and 1-11 January 2026 are all days off.
    assert add_working_days(date(2025, 12, 30), 1) == date(2026, 1, 12)


def test_adding_lands_on_a_working_saturday():
    assert add_working_days(date(2025, 10, 31), 1) == date(2025, 11, 1)
    assert add_working_days(date(2025, 11, 1), 1) == date(2025, 11, 5)


def test_adding_zero_days_keeps_the_date_and_negative_days_are_refused():
    assert add_working_days(date(2026, 1, 3), 0) == date(2026, 1, 3)
    with pytest.raises(ValueError, match="negative"):
        add_working_days(date(2026, 1, 3), -1)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        # 23:30 UTC on Thursday 16 April is 02:30 on Friday 17 April in Moscow.
        (datetime(2026, 4, 16, 23, 30, tzinfo=UTC), date(2026, 4, 20)),
        (datetime(2026, 4, 16, 23, 30), date(2026, 4, 20)),  # naive means UTC
        (datetime(2026, 4, 16, 20, 59, tzinfo=UTC), date(2026, 4, 17)),  # 23:59 MSK
        (datetime(2026, 4, 16, 23, 59, tzinfo=MSK), date(2026, 4, 17)),
        (datetime(2026, 4, 17, 0, 0, tzinfo=MSK), date(2026, 4, 20)),
    ],
)
def test_datetimes_are_taken_as_moscow_dates(moment, expected):
    assert add_working_days(moment, 1) == expected


def test_is_working_day_takes_a_datetime_as_its_moscow_date():
    assert is_working_day(datetime(2026, 6, 11, 20, 59, tzinfo=UTC))  # Thursday, 23:59 MSK
    assert not is_working_day(datetime(2026, 6, 11, 21, 0, tzinfo=UTC))  # 12 June, 00:00


def test_working_days_between_counts_after_start_up_to_end():
    assert working_days_between(date(2026, 4, 17), date(2026, 4, 20)) == 1
    assert working_days_between(date(2026, 4, 30), date(2026, 5, 12)) == 6
    assert working_days_between(date(2026, 4, 20), date(2026, 4, 20)) == 0
    assert working_days_between(date(2026, 4, 20), date(2026, 4, 17)) == 0


def test_adding_and_counting_agree_on_every_day_of_2026():
    for start in days_of(2026):
        for n in range(1, 11):
            due = add_working_days(start, n)
            assert is_working_day(due), (start, n)
            assert working_days_between(start, due) == n, (start, n)
            assert working_days_between(start, due - timedelta(days=1)) == n - 1, (start, n)


def test_regulated_periods():
    assert workdays.PROCESSING_DAYS == 5
    assert workdays.PROCESSING_DAYS_WITH_CLARIFICATION == 10
    assert workdays.CLARIFICATION_ANSWER_DAYS == 3


def test_processing_is_due_5_working_days_after_acceptance():
    # Accepted Thursday 30 April 10:00 MSK; 1-3 May are days off.
    accepted = datetime(2026, 4, 30, 7, 0, tzinfo=UTC)
    assert processing_due(accepted) == date(2026, 5, 8)


def test_processing_with_clarification_is_due_10_working_days_after_acceptance():
    # 9-11 May are days off too.
    accepted = datetime(2026, 4, 30, 7, 0, tzinfo=UTC)
    assert processing_due(accepted, clarification=True) == date(2026, 5, 18)


@pytest.mark.parametrize(
    ("requested_at", "due"),
    [
        (datetime(2026, 2, 20, 12, 0, tzinfo=UTC), date(2026, 2, 26)),  # over 23 February
        (datetime(2026, 11, 3, 12, 0, tzinfo=UTC), date(2026, 11, 9)),  # over 4 November
        (datetime(2026, 4, 14, 9, 0, tzinfo=UTC), date(2026, 4, 17)),   # an ordinary week
    ],
)
def test_clarification_answer_is_due_3_working_days_after_the_request(requested_at, due):
    assert clarification_answer_due(requested_at) == due
