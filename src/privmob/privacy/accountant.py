"""Privacy budget values with exact arithmetic, and how a release's tables compose.

Budgets are compared and composed as :class:`fractions.Fraction`, never floats, so that
"1.5 + 0.5 ≤ 2" is decided exactly. A float from a config is read through its decimal
text (``0.1`` is one tenth, not ``0.1000000000000000055…``).

A release's tables compose in zCDP wherever they can (:func:`compose`): a Gaussian table
has its ρ, a pure ε-DP table (Laplace, the PrivTree partition) is ε²/2-zCDP (Bun & Steinke
2016, Prop. 1.4), the ρ's add, and the total ρ is converted to (ε, δ) *once*, at the δ the
tables set aside for that conversion. Adding each Gaussian table's own ε instead pays the
√(ln 1/δ) term of the conversion once per table. (A small pure ε is cheaper added than
converted, so the Gaussian tables alone may be converted and the pure ε's added; the least
valid ε is stated and the cost says which composition gave it.)

Floats: each Gaussian table's ρ is OpenDP's map read through its decimal text
(:func:`privmob.privacy.mechanism.calibrate`, as before); the ρ's then add and ε²/2 is taken
exactly. The one new float step is the conversion (OpenDP's map, floats in and out): ρ is
passed rounded up, δ rounded down, and the ε is read back rounded *up* to a short decimal,
so the ε stated is never below what OpenDP's map says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["BASIC", "HYBRID", "ZCDP", "PrivacyCost", "compose", "exact"]

#: ``composition`` of a composed cost whose ε is the tables' ε added (basic composition).
BASIC = "basic"
#: ``composition`` of a composed cost whose ε is one zCDP → (ε, δ) conversion of the total ρ.
ZCDP = "zcdp"
#: ``composition`` of a composed cost whose ε is one conversion of the zCDP-calibrated
#: (Gaussian) tables' ρ, plus the other (pure ε-DP) tables' ε added: a small pure ε is
#: cheaper added than converted from ε²/2.
HYBRID = "zcdp+basic"


def exact(x: float | int | str | Fraction) -> Fraction:
    """The exact fraction a person meant by a number: ``exact(0.1) == Fraction(1, 10)``."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):
        return Fraction(repr(x))
    return Fraction(x)


@dataclass(frozen=True)
class PrivacyCost:
    """What one table or release spends: ε and δ, plus ρ when it is known under zCDP.

    ``epsilon``/``delta`` is always the (ε, δ)-DP guarantee; ``rho`` is recorded for
    Gaussian tables and for every release whose tables all have a zCDP bound, so a zCDP
    ledger can compose tightly; ``rho_delta`` is the δ spent outside zCDP (selecting
    data-dependent keys), which a ρ budget must still account for. A release's cost (from
    :func:`compose`) also says how its ε was found (``composition``: :data:`ZCDP`,
    :data:`HYBRID` or :data:`BASIC`), the ρ that was converted (``rho_converted``) and what
    basic composition alone gives (``epsilon_basic``).

    Examples
    --------
    >>> a = PrivacyCost(exact(1.5))
    >>> (a + PrivacyCost(exact(0.5))).epsilon
    Fraction(2, 1)
    >>> PrivacyCost(exact(1)).zcdp_rho  # pure ε-DP is ε²/2-zCDP
    Fraction(1, 2)
    """

    epsilon: Fraction
    delta: Fraction = Fraction(0)
    rho: Fraction | None = None
    rho_delta: Fraction = Fraction(0)
    composition: str | None = None
    epsilon_basic: Fraction | None = None
    rho_converted: Fraction | None = None

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        """Basic composition: ε and δ add (and ρ, when both have one)."""
        rho = None if self.rho is None or other.rho is None else self.rho + other.rho
        return PrivacyCost(self.epsilon + other.epsilon, self.delta + other.delta, rho,
                           self.rho_delta + other.rho_delta)

    @property
    def zcdp_rho(self) -> Fraction | None:
        """ρ of the zCDP part of this cost (δ ``rho_delta`` aside), or None if it has none.

        The recorded ρ when there is one; else, when all of δ is selection δ (the rest is
        pure ε-DP), ε²/2 — exact. An (ε, δ) cost with δ beyond selection has no zCDP bound.

        Laplace with threshold keys is δ-approximately ε²/2-zCDP (Bun & Steinke 2016,
        Def. 8.1): conditioned on no key of one neighbour alone being released (probability
        ≥ 1 − δ, noise independent per key), what remains is ε-DP. OpenDP 0.16 does not map
        ``Approximate(MaxDivergence)`` to zCDP itself, so this step is ours.
        """
        if self.rho is not None:
            return self.rho
        if self.delta == self.rho_delta:
            return self.epsilon**2 / 2
        return None

    @property
    def conversion_delta(self) -> Fraction:
        """The δ spent converting ρ to (ε, δ): all of δ but the selection δ."""
        return self.delta - self.rho_delta

    def fits_within(self, budget: PrivacyCost) -> bool:
        """True when this cost does not exceed ``budget`` in ε and δ."""
        return self.epsilon <= budget.epsilon and self.delta <= budget.delta

    def describe(self) -> str:
        """One line for people: the (ε, δ) guarantee and, with ρ, where it comes from.

        ``ρ = 0.0285 (zCDP) ⇒ ε = 1.134, δ = 4e-07 (one conversion of the total ρ; ε added
        over the tables would be 2)``.
        """
        eps, delta = f"ε = {float(self.epsilon):.4g}", f"δ = {float(self.delta):.3g}"
        sel = (f", of which δ = {float(self.rho_delta):.3g} for key selection"
               if self.rho_delta else "")
        basic = float(self.epsilon if self.epsilon_basic is None else self.epsilon_basic)
        if self.composition == ZCDP and self.rho is not None:
            return (f"ρ = {float(self.rho):.6g} (zCDP) ⇒ {eps}, {delta}{sel} (one conversion of "
                    f"the total ρ; ε added over the tables would be {basic:.4g})")
        if self.composition == HYBRID and self.rho_converted is not None:
            whole = "" if self.rho is None else f"; the whole release is ρ = {float(self.rho):.6g} zCDP"
            return (f"ρ = {float(self.rho_converted):.6g} (zCDP, Gaussian tables) converted once, "
                    f"plus the pure tables' ε ⇒ {eps}, {delta}{sel} (ε added over the tables "
                    f"would be {basic:.4g}{whole})")
        return f"{eps}, {delta}" + ("" if self.rho is None else f" (ρ = {float(self.rho):.6g} zCDP)")

    def as_dict(self) -> dict[str, float | str | None]:
        """Floats for people, exact fractions as strings for machines.

        A composed cost adds ``composition``, ``epsilon_basic`` and ``rho_converted`` (and
        their ``_exact`` texts).
        """
        out: dict[str, float | str | None] = {
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "rho": None if self.rho is None else float(self.rho),
            "epsilon_exact": str(self.epsilon),
            "delta_exact": str(self.delta),
            "rho_exact": None if self.rho is None else str(self.rho),
        }
        if self.composition is not None:
            basic = self.epsilon if self.epsilon_basic is None else self.epsilon_basic
            conv = self.rho_converted
            out |= {"composition": self.composition, "epsilon_basic": float(basic),
                    "rho_converted": None if conv is None else float(conv),
                    "epsilon_basic_exact": str(basic),
                    "rho_converted_exact": None if conv is None else str(conv)}
        return out


