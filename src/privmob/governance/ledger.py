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

The cap binds. A ledger gets an id when it is created, and each dataset (the population a
budget protects) is *declared* in it once, with its per-day caps; a job's ``[budget]``
caps are only compared with the declared ones, and changing a cap is an explicit, audited
``privmob budget set``. Every change of the ledger — creation, declaration, cap, reserve,
commit, cancel, recovery — is mirrored in the hash-chained audit log beside it, and
:meth:`Ledger.verify_integrity` (run before every reservation) cross-checks the two and the
anchors that signed releases carry, so an edited ledger, a deleted one or a recomputed
audit chain is refused rather than trusted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from privmob.errors import (
    BudgetExceededError,
    ConfigError,
    LedgerIntegrityError,
    ReleaseExistsError,
)
from privmob.governance.audit import AuditLog
from privmob.privacy.accountant import PrivacyCost, exact

__all__ = ["Budget", "Charge", "Declared", "Ledger", "SpentRow", "bind_dataset", "budget_from",
           "foreign_releases"]

#: Pauses (s) before re-reading a ledger whose audit log disagrees with it: enough for a
#: concurrent run to finish its audit-then-ledger write, short next to a run's own length.
_SETTLE_PAUSES = (0.05, 0.2, 0.75)

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
    note        TEXT,
    output      TEXT NOT NULL DEFAULT ''
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
CREATE TABLE IF NOT EXISTS datasets (
    dataset     TEXT PRIMARY KEY,
    epsilon     TEXT,
    delta       TEXT NOT NULL,
    rho         TEXT,
    declared_by TEXT NOT NULL,
    declared_at TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"""

#: States that count against the budget (the SQL in _spent names them too). Only an
#: explicit cancel — nothing was published — refunds.
_SPENDING = ("reserved", "committed", "recovered")


@dataclass(frozen=True)
class Budget:
    """A per-day budget: (ε, δ) under basic composition, or ρ (zCDP) plus a δ for selection.

    With ``rho`` set, releases compose by adding ρ (Laplace releases count ε²/2, which
    pure ε-DP implies) and δ holds only what key selection spends; this composes Gaussian
    releases far more tightly than adding their ε. A release with approximate-DP δ beyond
    key selection has no zCDP bound and is refused by a ρ budget. With ``epsilon`` set,
    each release is charged its stated (ε, δ) guarantee (already composed tightly across
    its own tables by :func:`privmob.privacy.accountant.compose`) and the days add them.
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
            rho = cost.zcdp_rho
            if rho is None:
                raise ConfigError(
                    f"a release of (ε = {float(cost.epsilon):g}, δ = {float(cost.delta):.3g}) "
                    "has no zCDP bound (its δ is not all key selection), so a rho_per_day "
                    "budget cannot account for it; charge it to a ledger with epsilon_per_day")
            return rho, cost.rho_delta
        return cost.epsilon, cost.delta

    def limit(self) -> tuple[Fraction, Fraction]:
        main = self.rho if self.rho is not None else self.epsilon
        assert main is not None
        return main, self.delta

    def describe(self) -> str:
        """``epsilon_per_day = 2, delta_per_day = 1e-06`` — as a job file would say it."""
        main = (f"rho_per_day = {float(self.rho):g}" if self.rho is not None
                else f"epsilon_per_day = {float(self.epsilon or 0):g}")
        return f"{main}, delta_per_day = {float(self.delta):g}"

    def as_exact(self) -> dict[str, str | None]:
        """The caps as exact fractions (text), for the audit log."""
        return {"epsilon_per_day": _s(self.epsilon), "delta_per_day": str(self.delta),
                "rho_per_day": _s(self.rho)}


@dataclass(frozen=True)
class Charge:
    """A reservation handed back by :meth:`Ledger.reserve`, with the audit entry that
    records it (the anchor a release's manifest carries)."""

    release_id: str
    dataset: str
    days: tuple[str, ...]
    cost: PrivacyCost
    ledger_id: str = ""
    audit_seq: int = 0
    audit_sha256: str = ""

    def anchor(self) -> dict[str, Any]:
        """``{"ledger_id", "audit_seq", "audit_sha256"}`` for the release manifest."""
        return {"ledger_id": self.ledger_id, "audit_seq": self.audit_seq,
                "audit_sha256": self.audit_sha256}


@dataclass(frozen=True)
class Declared:
    """A dataset (population) declared in a ledger, with the caps bound to it."""

    dataset: str
    budget: Budget
    declared_by: str
    declared_at: str
    updated_by: str
    updated_at: str


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
        zCDP → (ε, δ) conversion (the same one used to calibrate Gaussian noise). The
        selection δ already spent is part of ``delta_limit``: only the rest converts ρ
        (infinite when nothing is left)."""
        if self.mode != "rho" or self.delta_limit is None:
            return None
        spent = self.spent + self.pending
        if spent == 0:
            return 0.0
        left = self.delta_limit - self.delta_spent
        if left <= 0:
            return float("inf")
        from privmob.privacy.mechanism import rho_to_epsilon

        return rho_to_epsilon(float(spent), float(left))

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
    """A budget ledger in one SQLite file (mode 0600) and its audit log beside it.

    ``create`` (the default) makes a new ledger when the file does not exist — unless its
    audit log already holds entries: then the ledger was deleted, and a fresh one would
    hand out a fresh budget, so :class:`LedgerIntegrityError` is raised instead.
    """

    def __init__(self, path: str | Path, audit_path: str | Path | None = None, *,
                 create: bool = True) -> None:
        self.path = Path(path)
        self.audit = AuditLog(Path(audit_path) if audit_path is not None
                              else self.path.with_name(self.path.name + ".audit.jsonl"), anchor=self)
        # The log is looked at first: a ledger is always created before its first entry, so
        # "log has entries, ledger missing" can only mean the ledger was removed.
        logged = self.audit.has_entries()
        if not self.path.exists():
            if logged:
                raise LedgerIntegrityError(
                    f"budget ledger {self.path} is missing but its audit log {self.audit.path} "
                    "records releases: the ledger was deleted or moved. Nothing was read or "
                    "charged; restore the ledger from backup (a fresh ledger would hand out a "
                    "fresh budget)"
                )
            if not create:
                raise ConfigError(f"budget ledger {self.path} does not exist")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        except OSError as exc:
            raise ConfigError(f"budget ledger {self.path} cannot be created ({exc.strerror or exc}); "
                              "make its folder writable by this user or point [budget] ledger "
                              "elsewhere") from exc
        with self._connect() as con:
            con.executescript(_SCHEMA)
            columns = {r[1] for r in con.execute("PRAGMA table_info(charges)")}
            if "output" not in columns:  # a ledger made by an earlier privmob
                con.execute("ALTER TABLE charges ADD COLUMN output TEXT NOT NULL DEFAULT ''")
        created, migrated = self._init_identity()
        if created:
            self.audit.append("ledger-created", ledger_id=self.ledger_id, ledger=str(self.path),
                              migrated=[d.dataset for d in migrated])
            for d in migrated:
                self.audit.append("dataset-declared", ledger_id=self.ledger_id, dataset=d.dataset,
                                  caps=d.budget.as_exact(), operator=d.declared_by,
                                  reason="caps of a ledger made by an earlier privmob")

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        except sqlite3.Error as exc:
            raise _unusable(self.path, exc) from exc
        try:
            con.execute("PRAGMA busy_timeout = 60000")
            con.execute("PRAGMA journal_mode = DELETE")
            con.execute("PRAGMA synchronous = FULL")
            yield con
        except sqlite3.Error as exc:
            raise _unusable(self.path, exc) from exc
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
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _init_identity(self) -> tuple[bool, list[Declared]]:
        """Give a new (or pre-id) ledger its id; returns (created, caps migrated)."""
        with self._write() as con:
            if con.execute("SELECT 1 FROM meta WHERE key = 'ledger_id'").fetchone() is not None:
                return False, []
            now = _now()
            con.execute("INSERT INTO meta (key, value) VALUES ('ledger_id', ?), ('created_at', ?)",
                        (str(uuid.uuid4()), now))
            migrated = []
            for dataset, eps, dlt, rho in con.execute(
                    "SELECT dataset, epsilon, delta, rho FROM budgets").fetchall():
                con.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (dataset, eps, dlt, rho, "migrated", now, "migrated", now))
                migrated.append(Declared(dataset, _budget(eps, dlt, rho), "migrated", now,
                                         "migrated", now))
        return True, migrated

    @property
    def ledger_id(self) -> str:
        """The ledger's identity (a UUID fixed at creation; releases carry it)."""
        value = self.get_meta("ledger_id")
        assert value is not None
        return value

    # -- datasets and their caps ---------------------------------------------------------
    def datasets(self) -> dict[str, Declared]:
        """Every declared dataset with its caps."""
        with self._connect() as con:
            rows = con.execute("SELECT dataset, epsilon, delta, rho, declared_by, declared_at, "
                               "updated_by, updated_at FROM datasets ORDER BY dataset").fetchall()
        return {r[0]: Declared(r[0], _budget(r[1], r[2], r[3]), *r[4:]) for r in rows}

    def declare(self, dataset: str, budget: Budget, *, operator: str, reason: str,
                exist_ok: bool = False) -> Declared:
        """Declare a dataset with its per-day caps (audited); refused if already declared
        (unless ``exist_ok``: then the declaration already made is returned, caps unchanged)."""
        if not dataset.strip():
            raise ConfigError("a dataset id must not be empty")
        if not operator.strip():
            raise ConfigError("name the operator who declares the dataset (--operator)")
        now = _now()
        if dataset in (known := self.datasets()):
            if exist_ok:
                return known[dataset]
            raise ConfigError(
                f"dataset {dataset!r} is already declared in the budget ledger {self.path}; "
                f"change its caps with `privmob budget set --ledger {self.path} --dataset "
                f"{dataset} ...`"
            )
        # Logged first: a declaration the log does not hold would be refused as an edit.
        self.audit.append("dataset-declared", ledger_id=self.ledger_id, dataset=dataset,
                          caps=budget.as_exact(), operator=operator, reason=reason)
        with self._write() as con:
            con.execute("INSERT OR IGNORE INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (dataset, _s(budget.epsilon), str(budget.delta), _s(budget.rho),
                         operator, now, operator, now))
        return Declared(dataset, budget, operator, now, operator, now)

    def set_caps(self, dataset: str, budget: Budget, *, operator: str, reason: str) -> Budget:
        """Change a declared dataset's caps (audited with the old and new caps); returns the
        old caps. Lowering a cap below what a day has spent leaves that day with nothing."""
        if not operator.strip() or not reason.strip():
            raise ConfigError("changing a budget cap needs --operator and --reason (both are audited)")
        old = self.datasets().get(dataset)
        if old is None:
            raise ConfigError(
                f"dataset {dataset!r} is not declared in the budget ledger {self.path}; "
                "declare it with `privmob budget declare`"
            )
        self.audit.append("budget-set", ledger_id=self.ledger_id, dataset=dataset,
                          old_caps=old.budget.as_exact(), caps=budget.as_exact(),
                          operator=operator, reason=reason)
        with self._write() as con:
            con.execute("UPDATE datasets SET epsilon = ?, delta = ?, rho = ?, updated_by = ?, "
                        "updated_at = ? WHERE dataset = ?",
                        (_s(budget.epsilon), str(budget.delta), _s(budget.rho), operator, _now(),
                         dataset))
        return old.budget

    # -- charging ------------------------------------------------------------------------
    def reserve(
        self,
        *,
        release_id: str,
        dataset: str,
        days: Sequence[str],
        cost: PrivacyCost,
        budget: Budget | None = None,
        purpose: str,
        operator: str,
        mechanism: str,
        config_sha256: str = "",
        force: bool = False,
        output: str = "",
        audit_fields: Mapping[str, Any] | None = None,
    ) -> Charge:
        """Reserve ``cost`` on every day, or raise :class:`BudgetExceededError`.

        The caps are the ones declared for ``dataset`` (``budget``, when given, must equal
        them). The ledger's integrity is checked first (:meth:`verify_integrity`). Unless
        ``force``, a job whose exact configuration was already released (or is being
        released right now) for the same dataset and day is refused with
        :class:`ReleaseExistsError`: a re-run must never double-release silently.
        """
        self.require_integrity()
        declared = self.datasets().get(dataset)
        if declared is None:
            raise ConfigError(_undeclared(self.path, dataset))
        if budget is not None and budget != declared.budget:
            raise ConfigError(_caps_differ(self.path, dataset, budget, declared.budget))
        budget = declared.budget
        self._settle_dead(dataset)
        pid = os.getpid()
        with self._write() as con:
            row = con.execute("SELECT epsilon, delta, rho FROM datasets WHERE dataset = ?",
                              (dataset,)).fetchone()
            if row is None or _budget(*row) != budget:  # changed since we looked: look again
                raise ConfigError(f"the caps of {dataset!r} changed while this run started; "
                                  "nothing was read or charged, run again")
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
                    "created_at, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, "
                    "?, ?, ?)",
                    (release_id, dataset, day, str(cost.epsilon), str(cost.delta), _s(cost.rho),
                     str(cost.rho_delta), config_sha256, purpose, operator, mechanism,
                     socket.gethostname(), pid, _proc_start(pid), _now(), output),
                )
        # Logged after the charge exists: a run dying in between leaves a charge that keeps
        # counting (never a refund the log cannot explain).
        entry = self.audit.append("reserved", **{
            **dict(audit_fields or {}), "release_id": release_id, "dataset": dataset,
            "days": list(days), "cost": _cost_exact(cost), "output": output or None,
            "forced": force, "operator": operator, "purpose": purpose,
            "ledger_id": self.ledger_id})
        return Charge(release_id, dataset, tuple(days), cost, self.ledger_id, int(entry["seq"]),
                      str(entry["sha256"]))

    def check(self, *, dataset: str, days: Sequence[str], cost: PrivacyCost,
              budget: Budget) -> list[tuple[str, Fraction, Fraction, bool]]:
        """Per day: (day, main budget left, δ left, whether ``cost`` fits). Reserves nothing.

        Uses the dataset's declared caps when it is declared, else ``budget``."""
        declared = self.datasets().get(dataset)
        if declared is not None:
            budget = declared.budget
        want_main, want_delta = budget.charge_of(cost)
        limit_main, limit_delta = budget.limit()
        out = []
        with self._connect() as con:
            for day in days:
                spent_main, spent_delta = self._spent(con, dataset, day, budget)
                left, left_delta = limit_main - spent_main, limit_delta - spent_delta
                out.append((day, left, left_delta, want_main <= left and want_delta <= left_delta))
        return out

    def commit(self, charge: Charge, **audit_fields: Any) -> None:
        """The release is out: its reservation becomes spent (audited as ``released``)."""
        self.audit.append("released", **{**audit_fields, "release_id": charge.release_id,
                                         "dataset": charge.dataset})
        self._settle(charge.release_id, "committed", None)

    def cancel(self, charge: Charge, reason: str, **audit_fields: Any) -> None:
        """Nothing was published: return the reservation (audited first, as ``failed`` with
        ``budget: returned``, so a refund the log does not explain is detectable)."""
        with self._connect() as con:
            open_ = con.execute("SELECT 1 FROM charges WHERE release_id = ? AND state = 'reserved'",
                                (charge.release_id,)).fetchone()
        if open_ is None:
            return  # committed or settled already: a published release is never refunded
        self.audit.append("failed", **{**audit_fields, "release_id": charge.release_id,
                                       "dataset": charge.dataset, "reason": reason,
                                       "budget": "returned"})
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

    def _settle_dead(self, dataset: str | None) -> list[str]:
        """Reservations of processes that no longer run on this host become spent (audited)."""
        host = socket.gethostname()
        query = ("SELECT DISTINCT release_id, pid, pid_start FROM charges "
                 "WHERE state = 'reserved' AND host = ?")
        args: tuple[Any, ...] = (host,)
        if dataset is not None:
            query += " AND dataset = ?"
            args += (dataset,)
        with self._connect() as con:
            candidates = con.execute(query, args).fetchall()
        dead = [(rid, pid) for rid, pid, start in candidates if not _alive(pid, start)]
        if not dead:
            return []
        self.audit.append("recovered", release_ids=[rid for rid, _ in dead],
                          reason="reservations of ended processes settled as spent")
        with self._write() as con:
            for release_id, pid in dead:
                con.execute(
                    "UPDATE charges SET state = 'recovered', settled_at = ?, note = ? "
                    "WHERE release_id = ? AND state = 'reserved'",
                    (_now(), f"process {pid} ended without commit; counted as spent", release_id),
                )
        return [rid for rid, _ in dead]

    def recover(self) -> list[str]:
        """Settle every dead reservation as spent; returns their release ids."""
        return self._settle_dead(None)

    # -- integrity -----------------------------------------------------------------------
    def verify_integrity(self) -> list[str]:
        """Everything that says the ledger or its log was altered; empty when both agree.

        Checks the audit chain and its anchor in this ledger; that every cancelled charge has
        an audited cancellation and every audited reservation its charges, unchanged; that
        the caps are the audited ones; and that each release this ledger recorded, still on
        disk, carries an anchor found at its place in the log (a recomputed chain is not).
        """
        problems = [f"audit log {self.audit.path}: {p}" for p in self.audit.verify()]
        if problems:
            return problems  # the cross-checks below read the log: only an intact one
        entries = self.audit.entries()
        by_seq = {e.get("seq"): e for e in entries}
        reserved: dict[str, dict[str, Any]] = {}
        cancelled: set[str] = set()
        caps: dict[str, Any] = {}
        ids: set[str] = set()
        for e in entries:
            event = e.get("event")
            if event == "ledger-created":
                ids.add(str(e.get("ledger_id")))
            elif event == "reserved":
                reserved[str(e.get("release_id"))] = e
            elif event == "failed" and e.get("budget") == "returned":
                cancelled.add(str(e.get("release_id")))
            elif event in ("dataset-declared", "budget-set"):
                caps[str(e.get("dataset"))] = e.get("caps")
        ledger_id = self.get_meta("ledger_id")
        if ids and ids != {ledger_id}:
            problems.append(f"the ledger's id {ledger_id} is not the one its audit log was created "
                            "with: the ledger file was replaced")
        charges = self.charges()
        rows: dict[str, list[dict[str, Any]]] = {}
        for c in charges:
            rows.setdefault(c["release_id"], []).append(c)
        for rid, group in rows.items():
            if any(c["state"] == "cancelled" for c in group) and rid not in cancelled:
                problems.append(f"release {rid} is marked cancelled in the ledger, but the audit log "
                                "records no cancellation of it (a spent charge was refunded by "
                                "editing the ledger)")
        for rid, e in reserved.items():
            got = sorted((c["dataset"], c["day"], _cost_exact(_row_cost(c))) for c in rows.get(rid, []))
            want = sorted((e.get("dataset"), d, e.get("cost")) for d in e.get("days", []))
            if json.dumps(got, sort_keys=True) != json.dumps(want, sort_keys=True):
                problems.append(f"the ledger's charges for release {rid} are not the ones its "
                                f"audit entry {e.get('seq')} records (removed or edited)")
        for name, declared in self.datasets().items():
            if caps.get(name) != declared.budget.as_exact():
                problems.append(f"the caps of dataset {name!r} in the ledger are not the audited "
                                "ones (edited outside `privmob budget set`)")
        for name in caps.keys() - self.datasets().keys():
            problems.append(f"dataset {name!r} is declared in the audit log but missing from the ledger")
        seen: set[str] = set()
        for c in charges:
            if c["state"] != "committed" or not c.get("output") or c["release_id"] in seen:
                continue
            seen.add(c["release_id"])
            problems += _anchor_problems(Path(c["output"]), c["release_id"], ledger_id, by_seq)
        return problems

    def require_integrity(self) -> None:
        """Raise :class:`LedgerIntegrityError` unless :meth:`verify_integrity` finds nothing.

        A run that is declaring a dataset or reserving right now writes its audit entry and
        its ledger row one after the other; read between the two, the pair disagrees for a
        few milliseconds. So a disagreement is looked at again (for up to about a second)
        before it is called tampering: a real edit stays, a concurrent write settles.
        """
        problems = self.verify_integrity()
        for pause in _SETTLE_PAUSES:
            if not problems:
                break
            time.sleep(pause)
            problems = self.verify_integrity()
        if problems:
            raise LedgerIntegrityError(
                f"budget ledger {self.path} fails its integrity check: {problems[0]}"
                + (f" (and {len(problems) - 1} more; see `privmob audit verify`)"
                   if len(problems) > 1 else "")
                + ". Nothing was read or charged; restore the ledger and its audit log from "
                "backup, or ask whoever changed them"
            )

    def verify_release(self, folder: Path) -> list[str]:
        """Problems with one release folder's ledger anchor (empty when it is in the log)."""
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return [f"{folder}/manifest.json cannot be read ({exc})"]
        if not isinstance(manifest, dict) or not isinstance(manifest.get("ledger"), dict):
            return [f"{folder}/manifest.json carries no ledger anchor"]
        by_seq = {e.get("seq"): e for e in self.audit.entries()}
        return _anchor_problems(folder, str(manifest.get("release_id")), self.get_meta("ledger_id"),
                                by_seq)

    # -- reading -------------------------------------------------------------------------
    def rows(self) -> list[SpentRow]:
        """Spent / pending / remaining per dataset and day."""
        budgets = {name: d.budget for name, d in self.datasets().items()}
        with self._connect() as con:
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


