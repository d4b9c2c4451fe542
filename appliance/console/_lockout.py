"""The console's PIN lock-out, kept in the store so a restart does not reset it.

Five wrong PINs in a row lock the console for 60 s. Each further lock-out
doubles that time, up to 15 minutes, and a right PIN resets both counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.store import Transaction

MAX_FAILURES = 5
FIRST_LOCK_S = 60.0
MAX_LOCK_S = 15 * 60.0


@dataclass(frozen=True, slots=True)
class LockoutState:
    """Wrong PINs since the last lock-out or right PIN, and the current lock."""

    failures: int
    lockouts: int
    locked_at: float | None
    locked_s: float | None

    def retry_after_s(self, now: float) -> float:
        """Return the seconds until the console unlocks again; 0 when unlocked.

        A lock whose start lies in the future means the box's clock went
        back, and the lock then runs its whole time from ``now``.
        """
        if self.locked_at is None or self.locked_s is None:
            return 0.0
        if now < self.locked_at:
            return self.locked_s
        return max(0.0, self.locked_at + self.locked_s - now)


def read_state(transaction: Transaction) -> LockoutState:
    """Return the lock-out state; a box that never saw a wrong PIN has none."""
    row = transaction.execute(
        "SELECT failures, lockouts, locked_at, locked_s FROM console_lockout"
        " WHERE id = 1"
    ).fetchone()
    if row is None:
        return LockoutState(0, 0, None, None)
    return LockoutState(int(row[0]), int(row[1]), row[2], row[3])


def record_failure(transaction: Transaction, now: float) -> LockoutState:
    """Count a wrong PIN; the fifth in a row starts a lock-out. Return the state."""
    state = read_state(transaction)
    failures = state.failures + 1
    lockouts = state.lockouts
    locked_at, locked_s = state.locked_at, state.locked_s
    if failures >= MAX_FAILURES:
        locked_s = min(FIRST_LOCK_S * 2**lockouts, MAX_LOCK_S)
        locked_at = now
        lockouts += 1
        failures = 0
    new_state = LockoutState(failures, lockouts, locked_at, locked_s)
    _write(transaction, new_state)
    return new_state


def record_success(transaction: Transaction) -> None:
    """Reset the counts after a right PIN."""
    _write(transaction, LockoutState(0, 0, None, None))


def restart_lock(transaction: Transaction, state: LockoutState, now: float) -> None:
    """Move a lock that starts in the future (the clock went back) to ``now``."""
    _write(
        transaction,
        LockoutState(state.failures, state.lockouts, now, state.locked_s),
    )


def _write(transaction: Transaction, state: LockoutState) -> None:
    transaction.execute(
        "INSERT INTO console_lockout (id, failures, lockouts, locked_at, locked_s)"
        " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
        " failures = excluded.failures, lockouts = excluded.lockouts,"
        " locked_at = excluded.locked_at, locked_s = excluded.locked_s",
        (state.failures, state.lockouts, state.locked_at, state.locked_s),
    )
