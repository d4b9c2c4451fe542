"""The PIN lock-out rule on a real store: 60 s, doubling, at most 15 minutes."""

from __future__ import annotations

from pathlib import Path

from appliance.clock import ManualClock
from appliance.console import _lockout
from appliance.store import Store

T0 = 1_780_000_000.0


def fail_times(store: Store, times: int, now: float) -> _lockout.LockoutState:
    state = _lockout.LockoutState(0, 0, None, None)
    for _ in range(times):
        with store.transaction() as transaction:
            state = _lockout.record_failure(transaction, now)
    return state


def test_fifth_failure_locks_60_s(tmp_path: Path) -> None:
    store = Store(tmp_path / "box.sqlite3", ManualClock(T0))
    fourth = fail_times(store, 4, T0)
    fifth = fail_times(store, 1, T0)

    assert fourth.failures == 4
    assert fourth.retry_after_s(T0) == 0
    assert fifth.failures == 0
    assert fifth.lockouts == 1
    assert fifth.retry_after_s(T0) == 60
    assert fifth.retry_after_s(T0 + 59) == 1
    assert fifth.retry_after_s(T0 + 60) == 0


def test_lockouts_double_up_to_15_min(tmp_path: Path) -> None:
    store = Store(tmp_path / "box.sqlite3", ManualClock(T0))
    locks = []
    now = T0
    for _ in range(7):
        state = fail_times(store, 5, now)
        locks.append(state.locked_s)
        now += 3600

    assert locks == [60, 120, 240, 480, 900, 900, 900]


def test_success_resets(tmp_path: Path) -> None:
    store = Store(tmp_path / "box.sqlite3", ManualClock(T0))
    fail_times(store, 5, T0)
    fail_times(store, 3, T0 + 100)
    with store.transaction() as transaction:
        _lockout.record_success(transaction)
    after = fail_times(store, 5, T0 + 200)

    assert after.locked_s == 60
    assert after.lockouts == 1


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "box.sqlite3"
    store = Store(path, ManualClock(T0))
    fail_times(store, 5, T0)
    store.close()
    reopened = Store(path, ManualClock(T0))
    with reopened.transaction() as transaction:
        state = _lockout.read_state(transaction)

    assert state.retry_after_s(T0 + 10) == 50


def test_clock_set_back_keeps_lock(tmp_path: Path) -> None:
    store = Store(tmp_path / "box.sqlite3", ManualClock(T0))
    state = fail_times(store, 5, T0)
    earlier = T0 - 86_400
    with store.transaction() as transaction:
        _lockout.restart_lock(transaction, state, earlier)
        moved = _lockout.read_state(transaction)

    assert state.retry_after_s(earlier) == 60
    assert moved.retry_after_s(earlier + 30) == 30
