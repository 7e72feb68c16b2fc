"""PrivTree over the H3 hierarchy (privmob.privacy.tree): parameters, the split rule, the
partition's structure, one noise draw per level, and a cost that does not grow with depth."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import h3
import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3
import pytest

from privmob.errors import ConfigError, InputError, SchemaError
from privmob.privacy import noising, tree
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.tablespec import PublicKeys, TableSpec
from privmob.privacy.tree import Partition, TreeParams, level_spec, partition

#: Beijing at res 5, away from H3's pentagons (every cell has seven children).
CENTRE = h3.str_to_int(h3.latlng_to_cell(39.9, 116.4, 5))


def _roots(k: int = 1) -> npt.NDArray[np.uint64]:
    cells = sorted(h3.str_to_int(c) for c in h3.grid_disk(h3.int_to_str(CENTRE), k))
    return np.array(cells, dtype=np.uint64)


def _descendants(cells: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    frame = pl.Series("c", cells, dtype=pl.UInt64).to_frame()
    kids = frame.select(plh3.cell_to_children("c", resolution)).explode("c").to_series().sort()
    return kids.to_numpy().astype(np.uint64)


def _parents(cells: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    frame = pl.Series("c", cells, dtype=pl.UInt64).to_frame()
    return frame.select(plh3.cell_to_parent("c", resolution)).to_series().to_numpy().astype(np.uint64)


def _counts(cells: npt.NDArray[np.uint64], value: int) -> pl.DataFrame:
    return pl.DataFrame({"cell": pl.Series(cells, dtype=pl.UInt64),
                         "count": pl.Series(np.full(cells.size, value), dtype=pl.Int64)})


def _tree_counts(fine: npt.NDArray[np.uint64], lo: int, hi: int) -> pl.DataFrame:
    """Persons per node at every resolution lo..hi, one person per fine cell entry."""
    frame = pl.Series("c", fine, dtype=pl.UInt64).to_frame()
    parts = [frame.select(plh3.cell_to_parent("c", r).alias("cell")) for r in range(lo, hi + 1)]
    return pl.concat(parts).group_by("cell").agg(pl.len().cast(pl.Int64).alias("count"))


# -- parameters --------------------------------------------------------------------------

def test_lambda_and_delta_follow_privtree() -> None:
    p = TreeParams(min_resolution=4, max_resolution=8, epsilon=1.0)
    assert p.lam == pytest.approx(13 / 6)  # m_t·(2β−1)/((β−1)·ε), β = 7
    assert p.delta == math.ceil(13 / 6 * math.log(7)) == 5
    assert isinstance(p.delta, int)
    q = TreeParams(min_resolution=4, max_resolution=8, epsilon=0.5, cells_per_person=3)
    assert q.lam == pytest.approx(3 * 13 / 6 / 0.5)
    assert q.delta >= q.lam * math.log(7) and q.delta - 1 < q.lam * math.log(7)
    assert math.exp(-q.delta / q.lam) <= 1 / 7  # what the proof needs of δ
    assert p.as_dict()["lambda"] == p.lam and p.as_dict()["delta"] == 5


@pytest.mark.parametrize("kwargs", [
    {"min_resolution": 6, "max_resolution": 5},
    {"epsilon": 0.0}, {"epsilon": -1.0}, {"epsilon": math.nan}, {"epsilon": math.inf}, {"epsilon": 25.0},
    {"min_resolution": -1}, {"max_resolution": 16}, {"min_resolution": 4.0},
    {"min_resolution": True}, {"cells_per_person": 0}, {"cells_per_person": 65},
    {"theta": -1}, {"theta": 2.5}, {"fanout": 4},
])
def test_bad_parameters_are_config_errors(kwargs: dict[str, Any]) -> None:
    base: dict[str, Any] = {"min_resolution": 4, "max_resolution": 8, "epsilon": 1.0, "theta": 10}
    with pytest.raises(ConfigError):
        TreeParams(**{**base, **kwargs})


# -- the spec of one level: noise of scale λ, cost ε_tree whatever the depth --------------

def test_level_spec_noise_is_opendp_laplace_of_scale_lambda_and_costs_the_tree() -> None:
    cells = _roots()
    for depth in (1, 4, 11):
        p = TreeParams(min_resolution=4, max_resolution=4 + depth, epsilon=0.3, cells_per_person=2, theta=7)
        s = level_spec(p, cells, 5)
        assert s.noise.mechanism == "laplace" and s.noise.scale == p.lam
        assert s.cost == PrivacyCost(Fraction(3, 10)), "the whole tree's ε, not a per-level share"
        assert s.threshold == p.delta + 1
        assert isinstance(s.keys, PublicKeys) and s.keys.n_keys == cells.size and s.selection_delta == 0
        # OpenDP's own map: L1 = m_t at scale λ costs ε·(β−1)/(2β−1) per decision
        spent = float(s.noise.measurement().map(2))
        assert spent <= p.split_epsilon * (1 + 1e-12)
        assert spent == pytest.approx(0.3 * 6 / 13)


# -- the split rule ------------------------------------------------------------------------

def _no_noise(monkeypatch: pytest.MonkeyPatch) -> list[tuple[TableSpec, npt.NDArray[np.int64]]]:
    """Replace noising.sample by a noiseless keep-if-≥-threshold, recording its calls."""
    calls: list[tuple[TableSpec, npt.NDArray[np.int64]]] = []

    def exact_sample(spec: TableSpec, counts: npt.NDArray[np.int64], labels: Any = None
                     ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        calls.append((spec, counts.copy()))
        idx = np.flatnonzero(counts >= spec.threshold).astype(np.int64)
        return idx, counts[idx]

    monkeypatch.setattr(noising, "sample", exact_sample)
    return calls


def test_split_iff_biased_count_exceeds_theta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without noise the rule is b > θ with b = max(c − depth·δ, θ − δ): counts are shifted
    by −(θ − δ) (≥ 0) and compared with δ + 1."""
    calls = _no_noise(monkeypatch)
    p = TreeParams(min_resolution=5, max_resolution=7, epsilon=1.0, theta=20)
    d = p.delta
    roots = _roots()[:3]
    kids = _descendants(roots[:1], 6)
    counts = pl.concat([
        _counts(roots, 0).with_columns(count=pl.Series([p.theta + 1, p.theta, 0], dtype=pl.Int64)),
        # depth 1: split iff c − δ > θ
        _counts(kids[:3], 0).with_columns(count=pl.Series([p.theta + d + 1, p.theta + d, 1], dtype=pl.Int64)),
    ])
    part = partition(roots, counts, p)
    assert [c.tolist() for _, c in calls] == [
        [d + 1, d, 0],                # root counts 21, 20, 0 → shifted by −(θ−δ), floored at 0
        [d + 1, d, 0, 0, 0, 0, 0],   # the first root's children at depth 1: c − δ − (θ − δ)
    ]
    assert part.splits_per_level == (1, 1)
    assert set(part.leaves.tolist()) == ({*roots[1:].tolist()} | {*kids[1:].tolist()}
                                         | {*_descendants(kids[:1], 7).tolist()})
    assert calls[0][0].threshold == d + 1


