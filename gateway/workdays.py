"""Working-day arithmetic on the Russian production calendar, for upstream deadlines (pure).

The ЭЛМК rules count in working days: an application is processed within 5 working days,
10 when a clarification was requested, and a clarification not answered within 3 working
days leads to rejection (the ЭЛМК article, "Сроки обработки заявления"; DOMAIN.md,
"Statuses and deadlines"). The article's "up to 15 at peak" is a warning, not a
deadline, so nothing here tracks it.

The calendar is the `holidays` library's Russia (RU), not a list of our own. It models:

- the non-working public holidays of Labour Code art. 112 (1-8 January, 23 February,
  8 March, 1 and 9 May, 12 June, 4 November);
- a holiday that falls on a weekend moving to the next working day (2026-03-09,
  2026-05-11), and the Government's yearly transfers of days off (перенос выходных,
  2026-01-09 and 2026-12-31);
- the working Saturdays those transfers create (2024-04-27, 2024-11-02, 2024-12-28,
  2025-11-01), which its `is_working_day` counts as working days.

Both kinds of transfer are data the library types in year by year, from the decree the
Government publishes in the autumn before. A year the installed version does not cover
yet gets the fixed holidays and weekends only, with no transfers and no working
Saturdays, so keep `holidays` recent (0.109 covers 2027).

Periods run as the Civil Code says (art. 191): counting starts on the day after the
event, so the event's own day is never counted. A naive datetime is UTC (how the store
keeps times); every datetime becomes a Moscow date before any counting.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import holidays

MOSCOW = ZoneInfo("Europe/Moscow")

PROCESSING_DAYS = 5
PROCESSING_DAYS_WITH_CLARIFICATION = 10
CLARIFICATION_ANSWER_DAYS = 3

_ONE_DAY = timedelta(days=1)


@cache
def _calendar(year: int) -> holidays.HolidayBase:
    """Russia's calendar for one year, built once: deadlines are computed for every
    submission in a list, and building it (translations included) costs far more than
    a lookup. `expand=False` keeps the cached object from growing other years."""
    return holidays.country_holidays("RU", years=year, expand=False)


def _moscow_date(moment: date) -> date:
    """The date in Moscow: deadlines follow the Moscow calendar, not the server's."""
    if not isinstance(moment, datetime):
        return moment
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(MOSCOW).date()


def is_working_day(day: date) -> bool:
    """True if `day` is a working day (a datetime is taken as its Moscow date)."""
    day = _moscow_date(day)
    return bool(_calendar(day.year).is_working_day(day))


def add_working_days(start: date | datetime, days: int) -> date:
    """The date `days` working days after `start`, `start`'s own day not counted.

    Friday + 1 is the next Monday unless holidays intervene; 0 gives `start`'s date.
    """
    if days < 0:
        raise ValueError(f"days must not be negative, got {days}")
    day = _moscow_date(start)
    while days:
        day += _ONE_DAY
        if is_working_day(day):
            days -= 1
    return day


def working_days_between(start: date, end: date) -> int:
    """Working days after `start` up to and including `end`; 0 if `end` is not later."""
    day, end = _moscow_date(start), _moscow_date(end)
    count = 0
    while day < end:
        day += _ONE_DAY
        count += is_working_day(day)
    return count


def processing_due(accepted_at: datetime, clarification: bool = False) -> date:
    """The last day the upstream has to decide: 5 working days after acceptance, 10 when
    it asked for a clarification (ЭЛМК article: "в течение 5 рабочих дней ... до 10")."""
    days = PROCESSING_DAYS_WITH_CLARIFICATION if clarification else PROCESSING_DAYS
    return add_working_days(accepted_at, days)


def clarification_answer_due(requested_at: datetime) -> date:
    """The last day an MIS may answer a clarification before the application is rejected
    (ЭЛМК article: "в течение 3 рабочих дней, иначе заявка будет отклонена")."""
    return add_working_days(requested_at, CLARIFICATION_ANSWER_DAYS)


def moscow_today() -> date:
    """Today in Moscow: deadlines are dates in Moscow time, as the regulation counts them."""
    return datetime.now(MOSCOW).date()