def _unusable(path: Path, exc: sqlite3.Error) -> ConfigError:
    """One actionable line for a ledger SQLite cannot use (read-only, corrupt, locked)."""
    text = str(exc)
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        fix = ("make the ledger file and its folder writable by this user (SQLite writes a "
               "journal beside it), or point [budget] ledger elsewhere")
    elif "locked" in text or "busy" in text:
        fix = "another process holds it; wait for that run to end, then try again"
    else:
        fix = ("restore it from backup; do not delete it (its audit log would then refuse a "
               "fresh ledger)")
    return ConfigError(f"budget ledger {path} cannot be used (SQLite: {text}); {fix}")


def _undeclared(path: Path, dataset: str) -> str:
    return (f"dataset {dataset!r} is not declared in the budget ledger {path}; nothing was read "
            f"or charged. Declare it once, with its caps: `privmob budget declare --ledger {path} "
            f"--dataset {dataset} --epsilon-per-day E --operator ID --reason TEXT` (or set [job] "
            "dataset to a declared one)")


def _caps_differ(path: Path, dataset: str, job: Budget, declared: Budget) -> str:
    return (f"the job's [budget] caps ({job.describe()}) differ from the caps bound to "
            f"{dataset!r} in the ledger {path} ({declared.describe()}); nothing was read or "
            "charged. The ledger's caps bind: set the job's [budget] to them, or change them "
            f"explicitly (audited) with `privmob budget set --ledger {path} --dataset {dataset} "
            "--epsilon-per-day E --operator ID --reason TEXT`")