def test_zero_counts_are_floored_whatever_theta(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty node's split chance is P(Z > δ), the same for every θ ≥ δ: PrivTree's floor."""
    calls = _no_noise(monkeypatch)
    for theta in (5, 50, 10**6):  # δ = 5 at ε = 1
        p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0, theta=theta)
        partition(_roots(), _counts(_roots()[:0], 0), p)
    assert [c.tolist() for _, c in calls] == [[0] * 7] * 3
    delta = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0).delta
    assert {s.threshold for s, _ in calls} == {delta + 1}


# -- extremes with OpenDP noise --------------------------------------------------------------

def test_huge_counts_split_down_to_max_resolution() -> None:
    """c = 10⁹ everywhere under one root: P(a node is not split) = P(Z ≤ δ − 10⁹ + …) = 0 in
    double precision, so the root's leaves are exactly its 49 grandchildren."""
    p = TreeParams(min_resolution=5, max_resolution=7, epsilon=1.0, theta=50)
    root = _roots()[:1]
    nodes = np.concatenate([root, _descendants(root, 6), _descendants(root, 7)])
    part = partition(root, _counts(nodes, 10**9), p)
    assert part.leaves.tolist() == _descendants(root, 7).tolist()
    assert set(part.resolutions.tolist()) == {7}
    assert part.splits_per_level == (1, 7)


def test_zero_counts_stay_whole_at_high_epsilon() -> None:
    """Empty roots at ε = 20: λ = 13/120, δ = 1, a split needs Z ≥ 2, P = α²/(1 + α) with
    α = e^{−1/λ} ≈ 9.8e−5, i.e. 9.6e−9 per root; for 7 roots the chance that this test
    fails is < 7e−8. (No ε ≤ 20 gets an empty node below 1e−12: PrivTree's bias floor
    θ − δ makes P(split) = P(Z > δ) ≥ about 1/(2β·e^{1/λ}) at every θ — by design.) The root
    with 10⁹ persons splits down to res 7 at the same time."""
    p = TreeParams(min_resolution=5, max_resolution=7, epsilon=20.0, theta=1000)
    assert p.delta == 1
    alpha = math.exp(-1 / p.lam)
    assert 7 * alpha**2 / (1 + alpha) < 1e-7
    roots = _roots()
    busy = roots[3:4]
    nodes = np.concatenate([busy, _descendants(busy, 6), _descendants(busy, 7)])
    part = partition(roots, _counts(nodes, 10**9), p)
    assert set(part.leaves.tolist()) == {*np.delete(roots, 3).tolist()} | {*_descendants(busy, 7).tolist()}


# -- structure: a partition of the roots, whatever the noise ------------------------------

def _check_partition(part: Partition, roots: npt.NDArray[np.uint64]) -> None:
    p = part.params
    leaves, res = part.leaves, part.resolutions
    assert leaves.dtype == np.uint64 and res.dtype == np.int8 and leaves.size == res.size
    assert bool((leaves[1:] > leaves[:-1]).all()), "sorted and distinct"
    real = pl.Series(leaves, dtype=pl.UInt64).to_frame("c").select(plh3.get_resolution("c")).to_series()
    assert real.to_list() == res.tolist()
    assert set(_parents(leaves, p.min_resolution).tolist()) <= set(roots.tolist())
    # no leaf is another's ancestor
    leaf_set = set(leaves.tolist())
    for r in range(p.min_resolution, p.max_resolution):
        finer = leaves[res > r]
        assert not leaf_set & set(_parents(finer, r).tolist())
    # together they cover every fine cell under the roots exactly once (7 children each)
    covered = sum(7 ** (p.max_resolution - int(r)) for r in res)
    assert covered == roots.size * 7 ** (p.max_resolution - p.min_resolution)
    # leaf_of: each fine cell has exactly one leaf, and that leaf is its ancestor
    fine = _descendants(roots, p.max_resolution)
    of = part.leaf_of(fine)
    assert (of != 0).all()
    r_of = res[np.searchsorted(leaves, of)]
    for r in np.unique(r_of).tolist():
        at = r_of == r
        assert (_parents(fine[at], r) == of[at]).all()
    frame = part.as_frame()
    assert frame.schema == pl.Schema({"cell": pl.UInt64, "resolution": pl.Int8})
    assert frame["cell"].to_numpy().tolist() == leaves.tolist()


def test_leaves_partition_the_roots_for_any_noise() -> None:
    """A synthetic crowd over 7 roots (res 5 → 8) at ε = 1: whatever the noise draws, the
    leaves tile the roots without overlap and leaf_of finds exactly one leaf per fine cell."""
    roots = _roots()
    fine_all = _descendants(roots, 8)
    rng = np.random.default_rng(12)  # the data, not the noise
    crowd = np.concatenate([fine_all[rng.integers(0, 300, 4000)],
                            fine_all[rng.integers(0, fine_all.size, 300)]])
    counts = _tree_counts(crowd, 5, 8)
    p = TreeParams(min_resolution=5, max_resolution=8, epsilon=1.0, theta=30)
    seen_mixed = False
    for _ in range(5):
        part = partition(roots, counts, p)
        _check_partition(part, roots)
        seen_mixed |= len(part.leaves_per_resolution) > 1
        assert part.cost == PrivacyCost(Fraction(1))
        assert len(part.splits_per_level) == 3
    assert seen_mixed, "4000 persons in 300 fine cells must split some root"


def test_leaf_of_outside_the_roots_is_zero_and_wrong_resolution_is_refused() -> None:
    roots = _roots()
    p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0, theta=10)
    part = partition(roots[:1], _counts(roots[:0], 0), p)
    inside, outside = _descendants(roots[:1], 6), _descendants(roots[1:2], 6)
    assert (part.leaf_of(inside) != 0).all() and (part.leaf_of(outside) == 0).all()
    with pytest.raises(InputError, match="position 1") as err:
        part.leaf_of(np.array([inside[0], roots[0]], dtype=np.uint64))
    assert str(roots[0]) not in str(err.value), "no cell value in the message"
    with pytest.raises(InputError):
        part.leaf_of(np.array([12345], dtype=np.uint64))


