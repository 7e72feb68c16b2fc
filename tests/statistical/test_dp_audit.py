"""An empirical privacy audit: does a release leak more than the ε it claims?

The neighbouring pair is the privacy model's own: D (the bundled synthetic Beijing day,
plus a crowd and one *heavy* person) and D' = D minus every ping of that heavy person.
The heavy person is in three cells in every one of the 24 windows, so only contribution
bounding stands between them and 72 counts; with ``max_cells_per_window = 2`` and
``max_windows = 2`` they must change exactly k·w = 4 counts by one.

How the audit works, and why it is fast and still tests the real thing:

- D and D' go once each through the real pipeline (Polars backend: validation, scope,
  pseudonymisation, indexing, **bounding**, aggregation) to their exact aggregates. Keys
  where the two agree get identically distributed, independent noise in both worlds, so
  they carry no information about the heavy person; the best test looks only at the keys
  that differ, and so does this one.
- Many releases of those keys are drawn with the plan's calibrated OpenDP mechanism
  (:func:`privmob.privacy.mechanism.noise_counts`) — thousands of releases in a second or two.
  The audit is on the noisy counts *before* suppression: suppression is post-processing,
  so an attacker seeing only published counts can do no better.
- The test statistic is the likelihood-ratio statistic of the claimed mechanism on those
  keys: for discrete Laplace the number of keys whose noisy count is at least D's exact
  count (a sufficient statistic), for the discrete Gaussian the sum of noisy counts minus
  D''s. "Guess D when the statistic ≥ t" has a false-positive rate (FPR, under D') and a
  false-negative rate (FNR, under D). (ε, δ)-DP forces
  ε ≥ log((1 − δ − FNR) / FPR) and ε ≥ log((1 − δ − FPR) / FNR); with Clopper–Pearson
  upper bounds on FPR and FNR (Bonferroni over every threshold tried, 99.9% jointly) the
  right-hand side is a lower bound on the true ε that holds with probability ≥ 99.9%.
- For the Gaussian, whose claim is ρ-zCDP (what the ledger composes; the (ε, δ) it states
  follows from ρ), the same test outcome also bounds ρ: by data processing, the Rényi
  divergence between the two Bernoulli outcomes, divided by its order α, is ≤ ρ.
- OpenDP's samplers cannot be seeded (they use the OS's CSPRNG), so the audit is a test
  at a fixed confidence, not a seeded replay. One set of noise draws serves both worlds
  (D's releases are those draws plus D's counts, D''s plus D''s): each Clopper–Pearson
  interval is valid on its own and the union bound needs no independence between them.

Controls — the audit must have the power to catch a broken release: (a) bounding switched
off (the aggregate keeps all 72 of the heavy person's counts while the noise is still
calibrated for 4) and (b) the noise scale halved. Both must show a lower bound above the
claim; the real release must stay below it.

A few full ``plan.release`` runs (slow) check that the release path noises exactly these
exact counts with exactly this calibration.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
from scipy import stats

import privmob as pm
from privmob.backends import get_backend
from privmob.privacy import mechanism
from privmob.privacy.mechanism import NoiseModel
from privmob.stages.aggregate import ExactCounts
from privmob.stages.pseudonymise import Pseudonymiser
from tests.conftest import PERIOD_START, SAMPLES, TEST_KEY, config, fresh_ledger

ALPHA = 1e-3  # each audit's bounds hold jointly with probability ≥ 99.9%
K, W = 2, 2  # the audited bounds: k cells per window, w windows → k·w = 4 counts
HEAVY = "HEAVY-0001"
CENTRE = (39.9087, 116.4605)  # Guomao / CBD
CELL_A = h3.latlng_to_cell(*CENTRE, 8)
CELL_B = sorted(h3.grid_ring(CELL_A, 1))[0]
OTHER_CELLS = sorted(set(h3.grid_disk(CELL_A, 3)) - {CELL_A, CELL_B})[:24]
BUSY_WINDOWS = (9, 15)  # the windows where the heavy person dwells longest
CROWD = 100  # persons in the heavy person's busiest keys, so the full releases publish them


# -- the statistics of the audit ---------------------------------------------------------------
def cp_upper(k: int, n: int, a: float) -> float:
    """One-sided Clopper–Pearson upper bound on a binomial rate, confidence 1 − a."""
    return 1.0 if k >= n else float(stats.beta.ppf(1 - a, k + 1, n - k))


def cp_lower(k: int, n: int, a: float) -> float:
    """One-sided Clopper–Pearson lower bound on a binomial rate, confidence 1 − a."""
    return 0.0 if k <= 0 else float(stats.beta.ppf(a, k, n - k + 1))


def renyi_bernoulli(p: float, q: float, alpha: float) -> float:
    """Rényi divergence of order α > 1 between Bernoulli(p) and Bernoulli(q), 0 < q < 1."""
    terms = [alpha * math.log(x) + (1 - alpha) * math.log(y)
             for x, y in ((p, q), (1 - p, 1 - q)) if x > 0]
    return float(np.logaddexp.reduce(terms)) / (alpha - 1)


@dataclass(frozen=True)
class Bound:
    """What one audit measured: lower bounds on ε (at δ) and on ρ, and the best test."""

    epsilon: float
    rho: float
    threshold: float
    fpr: float
    fnr: float
    releases: int

    def __str__(self) -> str:
        return (f"ε ≥ {self.epsilon:.3f}, ρ ≥ {self.rho:.4f} (best ε test: threshold "
                f"{self.threshold:.4g}, FPR ≤ {self.fpr:.4f}, FNR ≤ {self.fnr:.4f}; "
                f"{self.releases:,} releases per world)")


RENYI_ORDERS = np.geomspace(1.01, 500, 120)


def lower_bound(stat_d: npt.NDArray[np.float64], stat_d2: npt.NDArray[np.float64],
                thresholds: npt.ArrayLike, *, delta: float = 0.0, alpha: float = ALPHA) -> Bound:
    """Lower bounds on ε (at ``delta``) and ρ from threshold tests "guess D when stat ≥ t".

    Every threshold contributes two Clopper–Pearson upper bounds (FPR under D', FNR under
    D), each at level alpha / (2 · #thresholds): jointly they all hold with ≥ 1 − alpha.
    """
    ts = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    a = alpha / (2 * ts.size)
    n1, n2 = stat_d.size, stat_d2.size
    best = Bound(0.0, 0.0, float(ts[0]), 1.0, 1.0, min(n1, n2))
    eps_best, rho_best = 0.0, 0.0
    for t in ts:
        fpr = cp_upper(int((stat_d2 >= t).sum()), n2, a)
        fnr = cp_upper(int((stat_d < t).sum()), n1, a)
        eps = max(
            math.log((1 - delta - fnr) / fpr) if 1 - delta - fnr > 0 and fpr > 0 else 0.0,
            math.log((1 - delta - fpr) / fnr) if 1 - delta - fpr > 0 and fnr > 0 else 0.0,
        )
        rho = 0.0
        p_lo, q_hi = 1 - fnr, fpr  # P_D(stat ≥ t) ≥ p_lo, P_D'(stat ≥ t) ≤ q_hi
        if p_lo > q_hi:  # Rényi divergence grows as p and q move apart: the box's corner
            rho = max(max(renyi_bernoulli(p_lo, q_hi, o), renyi_bernoulli(q_hi, p_lo, o)) / o
                      for o in RENYI_ORDERS)
        if eps > eps_best:
            best = Bound(eps, best.rho, float(t), fpr, fnr, min(n1, n2))
            eps_best = eps
        rho_best = max(rho_best, rho)
    return Bound(best.epsilon, rho_best, best.threshold, best.fpr, best.fnr, best.releases)


def statistic(model: NoiseModel, noisy: npt.NDArray[np.int64],
              counts_d: npt.NDArray[np.int64], counts_d2: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The claimed mechanism's likelihood-ratio statistic over the differing keys, per release."""
    if model.mechanism == "laplace":
        return np.asarray((noisy >= counts_d).sum(axis=1), dtype=np.float64)
    return np.asarray((noisy - counts_d2).sum(axis=1), dtype=np.float64)


def thresholds_for(model: NoiseModel, keys: int) -> npt.NDArray[np.float64]:
    if model.mechanism == "laplace":
        return np.arange(1, keys + 1, dtype=np.float64)
    sd = model.std * math.sqrt(keys)
    return np.arange(-1.0, 4.51, 0.25) * sd


def audit(model: NoiseModel, counts_d: npt.NDArray[np.int64], counts_d2: npt.NDArray[np.int64],
          releases: int, *, delta: float = 0.0) -> Bound:
    """Draw ``releases`` noisy copies of the differing keys with OpenDP and bound ε and ρ."""
    keys = counts_d.size
    noisy_d = mechanism.noise_counts(model, np.tile(counts_d, releases)).reshape(releases, keys)
    noise = noisy_d - counts_d
    noisy_d2 = noise + counts_d2  # D''s releases: the same (valid, see module doc) noise draws
    stat_d = statistic(model, noisy_d, counts_d, counts_d2)
    stat_d2 = statistic(model, noisy_d2, counts_d, counts_d2)
    return lower_bound(stat_d, stat_d2, thresholds_for(model, keys), delta=delta)


# -- the neighbouring datasets ----------------------------------------------------------------
def _rows(person: str, cell: str, window: int, minutes: int, offset: int = 0) -> list[tuple[object, ...]]:
    lat, lng = h3.cell_to_latlng(cell)
    start = PERIOD_START + window * 3600 + offset * 60
    return [(person, dt.datetime.fromtimestamp(start + 60 * m + 7, dt.UTC), lat, lng, "confirmed")
            for m in range(minutes)]


def heavy_person_and_crowd() -> pl.DataFrame:
    """The heavy person: 3 cells in each of 24 windows (A and B long, one other briefly),
    longest in BUSY_WINDOWS; and a crowd of CROWD persons in A and B in those windows."""
    rows: list[tuple[object, ...]] = []
    for w in range(24):
        long_ = 25 if w in BUSY_WINDOWS else 10
        rows += _rows(HEAVY, CELL_A, w, long_)
        rows += _rows(HEAVY, CELL_B, w, long_ - 5, offset=30)
        rows += _rows(HEAVY, OTHER_CELLS[w], w, 1, offset=58)
    for i in range(CROWD):
        for w in BUSY_WINDOWS:
            rows += _rows(f"CROWD-{i:04d}", CELL_A, w, 5, offset=i % 20)
            rows += _rows(f"CROWD-{i:04d}", CELL_B, w, 5, offset=30 + i % 20)
    frame = pl.DataFrame(rows, schema={"person_id": pl.String, "ts": pl.Datetime("us", "UTC"),
                                       "lat": pl.Float64, "lng": pl.Float64, "group": pl.String},
                         orient="row")
    return frame


def write_boundary(path: Path) -> Path:
    """A ~9 km × 9 km rectangle around the CBD: the public key set of the audit."""
    lat, lng = CENTRE
    ring = [[lng - 0.05, lat - 0.04], [lng + 0.05, lat - 0.04], [lng + 0.05, lat + 0.04],
            [lng - 0.05, lat + 0.04], [lng - 0.05, lat - 0.04]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "cbd"},
         "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    return path


@dataclass(frozen=True)
class Neighbours:
    d: pl.DataFrame
    d_minus: pl.DataFrame
    boundary: Path
    #: exact counts on the keys where D and D' differ: (counts under D, counts under D')
    bounded: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    unbounded: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]
    exact_d: ExactCounts
    exact_d_minus: ExactCounts
    seconds: float


