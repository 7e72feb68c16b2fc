"""PrivTree over the H3 hierarchy: a differentially private partition into mixed-resolution cells.

Fixed-resolution keys are too thin for person-level noise on small key groups (issue 12):
every (cell, window) holds a handful of persons and the noise drowns them. PrivTree (Zhang,
Xiao, Xie, SIGMOD 2016) splits a cell into its children only where its noisy count supports
it, so dense areas come out fine and sparse ones coarse, at a cost that does not grow with
the depth of the tree (docs/adr/0007).

From the public roots (a boundary's cells at ``min_resolution``), level by level: the
biased count of a node at depth ``d`` is ``b = max(c − d·δ, θ − δ)``; the node is split
into its H3 children iff ``b + Z > θ`` with Z discrete Laplace of scale λ, and never at
``max_resolution``. With ``λ = m_t·(2β − 1)/((β − 1)·ε)`` and ``δ = ⌈λ·ln β⌉`` the whole
partition is ε-DP when a person changes node counts by at most one each, on at most
``m_t`` root-to-leaf paths. Each level's decisions are one draw through
:func:`privmob.privacy.noising.sample` (a :class:`~privmob.privacy.tablespec.TableSpec`
over the level's cells), the only place privmob draws noise.

The output (the leaves) is public: later tables use it as their public key set.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.config import PrivacyConfig
from privmob.errors import ConfigError, InputError, SchemaError
from privmob.privacy import noising
from privmob.privacy.accountant import PrivacyCost, exact
from privmob.privacy.mechanism import NoiseModel, Sensitivity, calibrate
from privmob.privacy.tablespec import FANOUT, PublicKeys, TableSpec

__all__ = ["H3_FANOUT", "Partition", "TreeParams", "level_spec", "partition"]

#: Children of an H3 cell (aperture 7; the 12 pentagons have 6, which only helps).
H3_FANOUT = FANOUT


def _is_int(x: object) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


@dataclass(frozen=True, kw_only=True)
class TreeParams:
    """PrivTree's parameters: resolutions, ε of the whole tree, m_t, θ and the fanout β.

    ``lam`` (λ, the noise scale) and ``delta`` (δ, the per-level bias, an integer rounded
    up so the proof's ``e^{−δ/λ} ≤ 1/β`` still holds) follow from them.
    """

    min_resolution: int
    max_resolution: int
    epsilon: float
    cells_per_person: int = 1
    theta: int = 0
    fanout: int = H3_FANOUT

    def __post_init__(self) -> None:
        for name in ("min_resolution", "max_resolution"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= 15:
                raise ConfigError(f"tree {name} must be an H3 resolution from 0 to 15")
        if self.max_resolution < self.min_resolution:
            raise ConfigError("tree max_resolution must be at least min_resolution (the roots' "
                              "resolution); the tree only splits cells into finer ones")
        if not isinstance(self.epsilon, float | int) or isinstance(self.epsilon, bool) \
                or not math.isfinite(self.epsilon) or not 0 < self.epsilon <= 20:
            raise ConfigError("tree epsilon must be a number in (0, 20]: the ε the whole "
                              "partition spends")
        if not _is_int(self.cells_per_person) or not 1 <= self.cells_per_person <= 64:
            raise ConfigError("tree cells_per_person must be an integer from 1 to 64")
        if not _is_int(self.theta) or not 0 <= self.theta <= 10**9:
            raise ConfigError("tree theta must be an integer from 0 to 10⁹ (persons)")
        if self.fanout != H3_FANOUT:
            raise ConfigError(f"tree fanout must be {H3_FANOUT}: an H3 cell has seven children")

    @property
    def split_epsilon(self) -> float:
        """ε·(β − 1)/(2β − 1): the per-decision ε whose Laplace scale for L1 = m_t is λ."""
        beta = self.fanout
        return self.epsilon * (beta - 1) / (2 * beta - 1)

    @property
    def lam(self) -> float:
        """λ = m_t·(2β − 1)/((β − 1)·ε), the discrete Laplace scale of every split decision."""
        return self.cells_per_person / self.split_epsilon

    @property
    def delta(self) -> int:
        """δ = ⌈λ·ln β⌉: the bias per level; rounding up only strengthens the bound."""
        d = math.ceil(self.lam * math.log(self.fanout) * (1 + 1e-12))  # never below λ·ln β
        return int(d)

    def as_dict(self) -> dict[str, Any]:
        """The public parameters, for a manifest."""
        return {"min_resolution": self.min_resolution, "max_resolution": self.max_resolution,
                "epsilon": float(self.epsilon), "cells_per_person": self.cells_per_person,
                "theta": int(self.theta), "fanout": self.fanout, "lambda": self.lam,
                "delta": self.delta}


@functools.lru_cache(maxsize=64)
def _noise(params: TreeParams) -> NoiseModel:
    """OpenDP's discrete Laplace of scale λ (calibrated for L1 = m_t at ε·(β−1)/(2β−1))."""
    privacy = PrivacyConfig(mechanism="laplace", epsilon=params.split_epsilon)
    model = calibrate(privacy, Sensitivity(params.cells_per_person, 1))
    assert model.scale == params.lam, "the split noise must have scale λ exactly"
    return model


def level_spec(params: TreeParams, cells: npt.NDArray[np.uint64], resolution: int) -> TableSpec:
    """The split decisions of one level as a table: every cell of the frontier is a public
    key, noised with scale λ; counts are shifted by −(θ − δ), so keeping ``≥ δ + 1`` keeps
    exactly the cells with ``b + Z > θ``. Its cost is the whole tree's ε, whatever the depth
    (PrivTree's bound covers all levels together; levels are not composed)."""
    keys = PublicKeys((("cell", cells),), f"tree:res{resolution}")
    return TableSpec(f"tree_res{resolution}", keys, _noise(params), params.delta + 1, 0.0, 0.0,
                     PrivacyCost(exact(params.epsilon)))


@dataclass(frozen=True, eq=False)
class Partition:
    """The leaves of a PrivTree partition (public): sorted H3 cells of mixed resolution.

    ``splits_per_level[i]`` is how many cells at resolution ``min_resolution + i`` were split
    (one entry per level above ``max_resolution``; 0 once nothing is left to split).
    No leaf is another's ancestor and every fine cell under a root has exactly one leaf.
    """

    leaves: npt.NDArray[np.uint64]
    resolutions: npt.NDArray[np.int8]
    splits_per_level: tuple[int, ...]
    params: TreeParams

    @property
    def cost(self) -> PrivacyCost:
        """What the partition spends: ε_tree, pure, independent of its depth."""
        return PrivacyCost(exact(self.params.epsilon))

    @property
    def bias(self) -> int:
        """δ, the bias per level (the manifest's ``bias_per_level``)."""
        return self.params.delta

    @property
    def leaves_per_resolution(self) -> dict[int, int]:
        """Resolution → number of leaves at it (resolutions with none left out)."""
        res, n = np.unique(self.resolutions, return_counts=True)
        return {int(r): int(k) for r, k in zip(res, n, strict=True)}

    def as_frame(self) -> pl.DataFrame:
        """``cell`` (UInt64) and ``resolution`` (Int8), one row per leaf, sorted by cell."""
        return pl.DataFrame({"cell": pl.Series(self.leaves, dtype=pl.UInt64),
                             "resolution": pl.Series(self.resolutions, dtype=pl.Int8)})

    def leaf_of(self, cells: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        """The leaf holding each cell at ``max_resolution`` (0 for a cell under no root).

        One vectorised parent lookup per leaf resolution present (≤ 16), not per cell.
        """
        cells = np.asarray(cells, dtype=np.uint64)
        frame = pl.Series("c", cells, dtype=pl.UInt64).to_frame()
        res = frame.select(plh3.get_resolution("c")).to_series()
        wrong = (res.is_null() | (res != self.params.max_resolution)).arg_true()
        if wrong.len():
            raise InputError(f"leaf_of takes valid H3 cells at resolution {self.params.max_resolution}; "
                             f"{wrong.len()} are not (first at position {wrong[0]})")
        out = np.zeros(cells.size, dtype=np.uint64)
        hits = np.zeros(cells.size, dtype=np.int64)
        for r in np.unique(self.resolutions).tolist():
            at_r = self.leaves[self.resolutions == r]
            up = frame.select(plh3.cell_to_parent("c", r)).to_series().to_numpy().astype(np.uint64)
            found = _member(at_r, up)
            out[found] = up[found]
            hits += found
        assert int(hits.max(initial=0)) <= 1, "a cell under two leaves: the leaves overlap"
        return out


def _member(sorted_keys: npt.NDArray[np.uint64], values: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Which ``values`` are in ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(values.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), sorted_keys.size - 1)
    return np.asarray(sorted_keys[pos] == values)


def _lookup(keys: npt.NDArray[np.uint64], values: npt.NDArray[np.int64],
            cells: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """The count of each of ``cells`` (0 where ``keys`` has none)."""
    out = np.zeros(cells.size, dtype=np.int64)
    if keys.size:
        pos = np.minimum(np.searchsorted(keys, cells), keys.size - 1)
        hit = keys[pos] == cells
        out[hit] = values[pos[hit]]
    return out


def _children(cells: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    """All children of ``cells`` at ``resolution``, sorted."""
    frame = pl.Series("c", cells, dtype=pl.UInt64).to_frame()
    kids = frame.select(plh3.cell_to_children("c", resolution)).explode("c").to_series().sort()
    return kids.to_numpy().astype(np.uint64)


def _check_roots(roots: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    """Roots as a sorted, distinct uint64 array of valid cells at ``resolution``."""
    cells = np.asarray(roots)
    if cells.ndim != 1 or cells.dtype != np.uint64:
        raise ConfigError("tree roots must be a one-dimensional uint64 array of H3 cells")
    if cells.size > 1 and not bool((cells[1:] > cells[:-1]).all()):
        raise ConfigError("tree roots must be sorted and distinct (e.g. Boundary.cells)")
    res = pl.Series("c", cells, dtype=pl.UInt64).to_frame().select(plh3.get_resolution("c")).to_series()
    wrong = (res.is_null() | (res != resolution)).arg_true()
    if wrong.len():
        raise ConfigError(f"tree roots must be valid H3 cells at min_resolution {resolution}; "
                          f"{wrong.len()} are not (first at position {wrong[0]})")
    return cells


def _count_lookup(counts: pl.DataFrame) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Sorted node cells and their counts (duplicates summed, null cells dropped)."""
    if not isinstance(counts, pl.DataFrame) or not {"cell", "count"} <= set(counts.columns):
        raise SchemaError("tree counts must be a polars DataFrame with columns cell and count")
    if counts.schema["cell"] != pl.UInt64 or not counts.schema["count"].is_integer():
        raise SchemaError("tree counts: cell must be UInt64 (H3 cells) and count an integer column")
    agg = (counts.select("cell", pl.col("count").cast(pl.Int64)).drop_nulls()
           .group_by("cell").agg(pl.col("count").sum()).sort("cell"))
    return agg["cell"].to_numpy().astype(np.uint64), agg["count"].to_numpy().astype(np.int64)


def _spec_roots(spec: TableSpec, params: TreeParams) -> npt.NDArray[np.uint64]:
    """The roots of a plan's partition spec (public keys over one ``cell`` axis), once its
    noise and cost are checked to be the ones ``params`` implies."""
    keys = spec.keys
    if not isinstance(keys, PublicKeys) or keys.columns != ("cell",):
        raise ConfigError("a partition spec must have public keys over one 'cell' axis (the roots)")
    if spec.noise.mechanism != "laplace" or spec.noise.scale != params.lam \
            or spec.cost != PrivacyCost(exact(params.epsilon)):
        raise ConfigError("the partition spec's noise or cost does not match the tree parameters "
                          "(Laplace of scale λ, cost ε_tree): build both from the same config")
    return np.asarray(keys.axes[0][1])


def partition(roots: npt.NDArray[np.uint64] | TableSpec, counts: pl.DataFrame,
              params: TreeParams) -> Partition:
    """Draw a PrivTree partition of ``roots`` (public) from exact node counts (private).

    Parameters
    ----------
    roots
        Sorted, distinct uint64 H3 cells at ``params.min_resolution``: the public area (or
        a plan's partition spec whose public keys are those cells; its noise and cost must
        be what ``params`` implies).
    counts
        ``cell`` (UInt64) and ``count`` (Int64): distinct persons under each node, at any
        resolution from min to max (absent nodes count 0). Each node's count must be at
        most its parent's, and one person may change each by at most one on at most
        ``cells_per_person`` root-to-leaf paths: the sensitivity the tree is calibrated for.
    params
        The tree's parameters.

    Returns
    -------
    The leaves; the only noise is one :func:`noising.sample` call per level with cells to decide.
    """
    if isinstance(roots, TableSpec):
        roots = _spec_roots(roots, params)
    frontier = _check_roots(roots, params.min_resolution)
    keys, values = _count_lookup(counts)
    floor = params.theta - params.delta  # the bias never goes below θ − δ
    leaves: list[npt.NDArray[np.uint64]] = []
    levels: list[npt.NDArray[np.int8]] = []
    splits: list[int] = []
    res = params.min_resolution
    while frontier.size and res < params.max_resolution:
        depth = res - params.min_resolution
        biased = np.maximum(_lookup(keys, values, frontier) - depth * params.delta, floor)
        kept, _ = noising.sample(level_spec(params, frontier, res), (biased - floor).astype(np.int64))
        split = np.zeros(frontier.size, dtype=bool)
        split[kept] = True
        leaves.append(frontier[~split])
        levels.append(np.full(int((~split).sum()), res, dtype=np.int8))
        splits.append(int(kept.size))
        frontier = _children(frontier[split], res + 1)
        res += 1
    leaves.append(frontier)  # at max_resolution: never split
    levels.append(np.full(frontier.size, res, dtype=np.int8))
    splits += [0] * (params.max_resolution - params.min_resolution - len(splits))
    cells = np.concatenate(leaves).astype(np.uint64)
    order = np.argsort(cells, kind="stable")
    return Partition(cells[order], np.concatenate(levels)[order], tuple(splits), params)