def test_max_equal_min_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _no_noise(monkeypatch)
    roots = _roots()
    p = TreeParams(min_resolution=5, max_resolution=5, epsilon=1.0)
    part = partition(roots, _counts(roots, 10**9), p)
    assert calls == [] and part.leaves.tolist() == roots.tolist() and part.splits_per_level == ()


# -- one draw per level, through noising.sample ----------------------------------------------

def test_one_sample_call_per_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """The spy sees one noising.sample call per level (the whole frontier at once), each with
    that level's cells as public keys and OpenDP noise of scale λ; none at max_resolution."""
    real = noising.sample
    seen: list[tuple[TableSpec, int]] = []

    def spy(spec: TableSpec, counts: npt.NDArray[np.int64], labels: Any = None) -> Any:
        seen.append((spec, int(counts.size)))
        return real(spec, counts, labels)

    monkeypatch.setattr(noising, "sample", spy)
    roots = _roots()
    busy = roots[:2]
    nodes = np.concatenate([busy, _descendants(busy, 6), _descendants(busy, 7)])
    p = TreeParams(min_resolution=5, max_resolution=8, epsilon=1.0, theta=50)
    part = partition(roots, _counts(nodes, 10**9), p)
    assert [s.name for s, _ in seen] == ["tree_res5", "tree_res6", "tree_res7"]
    assert [n for _, n in seen] == [7, 7 * part.splits_per_level[0], 7 * part.splits_per_level[1]]
    assert part.splits_per_level[0] >= 2 and part.splits_per_level[1] >= 14  # the busy ones all split
    for s, n in seen:
        assert isinstance(s.keys, PublicKeys) and s.keys.n_keys == n
        assert s.noise.scale == p.lam and s.cost == part.cost


