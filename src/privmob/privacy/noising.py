"""Stages 7–8 — noise and suppress: the one path every released table takes.

Occupancy, each parent level and flows differ only in their :class:`~privmob.privacy.tablespec.
TableSpec`; :func:`noise_table` turns a spec and the table's exact counts into the released
keys, noisy counts ≥ the threshold, their selection-aware 95% intervals
(:func:`privmob.privacy.intervals.selection_interval`) and the ``near_threshold`` flag. Noise is
drawn in one place, :func:`sample`:

* public keys — every key of the spec's key set is noised (the far-below-threshold ones by
  exact sparse sampling, :mod:`privmob.privacy.sparse`, ADR 0005), so an absent key leaks nothing;
* threshold keys — OpenDP's ``make_*_threshold`` noises the keys seen in the data and keeps
  those that clear its threshold, at the δ the spec reserved.

* an adaptive release with coarser totals — every key of the leaves and of each level is
  noised (nothing suppressed yet, :func:`noise_dense`), the values are made consistent
  across the hierarchy (:func:`consistent_counts`: parent = sum of its leaves,
  non-negative, whole numbers; :mod:`privmob.privacy.consistency`), and only then
  suppressed and annotated with the same rule (:func:`release_values`) — all
  post-processing of the noisy values (:func:`noise_consistent`).

Keys stay typed columns (cells as UInt64, windows as integers, unit names as strings).
OpenDP's threshold measurement is keyed by a string label of each key's values — a
data-independent identity of the key, so OpenDP's privacy map holds as stated — and its
output is joined back to the exact frame's key columns by that label, never parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.privacy import consistency, mechanism, sparse
from privmob.privacy.intervals import near_threshold, selection_interval
from privmob.privacy.mechanism import NoiseModel
from privmob.privacy.tablespec import PublicKeys, TableSpec

__all__ = ["CONSISTENCY", "CONSISTENT_CI_METHOD", "DENSE_SAMPLING", "NoisyTable", "annotate",
           "consistent_counts", "key_vector", "noise_consistent", "noise_dense", "noise_table",
           "release_values", "sample"]

#: Annotation columns every released table carries after its key columns.
VALUE_COLUMNS = ("count", "ci_low", "ci_high", "near_threshold")
#: What the manifest says of an adaptive release made consistent across its levels.
CONSISTENCY = "Hay et al. 2010 least squares, non-negative, integer"
#: How the intervals of consistent values are computed (the manifest's ``ci_method``).
CONSISTENT_CI_METHOD = (
    "selection-aware (conditional on publication), 95%, from each key's own noise model: "
    "conservative for consistent values, since least squares only lowers their variance "
    "(the non-negative step may shift a count slightly)")
#: How the keys of a consistent release are noised (the manifest's ``noise_sampling``).
DENSE_SAMPLING = "OpenDP exact samplers: every key noised, before consistency and suppression"
#: A threshold no noisy count is below: ``sample(..., keep_all=True)`` suppresses nothing.
_KEEP_ALL = -(2**62)


@dataclass(frozen=True, eq=False)
class NoisyTable:
    """A table's released keys: the spec's key columns, then ``count`` (noisy, ≥ the
    threshold), ``ci_low``/``ci_high`` (selection-aware 95%) and ``near_threshold``."""

    spec: TableSpec
    frame: pl.DataFrame

    @property
    def released(self) -> int:
        return self.frame.height

    @property
    def suppressed(self) -> int | None:
        """Public keys withheld (None for threshold keys: their number is not public)."""
        n = self.spec.n_keys
        return None if n is None else n - self.released

    def __repr__(self) -> str:
        return f"NoisyTable({self.spec.name}: {self.released} keys released)"


def annotate(noise: NoiseModel, threshold: int, noisy: npt.ArrayLike
             ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Selection-aware 95% interval and near-threshold flag of released noisy counts.

    A count is published because its noisy value cleared ``threshold``, which biases small
    true counts upward: the interval covers the truth 95% of the time *given publication*
    (≥ 0); ``near_threshold`` marks counts below τ + the unconditional 95% half-width.
    """
    values = np.asarray(noisy, dtype=np.int64)
    low, high = selection_interval(noise, threshold, values, 0.95)
    return low, high, near_threshold(values, threshold, noise.ci_halfwidth(0.95))


