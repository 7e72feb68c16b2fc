"""A ρ (zCDP) ledger composes a day's releases by adding ρ, tightly, and still refuses
what does not fit; an ε ledger charges each release its tight (ε, δ) guarantee."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from privmob.config import PrivacyConfig
from privmob.errors import BudgetExceededError, ConfigError
from privmob.governance.ledger import Budget, Ledger, budget_from
from privmob.privacy.accountant import HYBRID, ZCDP, PrivacyCost, compose, exact
from privmob.privacy.mechanism import Sensitivity, calibrate, rho_to_epsilon

DELTA = 1e-7
DAY = ("2026-11-26",)


def gaussian(eps: float) -> PrivacyCost:
    return calibrate(PrivacyConfig(mechanism="gaussian", epsilon=eps, delta=DELTA), Sensitivity(1, 8)).cost


def release() -> PrivacyCost:
    """An adaptive Gaussian release: a pure PrivTree partition (ε 0.15), occupancy (ε 0.85)
    and two parent levels (ε 0.25 each), composed as TableSpecs.cost composes them."""
    return compose([PrivacyCost(exact(0.15)), gaussian(0.85), gaussian(0.25), gaussian(0.25)],
                   rho_to_epsilon)


def reserve(ledger: Ledger, rid: str, cost: PrivacyCost, budget: Budget) -> object:
    ledger.declare("d", budget, operator="op", reason="test", exist_ok=True)
    return ledger.reserve(release_id=rid, dataset="d", days=DAY, cost=cost, budget=budget,
                          purpose="epidemic-prevention", operator="op", mechanism="gaussian")


def test_a_rho_ledger_admits_releases_whose_rho_fits_though_their_summed_epsilon_would_not(
        tmp_path: Path) -> None:
    cost = release()
    assert cost.rho is not None and cost.composition in (ZCDP, HYBRID)
    n, delta_cap = 4, exact(1e-6)
    budget = Budget(None, delta_cap, n * cost.rho)  # room for exactly n releases' ρ
    # the same day stated as (ε, δ): n releases' summed ε is far beyond what the ρ cap means
    cap_as_epsilon = rho_to_epsilon(float(n * cost.rho), float(delta_cap))
    assert float(n * cost.epsilon) > 1.5 * cap_as_epsilon
    ledger = Ledger(tmp_path / "l.sqlite")
    for i in range(n):
        ledger.commit(reserve(ledger, f"r{i}", cost, budget))  # type: ignore[arg-type]
    (row,) = ledger.rows()
    assert row.spent == n * cost.rho and row.remaining == 0  # ρ added exactly
    assert row.epsilon_equivalent() == pytest.approx(cap_as_epsilon, rel=1e-12)
    with pytest.raises(BudgetExceededError, match="ρ"):
        reserve(ledger, "one-more", cost, budget)
    assert len({c["release_id"] for c in ledger.charges()}) == n  # the refused one left no charge
    # and an ε ledger capped at that same ε (basic composition across releases) refuses early
    eps_ledger = Ledger(tmp_path / "e.sqlite")
    eps_budget = Budget(exact(cap_as_epsilon), delta_cap)
    fitted = 0
    while fitted < n and all(ok for *_, ok in eps_ledger.check(dataset="d", days=DAY, cost=cost,
                                                            budget=eps_budget)):
        eps_ledger.commit(reserve(eps_ledger, f"e{fitted}", cost, eps_budget))  # type: ignore[arg-type]
        fitted += 1
    assert fitted < n
    with pytest.raises(BudgetExceededError, match="ε"):
        reserve(eps_ledger, "e-next", cost, eps_budget)
    assert ledger.verify_integrity() == [] and eps_ledger.verify_integrity() == []


def test_a_rho_ledger_charges_laplace_tables_their_own_epsilon_squared_over_two(tmp_path: Path) -> None:
    """Occupancy ε 1 and a level ε 0.5 (Laplace) cost 1/2 + 1/8 = 5/8 of ρ, not (1.5)²/2."""
    cost = compose([PrivacyCost(exact(1.0)), PrivacyCost(exact(0.5))], rho_to_epsilon)
    assert cost.rho == Fraction(5, 8) and cost.epsilon == Fraction(3, 2)
    budget = budget_from(None, 1e-6, 1.25)
    ledger = Ledger(tmp_path / "l.sqlite")
    for rid in ("a", "b"):
        ledger.commit(reserve(ledger, rid, cost, budget))  # type: ignore[arg-type]
    assert ledger.rows()[0].spent == Fraction(5, 4)
    with pytest.raises(BudgetExceededError):
        reserve(ledger, "c", PrivacyCost(exact(0.01)), budget)


def test_a_rho_ledger_refuses_a_cost_without_a_zcdp_bound(tmp_path: Path) -> None:
    """(ε, δ)-DP with δ beyond key selection implies no ρ: ε²/2 would undercount it."""
    ledger = Ledger(tmp_path / "l.sqlite")
    budget = budget_from(None, 1e-6, 10.0)
    with pytest.raises(ConfigError, match="no zCDP bound"):
        reserve(ledger, "x", PrivacyCost(exact(1.0), exact(1e-7)), budget)
    assert ledger.charges() == []


def test_an_epsilon_ledger_charges_the_tight_epsilon_and_its_cap_still_binds(tmp_path: Path) -> None:
    cost = release()
    assert cost.epsilon_basic == Fraction(3, 2) and cost.epsilon < Fraction(5, 4)
    budget = Budget(exact(2.5), exact(1e-6))  # two releases by their tight ε; one by the sum
    ledger = Ledger(tmp_path / "l.sqlite")
    for rid in ("a", "b"):
        ledger.commit(reserve(ledger, rid, cost, budget))  # type: ignore[arg-type]
    (row,) = ledger.rows()
    assert row.spent == 2 * cost.epsilon and row.delta_spent == 2 * cost.delta
    with pytest.raises(BudgetExceededError, match="ε"):
        reserve(ledger, "c", cost, budget)
    # the stored charge is the (ε, δ, ρ) guarantee; the audit entry matches it exactly
    assert ledger.verify_integrity() == []
    stored = ledger.charges("a")[0]
    assert Fraction(stored["epsilon"]) == cost.epsilon and Fraction(stored["rho"]) == cost.rho


def test_the_epsilon_equivalent_of_a_rho_day_converts_at_the_delta_left_after_selection(
        tmp_path: Path) -> None:
    sel = exact(4e-7)
    cost = PrivacyCost(exact(1.0), exact(5e-7), exact(0.02), sel)  # Gaussian, threshold keys
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.commit(reserve(ledger, "a", cost, budget_from(None, 1e-6, 0.1)))  # type: ignore[arg-type]
    (row,) = ledger.rows()
    assert row.delta_spent == sel
    got = row.epsilon_equivalent()
    assert got is not None and got == pytest.approx(rho_to_epsilon(0.02, 6e-7), rel=1e-12)
    assert got > rho_to_epsilon(0.02, 1e-6)  # δ spent on selection cannot convert
