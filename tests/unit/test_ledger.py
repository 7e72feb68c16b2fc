"""The budget ledger: exact arithmetic, refusal, two-phase charging, crash recovery."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from privmob.errors import BudgetExceededError, ConfigError, LedgerIntegrityError
from privmob.governance.ledger import Budget, Ledger, budget_from
from privmob.privacy.accountant import PrivacyCost, exact

EPS2 = budget_from(2.0, 1e-6, None)


def cost(eps: float, delta: float = 0.0, rho: float | None = None, rho_delta: float = 0.0) -> PrivacyCost:
    return PrivacyCost(exact(eps), exact(delta), None if rho is None else exact(rho), exact(rho_delta))


def reserve(ledger: Ledger, rid: str, c: PrivacyCost, budget: Budget = EPS2,
            days: tuple[str, ...] = ("2026-11-26",), dataset: str = "d") -> object:
    ledger.declare(dataset, budget, operator="op", reason="test", exist_ok=True)
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
from privmob.governance.ledger import Ledger
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
    with pytest.raises(ConfigError, match=r"cannot be used .*not a database.*restore it"):
        Ledger(bad)


# -- the cap binds: declared once, changed only by an audited command ---------------------


def events(ledger: Ledger) -> list[str]:
    return [e["event"] for e in ledger.audit.entries()]


def test_a_new_ledger_has_an_id_and_its_creation_is_audited(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    assert len(ledger.ledger_id) == 36 and ledger.get_meta("created_at")
    assert Ledger(tmp_path / "l.sqlite").ledger_id == ledger.ledger_id  # fixed at creation
    assert events(ledger) == ["ledger-created"]
    assert ledger.audit.entries()[0]["ledger_id"] == ledger.ledger_id


def test_a_job_cap_other_than_the_declared_one_is_refused_not_adopted(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.declare("d", EPS2, operator="op", reason="first")
    ledger.commit(reserve(ledger, "a", cost(1.5)))  # type: ignore[arg-type]
    raised = budget_from(5.0, 1e-6, None)
    with pytest.raises(ConfigError, match=r"epsilon_per_day = 5.*epsilon_per_day = 2.*budget set"):
        ledger.reserve(release_id="b", dataset="d", days=("2026-11-26",), cost=cost(1.5),
                       budget=raised, purpose="p", operator="op", mechanism="gaussian")
    assert ledger.datasets()["d"].budget == EPS2  # the old code overwrote the cap here
    assert [c["release_id"] for c in ledger.charges()] == ["a"]


def test_raising_a_cap_is_explicit_and_audited_with_old_and_new(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.declare("d", EPS2, operator="op", reason="first")
    with pytest.raises(ConfigError, match="--reason"):
        ledger.set_caps("d", budget_from(3.0, 1e-6, None), operator="op", reason=" ")
    old = ledger.set_caps("d", budget_from(3.0, 1e-6, None), operator="dpo-7", reason="surge")
    assert old == EPS2 and ledger.datasets()["d"].budget.epsilon == 3
    entry = ledger.audit.entries()[-1]
    assert entry["event"] == "budget-set" and entry["operator"] == "dpo-7"
    assert entry["old_caps"]["epsilon_per_day"] == "2" and entry["caps"]["epsilon_per_day"] == "3"
    assert ledger.verify_integrity() == []


def test_an_undeclared_dataset_is_refused_with_the_command_to_declare_it(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.declare("d", EPS2, operator="op", reason="first")
    with pytest.raises(ConfigError, match="budget declare"):
        ledger.reserve(release_id="x", dataset="d-copy", days=("2026-11-26",), cost=cost(1.0),
                       purpose="p", operator="op", mechanism="gaussian")
    with pytest.raises(ConfigError, match="already declared"):
        ledger.declare("d", budget_from(9.0, 1e-6, None), operator="op", reason="again")


def test_every_state_change_is_mirrored_in_the_audit_log(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.commit(reserve(ledger, "a", cost(0.5)))  # type: ignore[arg-type]
    ledger.cancel(reserve(ledger, "b", cost(0.5)), "write failed")  # type: ignore[arg-type]
    assert events(ledger) == ["ledger-created", "dataset-declared", "reserved", "released",
                              "reserved", "failed"]
    assert ledger.audit.entries()[-1]["budget"] == "returned"
    assert ledger.verify_integrity() == []


def sql(ledger: Ledger, statement: str) -> None:
    con = sqlite3.connect(ledger.path)
    con.execute(statement)
    con.commit()
    con.close()


@pytest.mark.parametrize("edit", [
    "UPDATE charges SET state = 'cancelled' WHERE release_id = 'a'",  # a refund by hand
    "UPDATE charges SET epsilon = '0' WHERE release_id = 'a'",  # a cheaper charge
    "DELETE FROM charges WHERE release_id = 'a'",  # a charge removed
    "UPDATE datasets SET epsilon = '100'",  # a cap raised outside `budget set`
])
def test_an_edited_ledger_is_refused_before_anything_is_charged(tmp_path: Path, edit: str) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.commit(reserve(ledger, "a", cost(2.0)))  # type: ignore[arg-type]
    sql(ledger, edit)
    assert ledger.verify_integrity() != []
    before = ledger.charges()
    with pytest.raises(LedgerIntegrityError, match="Nothing was read or charged") as info:
        reserve(ledger, "b", cost(1.0))
    assert info.value.exit_code == 2
    assert ledger.charges() == before


def test_a_deleted_ledger_is_not_silently_recreated(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.commit(reserve(ledger, "a", cost(2.0)))  # type: ignore[arg-type]
    path.unlink()
    with pytest.raises(LedgerIntegrityError, match="deleted"):
        Ledger(path)
    assert not path.exists()


def test_a_read_only_ledger_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.declare("d", EPS2, operator="op", reason="first")
    real = sqlite3.connect

    def read_only(database: object, **kw: object) -> sqlite3.Connection:
        return real(f"file:{database}?mode=ro", uri=True, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("privmob.governance.ledger.sqlite3.connect", read_only)
    with pytest.raises(ConfigError, match=r"readonly.*writable by this user"):
        ledger.reserve(release_id="x", dataset="d", days=("2026-11-26",), cost=cost(1.0),
                       purpose="p", operator="op", mechanism="gaussian")


def test_a_disagreement_that_settles_is_a_concurrent_write_not_tampering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run's audit entry and ledger row land one after the other: read between them
    the ledger looks altered for an instant. require_integrity looks again before refusing;
    a disagreement that stays is still refused."""
    from privmob.errors import LedgerIntegrityError
    from privmob.governance import ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "_SETTLE_PAUSES", (0.0, 0.0, 0.0))
    led = ledger_mod.Ledger(tmp_path / "l.sqlite")
    answers = [["a dataset declared in the log is not in the ledger yet"], []]
    monkeypatch.setattr(led, "verify_integrity", lambda: answers.pop(0) if answers else [])
    led.require_integrity()  # settled on the second look
    monkeypatch.setattr(led, "verify_integrity", lambda: ["edited"])
    with pytest.raises(LedgerIntegrityError, match="edited"):
        led.require_integrity()