def test_the_tree_draws_noise_only_through_noising_sample() -> None:
    """No sampler is called from privmob.privacy.tree (the AST check of test_noising covers
    the package; this names the new module explicitly)."""
    from tests.unit.test_noising import SAMPLERS, _calls

    calls = _calls()
    assert calls == SAMPLERS
    assert not any(mod == "privacy.tree" for callers in calls.values() for mod, _ in callers)


# -- inputs ----------------------------------------------------------------------------------

def test_bad_roots_and_counts_are_refused_without_values() -> None:
    p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0)
    roots = _roots()
    none = _counts(roots[:0], 0)
    with pytest.raises(ConfigError, match="sorted"):
        partition(roots[::-1].copy(), none, p)
    with pytest.raises(ConfigError, match="uint64"):
        partition(roots.astype(np.int64), none, p)
    with pytest.raises(ConfigError, match="position 0") as err:
        partition(_descendants(roots[:1], 6)[:1], none, p)
    assert str(_descendants(roots[:1], 6)[0]) not in str(err.value)
    with pytest.raises(SchemaError):
        partition(roots, none.rename({"count": "n"}), p)
    with pytest.raises(SchemaError):
        partition(roots, none.with_columns(pl.col("cell").cast(pl.String)), p)


def test_duplicate_and_unrelated_count_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Duplicate rows of a node add up; nodes outside the roots are ignored."""
    calls = _no_noise(monkeypatch)
    p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0, theta=10)
    roots = _roots()
    counts = pl.concat([_counts(roots[:1], 6), _counts(roots[:1], 6), _counts(_roots(3)[-1:], 99)])
    partition(roots[:2], counts, p)
    floor = p.theta - p.delta
    assert calls[0][1].tolist() == [max(12, floor) - floor, 0]


def test_noise_model_is_cached_per_parameters() -> None:
    p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0)
    assert level_spec(p, _roots(), 5).noise is level_spec(p, _roots()[:1], 5).noise
    assert tree._noise(p) is tree._noise(TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0))


def test_a_plan_spec_can_stand_for_the_roots() -> None:
    """pipeline/run.py hands the plan's partition spec: its cells are the roots, and a spec
    whose noise or cost disagrees with the parameters is refused."""
    p = TreeParams(min_resolution=5, max_resolution=6, epsilon=1.0, theta=10)
    roots = _roots()
    good = level_spec(p, roots, 5)
    part = partition(good, _counts(roots, 10**9), p)
    assert part.leaves.tolist() == _descendants(roots, 6).tolist() and part.bias == p.delta
    other = TreeParams(min_resolution=5, max_resolution=6, epsilon=0.5, theta=10)
    with pytest.raises(ConfigError, match="does not match"):
        partition(level_spec(other, roots, 5), _counts(roots, 0), p)
