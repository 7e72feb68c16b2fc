"""A release's tables compose in zCDP: total ρ (pure ε-DP as ε²/2), one (ε, δ) conversion.

The tight ε is checked against OpenDP itself: the ρ that OpenDP's ``make_composition``
reports for the same losses, and OpenDP's zCDP → (ε, δ) map at the same δ.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from privmob.config import PrivacyConfig
from privmob.privacy.accountant import (
    BASIC,
    HYBRID,
    ZCDP,
    PrivacyCost,
    _decimal_up,
    _float_down,
    _float_up,
    compose,
    exact,
)
from privmob.privacy.mechanism import NoiseModel, Sensitivity, calibrate, opendp, rho_to_epsilon

DELTA = 1e-7


def gaussian(eps: float, k: int = 1, w: int = 8) -> NoiseModel:
    """A Gaussian table calibrated by privmob to (ε, δ) alone, as table_specs does."""
    return calibrate(PrivacyConfig(mechanism="gaussian", epsilon=eps, delta=DELTA), Sensitivity(k, w))


def laplace(eps: float, k: int = 1, w: int = 8) -> NoiseModel:
    return calibrate(PrivacyConfig(mechanism="laplace", epsilon=eps), Sensitivity(k, w))


def test_two_gaussian_tables_compose_below_the_sum_of_their_epsilons() -> None:
    a, b = gaussian(1.0).cost, gaussian(0.5).cost
    assert a.rho is not None and b.rho is not None
    total = compose([a, b], rho_to_epsilon)
    assert total.delta == a.delta + b.delta  # the same δ as adding them
    assert total.epsilon_basic == a.epsilon + b.epsilon == Fraction(3, 2)
    assert total.epsilon < a.epsilon + b.epsilon  # strictly tighter…
    assert float(total.epsilon) < 0.9 * 1.5  # …by a margin that matters (≈ 1.08 here)
    assert total.composition == ZCDP and total.rho == a.rho + b.rho
    # exactly the one conversion of ρ1 + ρ2 at δ1 + δ2 (read back rounded up, never below)
    direct = rho_to_epsilon(float(a.rho + b.rho), float(a.delta + b.delta))
    assert float(total.epsilon) == pytest.approx(direct, rel=1e-12)
    assert total.epsilon >= Fraction(direct)


def test_the_composed_rho_is_what_opendp_make_composition_reports() -> None:
    """Same losses as OpenDP measurements (each at its table's own sensitivity): OpenDP's
    composition of them in zCDP, Laplace through make_pureDP_to_zCDP, gives our ρ, and its
    (ε, δ) maps give the candidates our ε is the least of."""
    dp = opendp()
    models = [gaussian(1.0), laplace(0.15, k=2, w=3), gaussian(0.5, w=24), gaussian(0.5)]
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    zcdp = []
    for m in models:  # a scalar measurement losing at d_in = 1 what the table loses
        if m.mechanism == "laplace":
            zcdp.append(dp.c.make_pureDP_to_zCDP(
                dp.m.make_laplace(*space, scale=m.scale / m.sensitivity.l1)))
        else:
            zcdp.append(dp.m.make_gaussian(*space, scale=m.scale / m.sensitivity.l2))
    total = compose([m.cost for m in models], rho_to_epsilon)
    composed = dp.c.make_composition(zcdp)
    assert total.rho is not None
    assert float(total.rho) == pytest.approx(composed.map(1.0), rel=1e-9)

    def opendp_eps(meas: object) -> float:
        return float(dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), float(total.delta)).map(1.0)[0])

    every = opendp_eps(composed)  # all four tables in ρ
    gauss = opendp_eps(dp.c.make_composition([zcdp[0], zcdp[2], zcdp[3]])) + 0.15  # Laplace added
    assert float(total.epsilon) == pytest.approx(min(every, gauss, 2.15), rel=1e-9)
    assert total.composition == (ZCDP if every < gauss else HYBRID)
    assert every < 2.15 and gauss < 2.15  # either way far below the sum of the ε's


def test_a_laplace_table_composes_as_epsilon_squared_over_two() -> None:
    one, half = laplace(1.0).cost, laplace(0.5).cost
    assert one.rho is None and one.zcdp_rho == Fraction(1, 2)
    lap = compose([one, half], rho_to_epsilon)
    # pure tables: ρ is exact, and with no δ to convert at, ε is their sum (basic)
    assert lap.rho == Fraction(1, 2) + Fraction(1, 8)
    assert (lap.epsilon, lap.delta) == (Fraction(3, 2), Fraction(0))
    assert lap.composition == BASIC
    # a pure partition (PrivTree) with Gaussian tables: its ε²/2 is part of the release's ρ
    occ, flows = gaussian(0.85).cost, gaussian(0.5).cost
    assert occ.rho is not None and flows.rho is not None
    mixed = compose([PrivacyCost(exact(0.15)), occ, flows], rho_to_epsilon)
    assert mixed.rho == Fraction(15, 100) ** 2 / 2 + occ.rho + flows.rho
    assert mixed.delta == occ.delta + flows.delta
    # …but a small pure ε is cheaper added than converted: the Gaussian tables' ρ is
    # converted once and 0.15 added — below both the sum and the all-ρ conversion
    all_rho = rho_to_epsilon(float(mixed.rho), float(mixed.delta))
    hybrid = rho_to_epsilon(float(occ.rho + flows.rho), float(mixed.delta)) + 0.15
    assert mixed.composition == HYBRID and mixed.rho_converted == occ.rho + flows.rho
    assert float(mixed.epsilon) == pytest.approx(hybrid, rel=1e-12)
    assert float(mixed.epsilon) < min(all_rho, 1.5)
    # with one Gaussian table there is nothing to gain: ε_tree + ε_count, as configured
    alone = compose([PrivacyCost(exact(0.15)), occ], rho_to_epsilon)
    assert (alone.epsilon, alone.composition) == (Fraction(1), BASIC)
    assert alone.rho == Fraction(15, 100) ** 2 / 2 + occ.rho


def test_selection_delta_adds_outside_zcdp_and_does_not_convert_rho() -> None:
    """Threshold keys spend δ outside zCDP: it adds to δ and is not used for the conversion."""
    g, sel = gaussian(1.0).cost, Fraction(1, 10**8)
    assert g.rho is not None
    a = PrivacyCost(g.epsilon, g.delta + sel, g.rho, sel)
    lap_thr = PrivacyCost(Fraction(1, 2), sel, None, sel)  # Laplace with threshold keys
    assert lap_thr.zcdp_rho == Fraction(1, 8)
    total = compose([a, a, lap_thr], rho_to_epsilon)
    assert total.delta == 2 * (g.delta + sel) + sel and total.rho_delta == 3 * sel
    assert total.rho == 2 * g.rho + Fraction(1, 8)
    every = rho_to_epsilon(float(total.rho), float(2 * g.delta))
    hybrid = rho_to_epsilon(float(2 * g.rho), float(2 * g.delta)) + 0.5
    assert float(total.epsilon) == pytest.approx(min(every, hybrid), rel=1e-12)
    assert total.composition == HYBRID and total.rho_converted == 2 * g.rho


def test_approximate_dp_without_rho_has_no_zcdp_bound_and_composes_by_sum() -> None:
    odd = PrivacyCost(Fraction(1), Fraction(1, 10**6))  # δ that is not selection: no ρ
    assert odd.zcdp_rho is None
    total = compose([odd, gaussian(1.0).cost], rho_to_epsilon)
    assert total.rho is None and total.composition == BASIC
    assert total.epsilon == total.epsilon_basic == 2


def test_never_worse_than_the_sum_and_one_table_is_its_own_cost() -> None:
    g = gaussian(1.0).cost
    single = compose([g], rho_to_epsilon)
    assert (single.epsilon, single.delta, single.rho) == (g.epsilon, g.delta, g.rho)
    assert single.composition == BASIC
    # a conversion that would state more than the sum is not taken
    worse = compose([g, g], lambda rho, delta: 10.0)
    assert (worse.epsilon, worse.composition) == (2 * g.epsilon, BASIC)
    with pytest.raises(ValueError, match="at least one table"):
        compose([], rho_to_epsilon)


@pytest.mark.parametrize("x", [0.1, 1 / 3, 1.1343572628658372, 2.0, 1e-300, 123456.789])
def test_the_float_conversion_is_read_back_conservatively(x: float) -> None:
    assert _decimal_up(x) >= Fraction(x)
    assert _decimal_up(x) - Fraction(x) <= 2 * Fraction(math.ulp(x))  # a short decimal, not a far one
    q = Fraction(1, 3) * Fraction(x)
    assert Fraction(_float_up(q)) >= q >= Fraction(_float_down(q))


def test_the_manifest_dict_says_which_composition_was_used() -> None:
    a, b = gaussian(1.0).cost, gaussian(0.5).cost
    total = compose([a, b], rho_to_epsilon)
    d = total.as_dict()
    assert d["composition"] == ZCDP and d["epsilon_basic"] == 1.5
    assert d["epsilon_basic_exact"] == "3/2" and Fraction(str(d["epsilon_exact"])) == total.epsilon
    assert "composition" not in a.as_dict()  # a single table's entry is unchanged
    line = total.describe()
    assert f"ρ = {float(total.rho or 0):.6g} (zCDP)" in line
    assert "ε added over the tables would be 1.5" in line
    assert f"ε = {float(total.epsilon):.4g}" in line and "ε = 1.5," not in line
    assert compose([laplace(1.0).cost], rho_to_epsilon).describe() == "ε = 1, δ = 0 (ρ = 0.5 zCDP)"