def audit_config(boundary: Path, mechanism_name: str = "laplace", **privacy: object) -> pm.JobConfig:
    return config(grid={"boundary": str(boundary), "resolution": 8},
                  privacy={"mechanism": mechanism_name, "epsilon": 1.0,
                           "max_cells_per_window": K, "max_windows": W, **privacy})


def differing_keys(a: ExactCounts, b: ExactCounts) -> pl.DataFrame:
    on = ["cell", "window"]
    both = a.counts.join(b.counts, on=on, how="full", coalesce=True, suffix="_minus").with_columns(
        pl.col("count").fill_null(0), pl.col("count_minus").fill_null(0))
    return both.filter(pl.col("count") != pl.col("count_minus")).sort(on)


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory: pytest.TempPathFactory) -> Neighbours:
    tick = time.perf_counter()
    boundary = write_boundary(tmp_path_factory.mktemp("audit") / "cbd.geojson")
    # The city-wide synthetic day, clipped to the audit area (what the boundary keeps anyway).
    lat, lng = CENTRE
    sample = pl.read_parquet(SAMPLES / "beijing_pings.parquet").filter(
        pl.col("lat").is_between(lat - 0.05, lat + 0.05) & pl.col("lng").is_between(lng - 0.06, lng + 0.06))
    d = pl.concat([sample, heavy_person_and_crowd()])
    d_minus = d.filter(pl.col("person_id") != HEAVY)
    engine = get_backend("polars")
    out = {}
    for name, cfg in (("bounded", audit_config(boundary)),
                      # bounding switched off: every cell of every window is kept
                      ("unbounded", audit_config(boundary, max_cells_per_window=64, max_windows=24))):
        plan = pm.plan(cfg)
        pseudonymiser = Pseudonymiser(TEST_KEY.encode(), plan.linkage_label)
        exact_d = engine.exact_cells(d, cfg, pseudonymiser, plan.key_cells)
        exact_m = engine.exact_cells(d_minus, cfg, pseudonymiser, plan.key_cells)
        diff = differing_keys(exact_d, exact_m)
        out[name] = (diff["count"].to_numpy().astype(np.int64),
                     diff["count_minus"].to_numpy().astype(np.int64), exact_d, exact_m)
    return Neighbours(d, d_minus, boundary, out["bounded"][:2], out["unbounded"][:2],
                      out["bounded"][2], out["bounded"][3], time.perf_counter() - tick)


