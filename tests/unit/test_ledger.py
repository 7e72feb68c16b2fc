"""The budget ledger: exact arithmetic, refusal, two-phase charging, crash recovery."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from privmob.accountant import PrivacyCost, exact
from privmob.errors import BudgetExceededError, ConfigError
from privmob.ledger import Budget, Ledger, budget_from

EPS2 = budget_from(2.0, 1e-6, None)


def cost(eps: float, delta: float = 0.0, rho: float | None = None, rho_delta: float = 0.0) -> PrivacyCost:
    return PrivacyCost(exact(eps), exact(delta), None if rho is None else exact(rho), exact(rho_delta))


def reserve(ledger: Ledger, rid: str, c: PrivacyCost, budget: Budget = EPS2,
            days: tuple[str, ...] = ("2026-11-26",), dataset: str = "d") -> object:
    return ledger.reserve(release_id=rid, dataset=dataset, days=days, cost=c, budget=budget,
                          purpose="epidemic-prevention", operator="op", mechanism="gaussian")


def test_charges_compose_exactly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    tenth = budget_from(0.3, 1e-6, None)
    for i in range(3):  # 0.1 + 0.1 + 0.1 == 0.3 exactly, where floats give 0.30000000000000004
        ledger.commit(reserve(ledger, f"r{i}", cost(0.1), tenth))  # type: ignore[arg-type]
    (row,) = ledger.rows()
    assert row.spent == Fraction(3, 10) and row.remaining == 0
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "r4", cost(1e-9), tenth)


def test_refusal_says_what_is_left_and_charges_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.commit(reserve(ledger, "a", cost(1.5)))  # type: ignore[arg-type]
    with pytest.raises(BudgetExceededError, match=r"0\.5 of 2 ε") as info:
        reserve(ledger, "b", cost(1.5))
    assert info.value.exit_code == 3
    assert [c["release_id"] for c in ledger.charges()] == ["a"]
    ledger.commit(reserve(ledger, "c", cost(0.5)))  # type: ignore[arg-type]
    assert ledger.rows()[0].remaining == 0


def test_delta_is_budgeted_too(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    reserve(ledger, "a", cost(0.1, delta=6e-7))
    with pytest.raises(BudgetExceededError, match="δ"):
        reserve(ledger, "b", cost(0.1, delta=6e-7))


def test_cancel_returns_commit_keeps_reserved_counts(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    pending = reserve(ledger, "a", cost(1.0))
    (row,) = ledger.rows()
    assert row.pending == 1 and row.spent == 0 and row.remaining == 1
    ledger.cancel(pending, "write failed")  # type: ignore[arg-type]
    assert ledger.rows()[0].remaining == 2
    assert ledger.charges("a")[0]["state"] == "cancelled"
    committed = reserve(ledger, "b", cost(2.0))
    ledger.commit(committed)  # type: ignore[arg-type]
    # A committed (published) charge can never be cancelled afterwards.
    ledger.cancel(committed, "too late")  # type: ignore[arg-type]
    assert ledger.charges("b")[0]["state"] == "committed"
    assert ledger.rows()[0].remaining == 0


def test_each_day_of_a_multi_day_release_is_charged(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    days = ("2026-11-26", "2026-11-27")
    ledger.commit(reserve(ledger, "a", cost(1.5), days=days))  # type: ignore[arg-type]
    assert {r.day: r.spent for r in ledger.rows()} == {d: Fraction(3, 2) for d in days}
    with pytest.raises(BudgetExceededError, match="2026-11-27"):
        reserve(ledger, "b", cost(1.0), days=("2026-11-27",))
    ledger.commit(reserve(ledger, "c", cost(1.0), days=("2026-11-28",)))  # type: ignore[arg-type]


def test_datasets_have_separate_budgets(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.commit(reserve(ledger, "a", cost(2.0), dataset="x"))  # type: ignore[arg-type]
    ledger.commit(reserve(ledger, "b", cost(2.0), dataset="y"))  # type: ignore[arg-type]
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "c", cost(0.01), dataset="x")


def test_rho_budget_composes_rho_and_counts_laplace_as_eps_squared_over_two(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    budget = budget_from(None, 1e-6, 0.1)
    ledger.commit(reserve(ledger, "g", cost(1.0, delta=1e-7, rho=0.06), budget))  # type: ignore[arg-type]
    # A Laplace release with ε = 0.2 is 0.02-zCDP: 0.06 + 0.02 fits, the δ of the
    # Gaussian's (ε, δ) conversion is not charged against a ρ budget.
    ledger.commit(reserve(ledger, "l", cost(0.2), budget))  # type: ignore[arg-type]
    assert ledger.rows()[0].spent == Fraction(8, 100)
    with pytest.raises(BudgetExceededError, match="ρ"):
        reserve(ledger, "x", cost(0.3), budget)  # 0.045 more would exceed 0.1
    assert Budget(None, exact(1e-6), exact(0.1)).mode == "rho"
    with pytest.raises(ConfigError):
        Budget(exact(1.0), exact(1e-6), exact(0.1))


def test_a_killed_process_reservation_is_recovered_as_spent_never_refunded(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    Ledger(path)
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.unit.test_ledger import reserve, cost
from privmob.ledger import Ledger
reserve(Ledger({str(path)!r}), "crashed", cost(1.5))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9
    ledger = Ledger(path)
    assert ledger.charges("crashed")[0]["state"] == "reserved"
    assert ledger.rows()[0].pending == Fraction(3, 2)  # still counts while unsettled
    with pytest.raises(BudgetExceededError):  # the next run settles it and is refused
        reserve(ledger, "next", cost(1.0))
    assert ledger.charges("crashed")[0]["state"] == "recovered"
    assert ledger.rows()[0].spent == Fraction(3, 2)
    ledger.commit(reserve(ledger, "fits", cost(0.5)))  # type: ignore[arg-type]


def test_recover_leaves_live_reservations_alone(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    reserve(ledger, "mine", cost(0.5))  # this process is alive
    assert ledger.recover() == []
    assert ledger.charges("mine")[0]["state"] == "reserved"


def test_ledger_file_is_private_and_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "l.sqlite"
    Ledger(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite"):
        Ledger(bad)
