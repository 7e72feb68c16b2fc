"""Stages 1–9 on data, once: the exact pass, the input checks, every table noised.

:meth:`privmob.pipeline.plan.Plan.release` charges the budget around this run; here the pings are read
by a backend (ingest → scope → pseudonymise → index → bound → aggregate, exact and private),
the input is checked (no rows, identifiers in a kept column, bad rows, nothing usable), each
table of the plan goes through :func:`privmob.privacy.noising.noise_table` (occupancy, its parent
levels, flows after :func:`privmob.movement.flows.exact_flows`), and the two accounts of the result
are made (:mod:`privmob.release.manifest`). Only the :class:`~privmob.release.table.ReleasedTable` leaves.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import polars as pl

from privmob.backends import get_backend
from privmob.config import JobConfig
from privmob.errors import InputError, PrivmobError
from privmob.governance.signing import SIGNATURE_FILE, fingerprint
from privmob.governance.store import WorkingStore
from privmob.movement.flows import exact_flows, unit_coordinates
from privmob.privacy import noising, tree
from privmob.privacy.tablespec import parent_cells, with_leaves
from privmob.privacy.tree import Partition
from privmob.release import manifest
from privmob.release.manifest import KEPT_COLUMNS
from privmob.release.table import ReleasedTable, cell_table, flows_table
from privmob.stages import pii
from privmob.stages.ingest import BAD_REASONS, Pings, read_pings
from privmob.stages.pseudonymise import Pseudonymiser
from privmob.stages.scope import OK, no_usable_rows

if TYPE_CHECKING:
    from privmob.pipeline.plan import Plan

__all__ = ["as_source", "compute", "store_positions"]


def as_source(pings: Any, backend: str) -> Any:
    """A local path becomes a :class:`Pings` handle; a URI (``hdfs://``, ``s3a://``) or a
    folder of files for Spark is passed to the backend as it is."""
    if isinstance(pings, str) and "://" in pings:
        return pings
    if isinstance(pings, str | os.PathLike):
        if backend == "spark" and Path(pings).is_dir():
            return str(pings)
        return read_pings(Path(pings))
    return pings


def _source_columns(source: Any) -> list[str] | None:
    """The input's columns in file order (None when the backend reads a URI itself)."""
    if isinstance(source, str):
        return None
    try:
        return list(read_pings(source).schema())
    except PrivmobError:
        return None


def compute(plan: Plan, pings: Any, release_id: str, pseudonymiser: Pseudonymiser,
            backend: str | None, signer: Any,
            step: Callable[[str], None] = lambda _s: None) -> ReleasedTable:
    """Run the job on ``pings`` once: exact counts on the backend, the input checks, every
    table of ``plan.specs`` through :func:`~privmob.privacy.noising.noise_table`, the manifest and the
    operator record. Charges nothing itself: :meth:`Plan.release` does, around this run."""
    cfg = plan.config
    timings: dict[str, float] = {}
    step("read, validate, scope, pseudonymise, index, bound, aggregate")
    tick = time.perf_counter()
    source = as_source(pings, backend or cfg.job.backend)
    engine = get_backend(backend or cfg.job.backend)
    # The input's digest is read alongside the scan (hashlib releases the GIL), not after.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="privmob-sha256") as pool:
        input_sha = pool.submit(source.sha256) if isinstance(source, Pings) else None
        drawn: list[Partition] = []
        exact = engine.exact_cells(source, cfg, pseudonymiser, plan.key_cells,
                                   partition=None if plan.specs.partition is None
                                   else functools.partial(_draw_partition, plan, drawn))
        input_sha256 = None if input_sha is None else input_sha.result()
    timings["exact"] = time.perf_counter() - tick
    if exact.rows_in == 0:
        raise InputError(
            f"{source.describe() if isinstance(source, Pings) else 'the input'} has no rows: "
            "nothing to release (an empty day is not a release; check the export)"
        )

    kept_pii = {c: k for c, k in exact.pii.items() if c in KEPT_COLUMNS}
    if kept_pii:
        raise InputError(
            f"identifiers found in a column privmob keeps: {pii.describe(kept_pii)}; "
            "remove them from the input (the values are not shown here)"
        )
    bad = {r: n for r, n in exact.rows_by_status.items() if r in BAD_REASONS}
    if bad and cfg.job.on_bad_rows == "fail":
        raise InputError(_bad_rows_message(cfg, engine, source, pseudonymiser, bad))
    if exact.rows_by_status.get(OK, 0) == 0 and not cfg.job.allow_empty:  # pure noise: refuse
        raise InputError(no_usable_rows(exact.rows_by_status, exact.rows_epoch_ms))

    step(f"noise ({plan.noise.mechanism}, OpenDP)")
    tick = time.perf_counter()
    specs, released = plan.specs, {}
    occupancy = specs.occupancy if not drawn else with_leaves(specs.occupancy, drawn[0].leaves, cfg)
    if drawn and specs.levels:  # adaptive with coarser totals: consistent across levels
        released.update(noising.noise_consistent(occupancy, specs.levels, exact.counts, exact.levels))
    else:
        released[occupancy.name] = noising.noise_table(occupancy, exact.counts)
    timings["mechanism"] = time.perf_counter() - tick
    def cells(noisy: noising.NoisyTable, mixed: bool = bool(drawn)) -> pl.DataFrame:
        return cell_table(noisy.frame, period_start=cfg.period_start,
                          window_seconds=cfg.grid.window_seconds, mixed=mixed)

    table = cells(released[specs.occupancy.name])
    levels: dict[int, pl.DataFrame] = {}
    if specs.levels:
        step("coarser levels")
        for res, spec in specs.levels.items():  # fixed: distinct persons per (parent, window)
            if spec.name not in released:       # (adaptive: noised above, with the leaves)
                released[spec.name] = noising.noise_table(spec, exact.levels[res])
            levels[res] = cells(released[spec.name], mixed=False)
    flows_table_, flows_record = None, None
    if specs.flows is not None and cfg.flows is not None:
        step("flows: stays, trips, bound, noise")
        tick = time.perf_counter()
        od = exact_flows(engine.trips(source, cfg, pseudonymiser), cfg, plan.flows_units)
        noisy = released[specs.flows.name] = noising.noise_table(specs.flows, od.counts)
        names = {*noisy.frame["origin"].to_list(), *noisy.frame["destination"].to_list()}
        flows_table_ = flows_table(noisy.frame, unit_coordinates(names, plan.flows_units),
                                   period_start=cfg.period_start,
                                   window_seconds=cfg.flows.window_seconds)
        flows_record = manifest.flows_operator_record(od)
        timings["flows"] = time.perf_counter() - tick
    signature = None if signer is None else {"algorithm": "Ed25519", "file": SIGNATURE_FILE,
                                             "fingerprint": fingerprint(signer)}
    public = manifest.build_manifest(plan, release_id, released, signature=signature,
                                     partition=drawn[0] if drawn else None)
    operator = manifest.operator_record(plan, release_id, exact, pseudonymiser.key_id,
                                        input_sha256, _source_columns(source))
    if flows_record is not None:
        operator["flows"] = flows_record
    operator["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    result = ReleasedTable(table=table, manifest=public, flows=flows_table_,
                           boundary=cfg.grid.boundary, levels=levels, operator_record=operator)
    if bad and cfg.job.quarantine is not None:
        _write_quarantine(cfg, engine, source, pseudonymiser)
    return result


def _draw_partition(plan: Plan, drawn: list[Partition], counts: pl.DataFrame) -> npt.NDArray[np.uint64]:
    """The adaptive partition from the engine's exact tree counts (PrivTree, its own share
    of the budget); kept in ``drawn`` for the release, its leaves handed back to the engine."""
    spec, key_cells = plan.specs.partition, plan.key_cells
    assert spec is not None
    assert key_cells is not None
    part = tree.partition(spec, counts, plan.tree_params)
    # Leaves with no cell of the boundary under them can hold nobody: drop them (a function
    # of the public partition and the public boundary only) so they are not noised as keys.
    inside = np.zeros(part.leaves.size, dtype=bool)
    for r in np.unique(part.resolutions):
        at_r = part.resolutions == r
        inside[at_r] = np.isin(part.leaves[at_r], parent_cells(key_cells, int(r)))
    part = dataclasses.replace(part, leaves=part.leaves[inside], resolutions=part.resolutions[inside])
    drawn.append(part)
    return part.leaves


def store_positions(plan: Plan, pings: Any, backend: str | None, working: WorkingStore,
                    pseudonymiser: Pseudonymiser) -> None:
    """Keep the period's pseudonymised positions, encrypted, for later runs of the job."""
    cfg = plan.config
    engine = get_backend(backend or cfg.job.backend)
    source = as_source(pings, backend or cfg.job.backend)
    working.put(cfg.dataset, plan.key_period, engine.positions(source, cfg, pseudonymiser))


def _bad_rows_message(cfg: JobConfig, engine: Any, source: Any, pseudonymiser: Pseudonymiser,
                      bad: dict[str, int]) -> str:
    """Which rows are bad and why, by row number and reason (never their values)."""
    first = engine.bad_rows(source, cfg, pseudonymiser, limit=5)
    where = "; ".join(
        f"row {row}: {BAD_REASONS[reason][0]} {BAD_REASONS[reason][1]}"
        for row, reason in first.select("row", "reason").iter_rows()
    )
    counts = ", ".join(f"{n} {r}" for r, n in sorted(bad.items()))
    return (
        f"{sum(bad.values())} bad row(s) ({counts}); first: {where}. "
        "Fix the input, or set [job] on_bad_rows = \"quarantine\" to count and set them aside"
    )

def _write_quarantine(cfg: JobConfig, engine: Any, source: Any, pseudonymiser: Pseudonymiser) -> None:
    """Bad rows, ids pseudonymised, for the operator: private data, mode 0600."""
    path = cfg.job.quarantine
    assert path is not None
    rows = engine.bad_rows(source, cfg, pseudonymiser, limit=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o600)
        rows.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