def report(label: str, bound: Bound, claim: str, seconds: float) -> None:
    print(f"\n[dp-audit] {label}: {bound}; claim {claim}; {seconds:.1f} s")


# -- the audit ----------------------------------------------------------------------------------
def test_bounding_holds_on_the_neighbouring_pair(neighbours: Neighbours) -> None:
    """Removing the heavy person changes exactly k·w counts by one — and 72 without bounding."""
    d, d2 = neighbours.bounded
    assert d.size == K * W and np.all(d - d2 == 1)
    assert np.all(d2 >= CROWD)  # the heavy person's kept keys are the crowded ones
    u, u2 = neighbours.unbounded
    assert u.size == 3 * 24 and np.all(u - u2 == 1)
    print(f"\n[dp-audit] neighbouring pair built in {neighbours.seconds:.1f} s "
          f"({neighbours.d.height:,} / {neighbours.d_minus.height:,} pings)")


LAPLACE_RELEASES = 20_000


def test_laplace_release_leaks_no_more_than_claimed(neighbours: Neighbours) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, "laplace"))
    claimed = float(plan.cost.epsilon)
    assert plan.cost.delta == 0 and claimed == 1.0 and plan.sensitivity.l1 == K * W
    tick = time.perf_counter()
    bound = audit(plan.noise, *neighbours.bounded, LAPLACE_RELEASES)
    report("laplace, real", bound, f"ε = {claimed:g}", time.perf_counter() - tick)
    assert bound.epsilon < claimed
    # The audit is not vacuous: the real release is measurably private-but-leaky.
    assert bound.epsilon > 0.5 * claimed


