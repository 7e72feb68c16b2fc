"""What each released table is, fixed before any data is read — and the budget split.

A release publishes several tables: occupancy (distinct persons per cell and window), the
same at coarser parent resolutions, and origin–destination flows. Each is one
:class:`TableSpec`: where its keys come from (a public key set, or OpenDP's noise threshold),
its sensitivity, the noise OpenDP calibrated for its share of the budget, its release
threshold (and the δ that threshold costs) and its :class:`~privmob.privacy.accountant.PrivacyCost`.
:func:`table_specs` is the one place the job's budget is split among the tables; their
composed cost is what a release is charged. A new table (the adaptive-resolution tree) is a
new spec here; :func:`privmob.privacy.noising.noise_table` releases every spec the same way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.config import JobConfig, PrivacyConfig
from privmob.movement.flows import n_windows as flows_windows
from privmob.privacy.accountant import PrivacyCost, compose, exact
from privmob.privacy.mechanism import (
    NoiseModel,
    Sensitivity,
    calibrate,
    rho_to_epsilon,
    threshold_for,
)

if TYPE_CHECKING:
    from privmob.movement.flows import Units

__all__ = ["AdaptiveKeys", "PairSensitivity", "PublicKeys", "TableSpec", "TableSpecs", "ThresholdKeys",
           "counts_privacy", "min_count_floor", "parent_cells", "public_threshold", "table_specs",
           "with_leaves"]

#: H3's aperture: every cell has seven children (PrivTree's fanout β).
FANOUT = 7
#: Automatic θ = SPLIT_FACTOR · β · (release threshold): split a cell when its seven children
#: could each hold, on average, 2.5 times what the release can publish. On GeoLife at ε = 1
#: (1,555 and 3 × ~500 persons, max_pairs 5) 2.5 gave recall 0.84–0.89 with no spurious cell;
#: 2 gave the same recall with 2–3% spurious cells (benchmarks/bench_geolife_utility.py).
SPLIT_FACTOR = 2.5


@dataclass(frozen=True, eq=False)
class PublicKeys:
    """A data-independent key set: every combination of the axes' values, all noised.

    Key ``i`` is the mixed-radix number over ``axes`` (first axis most significant), so
    occupancy keys are cell-major: ``(cells[i // w], i % w)``. Axis values of a numeric axis
    are sorted; a string axis (unit names) is looked up by position.
    """

    axes: tuple[tuple[str, npt.NDArray[np.generic]], ...]
    label: str  # the manifest's ``keys``: the boundary's digest (and unit property)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.axes)

    @property
    def n_keys(self) -> int:
        n = 1
        for _, values in self.axes:
            n *= int(values.size)
        return n


@dataclass(frozen=True)
class ThresholdKeys:
    """Keys seen in the data, published only where the noisy count clears OpenDP's threshold."""

    columns: tuple[str, ...]
    label: str = "threshold"


@dataclass(frozen=True, eq=False)
class AdaptiveKeys:
    """Keys an adaptive partition decides: its leaves × every window.

    The partition is drawn with its own share of the budget before the counts are noised
    (:mod:`privmob.privacy.tree`), from the public ``roots``; once drawn it is public, and
    :func:`with_leaves` turns this into :class:`PublicKeys` over the leaves.
    """

    roots: npt.NDArray[np.uint64]
    windows: npt.NDArray[np.int64]
    label: str
    columns: tuple[str, ...] = ("cell", "window")


@dataclass(frozen=True, eq=False)
class TableSpec:
    """One released table: its keys, noise, threshold and cost (see the module docstring).

    ``selection_delta`` is the δ reserved for choosing data-dependent keys (0 with public
    keys; part of ``cost``); ``threshold_delta`` is what the threshold actually costs by
    OpenDP's map (≤ ``selection_delta``), stated in the manifest.
    """

    name: str  # the manifest's budget_split entry: occupancy, occupancy_res6, flows, partition
    keys: PublicKeys | ThresholdKeys | AdaptiveKeys
    noise: NoiseModel
    threshold: int
    selection_delta: float
    threshold_delta: float
    cost: PrivacyCost

    @property
    def public(self) -> bool:
        return isinstance(self.keys, PublicKeys)

    @property
    def sensitivity(self) -> Sensitivity:
        return self.noise.sensitivity

    @property
    def n_keys(self) -> int | None:
        return self.keys.n_keys if isinstance(self.keys, PublicKeys) else None


@dataclass(frozen=True, eq=False)
class TableSpecs:
    """Every table of a release, in release order: the adaptive partition (if any),
    occupancy, its parent levels, flows."""

    occupancy: TableSpec
    levels: dict[int, TableSpec]
    flows: TableSpec | None
    partition: TableSpec | None = None

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return (*(() if self.partition is None else (self.partition,)), self.occupancy,
                *self.levels.values(), *(() if self.flows is None else (self.flows,)))

    @property
    def cost(self) -> PrivacyCost:
        """What a release spends, at most: the tables' costs composed — in zCDP (total ρ,
        one conversion by OpenDP) when that is tighter than adding their ε, which
        ``composition`` states (:func:`privmob.privacy.accountant.compose`)."""
        return compose([spec.cost for spec in self.tables], rho_to_epsilon)


def selection_delta(privacy: PrivacyConfig, public: bool) -> float:
    """δ set aside for selecting data-dependent keys: all of δ for Laplace (pure ε
    otherwise), half for Gaussian (the other half converts ρ to (ε, δ)); 0 for public keys."""
    if public:
        return 0.0
    return privacy.delta if privacy.mechanism == "laplace" else privacy.delta / 2


def min_count_floor(noise: NoiseModel, privacy: PrivacyConfig) -> int:
    """``min_count`` as it holds under noise (ADR 0002): the lowest threshold at which a key
    with ``min_count - 1`` persons is published at most ``max_below_min_rate`` of the time.
    Without it a floor of 10 publishes a cell of 9 whenever the noise is ≥ 1 — at a small
    key group most published cells were such (GeoLife, ~220 persons a day: 20% of them)."""
    below = privacy.min_count - 1 + noise.spurious_threshold(privacy.max_below_min_rate)
    return max(privacy.min_count, below)


def public_threshold(noise: NoiseModel, privacy: PrivacyConfig, n_keys: int) -> int:
    """The release threshold of ``n_keys`` public keys (ADR 0002): at least
    :func:`min_count_floor`, and the lowest that keeps the noise alone from publishing more
    than ``max_spurious_cells`` of them in expectation — or, when the job sets
    ``max_spurious_rate``, any one of them more often than that."""
    rate = (privacy.max_spurious_rate if privacy.max_spurious_rate is not None
            else privacy.max_spurious_cells / max(n_keys, 1))
    return max(min_count_floor(noise, privacy), noise.spurious_threshold(rate))


def spec(name: str, privacy: PrivacyConfig, sensitivity: Sensitivity,
         keys: PublicKeys | ThresholdKeys) -> TableSpec:
    """Calibrate one table: noise for ``privacy``'s share, the threshold that keeps spurious
    keys rare (public keys: :func:`public_threshold`; threshold keys: a per-key rate, and as
    high as OpenDP needs for the selection δ), and the cost."""
    public = isinstance(keys, PublicKeys)
    sel = selection_delta(privacy, public)
    noise = calibrate(privacy, sensitivity, threshold_delta=sel)
    if isinstance(keys, PublicKeys):
        threshold, used = public_threshold(noise, privacy, keys.n_keys), 0.0
    else:
        floor = max(min_count_floor(noise, privacy), noise.spurious_threshold(privacy.spurious_rate))
        threshold, used = threshold_for(noise, floor, sel)
    base, selection = noise.cost, exact(sel)
    cost = PrivacyCost(base.epsilon, base.delta + selection, base.rho, selection)
    return TableSpec(name, keys, noise, threshold, sel, used, cost)


def parent_cells(cells: npt.NDArray[np.uint64], resolution: int) -> npt.NDArray[np.uint64]:
    """The distinct parents of ``cells`` at ``resolution``, sorted: a level's public keys."""
    parents = pl.Series(cells, dtype=pl.UInt64).to_frame("c").select(
        plh3.cell_to_parent("c", resolution)).to_series().unique().sort()
    return parents.to_numpy().astype(np.uint64)


def table_specs(config: JobConfig, *, key_cells: npt.NDArray[np.uint64] | None = None,
                key_label: str = "threshold", units: Units | None = None) -> TableSpecs:
    """The budget split: every table of the job with its share of ε/ρ/δ, calibrated.

    ``key_cells`` are the public cells of the boundary (None: threshold keys) and
    ``key_label`` their manifest label; ``units`` the flows units when ``[flows] units =
    "boundary"``. Occupancy spends ``[privacy]``; each parent level ``parent_epsilon`` with
    the occupancy bounds (a person's ≤ k kept cells in a window touch ≤ k parents, each by
    one); flows spend ``[flows] epsilon`` (or ``rho``) with their own trip bounds. An
    adaptive job's levels count kept pairs under each parent instead (the sum of its
    leaves, made consistent with them on release): ``parent_epsilon`` each, with
    :class:`PairSensitivity` (:func:`_adaptive_levels`).
    """
    p, grid = config.privacy, config.grid
    windows = np.arange(config.n_windows, dtype=np.int64)
    sens = Sensitivity(p.max_cells_per_window, min(p.max_windows, config.n_windows))

    def cell_keys(cells: npt.NDArray[np.uint64] | None) -> PublicKeys | ThresholdKeys:
        if cells is None:
            return ThresholdKeys(("cell", "window"))
        return PublicKeys((("cell", cells), ("window", windows)), key_label)

    partition = None
    if config.adaptive is not None and key_cells is not None:
        occupancy, partition = _adaptive(config, key_cells, windows, key_label)
        levels = _adaptive_levels(config, key_cells, windows, key_label)
    else:
        occupancy = spec("occupancy", p, sens, cell_keys(key_cells))
        level_privacy = dataclasses.replace(p, epsilon=grid.parent_epsilon, rho=None)
        levels = {res: spec(f"occupancy_res{res}", level_privacy, sens,
                            cell_keys(None if key_cells is None else parent_cells(key_cells, res)))
                  for res in grid.parent_resolutions}
    fc, flows = config.flows, None
    if fc is not None:
        fp = dataclasses.replace(
            p, epsilon=fc.epsilon, rho=fc.rho if p.mechanism == "gaussian" else None,
            max_cells_per_window=fc.max_trips_per_window, max_windows=fc.max_windows,
            min_count=fc.min_count or p.min_count)
        n_win = flows_windows(config)
        keys: PublicKeys | ThresholdKeys = ThresholdKeys(("origin", "destination", "window"))
        if units is not None:
            names = np.array(units.names, dtype=object)
            keys = PublicKeys((("origin", names), ("destination", names),
                               ("window", np.arange(n_win, dtype=np.int64))), units.key_label)
        flows = spec("flows", fp, Sensitivity(fc.max_trips_per_window, min(fc.max_windows, n_win)), keys)
    return TableSpecs(occupancy, levels, flows, partition)


def counts_privacy(config: JobConfig) -> PrivacyConfig:
    """What an adaptive release's counts spend: ``[privacy]`` less the partition's
    ``tree_share`` of ε, pure (no ρ). plan()'s mechanism choice calibrates with it too, so
    the threshold it compares is the one the release gets."""
    a, p = config.adaptive, config.privacy
    assert a is not None
    return dataclasses.replace(p, epsilon=p.epsilon - p.epsilon * a.tree_share, rho=None)


def _adaptive(config: JobConfig, key_cells: npt.NDArray[np.uint64], windows: npt.NDArray[np.int64],
              key_label: str) -> tuple[TableSpec, TableSpec]:
    """The adaptive occupancy table and its partition, splitting ``[privacy] epsilon``.

    The partition (PrivTree, docs/adr/0007) spends ``tree_share`` of ε as pure ε-DP,
    whatever its depth: discrete Laplace of scale λ = m·(2β−1)/((β−1)·ε_tree) on biased
    counts, m = ``cells_per_person``. The counts spend the rest with L1 = ``max_pairs``.
    Their threshold is set for the nominal key set (the roots × windows) here and again
    for the drawn leaves by :func:`with_leaves`.
    """
    a, p = config.adaptive, config.privacy
    assert a is not None
    roots = parent_cells(key_cells, a.min_resolution)
    eps_tree = p.epsilon * a.tree_share
    tree_privacy = dataclasses.replace(p, mechanism="laplace", rho=None,
                                       epsilon=eps_tree * (FANOUT - 1) / (2 * FANOUT - 1))
    tree_noise = calibrate(tree_privacy, Sensitivity(a.cells_per_person, 1))
    nominal = PublicKeys((("cell", roots), ("window", windows)), key_label)
    counts = spec("occupancy", counts_privacy(config), Sensitivity(a.max_pairs, 1), nominal)
    occupancy = dataclasses.replace(counts, keys=AdaptiveKeys(roots, windows, key_label))
    theta = a.split_threshold or math.ceil(SPLIT_FACTOR * FANOUT * occupancy.threshold)
    tree_cost = PrivacyCost(exact(eps_tree))
    partition = TableSpec("partition", PublicKeys((("cell", roots),), key_label), tree_noise, theta,
                          0.0, 0.0, tree_cost)
    return occupancy, partition


@dataclass(frozen=True)
class PairSensitivity(Sensitivity):
    """The sensitivity of counts of a person's kept pairs under coarser cells (an adaptive
    release's parent levels, :func:`privmob.stages.hierarchy.level_pair_counts`).

    A person has at most ``cells_per_window · windows`` = ``max_pairs`` kept (leaf, window)
    pairs; each lands under one parent, so L1 = ``max_pairs`` — but they may all land under
    the same parent and window, so one key can move by ``max_pairs``: L2 = L∞ = ``max_pairs``,
    not the √ of distinct-person counts.
    """

    @property
    def l2(self) -> float:
        return float(self.l1)


def _adaptive_levels(config: JobConfig, key_cells: npt.NDArray[np.uint64], windows: npt.NDArray[np.int64],
                     key_label: str) -> dict[int, TableSpec]:
    """The coarser totals of an adaptive release, one table per ``[grid] parent_resolutions``.

    Each counts kept pairs per (parent, window) — the sum of its leaves' counts — over the
    public keys (the boundary's cells at that resolution × every window), with the
    adaptive counts' mechanism, :class:`PairSensitivity` (``max_pairs``) and its own
    ``parent_epsilon`` (composed with the other tables like any level). Its threshold
    follows the leaves' rule: ≤ ``max_spurious_cells`` expected spurious keys in the table.
    """
    a, p = config.adaptive, config.privacy
    assert a is not None
    privacy = dataclasses.replace(p, epsilon=config.grid.parent_epsilon, rho=None)
    return {res: spec(f"occupancy_res{res}", privacy, PairSensitivity(a.max_pairs, 1),
                      PublicKeys((("cell", parent_cells(key_cells, res)), ("window", windows)), key_label))
            for res in config.grid.parent_resolutions}


def with_leaves(spec: TableSpec, leaves: npt.NDArray[np.uint64], config: JobConfig) -> TableSpec:
    """The adaptive occupancy spec over a drawn partition: public keys leaves × windows, and
    the threshold for that many keys. Post-processing of the partition: costs nothing more."""
    keys = spec.keys
    assert isinstance(keys, AdaptiveKeys)
    assert config.adaptive is not None
    public = PublicKeys((("cell", np.sort(leaves).astype(np.uint64)), ("window", keys.windows)), keys.label)
    return dataclasses.replace(spec, keys=public, threshold=public_threshold(spec.noise, config.privacy,
                                                                             public.n_keys))
