"""Differencing: two releases that differ by one person leak no more than their composed ε.

The attack. An operator releases today (A) and then today minus one person P (B) — a
correction, a withdrawal — charging the budget for both. The attacker wants to know
whether P was in cell X in window 10. X holds min_count − 1 = 9 other persons, so P is
exactly the one who pushes X over the policy minimum. The attacker's rule is the classic
differencing rule: "X is published in A but not in B, so the one person who differs
was there" (A − B < min_count).

- A variant that suppresses on the *exact* count (built here, never in privmob) publishes
  X in A (10 ≥ 10) and withholds it in B (9 < 10) every single time P was there, and never
  when P was not: the attack succeeds with certainty.
- privmob suppresses on the *noisy* count (post-processing of the DP output), so X's
  presence in A is itself noisy. The attacker's advantage is then bounded by the DP
  guarantee: A alone differs between the two worlds (B holds no trace of P), and the pair
  costs 2ε, which the ledger charges. We check the empirical lower bound on ε (the same
  Clopper–Pearson machinery as ``test_dp_audit``) stays ≤ 2ε, for the differencing rule
  and for every threshold on A's published value.

The exact counts come from the real pipeline (Polars backend, bounding with k = w = 1);
the noisy releases of X are drawn many times with the plan's OpenDP mechanism and
suppressed with the plan's own :func:`~privmob.release.table.suppress` and threshold.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from fractions import Fraction
from pathlib import Path

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

import privmob as pm
from privmob.backends import get_backend
from privmob.errors import BudgetExceededError
from privmob.governance.ledger import Ledger
from privmob.privacy import mechanism
from privmob.release.table import suppress
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD_START, TEST_KEY, config
from tests.statistical.test_dp_audit import cp_lower, cp_upper, lower_bound

MIN_COUNT = 10
WINDOW = 10
CENTRE = (39.9919, 116.3106)  # Zhongguancun
CELL_X = h3.latlng_to_cell(*CENTRE, 8)
CELL_Y = sorted(h3.grid_ring(CELL_X, 2))[0]  # where P is when not in X
TARGET = "TARGET-P"
RELEASES = 20_000


def _pings(person: str, cell: str, minutes: int = 20) -> list[tuple[object, ...]]:
    lat, lng = h3.cell_to_latlng(cell)
    start = PERIOD_START + WINDOW * 3600
    return [(person, dt.datetime.fromtimestamp(start + 60 * m + 11, dt.UTC), lat, lng, "suspected")
            for m in range(minutes)]


def _frame(rows: list[tuple[object, ...]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"person_id": pl.String, "ts": pl.Datetime("us", "UTC"),
                                      "lat": pl.Float64, "lng": pl.Float64, "group": pl.String},
                        orient="row")


def _boundary(path: Path) -> Path:
    lat, lng = CENTRE
    ring = [[lng - 0.02, lat - 0.015], [lng + 0.02, lat - 0.015], [lng + 0.02, lat + 0.015],
            [lng - 0.02, lat + 0.015], [lng - 0.02, lat - 0.015]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return path


def _config(tmp: Path, mechanism_name: str) -> pm.JobConfig:
    return config(
        grid={"boundary": str(_boundary(tmp / "area.geojson")), "resolution": 8},
        privacy={"mechanism": mechanism_name, "epsilon": 1.0, "max_cells_per_window": 1,
                 "max_windows": 1, "min_count": MIN_COUNT},
        budget={"ledger": str(tmp / "ledger.sqlite"), "epsilon_per_day": 2.0,
                "delta_per_day": 1e-6},
    )


def _exact_x(cfg: pm.JobConfig, plan: pm.Plan, frame: pl.DataFrame) -> int:
    """Exact, bounded count of X in WINDOW, by the real backend."""
    exact = get_backend("polars").exact_cells(
        frame, cfg, Pseudonymiser(TEST_KEY.encode(), plan.linkage_label), plan.key_cells)
    row = exact.counts.filter((pl.col("cell") == h3.str_to_int(CELL_X)) & (pl.col("window") == WINDOW))
    return int(row["count"].sum())


def _releases(model: mechanism.NoiseModel, exact: int) -> npt.NDArray[np.int64]:
    return mechanism.noise_counts(model, np.full(RELEASES, exact, dtype=np.int64))


def _rates(hit_1: npt.NDArray[np.bool_], hit_0: npt.NDArray[np.bool_]) -> tuple[float, float, float]:
    """(TPR, FPR, balanced success) of a rule that says "P was in X" when it fires."""
    tpr, fpr = float(hit_1.mean()), float(hit_0.mean())
    return tpr, fpr, (tpr + 1 - fpr) / 2


@pytest.mark.parametrize("mechanism_name", ["laplace", "gaussian"])
def test_differencing_two_releases_is_bounded_by_the_composed_epsilon(
    tmp_path: Path, key_env: str, mechanism_name: str
) -> None:
    tick = time.perf_counter()
    cfg = _config(tmp_path, mechanism_name)
    plan = pm.plan(cfg)
    crowd = [row for i in range(MIN_COUNT - 1) for row in _pings(f"C{i:03d}", CELL_X)]
    world_1 = _frame(crowd + _pings(TARGET, CELL_X))  # P in X: P pushes X to min_count
    world_0 = _frame(crowd + _pings(TARGET, CELL_Y))  # P elsewhere
    minus_p = _frame(crowd)  # "today minus one person": the same in both worlds

    # Both releases go through the real path and are charged: 2ε on the day, then no more.
    a = plan.release(world_1)
    b = plan.release(minus_p, force=True)  # a second release of the day, knowingly
    ledger = Ledger(tmp_path / "ledger.sqlite")
    (day,) = ledger.rows()
    assert day.releases == 2 and day.spent == 2 * plan.cost.epsilon == Fraction(2)
    assert day.delta_spent == 2 * plan.cost.delta
    with pytest.raises(BudgetExceededError):
        plan.release(minus_p, force=True)
    composed = float(day.spent)
    composed_delta = float(day.delta_spent)
    assert a.manifest["release_threshold"] == b.manifest["release_threshold"] == plan.release_threshold

    # Exact counts of X, by the backend: A differs by P between the worlds, B does not.
    a1, a0, bx = _exact_x(cfg, plan, world_1), _exact_x(cfg, plan, world_0), _exact_x(cfg, plan, minus_p)
    assert (a1, a0, bx) == (MIN_COUNT, MIN_COUNT - 1, MIN_COUNT - 1)

    model, threshold = plan.noise, plan.release_threshold
    # One set of draws per release serves both worlds (each rate's Clopper–Pearson interval
    # is valid on its own; see test_dp_audit): A's releases are its draws plus the world's
    # count, B's are the same in both worlds.
    noisy_a1 = _releases(model, a1)
    noisy_a0 = noisy_a1 - (a1 - a0)
    noisy_b1 = noisy_b0 = _releases(model, bx)

    # The broken variant: suppression on the exact count (noise still added to the value).
    def exact_published(exact: int) -> npt.NDArray[np.bool_]:
        return np.full(RELEASES, exact >= MIN_COUNT)

    fire_1 = exact_published(a1) & ~exact_published(bx)
    fire_0 = exact_published(a0) & ~exact_published(bx)
    tpr_x, fpr_x, success_x = _rates(fire_1, fire_0)
    n = RELEASES
    eps_exact = math.log(cp_lower(int(fire_1.sum()), n, 1e-3 / 2) / cp_upper(int(fire_0.sum()), n, 1e-3 / 2))
    assert tpr_x == 1.0 and fpr_x == 0.0  # certainty: P was in X iff X vanishes from A to B
    assert eps_exact > 2 * composed

    # privmob: suppression on the noisy count.
    pub_a1, pub_a0 = suppress(noisy_a1, threshold), suppress(noisy_a0, threshold)
    pub_b1, pub_b0 = suppress(noisy_b1, threshold), suppress(noisy_b0, threshold)
    tpr, fpr, success = _rates(pub_a1 & ~pub_b1, pub_a0 & ~pub_b0)
    # Every test the attacker can run on (A, B): the differencing rule (coded 1 when it
    # fires), and thresholds on A's published value (suppressed = below any threshold)
    # minus B's (suppressed = 0).
    seen_a1 = np.where(pub_a1, noisy_a1, -10**6).astype(np.float64)
    seen_a0 = np.where(pub_a0, noisy_a0, -10**6).astype(np.float64)
    diff_1 = seen_a1 - np.where(pub_b1, noisy_b1, 0)
    diff_0 = seen_a0 - np.where(pub_b0, noisy_b0, 0)
    rule = lower_bound((pub_a1 & ~pub_b1).astype(np.float64), (pub_a0 & ~pub_b0).astype(np.float64),
                       [1.0], delta=composed_delta)
    h = model.ci_halfwidth()
    step = max(1, h // 8)
    best = lower_bound(diff_1, diff_0, np.concatenate(([-10**5], np.arange(-2 * h, threshold + 2 * h, step))),
                       delta=composed_delta)
    best_a = lower_bound(seen_a1, seen_a0, np.arange(threshold, threshold + 2 * h, step),
                         delta=composed_delta)
    ceiling = math.exp(composed) / (1 + math.exp(composed))
    print(f"\n[differencing] {mechanism_name}: threshold {threshold}, composed ε = {composed:g} "
          f"(δ = {composed_delta:g}) charged for A and B\n"
          f"  exact-count suppression: attack TPR {tpr_x:.3f}, FPR {fpr_x:.3f}, success {success_x:.1%}, "
          f"ε ≥ {eps_exact:.2f}\n"
          f"  privmob (noisy threshold): differencing rule TPR {tpr:.3f}, FPR {fpr:.3f}, success "
          f"{success:.1%} (ceiling at 2ε: {ceiling:.1%}); ε ≥ {rule.epsilon:.3f} (rule), "
          f"{best.epsilon:.3f} (A − B thresholds), {best_a.epsilon:.3f} (A's value)\n"
          f"  {RELEASES:,} releases per world, {time.perf_counter() - tick:.1f} s")
    for bound in (rule, best, best_a):
        assert bound.epsilon <= composed
    assert success <= ceiling
