"""The privacy budget ledger: every release's cost, per dataset and day, across runs.

In-memory accountants (OpenDP, Tumult, PipelineDP) forget what a process spent when it
exits; a scheduled job runs every night in a new process. The ledger is one SQLite file:
it records each release's ε/δ/ρ for every local day the release covers and refuses a
release that would push any day past its budget — before any data is read.

Charging is two-phase. ``reserve`` takes SQLite's write lock (``BEGIN IMMEDIATE``), sums
what is spent or pending, and inserts the charge as *reserved*; concurrent runs are
serialised by that lock, so together they can never exceed the budget. ``commit`` marks
it spent once the release is out; ``cancel`` returns it when the run failed before
anything was published. A reservation whose process died (killed, power cut) is never
silently refunded: it keeps counting, and the next reserve (or ``privmob budget
recover``) settles it as spent.

All budget arithmetic is exact (:class:`fractions.Fraction`, stored as text).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from privmob.accountant import PrivacyCost, exact
from privmob.errors import BudgetExceededError, ConfigError, ReleaseExistsError

__all__ = ["Budget", "Charge", "Ledger", "SpentRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id  TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    day         TEXT NOT NULL,
    epsilon     TEXT NOT NULL,
    delta       TEXT NOT NULL,
    rho         TEXT,
    rho_delta   TEXT NOT NULL,
    config_sha256 TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'cancelled', 'recovered')),
    purpose     TEXT NOT NULL,
    operator    TEXT NOT NULL,
    mechanism   TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    pid_start   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    settled_at  TEXT,
    note        TEXT
);
CREATE INDEX IF NOT EXISTS charges_dataset_day ON charges (dataset, day);
CREATE INDEX IF NOT EXISTS charges_release ON charges (release_id);
CREATE TABLE IF NOT EXISTS budgets (
    dataset     TEXT PRIMARY KEY,
    epsilon     TEXT,
    delta       TEXT NOT NULL,
    rho         TEXT,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: States that count against the budget (the SQL in _spent names them too). Only an
#: explicit cancel — nothing was published — refunds.
_SPENDING = ("reserved", "committed", "recovered")


@dataclass(frozen=True)
class Budget:
    """A per-day budget: (ε, δ) under basic composition, or ρ (zCDP) plus a δ for selection.

    With ``rho`` set, releases compose by adding ρ (Laplace releases count ε²/2, which
    pure ε-DP implies) and δ holds only what key selection spends; this composes Gaussian
    releases far more tightly than adding their ε.
    """

    epsilon: Fraction | None
    delta: Fraction
    rho: Fraction | None = None

    def __post_init__(self) -> None:
        if (self.epsilon is None) == (self.rho is None):
            raise ConfigError("[budget] set exactly one of epsilon_per_day or rho_per_day")

    @property
    def mode(self) -> str:
        return "rho" if self.rho is not None else "epsilon"

    def charge_of(self, cost: PrivacyCost) -> tuple[Fraction, Fraction]:
        """(main, δ) this cost takes from a day: ε and δ, or ρ and selection δ."""
        if self.rho is not None:
            rho = cost.rho if cost.rho is not None else cost.epsilon**2 / 2
            return rho, cost.rho_delta
        return cost.epsilon, cost.delta

    def limit(self) -> tuple[Fraction, Fraction]:
        main = self.rho if self.rho is not None else self.epsilon
        assert main is not None
        return main, self.delta


@dataclass(frozen=True)
class Charge:
    """A reservation handed back by :meth:`Ledger.reserve`."""

    release_id: str
    dataset: str
    days: tuple[str, ...]
    cost: PrivacyCost


@dataclass(frozen=True)
class SpentRow:
    """One dataset-day in ``privmob budget show``."""

    dataset: str
    day: str
    mode: str
    spent: Fraction
    pending: Fraction
    limit: Fraction | None
    delta_spent: Fraction
    delta_limit: Fraction | None
    releases: int

    @property
    def remaining(self) -> Fraction | None:
        return None if self.limit is None else self.limit - self.spent - self.pending

    def epsilon_equivalent(self) -> float | None:
        """For a ρ budget: the ε that the spent ρ amounts to at ``delta_limit``, by OpenDP's
        zCDP → (ε, δ) conversion (the same one used to calibrate Gaussian noise)."""
        if self.mode != "rho" or self.delta_limit is None:
            return None
        spent = self.spent + self.pending
        if spent == 0:
            return 0.0
        from privmob.mechanism import rho_to_epsilon

        return rho_to_epsilon(float(spent), float(self.delta_limit))

    def as_dict(self) -> dict[str, Any]:
        def f(x: Fraction | None) -> float | None:
            return None if x is None else float(x)

        return {
            "epsilon_equivalent": self.epsilon_equivalent(),
            "dataset": self.dataset, "day": self.day, "mode": self.mode,
            "spent": f(self.spent), "pending": f(self.pending), "limit": f(self.limit),
            "remaining": f(self.remaining), "delta_spent": f(self.delta_spent),
            "delta_limit": f(self.delta_limit), "releases": self.releases,
            "exact": {"spent": str(self.spent), "pending": str(self.pending),
                      "limit": None if self.limit is None else str(self.limit)},
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _proc_start(pid: int) -> str:
    """Process start time (clock ticks since boot) so a reused pid is not mistaken for us."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _alive(pid: int, start: str) -> bool:
    if start and Path("/proc").is_dir():
        return _proc_start(pid) == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Ledger:
    """A budget ledger in one SQLite file (created on first use, mode 0600)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            if fresh:
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            with self._connect() as con:
                con.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"budget ledger {self.path} is not a usable SQLite file: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"budget ledger {self.path} cannot be opened: {exc.strerror}") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            con.execute("PRAGMA journal_mode = DELETE")
            con.execute("PRAGMA synchronous = FULL")
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's RESERVED lock from its first statement."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # -- charging ------------------------------------------------------------------------
    def reserve(
        self,
        *,
        release_id: str,
        dataset: str,
        days: Sequence[str],
        cost: PrivacyCost,
        budget: Budget,
        purpose: str,
        operator: str,
        mechanism: str,
        config_sha256: str = "",
        force: bool = False,
    ) -> Charge:
        """Reserve ``cost`` on every day, or raise :class:`BudgetExceededError`.

        Unless ``force``, a job whose exact configuration was already released (or is being
        released right now) for the same dataset and day is refused with
        :class:`ReleaseExistsError`: a re-run must never double-release silently.
        """
        pid = os.getpid()
        with self._write() as con:  # settled for good, even if this request is refused
            self._settle_dead(con, dataset)
        with self._write() as con:
            con.execute(
                "INSERT INTO budgets (dataset, epsilon, delta, rho, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(dataset) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, rho = excluded.rho, "
                "updated_at = excluded.updated_at",
                (dataset, _s(budget.epsilon), str(budget.delta), _s(budget.rho), _now()),
            )
            want_main, want_delta = budget.charge_of(cost)
            limit_main, limit_delta = budget.limit()
            for day in days:
                spent_main, spent_delta = self._spent(con, dataset, day, budget)
                if spent_main + want_main > limit_main or spent_delta + want_delta > limit_delta:
                    name = "ρ" if budget.mode == "rho" else "ε"
                    left = max(limit_main - spent_main, Fraction(0))
                    left_delta = max(limit_delta - spent_delta, Fraction(0))
                    raise BudgetExceededError(
                        f"privacy budget for {dataset!r} on {day} would be exceeded: this "
                        f"release needs {name} = {float(want_main):g}, δ = {float(want_delta):.3g}; "
                        f"{float(left):g} of {float(limit_main):g} {name} and "
                        f"{float(left_delta):.3g} δ are left. Nothing was read or charged; "
                        f"wait for the next period or lower [privacy] epsilon"
                    )
            if config_sha256 and not force:
                twin = None
                for day in days:
                    twin = twin or con.execute(
                        "SELECT release_id, day, state FROM charges WHERE dataset = ? "
                        "AND config_sha256 = ? AND day = ? "
                        # a crashed run's (recovered) charge still counts against the budget,
                        # but it published nothing for sure, so it does not block a re-run
                        "AND state IN ('reserved', 'committed') LIMIT 1",
                        (dataset, config_sha256, day),
                    ).fetchone()
                if twin is not None:
                    doing = "is being released by another run" if twin[2] == "reserved" else "was released"
                    raise ReleaseExistsError(
                        f"{dataset!r} on {twin[1]} {doing} with this exact job configuration "
                        f"(release {twin[0]}); nothing was read or charged. To release it again, "
                        "spending budget again, rerun with --force"
                    )
            for day in days:
                con.execute(
                    "INSERT INTO charges (release_id, dataset, day, epsilon, delta, rho, rho_delta, "
                    "config_sha256, state, purpose, operator, mechanism, host, pid, pid_start, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?)",
                    (release_id, dataset, day, str(cost.epsilon), str(cost.delta), _s(cost.rho),
                     str(cost.rho_delta), config_sha256, purpose, operator, mechanism,
                     socket.gethostname(), pid, _proc_start(pid), _now()),
                )
        return Charge(release_id, dataset, tuple(days), cost)

    def check(self, *, dataset: str, days: Sequence[str], cost: PrivacyCost,
              budget: Budget) -> list[tuple[str, Fraction, Fraction, bool]]:
        """Per day: (day, main budget left, δ left, whether ``cost`` fits). Reserves nothing."""
        want_main, want_delta = budget.charge_of(cost)
        limit_main, limit_delta = budget.limit()
        out = []
        with self._connect() as con:
            for day in days:
                spent_main, spent_delta = self._spent(con, dataset, day, budget)
                left, left_delta = limit_main - spent_main, limit_delta - spent_delta
                out.append((day, left, left_delta, want_main <= left and want_delta <= left_delta))
        return out

    def commit(self, charge: Charge) -> None:
        """The release is out: its reservation becomes spent."""
        self._settle(charge.release_id, "committed", None)

    def cancel(self, charge: Charge, reason: str) -> None:
        """Nothing was published: return the reservation."""
        self._settle(charge.release_id, "cancelled", reason)

    def _settle(self, release_id: str, state: str, note: str | None) -> None:
        with self._write() as con:
            con.execute(
                "UPDATE charges SET state = ?, settled_at = ?, note = ? "
                "WHERE release_id = ? AND state = 'reserved'",
                (state, _now(), note, release_id),
            )

    def _spent(self, con: sqlite3.Connection, dataset: str, day: str,
               budget: Budget) -> tuple[Fraction, Fraction]:
        main, delta = Fraction(0), Fraction(0)
        rows = con.execute(
            "SELECT epsilon, delta, rho, rho_delta FROM charges WHERE dataset = ? AND day = ? "
            "AND state IN ('reserved', 'committed', 'recovered')",
            (dataset, day),
        )
        for eps, dlt, rho, rho_delta in rows:
            m, d = budget.charge_of(
                PrivacyCost(Fraction(eps), Fraction(dlt), None if rho is None else Fraction(rho),
                            Fraction(rho_delta))
            )
            main += m
            delta += d
        return main, delta

    def _settle_dead(self, con: sqlite3.Connection, dataset: str | None) -> list[str]:
        """Reservations of processes that no longer run on this host become spent."""
        host = socket.gethostname()
        query = ("SELECT DISTINCT release_id, pid, pid_start FROM charges "
                 "WHERE state = 'reserved' AND host = ?")
        args: tuple[Any, ...] = (host,)
        if dataset is not None:
            query += " AND dataset = ?"
            args += (dataset,)
        settled = []
        for release_id, pid, start in con.execute(query, args).fetchall():
            if not _alive(pid, start):
                con.execute(
                    "UPDATE charges SET state = 'recovered', settled_at = ?, note = ? "
                    "WHERE release_id = ? AND state = 'reserved'",
                    (_now(), f"process {pid} ended without commit; counted as spent", release_id),
                )
                settled.append(release_id)
        return settled

    def recover(self) -> list[str]:
        """Settle every dead reservation as spent; returns their release ids."""
        with self._write() as con:
            return self._settle_dead(con, None)

    # -- reading -------------------------------------------------------------------------
    def rows(self) -> list[SpentRow]:
        """Spent / pending / remaining per dataset and day."""
        with self._connect() as con:
            budgets = {
                d: Budget(None if e is None else Fraction(e), Fraction(dl),
                          None if r is None else Fraction(r))
                for d, e, dl, r in con.execute("SELECT dataset, epsilon, delta, rho FROM budgets")
            }
            charges = con.execute(
                "SELECT dataset, day, epsilon, delta, rho, rho_delta, state, release_id "
                "FROM charges ORDER BY dataset, day"
            ).fetchall()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for dataset, day, eps, dlt, rho, rho_delta, state, release_id in charges:
            budget = budgets.get(dataset) or Budget(Fraction(0), Fraction(0))
            entry = out.setdefault((dataset, day), {"spent": Fraction(0), "pending": Fraction(0),
                                                    "delta": Fraction(0), "releases": set()})
            if state not in _SPENDING:
                continue
            main, d = budget.charge_of(PrivacyCost(Fraction(eps), Fraction(dlt),
                                                   None if rho is None else Fraction(rho),
                                                   Fraction(rho_delta)))
            entry["pending" if state == "reserved" else "spent"] += main
            entry["delta"] += d
            entry["releases"].add(release_id)
        rows = []
        for (dataset, day), e in sorted(out.items()):
            b = budgets.get(dataset)
            rows.append(SpentRow(
                dataset=dataset, day=day, mode=b.mode if b else "epsilon",
                spent=e["spent"], pending=e["pending"],
                limit=b.limit()[0] if b else None, delta_spent=e["delta"],
                delta_limit=b.delta if b else None, releases=len(e["releases"]),
            ))
        return rows

    def charges(self, release_id: str | None = None) -> list[dict[str, Any]]:
        """Raw charge records (for tests and audits)."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            if release_id is None:
                cur = con.execute("SELECT * FROM charges ORDER BY id")
            else:
                cur = con.execute("SELECT * FROM charges WHERE release_id = ? ORDER BY id",
                                  (release_id,))
            return [dict(r) for r in cur.fetchall()]

    def get_meta(self, key: str) -> str | None:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as con:
            con.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                        "SET value = excluded.value", (key, value))


def _s(x: Fraction | None) -> str | None:
    return None if x is None else str(x)


def budget_from(epsilon: float | None, delta: float, rho: float | None) -> Budget:
    """A :class:`Budget` from config floats, read exactly."""
    return Budget(None if epsilon is None else exact(epsilon), exact(delta),
                  None if rho is None else exact(rho))