def _budget(eps: str | None, delta: str, rho: str | None) -> Budget:
    return Budget(None if eps is None else Fraction(eps), Fraction(delta),
                  None if rho is None else Fraction(rho))


def _row_cost(c: Mapping[str, Any]) -> PrivacyCost:
    return PrivacyCost(Fraction(c["epsilon"]), Fraction(c["delta"]),
                       None if c["rho"] is None else Fraction(c["rho"]), Fraction(c["rho_delta"]))


def _cost_exact(cost: PrivacyCost) -> dict[str, str | None]:
    return {"epsilon": str(cost.epsilon), "delta": str(cost.delta), "rho": _s(cost.rho),
            "rho_delta": str(cost.rho_delta)}


def _anchor_problems(folder: Path, release_id: str, ledger_id: str | None,
                     by_seq: Mapping[Any, Mapping[str, Any]]) -> list[str]:
    """A release folder's manifest anchor must name this ledger and an entry of its log."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []  # moved away (published elsewhere): nothing to compare on this host
    except (OSError, ValueError):
        return [f"release {release_id} at {folder}: manifest.json cannot be read"]
    if not isinstance(manifest, dict) or manifest.get("release_id") != release_id:
        return []  # the folder now holds another release
    anchor = manifest.get("ledger")
    if not isinstance(anchor, dict):
        return [f"release {release_id} at {folder}: its manifest carries no ledger anchor"]
    if anchor.get("ledger_id") != ledger_id:
        return [f"release {release_id} at {folder} was charged to ledger {anchor.get('ledger_id')}, "
                f"not to this one ({ledger_id})"]
    entry = by_seq.get(anchor.get("audit_seq"))
    if entry is None or entry.get("sha256") != anchor.get("audit_sha256"):
        return [f"release {release_id} at {folder}: audit entry {anchor.get('audit_seq')} is not "
                "the one its signed manifest anchors (the audit log was rewritten)"]
    return []


def foreign_releases(root: Path, suffix: Sequence[str], ledger_id: str | None,
                     limit: int = 2000) -> list[Path]:
    """Release folders under ``root`` (``root/*/suffix``) whose manifest names a ledger other
    than ``ledger_id`` (any ledger, when None): signs that the ledger was replaced."""
    if not root.is_dir():
        return []
    found = []
    for n, child in enumerate(sorted(root.iterdir())):
        if n >= limit:
            break
        folder = child.joinpath(*suffix)
        try:
            manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        anchor = manifest.get("ledger") if isinstance(manifest, dict) else None
        if isinstance(anchor, dict) and anchor.get("ledger_id") != ledger_id:
            found.append(folder)
    return found


def bind_dataset(ledger: Ledger, *, requested: str, derived: str, budget: Budget,
                 operator: str, check_caps: bool = True) -> tuple[str, Budget]:
    """The dataset a job charges and its caps, declaring it in a new ledger.

    ``requested`` is ``[job] dataset`` ("" when unset), ``derived`` the id the job would
    derive; ``budget`` the job's ``[budget]`` caps (with ``check_caps`` false — a job without
    ``[budget]`` — they only seed a new ledger, and the declared caps apply). A new ledger
    declares the job's dataset with the job's caps (audited); after that the caps are only
    compared, and an undeclared dataset is refused — so neither editing the job nor renaming
    the input file buys a fresh budget.
    """
    declared = ledger.datasets()
    if not declared:
        name = requested or derived
        ledger.declare(name, budget, operator=operator, exist_ok=True,
                       reason="first run against a new ledger: the job's [budget] caps")
        declared = ledger.datasets()  # a concurrent first run may have declared it first
    if requested:
        name = requested
    elif len(declared) == 1:
        (name,) = declared
    else:
        raise ConfigError(
            f"the budget ledger {ledger.path} declares {len(declared)} datasets "
            f"({', '.join(sorted(declared))}); set [job] dataset to the one this job releases"
        )
    if name not in declared:
        raise ConfigError(_undeclared(ledger.path, name))
    if check_caps and budget != declared[name].budget:
        raise ConfigError(_caps_differ(ledger.path, name, budget, declared[name].budget))
    return name, declared[name].budget


def _s(x: Fraction | None) -> str | None:
    return None if x is None else str(x)


def budget_from(epsilon: float | None, delta: float, rho: float | None) -> Budget:
    """A :class:`Budget` from config floats, read exactly."""
    return Budget(None if epsilon is None else exact(epsilon), exact(delta),
                  None if rho is None else exact(rho))