def _positions(axis: npt.NDArray[np.generic], column: pl.Series) -> npt.NDArray[np.int64]:
    """Index of each value of ``column`` on ``axis`` (sorted if numeric; names otherwise)."""
    if axis.dtype == object:
        index = {v: i for i, v in enumerate(axis.tolist())}
        return np.fromiter((index[v] for v in column.to_list()), dtype=np.int64, count=column.len())
    values = column.to_numpy()
    pos = np.searchsorted(axis, values).astype(np.int64)
    assert np.array_equal(axis[np.minimum(pos, axis.size - 1)], values), "a key outside the public set"
    return pos


def key_vector(keys: PublicKeys, exact: pl.DataFrame) -> npt.NDArray[np.int64]:
    """Exact counts over every public key, in key order (zeros where the data has none)."""
    pos = np.zeros(exact.height, dtype=np.int64)
    for name, axis in keys.axes:
        pos = pos * axis.size + _positions(axis, exact[name])
    vec = np.zeros(keys.n_keys, dtype=np.int64)
    vec[pos] = exact["count"].to_numpy()
    return vec


def _public_key_frame(keys: PublicKeys, idx: npt.NDArray[np.int64]) -> pl.DataFrame:
    """The key columns of public keys number ``idx`` (mixed radix over the axes)."""
    columns: dict[str, pl.Series] = {}
    rest = idx
    for name, axis in reversed(keys.axes):
        values = axis[rest % axis.size]
        rest = rest // axis.size
        columns[name] = (pl.Series(name, values.tolist(), dtype=pl.String) if axis.dtype == object
                         else pl.Series(name, values))
    return pl.DataFrame([columns[name] for name in keys.columns])