#: ρ, δ (floats) → ε of ρ-zCDP at δ; privmob passes :func:`privmob.privacy.mechanism.rho_to_epsilon`.
ToEpsilon = Callable[[float, float], float]


def compose(costs: Sequence[PrivacyCost], to_epsilon: ToEpsilon) -> PrivacyCost:
    """A release's cost: its tables' costs composed as tightly as a proof allows.

    Three valid bounds, all at the same total δ; the smallest ε is stated, ``composition``
    says which:

    - :data:`BASIC`: ε and δ added (always holds);
    - :data:`ZCDP`: every table has a zCDP bound (:attr:`PrivacyCost.zcdp_rho`): the ρ's add
      exactly and the total is converted once by ``to_epsilon`` at the δ the tables set
      aside for conversion; selection δ adds on top (approximate zCDP composes as (Σρ, Σδ));
    - :data:`HYBRID`: the tables calibrated in ρ (Gaussian) converted once so, the others'
      ε added (basic composition of the two parts).

    A conversion is tried only over two or more tables (one table's ε is already its own).
    ``rho`` is the whole release's ρ whenever every table has one, whichever ε is stated:
    that is what a ρ ledger charges.
    """
    if not costs:
        raise ValueError("a release has at least one table")
    basic = costs[0]
    for c in costs[1:]:
        basic = basic + c
    rhos = [c.zcdp_rho for c in costs]
    whole = None if any(r is None for r in rhos) else sum((r for r in rhos if r is not None), Fraction(0))
    best, how, converted = basic.epsilon, BASIC, None
    candidates = [[i for i, r in enumerate(rhos) if r is not None],
                  [i for i, c in enumerate(costs) if c.rho is not None]]
    for group in candidates:
        if len(group) < 2:
            continue
        rho = sum((rhos[i] or Fraction(0) for i in group), Fraction(0))
        tight = _converted(rho, sum((costs[i].conversion_delta for i in group), Fraction(0)),
                           to_epsilon)
        if tight is None:
            continue
        eps = tight + sum((c.epsilon for i, c in enumerate(costs) if i not in group), Fraction(0))
        if eps < best:
            best, converted = eps, rho
            how = ZCDP if len(group) == len(costs) else HYBRID
    return PrivacyCost(best, basic.delta, whole, basic.rho_delta, how, basic.epsilon, converted)


def _converted(rho: Fraction, delta: Fraction, to_epsilon: ToEpsilon) -> Fraction | None:
    """ε of ``rho``-zCDP at ``delta``, never below the float map's value; None at δ = 0."""
    if delta <= 0 or rho <= 0:
        return None
    eps = to_epsilon(_float_up(rho), _float_down(delta))  # larger ρ, smaller δ: larger ε
    return _decimal_up(eps) if math.isfinite(eps) else None


def _float_up(x: Fraction) -> float:
    """The nearest float ≥ ``x``."""
    f = float(x)
    return f if Fraction(f) >= x else math.nextafter(f, math.inf)


def _float_down(x: Fraction) -> float:
    """The nearest float ≤ ``x``."""
    f = float(x)
    return f if Fraction(f) <= x else math.nextafter(f, -math.inf)


def _decimal_up(x: float) -> Fraction:
    """A short decimal ≥ ``x`` (its shortest repr, or the next float's, which lies above it)."""
    d = Fraction(repr(x))
    return d if d >= Fraction(x) else Fraction(repr(math.nextafter(x, math.inf)))
