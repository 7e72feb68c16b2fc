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

Keys stay typed columns (cells as UInt64, windows as integers, unit names as strings).
OpenDP's threshold measurement is keyed by a string label of each key's values — a
data-independent identity of the key, so OpenDP's privacy map holds as stated — and its
output is joined back to the exact frame's key columns by that label, never parsed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.privacy import mechanism, sparse
from privmob.privacy.intervals import near_threshold, selection_interval
from privmob.privacy.mechanism import NoiseModel
from privmob.privacy.tablespec import PublicKeys, TableSpec

__all__ = ["NoisyTable", "annotate", "key_vector", "noise_table", "sample"]

#: Annotation columns every released table carries after its key columns.
VALUE_COLUMNS = ("count", "ci_low", "ci_high", "near_threshold")


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


def sample(spec: TableSpec, counts: npt.NDArray[np.int64], labels: list[str] | None = None
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Draw the noise of one table and keep what clears its threshold: the only place a
    release draws noise. Returns the positions (into ``counts``) kept, ascending, and their
    noisy counts. ``labels`` name threshold keys (one per count); public keys need none."""
    if isinstance(spec.keys, PublicKeys):
        return sparse.noise_and_suppress(spec.noise, counts, spec.threshold)
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
    low, high, near = annotate(spec.noise, spec.threshold, noisy)
    frame = keys.with_columns(
        pl.Series("count", noisy, dtype=pl.Int64),
        pl.Series("ci_low", low, dtype=pl.Int64),
        pl.Series("ci_high", high, dtype=pl.Int64),
        pl.Series("near_threshold", near, dtype=pl.Boolean),
    )
    return NoisyTable(spec, frame)