def _labels(exact: pl.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """One string per key, from its values (OpenDP's map is keyed by strings)."""
    label = pl.concat_str([pl.col(c).cast(pl.String) for c in columns], separator="\x1f")
    return exact.select(label).to_series().to_list()


def sample(spec: TableSpec, counts: npt.NDArray[np.int64], labels: list[str] | None = None, *,
           keep_all: bool = False) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Draw the noise of one table and keep what clears its threshold: the only place a
    release draws noise. Returns the positions (into ``counts``) kept, ascending, and their
    noisy counts. ``labels`` name threshold keys (one per count); public keys need none.

    ``keep_all`` (public keys only): keep every key — each noised once by OpenDP, none
    suppressed — for a post-processing step that needs all values (consistency); the
    caller then suppresses with the spec's threshold itself (:func:`release_values`).
    """
    if isinstance(spec.keys, PublicKeys):
        if keep_all:  # every key dense: no sparse route, nothing below the threshold
            return sparse.noise_and_suppress(spec.noise, counts, _KEEP_ALL, max_q=0)
        return sparse.noise_and_suppress(spec.noise, counts, spec.threshold)
    assert not keep_all, "only public keys can all be noised: threshold keys are data-dependent"
    assert labels is not None
    assert len(labels) == counts.size
    released, threshold, _ = mechanism.threshold_counts(
        spec.noise, labels, counts.tolist(), spec.threshold, spec.selection_delta)
    assert threshold == spec.threshold  # the spec already met the selection δ
    row = {label: i for i, label in enumerate(labels)}
    assert len(row) == len(labels), "key labels must be distinct"
    kept = sorted((row[label], value) for label, value in released.items())
    return (np.array([i for i, _ in kept], dtype=np.int64),
            np.array([v for _, v in kept], dtype=np.int64))


def _frame(spec: TableSpec, keys: pl.DataFrame, noisy: npt.NDArray[np.int64]) -> NoisyTable:
    """Released keys with their counts, intervals and near-threshold flags."""
    low, high, near = annotate(spec.noise, spec.threshold, noisy)
    frame = keys.with_columns(
        pl.Series("count", noisy, dtype=pl.Int64),
        pl.Series("ci_low", low, dtype=pl.Int64),
        pl.Series("ci_high", high, dtype=pl.Int64),
        pl.Series("near_threshold", near, dtype=pl.Boolean),
    )
    return NoisyTable(spec, frame)


def noise_table(spec: TableSpec, exact: pl.DataFrame) -> NoisyTable:
    """Noise, threshold and suppress one table's exact counts (key columns + ``count``).

    Public keys: exact counts are spread over the whole key set, every key is noised.
    Threshold keys: only keys present in ``exact`` exist, OpenDP selects among them.
    """
    columns = spec.keys.columns
    if isinstance(spec.keys, PublicKeys):
        idx, noisy = sample(spec, key_vector(spec.keys, exact))
        keys = _public_key_frame(spec.keys, idx)
    else:
        idx, noisy = sample(spec, exact["count"].cast(pl.Int64).to_numpy(), _labels(exact, columns))
        keys = exact.select(pl.col(c).gather(idx) for c in columns)
    return _frame(spec, keys, noisy)


def noise_dense(spec: TableSpec, exact: pl.DataFrame) -> npt.NDArray[np.int64]:
    """Every public key's noisy count, in key order, nothing suppressed (OpenDP noise on
    each key, through :func:`sample`). For post-processing that needs them all."""
    keys = spec.keys
    assert isinstance(keys, PublicKeys), "dense noise needs public keys"
    idx, noisy = sample(spec, key_vector(keys, exact), keep_all=True)
    assert idx.size == keys.n_keys
    return noisy


def release_values(spec: TableSpec, values: npt.NDArray[np.int64]) -> NoisyTable:
    """Publish post-processed values of every public key (key order): those ≥ the spec's
    threshold, with their intervals and near-threshold flags — the same rule as
    :func:`noise_table`, applied to values already noised."""
    keys = spec.keys
    assert isinstance(keys, PublicKeys)
    values = np.asarray(values, dtype=np.int64)
    assert values.size == keys.n_keys
    idx = np.flatnonzero(mechanism.suppress(values, spec.threshold)).astype(np.int64)
    return _frame(spec, _public_key_frame(keys, idx), values[idx])


def _cells_and_windows(spec: TableSpec) -> tuple[npt.NDArray[np.uint64], int]:
    keys = spec.keys
    assert isinstance(keys, PublicKeys)
    assert keys.columns == ("cell", "window")
    return np.asarray(keys.axes[0][1], dtype=np.uint64), int(keys.axes[1][1].size)


def consistent_counts(leaf: TableSpec, leaf_noisy: npt.NDArray[np.int64],
                      levels: Mapping[int, TableSpec], level_noisy: Mapping[int, npt.NDArray[np.int64]]
                      ) -> tuple[npt.NDArray[np.int64], dict[int, npt.NDArray[np.int64]]]:
    """Noisy leaf and level counts (every key, key order) made consistent, window by window.

    The forest is the leaves under the levels' cells (:func:`privmob.privacy.consistency.
    h3_forest`); each measured node's variance is its noise model's (``std²``), the
    partition cells between a level and the leaves are unmeasured. Then
    :func:`~privmob.privacy.consistency.consistent` (least squares),
    :func:`~privmob.privacy.consistency.nonnegative` and
    :func:`~privmob.privacy.consistency.round_consistent`: every level cell is exactly the
    sum of the leaves under it, every value a whole number ≥ 0. Pure post-processing.
    """
    cells, n_win = _cells_and_windows(leaf)
    level_cells: dict[int, npt.NDArray[np.uint64]] = {}
    for res, spec in levels.items():
        level_cells[res], w = _cells_and_windows(spec)
        assert w == n_win, "levels and leaves must share the windows"
    h = consistency.h3_forest(cells, level_cells)
    measured = np.full((h.size, n_win), np.nan)
    variance = np.ones(h.size)
    measured[h.leaf_nodes] = np.asarray(leaf_noisy, dtype=np.float64).reshape(cells.size, n_win)
    variance[h.leaf_nodes] = leaf.noise.std ** 2
    for res, spec in levels.items():
        nodes = h.level_nodes[res]
        measured[nodes] = np.asarray(level_noisy[res], dtype=np.float64).reshape(nodes.size, n_win)
        variance[nodes] = spec.noise.std ** 2
    x = consistency.consistent(h.forest, measured, variance)
    whole = consistency.round_consistent(h.forest, consistency.nonnegative(h.forest, x))
    return (whole[h.leaf_nodes].ravel(),
            {res: whole[h.level_nodes[res]].ravel() for res in levels})


def noise_consistent(leaf: TableSpec, levels: Mapping[int, TableSpec], leaf_exact: pl.DataFrame,
                     level_exact: Mapping[int, pl.DataFrame]) -> dict[str, NoisyTable]:
    """An adaptive release's leaves and coarser totals, noised and made consistent.

    Every key of every table is noised (:func:`noise_dense`), the values are made
    consistent (:func:`consistent_counts`), then each table is suppressed with its own
    threshold and annotated (:func:`release_values`). Returns the tables by spec name.
    """
    leaf_noisy = noise_dense(leaf, leaf_exact)
    level_noisy = {res: noise_dense(spec, level_exact[res]) for res, spec in levels.items()}
    leaf_values, level_values = consistent_counts(leaf, leaf_noisy, levels, level_noisy)
    return {leaf.name: release_values(leaf, leaf_values),
            **{spec.name: release_values(spec, level_values[res]) for res, spec in levels.items()}}