def test_laplace_audit_catches_bounding_switched_off(neighbours: Neighbours) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, "laplace"))
    tick = time.perf_counter()
    bound = audit(plan.noise, *neighbours.unbounded, 1_000)
    report("laplace, broken (a) bounding off", bound, "ε = 1 (true ε = 72/4 = 18)",
           time.perf_counter() - tick)
    assert bound.epsilon > float(plan.cost.epsilon)


def test_laplace_audit_catches_halved_noise(neighbours: Neighbours) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, "laplace"))
    n = plan.noise
    halved = NoiseModel(n.mechanism, n.scale / 2, n.sensitivity, n.cost)
    tick = time.perf_counter()
    bound = audit(halved, *neighbours.bounded, LAPLACE_RELEASES)
    report("laplace, broken (b) scale halved", bound, "ε = 1 (true ε = 2)", time.perf_counter() - tick)
    assert bound.epsilon > float(plan.cost.epsilon)


GAUSSIAN_RELEASES = 50_000


@pytest.mark.slow
def test_gaussian_release_leaks_no_more_than_claimed(neighbours: Neighbours) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, "gaussian"))
    cost = plan.cost
    assert cost.rho is not None
    eps, delta, rho = float(cost.epsilon), float(cost.delta), float(cost.rho)
    tick = time.perf_counter()
    bound = audit(plan.noise, *neighbours.bounded, GAUSSIAN_RELEASES, delta=delta)
    report("gaussian, real", bound, f"(ε = {eps:g}, δ = {delta:g}), ρ = {rho:.4f}",
           time.perf_counter() - tick)
    assert bound.epsilon < eps
    assert bound.rho < rho
    assert bound.rho > 0.2 * rho  # the audit sees the leak it is allowed


