"""Privacy budget values with exact arithmetic.

Budgets are compared and composed as :class:`fractions.Fraction`, never floats, so that
"1.5 + 0.5 ≤ 2" is decided exactly. A float from a config is read through its decimal
text (``0.1`` is one tenth, not ``0.1000000000000000055…``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

__all__ = ["PrivacyCost", "exact"]


def exact(x: float | int | str | Fraction) -> Fraction:
    """The exact fraction a person meant by a number: ``exact(0.1) == Fraction(1, 10)``."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, float):
        return Fraction(repr(x))
    return Fraction(x)


@dataclass(frozen=True)
class PrivacyCost:
    """What one release spends: ε and δ, plus ρ when the noise was calibrated under zCDP.

    ``epsilon``/``delta`` is always the (ε, δ)-DP guarantee of the whole release; ``rho``
    is recorded as well for Gaussian releases so a zCDP ledger can compose tightly, and
    ``rho_delta`` is the δ spent outside zCDP (selecting data-dependent keys), which a ρ
    budget must still account for.

    Examples
    --------
    >>> a = PrivacyCost(exact(1.5))
    >>> (a + PrivacyCost(exact(0.5))).epsilon
    Fraction(2, 1)
    """

    epsilon: Fraction
    delta: Fraction = Fraction(0)
    rho: Fraction | None = None
    rho_delta: Fraction = Fraction(0)

    def __add__(self, other: PrivacyCost) -> PrivacyCost:
        rho = None if self.rho is None or other.rho is None else self.rho + other.rho
        return PrivacyCost(self.epsilon + other.epsilon, self.delta + other.delta, rho,
                           self.rho_delta + other.rho_delta)

    def fits_within(self, budget: PrivacyCost) -> bool:
        """True when this cost does not exceed ``budget`` in ε and δ."""
        return self.epsilon <= budget.epsilon and self.delta <= budget.delta

    def as_dict(self) -> dict[str, float | str | None]:
        """Floats for people, exact fractions as strings for machines."""
        return {
            "epsilon": float(self.epsilon),
            "delta": float(self.delta),
            "rho": None if self.rho is None else float(self.rho),
            "epsilon_exact": str(self.epsilon),
            "delta_exact": str(self.delta),
            "rho_exact": None if self.rho is None else str(self.rho),
        }
