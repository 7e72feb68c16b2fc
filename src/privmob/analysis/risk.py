"""Re-identification risk of *unreleased* traces: how few points single a person out.

:func:`unicity` measures what de Montjoye et al. (2013, "Unique in the Crowd", Sci. Rep.
3:1376) measured on phone records: draw ``p`` random (cell, hour) points from a person's
own trace and count the persons in the dataset whose trace contains all ``p`` of them; the
person is *unique* when that count is one (themself). The share of unique draws, for
``p = 1 … 4``, is the unicity of the data set at that spatial and temporal resolution.

Why this module exists: it makes the case for the rest of the package in numbers.

- **Pseudonymisation is not anonymisation.** A pseudonymised trace (HMAC ids, as in the
  working store) keeps every (cell, hour) a person visited. If a handful of points — a
  home at night, a workplace by day, one geotagged post — already single out most
  people, anyone who knows those few points about someone can find their pseudonym and
  then read the rest of the trace. Unicity is exactly the chance that this works.
- **Released tables carry no person-level rows.** A :class:`~privmob.release.table.ReleasedTable`
  holds one row per (cell, window) key with a noisy *count of distinct persons*, never a
  row, id, pseudonym or trace of anyone; each person changes at most ``k·w`` counts by
  one, and the noise makes that change deniable (ε-DP, see README "privacy model"). So
  there is no record to match p points against: the unicity attack has no target in a
  release. That is why no "does this release hold person rows" check is offered here —
  the type cannot hold them — and why what this module measures applies to the inputs
  and the working store, which must stay with the operator.

The sampling here is *evaluation* sampling (which points an attacker is assumed to know),
not privacy noise: it uses a seeded :func:`numpy.random.default_rng` so a measurement can
be repeated exactly. Privacy noise is drawn only in :mod:`privmob.privacy.mechanism`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.config import GridConfig
from privmob.errors import ConfigError, InputError
from privmob.stages import index, ingest

__all__ = ["unicity"]

#: The placeholder group given to inputs without a group column (risk is about every trace).
_ANY_GROUP = "any"


def unicity(
    pings: pl.DataFrame | pl.LazyFrame | str | Path | ingest.Pings | Any,
    *,
    resolution: int = 8,
    window: str = "1h",
    points: Sequence[int] = (1, 2, 3, 4),
    trials: int = 10,
    seed: int = 0,
    timezone: str = "Asia/Shanghai",
) -> pl.DataFrame:
    """Share of persons uniquely identified by ``p`` random (cell, window) points of their trace.

    Each trace is reduced to its distinct points (H3 cell at ``resolution``, time window of
    length ``window`` aligned to local midnight in ``timezone``). For every person and each
    of ``trials`` draws, a random order of the person's points is drawn; the first ``p``
    points of it are what the attacker knows. The draw is unique when no other person's
    trace contains all of them. Draws are nested (the ``p + 1`` points extend the ``p``
    points), so each draw's uniqueness — and the table — never decreases with ``p``.
    A person with fewer than ``p`` points is tested on all of them (counted in
    ``short_traces``).

    Parameters
    ----------
    pings
        Raw or pseudonymised pings (a frame, a CSV / Parquet path or a
        :func:`~privmob.stages.ingest.read_pings` handle) with ``person_id``, ``ts``, ``lat``,
        ``lng``; a ``group`` column is optional and ignored. Rows failing validation
        (see :func:`privmob.stages.ingest.validate`) are left out.
    resolution, window
        H3 resolution and window length, as in ``[grid]``.
    points
        The numbers of known points to evaluate, each ≥ 1.
    trials
        Random draws per person (every person is evaluated; the estimate averages over
        persons and draws).
    seed
        Seed of the evaluation sampler: the same input and seed give the same table.
    timezone
        IANA zone for naive timestamps and for aligning windows to local midnight.

    Returns
    -------
    polars.DataFrame
        One row per ``p``: ``points``, ``persons``, ``short_traces``, ``draws``,
        ``unique`` (draws that identify their person) and ``unicity`` (``unique / draws``).

    Examples
    --------
    >>> import polars as pl
    >>> rows = [("a", 0, 39.90, 116.40), ("b", 0, 39.90, 116.40), ("c", 0, 39.95, 116.30)]
    >>> df = pl.DataFrame(rows, schema=["person_id", "ts", "lat", "lng"], orient="row")
    >>> unicity(df, points=[1], trials=2)["unicity"].round(3).to_list()
    [0.333]
    """
    wanted = _check(points, trials)
    try:
        grid = GridConfig(resolution=resolution, window=window)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("[grid] ", "")) from exc
    traces = _traces(pings, grid.resolution, grid.window_seconds, timezone)
    max_p = max(wanted)
    draws = _draw(traces, max_p, trials, seed)
    return _evaluate(traces, draws, wanted, trials)


def _check(points: Sequence[int], trials: int) -> list[int]:
    wanted = sorted({int(p) for p in points})
    if not wanted or wanted[0] < 1 or len(wanted) != len(list(points)):
        raise ConfigError(f"points = {list(points)!r} must be distinct integers ≥ 1, e.g. (1, 2, 3, 4)")
    if not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials = {trials!r} must be an integer ≥ 1")
    return wanted


def _traces(source: Any, resolution: int, window_seconds: int, timezone: str) -> pl.DataFrame:
    """Distinct (person, cell, window) points, persons numbered 0…n-1, sorted for determinism."""
    handle = ingest.read_pings(source)
    schema = handle.schema()
    ingest.require_columns(schema, group_optional=True)
    lf = ingest.validate(handle.scan(), schema, timezone,
                         assume_group=None if "group" in schema else _ANY_GROUP)
    try:
        fixes = (
            lf.filter(pl.col("reason").is_null())
            .select("person_id", "t", index.cell(resolution).alias("cell"))
            .collect(engine="streaming")
        )
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"{handle.describe()} cannot be read: {ingest.first_line(exc)}") from exc
    if fixes.is_empty():
        raise InputError(f"{handle.describe()} holds no valid ping to measure unicity on")
    origin = _local_midnight(int(fixes["t"].min()), timezone)  # type: ignore[arg-type]
    points = (
        fixes.select("person_id", "cell", index.window(origin, window_seconds).alias("window"))
        .unique()
    )
    persons = (
        points.select("person_id").unique().sort("person_id")
        .with_row_index("person").with_columns(pl.col("person").cast(pl.Int64))
    )
    return (
        points.join(persons, on="person_id", how="inner")
        .select("person", "cell", "window")
        .sort("person", "window", "cell")
    )


def _local_midnight(t: int, timezone: str) -> int:
    """Epoch seconds of local midnight (in ``timezone``) of the day holding ``t``."""
    day = (
        pl.select(pl.from_epoch(pl.lit(t), time_unit="s"))
        .to_series()
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(timezone)
        .dt.truncate("1d")
        .dt.epoch("s")
    )
    return int(day.item())


def _draw(traces: pl.DataFrame, max_p: int, trials: int, seed: int) -> pl.DataFrame:
    """Per (person, trial): up to ``max_p`` distinct points of the person, in a random order.

    A vectorised partial Fisher–Yates shuffle: step ``j`` picks uniformly among the points
    not yet picked, so the first ``p`` steps are a uniform random ``p``-subset for every p.
    """
    sizes = traces.group_by("person", maintain_order=True).len().sort("person")
    n = sizes["len"].to_numpy().astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(n)[:-1]))
    rng = np.random.default_rng(seed)
    n_draw = n.size * trials
    person = np.repeat(np.arange(n.size, dtype=np.int64), trials)
    size = n[person]
    sentinel = np.iinfo(np.int64).max
    picked_sorted = np.full((n_draw, 0), sentinel, dtype=np.int64)
    steps: list[npt.NDArray[np.int64]] = []
    u = rng.random((n_draw, max_p))
    for j in range(max_p):
        remaining = size - j
        valid = remaining > 0
        r = np.floor(u[:, j] * np.maximum(remaining, 1)).astype(np.int64)
        # Map "the r-th point not yet picked" to its index: step over the picked ones.
        for k in range(j):
            r += picked_sorted[:, k] <= r
        r = np.where(valid, r, -1)
        steps.append(r)
        picked_sorted = np.sort(
            np.column_stack((picked_sorted, np.where(valid, r, sentinel))), axis=1
        )
    idx = np.stack(steps, axis=1)  # (n_draw, max_p), -1 where the trace is too short
    draw_id = np.repeat(np.arange(n_draw, dtype=np.int64), max_p)
    step = np.tile(np.arange(max_p, dtype=np.int64), n_draw)
    flat = idx.ravel()
    keep = flat >= 0
    rows = (offsets[np.repeat(person, max_p)] + flat)[keep]
    picked = traces.select("cell", "window")[rows]
    return picked.with_columns(
        pl.Series("draw", draw_id[keep]),
        pl.Series("step", step[keep]),
        pl.Series("person", np.repeat(person, max_p)[keep]),
    )


def _evaluate(traces: pl.DataFrame, draws: pl.DataFrame, wanted: list[int],
              trials: int) -> pl.DataFrame:
    """For each p: how many draws are matched by their own person only.

    The candidates of a draw are the persons holding its first point; each further point
    keeps only the candidates that hold it too (a semi-join), so the work shrinks with p.
    """
    n_persons = int(traces["person"].max()) + 1  # type: ignore[arg-type]
    # Every (draw, step, candidate) whose trace holds that point: one join for all steps.
    hits = draws.select("draw", "step", "cell", "window").join(
        traces.rename({"person": "candidate"}), on=["cell", "window"], how="inner"
    ).select("draw", "step", "candidate")
    sizes = traces.group_by("person").len()
    draws_n = n_persons * trials
    rows = []
    candidates = hits.filter(pl.col("step") == 0).select("draw", "candidate")
    for j in range(max(wanted)):
        if j > 0:
            has_step = draws.filter(pl.col("step") == j).select("draw")
            holding = hits.filter(pl.col("step") == j).select("draw", "candidate")
            candidates = pl.concat([
                candidates.join(has_step, on="draw", how="anti"),  # trace too short: unchanged
                candidates.join(holding, on=["draw", "candidate"], how="semi"),
            ])
        p = j + 1
        if p not in wanted:
            continue
        unique = candidates.group_by("draw").len().filter(pl.col("len") == 1).height
        rows.append({
            "points": p,
            "persons": n_persons,
            "short_traces": int(sizes.filter(pl.col("len") < p).height),
            "draws": draws_n,
            "unique": unique,
            "unicity": unique / draws_n,
        })
    return pl.DataFrame(rows, schema={"points": pl.Int64, "persons": pl.Int64,
                                      "short_traces": pl.Int64, "draws": pl.Int64,
                                      "unique": pl.Int64, "unicity": pl.Float64})