@pytest.mark.slow
def test_gaussian_audit_catches_bounding_switched_off(neighbours: Neighbours) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, "gaussian"))
    cost = plan.cost
    assert cost.rho is not None
    tick = time.perf_counter()
    bound = audit(plan.noise, *neighbours.unbounded, 10_000, delta=float(cost.delta))
    report("gaussian, broken (a) bounding off", bound,
           f"(ε = 1, δ = {float(cost.delta):g}), ρ = {float(cost.rho):.4f} (true ρ × 18)",
           time.perf_counter() - tick)
    assert bound.epsilon > float(cost.epsilon)
    assert bound.rho > float(cost.rho)


@pytest.mark.slow
def test_gaussian_audit_catches_halved_noise(neighbours: Neighbours) -> None:
    """Halving σ quadruples ρ (ε at δ = 1e-7 ≈ 2.1 by OpenDP's conversion). An (ε, δ) test
    at δ = 1e-7 needs millions of releases to show it; the ρ bound, which the same test
    outcomes give, shows it with 50,000 — and ρ is what privmob's ledger composes."""
    plan = pm.plan(audit_config(neighbours.boundary, "gaussian"))
    cost = plan.cost
    assert cost.rho is not None
    n = plan.noise
    halved = NoiseModel(n.mechanism, n.scale / 2, n.sensitivity, n.cost)
    tick = time.perf_counter()
    bound = audit(halved, *neighbours.bounded, GAUSSIAN_RELEASES, delta=float(cost.delta))
    report("gaussian, broken (b) σ halved", bound,
           f"ρ = {float(cost.rho):.4f} (true ρ = {4 * float(cost.rho):.4f})", time.perf_counter() - tick)
    assert bound.rho > float(cost.rho)


# -- the full release path is the one audited ----------------------------------------------------
FULL_RELEASES = 2


@pytest.mark.slow
@pytest.mark.parametrize("mechanism_name", ["laplace", "gaussian"])
def test_full_releases_noise_the_audited_counts_with_the_audited_calibration(
    neighbours: Neighbours, mechanism_name: str, key_env: str
) -> None:
    plan = pm.plan(audit_config(neighbours.boundary, mechanism_name))
    model = plan.noise
    assert plan.key_cells is not None
    n_keys = plan.key_cells.size * 24
    # The audited keys, as the release names them.
    d, d2 = neighbours.bounded
    diff = differing_keys(neighbours.exact_d, neighbours.exact_d_minus)
    start = plan.config.period_start.astimezone(dt.UTC)
    audited = pl.DataFrame({
        "cell": [h3.int_to_str(int(c)) for c in diff["cell"]],
        "window_start": [start + dt.timedelta(hours=int(w)) for w in diff["window"]],
    }).with_columns(pl.col("window_start").dt.cast_time_unit("us"))
    bound_99 = model.quantile(1 - 1e-9)
    tick = time.perf_counter()
    residuals = []
    for source, exact in ((neighbours.d, d), (neighbours.d_minus, d2)):
        for _ in range(FULL_RELEASES):
            with fresh_ledger(epsilon_per_day=100):  # repeated releases for the audit: own budgets
                rel = plan.release(source)
            m = rel.manifest
            assert m["mechanism"] == model.mechanism and m["noise_scale"] == model.scale
            assert m["sensitivity"]["l1"] == K * W and m["epsilon"] == 1.0
            assert m["n_keys"] == n_keys and m["keys"].startswith("public:")
            got = audited.join(rel.table, on=["cell", "window_start"], how="left")
            assert got["count"].null_count() == 0, "the crowded audited keys are always published"
            residuals.append(got["count"].to_numpy() - exact)
    res = np.concatenate(residuals)
    print(f"\n[dp-audit] {mechanism_name}: {4 * FULL_RELEASES} full releases in "
          f"{time.perf_counter() - tick:.1f} s; residuals on the audited keys {res.tolist()}")
    assert np.all(np.abs(res) <= bound_99)
