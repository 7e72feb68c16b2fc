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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob.config import JobConfig, PrivacyConfig
from privmob.movement.flows import n_windows as flows_windows
from privmob.privacy.accountant import PrivacyCost, exact
from privmob.privacy.mechanism import NoiseModel, Sensitivity, calibrate, threshold_for

if TYPE_CHECKING:
    from privmob.movement.flows import Units

__all__ = ["PublicKeys", "TableSpec", "TableSpecs", "ThresholdKeys", "parent_cells", "table_specs"]


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
class TableSpec:
    """One released table: its keys, noise, threshold and cost (see the module docstring).

    ``selection_delta`` is the δ reserved for choosing data-dependent keys (0 with public
    keys; part of ``cost``); ``threshold_delta`` is what the threshold actually costs by
    OpenDP's map (≤ ``selection_delta``), stated in the manifest.
    """

    name: str  # the manifest's budget_split entry: occupancy, occupancy_res6, flows
    keys: PublicKeys | ThresholdKeys
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
    """Every table of a release, in release order: occupancy, its parent levels, flows."""

    occupancy: TableSpec
    levels: dict[int, TableSpec]
    flows: TableSpec | None

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return (self.occupancy, *self.levels.values(), *(() if self.flows is None else (self.flows,)))

    @property
    def cost(self) -> PrivacyCost:
        """What a release spends, at most: the tables' costs composed."""
        total = self.occupancy.cost
        for spec in self.tables[1:]:
            total = total + spec.cost
        return total


def selection_delta(privacy: PrivacyConfig, public: bool) -> float:
    """δ set aside for selecting data-dependent keys: all of δ for Laplace (pure ε
    otherwise), half for Gaussian (the other half converts ρ to (ε, δ)); 0 for public keys."""
    if public:
        return 0.0
    return privacy.delta if privacy.mechanism == "laplace" else privacy.delta / 2


def spec(name: str, privacy: PrivacyConfig, sensitivity: Sensitivity,
         keys: PublicKeys | ThresholdKeys) -> TableSpec:
    """Calibrate one table: noise for ``privacy``'s share, the threshold that keeps spurious
    keys rarer than ``max_spurious_rate`` (≥ ``min_count``; with threshold keys, also as
    high as OpenDP needs for the selection δ), and the cost."""
    public = isinstance(keys, PublicKeys)
    sel = selection_delta(privacy, public)
    noise = calibrate(privacy, sensitivity, threshold_delta=sel)
    floor = max(privacy.min_count, noise.spurious_threshold(privacy.max_spurious_rate))
    threshold, used = (floor, 0.0) if public else threshold_for(noise, floor, sel)
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
    one); flows spend ``[flows] epsilon`` (or ``rho``) with their own trip bounds.
    """
    p, grid = config.privacy, config.grid
    windows = np.arange(config.n_windows, dtype=np.int64)
    sens = Sensitivity(p.max_cells_per_window, min(p.max_windows, config.n_windows))

    def cell_keys(cells: npt.NDArray[np.uint64] | None) -> PublicKeys | ThresholdKeys:
        if cells is None:
            return ThresholdKeys(("cell", "window"))
        return PublicKeys((("cell", cells), ("window", windows)), key_label)

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
    return TableSpecs(occupancy, levels, flows)
