"""Beat's slots: due times on the multiples of the period since the epoch, whoever started when."""

from __future__ import annotations

import inspect
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.beat import PersistentScheduler, ScheduleEntry

from grpod.daemon.celery_app import create_app
from grpod.daemon.schedule import SlotSchedule, SlotScheduler, due, next_slot_after, slot_at, with_slot
from grpod.daemon.settings import Settings


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "period", "slot"),
    [
        ("2026-11-24 10:07:31.250", 600, "2026-11-24 10:00:00"),
        ("2026-11-24 10:10:00", 600, "2026-11-24 10:10:00"),  # on a boundary: that boundary's slot
        ("2026-11-24 10:09:59.999999", 600, "2026-11-24 10:00:00"),
        ("2026-11-24 10:00:07", 2.5, "2026-11-24 10:00:05"),
        ("2026-11-24 23:59:59", 86_400, "2026-11-24 00:00:00"),
    ],
)
def test_a_slot_is_the_latest_multiple_of_the_period_since_the_epoch(moment: str, period: float, slot: str) -> None:
    assert slot_at(at(moment), period) == at(slot)
    assert next_slot_after(at(moment), period) == at(slot) + timedelta(seconds=period)


def test_not_due_until_a_boundary_passes_then_the_next_check_is_the_next_boundary() -> None:
    last = at("2026-11-24 10:03:17")
    assert due(last, at("2026-11-24 10:09:00"), 600) == (False, 60.0)
    assert due(last, at("2026-11-24 10:10:00"), 600) == (True, 600.0)
    assert due(last, at("2026-11-24 10:10:00.5"), 600) == (True, 599.5)


def test_a_beat_back_after_a_long_stop_sends_at_once_for_the_current_slot_only() -> None:
    now = at("2026-11-24 12:34:56")
    assert due(at("2026-11-20 08:00:00"), now, 60) == (True, 4.0)
    assert slot_at(now, 60) == at("2026-11-24 12:34:00")


def _sent_slots(started: datetime, until: datetime, period: float) -> list[datetime]:
    """What a beat started at ``started`` sends, ticking as Celery does: it sleeps for the next
    check (at most 7 s here, and waking a little late), and sends when due."""
    now, last, sent = started, started, []
    while now < until:
        is_due, next_check = due(last, now, period)
        if is_due:
            sent.append(slot_at(now, period))
            last = now
        now += timedelta(seconds=min(next_check, 7.0) + 0.003)
    return sent


def test_two_beats_started_at_different_moments_send_the_same_slots() -> None:
    first = _sent_slots(at("2026-11-24 10:03:17.2"), at("2026-11-24 11:00:00"), 600)
    second = _sent_slots(at("2026-11-24 10:08:59.9"), at("2026-11-24 11:00:00"), 600)
    expected = [at(f"2026-11-24 10:{minute}:00") for minute in (10, 20, 30, 40, 50)]
    assert first == second == expected
    short_a = _sent_slots(at("2026-11-24 10:00:00.4"), at("2026-11-24 10:00:30"), 3)
    short_b = _sent_slots(at("2026-11-24 10:00:01.9"), at("2026-11-24 10:00:30"), 3)
    assert short_a == short_b and len(short_a) == 9


def test_the_schedule_survives_beats_persistent_store_and_compares_by_period() -> None:
    schedule = SlotSchedule(600)
    again = pickle.loads(pickle.dumps(schedule))  # our own object, as beat stores it
    assert isinstance(again, SlotSchedule) and again == schedule and again.period == 600
    assert SlotSchedule(60) != schedule
    with pytest.raises(ValueError, match="must be positive"):
        SlotSchedule(0)


def test_the_scheduler_sends_a_slotted_entry_with_its_slot_and_leaves_others_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(home=tmp_path), broker_url="memory://")
    sent: list[tuple[str, dict[str, Any], bool]] = []

    def record(self: Any, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **_: Any) -> None:
        sent.append((entry.name, dict(entry.kwargs), advance))

    # What SlotScheduler hands on to Celery's own apply_async (which would publish).
    monkeypatch.setattr(PersistentScheduler, "apply_async", record, raising=False)
    scheduler = SlotScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"), lazy=True)
    now = datetime.now(UTC)
    slotted = ScheduleEntry(
        name="maintenance-sweep", task="grpod.maintenance.sweep", schedule=SlotSchedule(600), app=app
    )
    plain = ScheduleEntry(
        name="heartbeat", task="grpod.maintenance.heartbeat", schedule=30.0, kwargs={"beat": {}}, app=app
    )

    scheduler.apply_async(slotted, advance=False)
    scheduler.apply_async(plain, advance=False)

    ((name, kwargs, advance), heartbeat) = sent
    assert name == "maintenance-sweep" and advance is False
    slot = datetime.fromisoformat(kwargs["slot"])
    assert slot == slot_at(slot, 600) and timedelta(0) <= now - slot < timedelta(seconds=601)
    assert slotted.kwargs == {}, "the stored entry stays as configured"
    assert heartbeat == ("heartbeat", {"beat": {}}, False)
    copy = with_slot(plain, slot)
    assert copy.kwargs == {"beat": {}, "slot": slot.isoformat()} and plain.kwargs == {"beat": {}}


def test_every_scheduled_task_with_an_effect_is_slotted_and_none_expires(tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path, maintenance_seconds=5, consolidate_seconds=7))
    assert app.conf.beat_scheduler == "grpod.daemon.schedule:SlotScheduler"
    schedule = app.conf.beat_schedule
    assert all("expires" not in entry.get("options", {}) for entry in schedule.values())
    slotted = {entry["task"] for entry in schedule.values() if isinstance(entry["schedule"], SlotSchedule)}
    assert slotted == {
        "grpod.group.sweep",
        "grpod.distill.sweep",
        "grpod.library.judge",
        "grpod.maintenance.expire_rewards",
        "grpod.maintenance.sweep",
        "grpod.library.consolidate",
    }
    assert schedule["maintenance-sweep"]["schedule"] == SlotSchedule(5)
    assert schedule["consolidate-libraries"]["schedule"] == SlotSchedule(7)
    assert not isinstance(schedule["heartbeat"]["schedule"], SlotSchedule)  # liveness: every beat's copy runs
    app.loader.import_default_modules()
    for name in slotted:  # each accepts the slot beat sends
        assert "slot" in inspect.signature(app.tasks[name].run).parameters, name
