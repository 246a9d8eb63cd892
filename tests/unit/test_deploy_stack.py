"""The local stack's list of parts, without starting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy import process, stack
from events.settings import Settings


def settings(home: Path, **kw: object) -> Settings:
    return Settings(home=home, **kw)  # type: ignore[arg-type]


def test_consumers_are_named_and_ordered_before_the_other_services(tmp_path: Path) -> None:
    s = settings(tmp_path, consumers=3)
    assert stack.consumer_names(s) == ["consumer", "consumer-2", "consumer-3"]
    assert stack.order(s) == ["postgres", "kafka", "consumer", "consumer-2", "consumer-3", "watchdog", "notifier", "api"]
    assert [svc.module for svc in stack.python_services(s)][:3] == ["consumers"] * 3


def test_a_consumer_left_from_a_larger_setting_is_still_stopped_by_down(tmp_path: Path) -> None:
    run = process.run_dir(tmp_path)
    run.mkdir(parents=True, exist_ok=True)
    for name in ("consumer-2", "consumer-3", "consumer-10"):
        (run / f"{name}.pid").write_text("{}")
    assert stack.order(settings(tmp_path, consumers=2))[2:6] == ["consumer", "consumer-2", "consumer-3", "consumer-10"]


def test_more_consumers_than_partitions_is_refused_in_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(process.StackError, match="more than the 6 partitions"):
        stack.consumer_names(settings(tmp_path, consumers=7, events_partitions=6))


def test_service_gc_tuning_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    import gc

    from events.settings import tune_service_gc

    before = gc.get_threshold()
    try:
        tune_service_gc()
        assert gc.get_threshold() == (100_000, 50, 100)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
