"""Beat's schedule in slots: due times that every beat agrees on, and the slot in each message.

A ``SlotSchedule`` is due at the multiples of its period since the epoch (10:00:00, 10:10:00, ...
for 600 s), whenever its beat started, so two beats running at once send copies of the same
slots. The ``SlotScheduler`` adds that slot (the boundary time, ISO 8601) to the kwargs of each
such entry it sends; the task claims (task, slot) in PostgreSQL before it acts
(``grpod.workers.slot_claims``), so a second copy of a slot does nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry
from celery.schedules import schedstate, schedule

MICROSECONDS = 1_000_000


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:  # Celery's naive times are UTC here (enable_utc)
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * MICROSECONDS + delta.microseconds


def _moment(micros: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def period_micros(period_seconds: float) -> int:
    micros = round(period_seconds * MICROSECONDS)
    if micros <= 0:
        raise ValueError(f"a slot period must be positive, not {period_seconds!r} seconds")
    return micros


def slot_at(moment: datetime, period_seconds: float) -> datetime:
    """The slot a moment falls in: the latest multiple of the period since the epoch at or before it."""
    period = period_micros(period_seconds)
    return _moment(_micros(moment) // period * period)


def next_slot_after(moment: datetime, period_seconds: float) -> datetime:
    """The first boundary strictly after a moment."""
    period = period_micros(period_seconds)
    return _moment((_micros(moment) // period + 1) * period)


def due(last_run_at: datetime, now: datetime, period_seconds: float) -> tuple[bool, float]:
    """(is it due, seconds until the next check): due once a boundary has passed since the last run;
    then the next check is the next boundary after now."""
    boundary = next_slot_after(last_run_at, period_seconds)
    if now >= boundary:
        return True, (next_slot_after(now, period_seconds) - now).total_seconds()
    return False, (boundary - now).total_seconds()


class SlotSchedule(schedule):  # type: ignore[misc]  # Celery is untyped
    """Every ``period`` seconds, on the multiples of the period since the epoch."""

    def __init__(self, period: float, app: Any = None) -> None:
        period_micros(period)  # refuse a period that is not positive
        super().__init__(run_every=period, app=app)
        self.period = float(period)

    def slot_at(self, moment: datetime) -> datetime:
        return slot_at(moment, self.period)

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        now: datetime = self.maybe_make_aware(self.now())
        return max(next_slot_after(self.maybe_make_aware(last_run_at), self.period) - now, timedelta(0))

    def is_due(self, last_run_at: datetime) -> schedstate:
        is_due, next_check = due(self.maybe_make_aware(last_run_at), self.maybe_make_aware(self.now()), self.period)
        return schedstate(is_due=is_due, next=next_check)

    def __repr__(self) -> str:
        return f"<every {self.period:g} s, on the multiples since the epoch>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlotSchedule) and other.period == self.period

    def __hash__(self) -> int:
        return hash(("SlotSchedule", self.period))

    def __reduce__(self) -> tuple[type[SlotSchedule], tuple[float]]:
        return self.__class__, (self.period,)


def with_slot(entry: ScheduleEntry, slot: datetime) -> ScheduleEntry:
    """A copy of the entry whose kwargs carry the slot (the stored entry stays as configured)."""
    return entry.__class__(**dict(entry, kwargs={**(entry.kwargs or {}), "slot": slot.isoformat()}))


class SlotScheduler(PersistentScheduler):  # type: ignore[misc]  # Celery is untyped
    """Celery's persistent scheduler that sends each slotted entry with its slot."""

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if isinstance(entry.schedule, SlotSchedule):
            if advance:
                entry = self.reserve(entry)
            slot = entry.schedule.slot_at(entry.schedule.now())
            return super().apply_async(with_slot(entry, slot), producer=producer, advance=False, **kwargs)
        return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
