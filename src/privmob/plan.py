"""The release plan: everything decided before any data is read.

``plan(config)`` fixes the sensitivity, calibrates the noise with OpenDP, derives the
release threshold and the key set, and can ``explain()`` all of it — expected error,
spurious-cell rate, the smallest count that is reliably published — while spending
nothing. ``Plan.release(pings)`` then runs the pipeline once and returns the only public
result type, :class:`~privmob.release.ReleasedTable`.

What a release publishes and what only the operator sees
--------------------------------------------------------
Every key of the signed ``manifest.json`` (built by ``Plan._manifest``) is either a
public parameter fixed before any data is read (job label, period, purpose, operator,
marking, unit of privacy, scope groups, pseudonymisation *method* and linkage period,
budget limits, grid, bounds, sensitivity, mechanism, ε/δ/ρ and their split, noise
scale and intervals, keys, thresholds, stages) or a function of the noisy, suppressed
tables alone (``cells_released``, ``cells_suppressed``, a level's ``cells_released``,
``flows_released``, file digests). Nothing that depends on the exact input may appear:
not row or person counts, bounding tallies, trip counts, timings, the input's digest, the
configuration digest, the pseudonym key id, nor column names of the input (a header can
be data). Those go to the *operator record* (``ReleasedTable.operator_record``), which
stays in memory or is stored 0600 beside the ledger (:func:`privmob.release.
write_operator_record`) and never enters the release folder or its reports.
``tests/system/test_release_leaks.py`` checks the rule by differencing: releases with and
without one person may differ only in fields that also vary between repeated runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import polars_h3 as plh3

from privmob import mechanism, pii, sparse
from privmob._version import __version__
from privmob.accountant import PrivacyCost, exact
from privmob.audit import AuditLog
from privmob.backends import get_backend
from privmob.config import BudgetConfig, JobConfig, PrivacyConfig
from privmob.errors import (
    BudgetExceededError,
    ConfigError,
    InputError,
    LedgerIntegrityError,
    PrivmobError,
    ReleaseExistsError,
)
from privmob.ingest import BAD_REASONS, Pings, first_line, read_pings
from privmob.intervals import CI_METHOD
from privmob.keys import Boundary, load_boundary
from privmob.ledger import Budget, Ledger, bind_dataset, budget_from, foreign_releases
from privmob.mechanism import NoiseModel, Sensitivity
from privmob.pseudonymise import Pseudonymiser, check_job_keys, load_key
from privmob.release import ReleasedTable, build_table, write_operator_record
from privmob.scope import OK, OUT_OF_PERIOD, OUT_OF_SCOPE, no_usable_rows
from privmob.signing import SIGNATURE_FILE, fingerprint, load_private_key
from privmob.store import WorkingStore

__all__ = ["Plan", "plan"]

STAGES = ("ingest", "pii-scan", "scope", "pseudonymise", "index", "bound", "aggregate")
#: Input columns whose values travel on (only group: the rest are parsed or hashed).
KEPT_COLUMNS = ("group",)


def _as_source(pings: Any, backend: str) -> Any:
    """A local path becomes a :class:`Pings` handle; a URI (``hdfs://``, ``s3a://``) or a
    folder of files for Spark is passed to the backend as it is."""
    if isinstance(pings, str) and "://" in pings:
        return pings
    if isinstance(pings, str | os.PathLike):
        if backend == "spark" and Path(pings).is_dir():
            return str(pings)
        return read_pings(Path(pings))
    return pings


def plan(config: JobConfig) -> Plan:
    """Validate a job and prepare its release; reads no data and spends no budget.

    Examples
    --------
    >>> import privmob as pm
    >>> cfg = pm.JobConfig.from_dict({"job": {"operator": "a", "period": "2026-11-26"},
    ...                               "privacy": {"mechanism": "laplace"}})
    >>> p = pm.plan(cfg)
    >>> p.noise.scale, p.sensitivity.l1
    (24.0, 24)
    """
    p = Plan(config)
    _ = p.noise, p.release_threshold, config.period_start  # fail now, not after reading data
    if config.grid.boundary is not None:
        _ = p.key_cells
    return p


#: How bounding chooses what a person keeps (a public rule; the tallies are operator-only).
BOUNDING_RULE = "most dwell minutes first; ties by keyed pseudonym XOR id"

#: How flows bounding chooses a person's trips (public rule).
FLOWS_BOUNDING_RULE = "longest trips first; ties by keyed pseudonym XOR OD hash"

#: Kinds of identifier a column name announces, tried in order on the normalised name.
_NAME_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("email", ("mail", "邮")),
    ("phone", ("phone", "mobile", "tel", "msisdn", "imsi", "imei", "手机", "电话", "联系")),
    ("age_or_birth", ("age", "birth", "dob", "年龄", "生日", "出生")),
    ("address", ("addr", "residence", "址")),
    ("name", ("name", "姓名", "名字")),
    ("messaging_id", ("wechat", "qq", "微信")),
)


def identifier_kind(column: str) -> str:
    """The kind of identifier a column's *name* announces (``name``, ``phone``, …).

    >>> identifier_kind("Full Name"), identifier_kind("手机号"), identifier_kind("ssn")
    ('name', 'phone', 'identity_document')
    """
    key = column.strip().lower()
    for kind, marks in _NAME_KINDS:
        if any(mark in key for mark in marks):
            return kind
    return "identity_document"


def _source_columns(source: Any) -> list[str] | None:
    """The input's columns in file order (None when the backend reads a URI itself)."""
    if isinstance(source, str):
        return None
    try:
        return list(read_pings(source).schema())
    except PrivmobError:
        return None


def dropped_identifiers(found: Mapping[str, Mapping[str, int]], by_name: Iterable[str],
                        columns: Sequence[str] | None) -> list[dict[str, Any]]:
    """Dropped identifier columns as ``{"position", "kind", "found_by"[, "rows"]}``.

    Positions are 1-based in the input's column order (None if unknown); the header text is
    never kept, since a header can be data (a phone number in a headerless file).
    """
    def position(column: str) -> int | None:
        if columns is None or column not in columns:
            return None
        return list(columns).index(column) + 1

    out: list[dict[str, Any]] = []
    for column, kinds in found.items():
        if column in KEPT_COLUMNS:
            continue
        out += [{"position": position(column), "kind": kind, "found_by": "values", "rows": int(n)}
                for kind, n in kinds.items()]
    out += [{"position": position(c), "kind": identifier_kind(c), "found_by": "header"}
            for c in by_name]
    return sorted(out, key=lambda d: (d["position"] is None, d["position"] or 0, d["kind"],
                                      d["found_by"]))


def _refuse_foreign_releases(out: Path | None, ledger_id: str | None, ledger_path: Path) -> None:
    """Refuse when releases beside ``out`` were charged to a ledger other than this one
    (``ledger_id`` None: the ledger does not exist yet) — a ledger deleted together with its
    audit log must not hand out a fresh budget."""
    if out is None:
        return
    foreign = foreign_releases(out.parent, (), ledger_id)
    if foreign:
        what = "does not exist" if ledger_id is None else f"is ledger {ledger_id}"
        raise LedgerIntegrityError(
            f"{foreign[0]}" + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + " was charged to another budget ledger, "
            f"but {ledger_path} {what}: the ledger was deleted or replaced. Nothing was read or "
            "charged; restore the original ledger and its audit log from backup"
        )


def _caps_public(caps: Budget) -> dict[str, float | None]:
    """The per-day caps that bound a release, as the manifest states them."""
    return {"epsilon_per_day": None if caps.epsilon is None else float(caps.epsilon),
            "delta_per_day": float(caps.delta),
            "rho_per_day": None if caps.rho is None else float(caps.rho)}


def key_vector(counts: pl.DataFrame, key_cells: npt.NDArray[np.uint64], n_windows: int
               ) -> npt.NDArray[np.int64]:
    """Exact counts over every public key, cell-major: key i is (key_cells[i // w], i % w)."""
    vec = np.zeros(key_cells.size * n_windows, dtype=np.int64)
    pos = np.searchsorted(key_cells, counts["cell"].to_numpy())
    vec[pos * n_windows + counts["window"].to_numpy()] = counts["count"].to_numpy()
    return vec


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated, calibrated release job. Make it with :func:`plan`."""

    config: JobConfig
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- what is fixed before reading data ----------------------------------------------
    @cached_property
    def sensitivity(self) -> Sensitivity:
        p = self.config.privacy
        return Sensitivity(p.max_cells_per_window, min(p.max_windows, self.config.n_windows))

    @property
    def public_keys(self) -> bool:
        return self.config.grid.boundary is not None

    @cached_property
    def boundary(self) -> Boundary | None:
        g = self.config.grid
        return None if g.boundary is None else load_boundary(g.boundary, g.boundary_where, g.boundary_crs)

    @cached_property
    def key_cells(self) -> npt.NDArray[np.uint64] | None:
        b = self.boundary
        return None if b is None else b.cells(self.config.grid.resolution)

    @cached_property
    def noise(self) -> NoiseModel:
        p = self.config.privacy
        threshold_delta = 0.0
        if not self.public_keys and p.mechanism == "gaussian":
            threshold_delta = p.delta / 2
        return mechanism.calibrate(p, self.sensitivity, threshold_delta=threshold_delta)

    @cached_property
    def release_threshold(self) -> int:
        """max(min_count, the noise threshold that keeps spurious cells rare) — and, with
        data-dependent keys, at least the threshold OpenDP's δ for key selection needs."""
        p = self.config.privacy
        floor = max(p.min_count, self.noise.spurious_threshold(p.max_spurious_rate))
        if self.public_keys:
            return floor
        return mechanism.threshold_for(self.noise, floor, self.threshold_delta)[0]

    @property
    def threshold_delta(self) -> float:
        """δ reserved for selecting data-dependent keys (0 with public keys)."""
        if self.public_keys:
            return 0.0
        p = self.config.privacy
        return p.delta if p.mechanism == "laplace" else p.delta / 2

    @property
    def occupancy_cost(self) -> PrivacyCost:
        base = self.noise.cost
        selection = exact(self.threshold_delta)
        return PrivacyCost(base.epsilon, base.delta + selection, base.rho, selection)

    @property
    def flows_cost(self) -> PrivacyCost | None:
        if self.flows_noise is None:
            return None
        base = self.flows_noise.cost
        selection = exact(self.flows_threshold_delta)
        return PrivacyCost(base.epsilon, base.delta + selection, base.rho, selection)

    @property
    def cost(self) -> PrivacyCost:
        """What a release under this plan spends, at most: all its tables together."""
        total = self.occupancy_cost
        for level_cost in self.level_costs.values():
            total = total + level_cost
        flows = self.flows_cost
        return total if flows is None else total + flows

    # -- hierarchical levels (coarser resolutions, each its own table and budget share) --
    @cached_property
    def level_noise(self) -> NoiseModel:
        """Noise for every parent level, calibrated to ``parent_epsilon`` with the occupancy
        bounds: a level counts distinct persons per (parent cell, window) from the bounded
        rows, so a person's ≤ k kept cells in a window touch ≤ k parents, each by one."""
        p = dataclasses.replace(self.config.privacy, epsilon=self.config.grid.parent_epsilon,
                                rho=None)
        return mechanism.calibrate(p, self.sensitivity, threshold_delta=self.threshold_delta
                                   if p.mechanism == "gaussian" and not self.public_keys else 0.0)

    @cached_property
    def level_threshold(self) -> int:
        p = self.config.privacy
        floor = max(p.min_count, self.level_noise.spurious_threshold(p.max_spurious_rate))
        if self.public_keys:
            return floor
        return mechanism.threshold_for(self.level_noise, floor, self.threshold_delta)[0]

    def level_key_cells(self, resolution: int) -> npt.NDArray[np.uint64] | None:
        """Public keys of a level: the parents of the fine public cells."""
        if self.key_cells is None:
            return None
        parents = pl.Series(self.key_cells, dtype=pl.UInt64).to_frame("c").select(
            plh3.cell_to_parent("c", resolution)).to_series().unique().sort()
        return parents.to_numpy().astype(np.uint64)

    @property
    def level_costs(self) -> dict[int, PrivacyCost]:
        levels = self.config.grid.parent_resolutions
        if not levels:
            return {}
        base = self.level_noise.cost
        selection = exact(self.threshold_delta)
        one = PrivacyCost(base.epsilon, base.delta + selection, base.rho, selection)
        return dict.fromkeys(levels, one)

    # -- flows -------------------------------------------------------------------------
    @cached_property
    def flows_units(self) -> Any:
        fc = self.config.flows
        if fc is None or fc.units != "boundary":
            return None
        assert fc.boundary is not None
        from privmob.flows import load_units

        return load_units(fc.boundary, fc.unit_property, fc.boundary_crs)

    @cached_property
    def flows_privacy(self) -> PrivacyConfig | None:
        fc, p = self.config.flows, self.config.privacy
        if fc is None:
            return None
        return dataclasses.replace(
            p, epsilon=fc.epsilon, rho=fc.rho if p.mechanism == "gaussian" else None,
            max_cells_per_window=fc.max_trips_per_window, max_windows=fc.max_windows,
            min_count=fc.min_count or p.min_count,
        )

    @property
    def flows_threshold_delta(self) -> float:
        fc = self.config.flows
        if fc is None or fc.units == "boundary":
            return 0.0
        p = self.config.privacy
        return p.delta if p.mechanism == "laplace" else p.delta / 2

    @cached_property
    def flows_noise(self) -> NoiseModel | None:
        fp, fc = self.flows_privacy, self.config.flows
        if fp is None or fc is None:
            return None
        from privmob.flows import n_windows as flows_n_windows

        sens = Sensitivity(fc.max_trips_per_window, min(fc.max_windows, flows_n_windows(self.config)))
        return mechanism.calibrate(fp, sens, threshold_delta=self.flows_threshold_delta
                                   if fp.mechanism == "gaussian" else 0.0)

    @cached_property
    def flows_threshold(self) -> int | None:
        fp, noise = self.flows_privacy, self.flows_noise
        if fp is None or noise is None:
            return None
        floor = max(fp.min_count, noise.spurious_threshold(fp.max_spurious_rate))
        if self.flows_units is not None:
            return floor
        return mechanism.threshold_for(noise, floor, self.flows_threshold_delta)[0]

    @property
    def key_period(self) -> str:
        job = self.config.job
        assert job.period is not None
        return job.period.isoformat() + ("" if job.period_days == 1 else f"+{job.period_days}d")

    def summary(self) -> dict[str, Any]:
        """The numbers behind :meth:`explain`, as a dict."""
        cfg, noise, thr = self.config, self.noise, self.release_threshold
        n_keys = None if self.key_cells is None else int(self.key_cells.size) * cfg.n_windows
        spurious = noise.tail(thr)
        return {
            "stages": list(self.stages),
            "period_start": cfg.period_start.isoformat(),
            "period_end": cfg.period_end.isoformat(),
            "windows": cfg.n_windows,
            "resolution": cfg.grid.resolution,
            "sensitivity_l1": self.sensitivity.l1,
            "sensitivity_l2": round(self.sensitivity.l2, 6),
            "mechanism": noise.mechanism,
            "noise_scale": noise.scale,
            "noise_std": round(noise.std, 4),
            "ci95_halfwidth": noise.ci_halfwidth(0.95),
            **{k: v for k, v in self.cost.as_dict().items() if not k.endswith("_exact")},
            "keys": "public" if self.public_keys else "threshold",
            "key_cells": None if self.key_cells is None else int(self.key_cells.size),
            "n_keys": n_keys,
            "min_count": cfg.privacy.min_count,
            "release_threshold": thr,
            "spurious_rate": spurious,
            "expected_spurious_cells": None if n_keys is None else spurious * n_keys,
            "count_released_50pct": noise.detectable_count(thr, 0.5),
            "count_released_95pct": noise.detectable_count(thr, 0.95),
        }

    @property
    def stages(self) -> tuple[str, ...]:
        keys = "public keys" if self.public_keys else "threshold keys"
        return (*STAGES, f"mechanism:{self.noise.mechanism} ({keys})", "suppress", "release")

    def explain(self) -> str:
        """What the release will do and what its numbers can bear. Spends nothing."""
        s, cfg = self.summary(), self.config
        p = cfg.privacy
        occ = self.occupancy_cost
        lines = [
            f"privmob {__version__} — release plan for {cfg.dataset!r}, period {self.key_period} "
            f"({cfg.job.timezone})",
            f"  purpose {cfg.job.purpose!r}, operator {cfg.job.operator!r}",
            "  stages: " + " → ".join(self.stages),
            f"  scope: key groups {', '.join(cfg.scope.groups)}"
            + (f" (whole input assumed {cfg.scope.assume_group!r})" if cfg.scope.assume_group else ""),
            f"  grid: H3 resolution {cfg.grid.resolution}, {cfg.n_windows} windows of "
            f"{cfg.grid.window}",
            f"  bounding: ≤ {p.max_cells_per_window} cell(s) per window, ≤ "
            f"{self.sensitivity.windows} window(s) per person → L1 = {s['sensitivity_l1']}, "
            f"L2 = {s['sensitivity_l2']:.3f}",
        ]
        if self.noise.mechanism == "laplace":
            lines.append(
                f"  mechanism: discrete Laplace (OpenDP), scale {s['noise_scale']:.4g}, "
                + ("pure " if self.public_keys else "")
                + f"ε = {float(occ.epsilon):g}"
            )
        else:
            lines.append(
                f"  mechanism: discrete Gaussian (OpenDP), σ = {s['noise_scale']:.4g}, ρ = "
                f"{float(occ.rho or 0):.6g} (zCDP) ⇒ (ε = {float(occ.epsilon):g}, "
                f"δ = {float(occ.delta):.3g})"
            )
        lines.append(
            f"  error: noise std {s['noise_std']:.1f}; a released count is within "
            f"±{s['ci95_halfwidth']} of the truth 95% of the time (far above the threshold; "
            "near it the published intervals are selection-aware and wider)"
        )
        if self.public_keys:
            assert self.boundary is not None
            lines.append(
                f"  keys: public — {s['key_cells']:,} cells covering {self.boundary.path.name} × "
                f"{cfg.n_windows} windows = {s['n_keys']:,} keys, all noised (empty ones too;"
                " those far below the threshold by exact sparse sampling, ADR 0005)"
            )
        else:
            lines.append(
                f"  keys: data-dependent, selected by OpenDP's noise threshold "
                f"(δ = {self.threshold_delta:.3g} spent on selection)"
            )
        spur = s["spurious_rate"]
        lines.append(
            f"  suppression: publish noisy counts ≥ {s['release_threshold']} "
            f"(min_count {p.min_count}; noise alone passes an empty key with p = {spur:.2e}"
            + (f", ≈ {s['expected_spurious_cells']:.1f} spurious cells expected)"
               if s["expected_spurious_cells"] is not None else ")")
        )
        lines.append(
            f"  detectability: a cell with {s['count_released_50pct']} persons is published "
            f"half the time; with {s['count_released_95pct']} persons, 95% of the time"
        )
        fc, fnoise = cfg.flows, self.flows_noise
        if fc is not None and fnoise is not None:
            units = "districts" if fc.units == "boundary" else f"H3 res-{fc.resolution} cells"
            lines.append(
                f"  flows: trips between stays (≥ {fc.stay_min_duration} within {fc.stay_radius_m:g} m) "
                f"by {units}, {fc.window} windows; ≤ {fc.max_trips_per_window} trip(s) per window, "
                f"≤ {fnoise.sensitivity.windows} window(s) per person; {fnoise.mechanism} noise std "
                f"{fnoise.std:.1f} (±{fnoise.ci_halfwidth(0.95)} at 95%); publish ≥ {self.flows_threshold}; "
                f"ε = {fc.epsilon:g} of the total"
            )
        lines.append(
            f"  budget: this release spends ε = {s['epsilon']:g}, δ = {s['delta']:.3g}"
            + (f", ρ = {s['rho']:.6g}" if s["rho"] is not None else "")
        )
        b = self.budget_config()
        lines.append(
            f"  ledger: charges {b.ledger}"
            + ("" if cfg.budget is not None else " (no [budget]: the default ledger, $PRIVMOB_LEDGER)")
            + f"; caps {self.budget().describe()} per day bind once declared there"
        )
        return "\n".join(lines)

    # -- running it ----------------------------------------------------------------------
    @property
    def days(self) -> tuple[str, ...]:
        """The local days this release covers: the budget is charged on each."""
        job = self.config.job
        assert job.period is not None
        return tuple((job.period + dt.timedelta(days=i)).isoformat() for i in range(job.period_days))

    @property
    def linkage_label(self) -> str:
        """Which pseudonym space the release uses: one per ``linkage_days`` block of days."""
        job = self.config.job
        assert job.period is not None
        if job.linkage_days == 1 and job.period_days == 1:
            return job.period.isoformat()
        block = (job.period.toordinal() - 1) // job.linkage_days
        first = dt.date.fromordinal(block * job.linkage_days + 1)
        return f"{first.isoformat()}+{job.linkage_days}d"

    def budget_config(self) -> BudgetConfig:
        """The job's ``[budget]``, or — for a job without one (a Python release) — the
        default ledger (``$PRIVMOB_LEDGER`` or the XDG state folder) with default caps."""
        return self.config.budget or BudgetConfig.default()

    def ledger(self) -> Ledger:
        """The budget ledger this job charges (created on first use; see :meth:`release`)."""
        b = self.budget_config()
        return Ledger(b.ledger, b.audit_path)

    def working_store(self) -> WorkingStore | None:
        """The encrypted working store of this job (None when the job has no [store])."""
        st = self.config.store
        if st is None:
            return None
        return WorkingStore(st.path, load_key(st.key_file, "PRIVMOB_STORE_KEY"), st.retention_days)

    def stored_pings(self) -> Pings:
        """This period's pseudonymised positions from the working store, as a pings source."""
        store = self.working_store()
        if store is None:
            raise ConfigError("this job has no [store] section: there is no working store to read")
        return read_pings(store.get(self.config.dataset, self.key_period))

    def audit_log(self) -> AuditLog:
        """The audit log beside the ledger this job charges."""
        return self.ledger().audit

    def budget(self) -> Budget:
        """The job's per-day caps (the defaults for a job without ``[budget]``). They bind
        only through the ledger: a new ledger declares them, an existing one must agree."""
        b = self.budget_config()
        return budget_from(b.epsilon_per_day, b.delta_per_day, b.rho_per_day)

    def _open_ledger(self, out: Path | None) -> Ledger:
        """The ledger, after checking it was not deleted or replaced under the releases it
        charged: a release folder beside ``out`` anchored to another ledger is refused."""
        b = self.budget_config()
        existed = b.ledger.exists()
        if not existed:
            _refuse_foreign_releases(out, None, b.ledger)
        ledger = Ledger(b.ledger, b.audit_path)
        if existed:
            _refuse_foreign_releases(out, ledger.ledger_id, b.ledger)
        ledger.require_integrity()  # before its caps or datasets are trusted for anything
        return ledger

    def release(self, pings: Any, *, backend: str | None = None,
                write_to: str | Path | None = None, store: bool = True, force: bool = False,
                progress: Callable[[str], None] | None = None) -> ReleasedTable:
        """Run the job on ``pings`` (a path, a frame or :func:`read_pings` handle).

        Every release is charged. The cost is reserved in the job's ledger (``[budget]``;
        without one, the default ledger, :meth:`budget_config`) *before* any data is read (an
        over-budget request is refused, :class:`BudgetExceededError`), committed when the
        release is out, and returned if the run fails first; every outcome is appended to
        the audit log. The ledger is checked first: a broken audit chain, a charge refunded
        outside the log, a deleted or replaced ledger is refused
        (:class:`~privmob.errors.LedgerIntegrityError`). The budget belongs to the dataset
        declared in the ledger, with the caps declared there (:func:`privmob.ledger.bind_dataset`);
        the manifest carries the reservation's audit entry (``ledger``) so a rewritten log
        is caught later. With ``write_to`` the release is written (atomically, signed if
        ``[job] signing_key`` is set) before the budget is committed, so a failed write
        publishes nothing and spends nothing; the operator record (exact figures) is stored
        0600 under ``records/`` beside the ledger. With a ``[store]`` section (and ``store``
        true) the period's pseudonymised positions are kept, encrypted, for later runs.
        A job already released for its period with the same configuration is refused
        unless ``force`` (which spends budget again and is recorded). ``progress`` is
        called with the name of each stage as it starts.

        Raises a :class:`~privmob.errors.PrivmobError` subclass on bad configuration,
        input or budget; in that case nothing is released.
        """
        cfg = self.config
        step = progress or (lambda _stage: None)
        release_id = str(uuid.uuid4())
        out = None if write_to is None else Path(write_to)
        audit: AuditLog | None = None
        record: dict[str, Any] = {
            "release_id": release_id, "dataset": cfg.dataset, "key_period": self.key_period,
            "operator": cfg.job.operator, "purpose": cfg.job.purpose,
            "config_sha256": cfg.sha256(), "output": None if out is None else str(out),
            "forced": force,
        }
        try:
            step("check budget ledger")
            ledger = self._open_ledger(out)
            audit = ledger.audit
            dataset, caps = bind_dataset(ledger, requested=cfg.job.dataset, derived=cfg.dataset,
                                         budget=self.budget(), operator=cfg.job.operator,
                                         check_caps=cfg.budget is not None)
            record["dataset"] = dataset
            if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise ReleaseExistsError(
                    f"{out} already holds a release; a period is released once — move it away "
                    "first if you really mean to release again (that spends budget again)"
                )
            key = load_key(cfg.job.key_file, cfg.job.key_env)
            pseudonymiser = Pseudonymiser(key, self.linkage_label)
            del key
            signer = None if cfg.job.signing_key is None else load_private_key(cfg.job.signing_key)
            check_job_keys(cfg)  # the pseudonymisation key is neither the signing nor the store key
            working = self.working_store() if store else None
            step("reserve budget")
            charge = ledger.reserve(
                release_id=release_id, dataset=dataset, days=self.days, cost=self.cost,
                budget=caps, purpose=cfg.job.purpose, operator=cfg.job.operator,
                mechanism=self.noise.mechanism, config_sha256=cfg.sha256(ignore_output=True),
                force=force, output="" if out is None else str(out.resolve()),
                audit_fields={"key_period": self.key_period, "config_sha256": record["config_sha256"]},
            )
        except PrivmobError as exc:
            if audit is not None and not isinstance(exc, LedgerIntegrityError):
                refused = isinstance(exc, BudgetExceededError | ReleaseExistsError)
                with contextlib.suppress(PrivmobError):  # an unwritable log: the error says it
                    audit.append("refused" if refused else "failed", **record,
                                 reason=f"{type(exc).__name__}: {exc}")
            raise
        try:
            released = self._compute(pings, release_id, pseudonymiser, backend, signer, step)
            released = dataclasses.replace(released, manifest={
                **released.manifest, "dataset": dataset, "ledger": charge.anchor(),
                "budget": {"days_charged": list(self.days), **_caps_public(caps)},
            })
            if working is not None:
                step("store positions")
                source = _as_source(pings, backend or cfg.job.backend)
                engine = get_backend(backend or cfg.job.backend)
                working.put(cfg.dataset, self.key_period,
                            engine.positions(source, cfg, pseudonymiser))
            if out is not None:
                step("write release")
                released.write(out, signing_key=signer, reports=cfg.job.reports)
        except BaseException as exc:
            # Our own messages never quote data; anything else is reduced to a category.
            detail = str(exc) if isinstance(exc, PrivmobError) else first_line(exc)
            ledger.cancel(charge, f"{type(exc).__name__}: {detail}", **record)
            raise
        m = released.manifest
        ledger.commit(charge, **record, input_sha256=released.operator_record.get("input_sha256"),
                      cells_released=m["cells_released"],
                      cost={k: v for k, v in self.cost.as_dict().items() if k.endswith("_exact")},
                      days=list(self.days), signed_by=m.get("signature", {}).get("fingerprint"),
                      stored=working is not None)
        step("store operator record")
        write_operator_record(ledger.path.parent / "records" / f"{release_id}.json",
                              {**released.operator_record, "release_id": release_id,
                               "output": record["output"]})
        return released

    def _compute(self, pings: Any, release_id: str, pseudonymiser: Pseudonymiser,
                 backend: str | None, signer: Any,
                 step: Callable[[str], None] = lambda _s: None) -> ReleasedTable:
        cfg = self.config
        timings: dict[str, float] = {}
        step("read, validate, scope, pseudonymise, index, bound, aggregate")
        tick = time.perf_counter()
        source = _as_source(pings, backend or cfg.job.backend)
        engine = get_backend(backend or cfg.job.backend)
        # The input's digest is read alongside the scan (hashlib releases the GIL), not after.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="privmob-sha256") as pool:
            input_sha = pool.submit(source.sha256) if isinstance(source, Pings) else None
            exact = engine.exact_cells(source, cfg, pseudonymiser, self.key_cells)
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
            raise InputError(self._bad_rows_message(engine, source, pseudonymiser, bad))
        if exact.rows_by_status.get(OK, 0) == 0 and not cfg.job.allow_empty:  # pure noise: refuse
            raise InputError(no_usable_rows(exact.rows_by_status, exact.rows_epoch_ms))

        step(f"noise ({self.noise.mechanism}, OpenDP)")
        tick = time.perf_counter()
        cells, windows, noisy, n_keys, threshold_used, delta_used = self._noise(exact.counts)
        timings["mechanism"] = time.perf_counter() - tick
        table = build_table(
            cells, windows, noisy,
            period_start=cfg.period_start,
            window_seconds=cfg.grid.window_seconds,
            noise=self.noise, threshold=threshold_used,
        )
        manifest = self._manifest(release_id, table.height, n_keys, threshold_used, delta_used)
        operator = self._operator_record(release_id, exact, pseudonymiser, input_sha256, source)
        if signer is not None:
            manifest["signature"] = {"algorithm": "Ed25519", "file": SIGNATURE_FILE,
                                     "fingerprint": fingerprint(signer)}
        levels: dict[int, pl.DataFrame] = {}
        if cfg.grid.parent_resolutions:
            step("coarser levels")
            manifest["levels"] = []
            for res in cfg.grid.parent_resolutions:
                parent = exact.levels[res]  # distinct persons per (parent, window): aggregate.py
                lc, lw, ln, lkeys, lthr, ldelta = self._noise(parent, level=res)
                levels[res] = build_table(lc, lw, ln, period_start=cfg.period_start,
                                          window_seconds=cfg.grid.window_seconds,
                                          noise=self.level_noise, threshold=lthr)
                level_cost = self.level_costs[res]
                manifest["levels"].append({
                    "resolution": res, "file": f"release-res{res}.parquet",
                    **{k: v for k, v in level_cost.as_dict().items() if not k.endswith("_exact")},
                    "noise_scale": self.level_noise.scale,
                    "ci95_halfwidth": self.level_noise.ci_halfwidth(0.95),
                    "ci_method": CI_METHOD,
                    "release_threshold": lthr, "threshold_delta": ldelta, "n_keys": lkeys,
                    "cells_released": int(levels[res].height),
                })
        flows_table = None
        if cfg.flows is not None:
            step("flows: stays, trips, bound, noise")
            tick = time.perf_counter()
            from privmob.flows import exact_flows

            flows_exact = exact_flows(engine.fixes(source, cfg, pseudonymiser), cfg, self.flows_units)
            flows_table, manifest["flows"], operator["flows"] = self._release_flows(flows_exact)
            timings["flows"] = time.perf_counter() - tick
        operator["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
        released = ReleasedTable(table=table, manifest=manifest, flows=flows_table,
                                 boundary=cfg.grid.boundary, levels=levels, operator_record=operator)
        if bad and cfg.job.quarantine is not None:
            self._write_quarantine(engine, source, pseudonymiser)
        return released

    def _noise(
        self, counts: pl.DataFrame, *, level: int | None = None,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int32], npt.NDArray[np.int64],
               int | None, int, float]:
        """The released keys only — cells, windows, noisy counts ≥ the threshold — plus the
        number of public keys (None for data-dependent keys), the threshold and its δ."""
        n_win = self.config.n_windows
        noise = self.noise if level is None else self.level_noise
        threshold = self.release_threshold if level is None else self.level_threshold
        key_cells = self.key_cells if level is None else self.level_key_cells(level)
        if key_cells is not None:
            vec = key_vector(counts, key_cells, n_win)
            # Only keys whose noisy count clears τ are ever materialised (sparse.py: the
            # same distribution as noising all of them, without a draw per empty key).
            idx, noisy = sparse.noise_and_suppress(noise, vec, threshold)
            cells = key_cells[idx // n_win]
            windows = (idx % n_win).astype(np.int32)
            return cells, windows, noisy, int(vec.size), threshold, 0.0
        keys = [f"{c}:{w}" for c, w in zip(counts["cell"].to_list(), counts["window"].to_list(),
                                           strict=True)]
        released, threshold, delta = mechanism.threshold_counts(
            noise, keys, counts["count"].to_list(), threshold, self.threshold_delta,
        )
        items = sorted(released.items())
        cells = np.array([int(k.split(":")[0]) for k, _ in items], dtype=np.uint64)
        windows = np.array([int(k.split(":")[1]) for k, _ in items], dtype=np.int32)
        noisy = np.array([v for _, v in items], dtype=np.int64)
        return cells, windows, noisy, None, threshold, delta

    def _release_flows(self, exact: Any) -> tuple[pl.DataFrame, dict[str, Any], dict[str, Any]]:
        """Noise, threshold and suppress the OD counts with the occupancy code path.

        Returns the table, its public manifest part and its operator-record part (the exact
        trip, person and bounding tallies)."""
        from privmob.flows import n_windows as flows_n_windows

        cfg, fc, noise = self.config, self.config.flows, self.flows_noise
        assert fc is not None
        assert noise is not None
        assert self.flows_threshold is not None
        n_win = flows_n_windows(cfg)
        counts = exact.counts
        units = self.flows_units
        if units is not None:
            n_units = len(units.names)
            index = {name: i for i, name in enumerate(units.names)}
            vec = np.zeros(n_units * n_units * n_win, dtype=np.int64)
            o = np.array([index[x] for x in counts["origin"].to_list()], dtype=np.int64)
            d = np.array([index[x] for x in counts["destination"].to_list()], dtype=np.int64)
            vec[(o * n_units + d) * n_win + counts["window"].to_numpy()] = counts["count"].to_numpy()
            keep, values = sparse.noise_and_suppress(noise, vec, self.flows_threshold)
            names = np.array(units.names, dtype=object)
            origin = names[keep // n_win // n_units]
            dest = names[(keep // n_win) % n_units]
            window = (keep % n_win).astype(np.int32)
            n_keys, threshold, delta = int(vec.size), self.flows_threshold, 0.0
            key_label = units.key_label
            coords = {n: (g.representative_point().y, g.representative_point().x)
                      for n, g in zip(units.names, units.geometries, strict=True)}
        else:
            od = counts.select("origin", "destination", "window").iter_rows()
            keys = [f"{o}|{d}|{w}" for o, d, w in od]
            released, threshold, delta = mechanism.threshold_counts(
                noise, keys, counts["count"].to_list(), self.flows_threshold, self.flows_threshold_delta)
            items = sorted(released.items())
            parts = [k.split("|") for k, _ in items]
            origin = np.array([p[0] for p in parts], dtype=object)
            dest = np.array([p[1] for p in parts], dtype=object)
            window = np.array([int(p[2]) for p in parts], dtype=np.int32)
            values, n_keys, key_label = np.array([v for _, v in items], dtype=np.int64), None, "threshold"
            import h3

            coords = {c: h3.cell_to_latlng(c) for c in {*origin.tolist(), *dest.tolist()}}
        half = noise.ci_halfwidth(0.95)
        from privmob.intervals import near_threshold, selection_interval

        ci_low, ci_high = selection_interval(noise, threshold, values, 0.95)  # given publication
        start_us = int(cfg.period_start.timestamp()) * 1_000_000
        table = pl.DataFrame({
            "origin": pl.Series(origin.tolist(), dtype=pl.String),
            "destination": pl.Series(dest.tolist(), dtype=pl.String),
            "window": pl.Series(window, dtype=pl.Int64),
            "count": pl.Series(values, dtype=pl.Int64),
            "ci_low": pl.Series(ci_low, dtype=pl.Int64),
            "ci_high": pl.Series(ci_high, dtype=pl.Int64),
            "near_threshold": pl.Series(near_threshold(values, threshold, half), dtype=pl.Boolean),
        }).select(
            "origin", "destination",
            (pl.lit(start_us) + pl.col("window") * (fc.window_seconds * 1_000_000))
            .cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("window_start"),
            "count", "ci_low", "ci_high", "near_threshold",
        ).with_columns(
            pl.col("origin").replace_strict({k: v[0] for k, v in coords.items()}, return_dtype=pl.Float64)
            .alias("origin_lat"),
            pl.col("origin").replace_strict({k: v[1] for k, v in coords.items()}, return_dtype=pl.Float64)
            .alias("origin_lng"),
            pl.col("destination").replace_strict({k: v[0] for k, v in coords.items()},
                                                 return_dtype=pl.Float64).alias("dest_lat"),
            pl.col("destination").replace_strict({k: v[1] for k, v in coords.items()},
                                                 return_dtype=pl.Float64).alias("dest_lng"),
        ).sort("window_start", "origin", "destination")
        cost = self.flows_cost
        assert cost is not None
        manifest = {
            "units": fc.units if fc.units == "boundary" else f"cells@res{fc.resolution}",
            "unit_property": fc.unit_property if fc.units == "boundary" else None,
            "window": fc.window,
            "windows": n_win,
            "stays": {"radius_m": fc.stay_radius_m, "min_duration": fc.stay_min_duration,
                      "max_gap": fc.stay_max_gap},
            "max_trips_per_window": fc.max_trips_per_window,
            "max_windows": fc.max_windows,
            "sensitivity": {"l1": noise.sensitivity.l1, "l2": noise.sensitivity.l2},
            "mechanism": noise.mechanism,
            **{k: v for k, v in cost.as_dict().items() if not k.endswith("_exact")},
            "noise_scale": noise.scale,
            "noise_std": round(noise.std, 4),
            "ci95_halfwidth": half,
            "ci_method": CI_METHOD,
            "keys": key_label,
            "n_keys": n_keys,
            "threshold": None if units is not None else {"value": threshold, "delta": delta},
            "release_threshold": threshold,
            "bounding": {"rule": FLOWS_BOUNDING_RULE},
            "flows_released": table.height,
        }
        operator = {
            "trips": exact.trips,
            "trips_outside_units": exact.trips_outside_units,
            "persons": exact.persons,
            "bounding": {
                "rule": FLOWS_BOUNDING_RULE,
                "person_od_windows": exact.bounding.person_cell_windows,
                "person_od_windows_kept": exact.bounding.person_cell_windows_kept,
            },
        }
        return table, manifest, operator

    def _manifest(self, release_id: str, released: int, n_keys: int | None, threshold: int,
                  threshold_delta: float) -> dict[str, Any]:
        """The public manifest: public parameters and released (noisy) numbers only.

        Nothing here may depend on the input except through the noisy table (see the module
        docstring); the exact figures go to :meth:`_operator_record`.
        """
        cfg, s = self.config, self.summary()
        return {
            "privmob_version": __version__,
            "release_id": release_id,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "dataset": cfg.dataset,
            "key_period": self.key_period,
            "purpose": cfg.job.purpose,
            "operator": cfg.job.operator,
            "marking": cfg.job.marking,
            "privacy_unit": self.privacy_unit,
            "scope": {"groups": list(cfg.scope.groups), "assume_group": cfg.scope.assume_group},
            "pseudonymisation": {
                "method": "HMAC-SHA256, key derived per linkage period",
                "linkage_period": self.linkage_label,
                "linkage_days": cfg.job.linkage_days,
            },
            "budget": None if cfg.budget is None else {
                "days_charged": list(self.days),
                "epsilon_per_day": cfg.budget.epsilon_per_day,
                "delta_per_day": cfg.budget.delta_per_day,
                "rho_per_day": cfg.budget.rho_per_day,
            },
            "resolution": cfg.grid.resolution,
            "window": cfg.grid.window,
            "windows": cfg.n_windows,
            "period_start": cfg.period_start.isoformat(),
            "period_end": cfg.period_end.isoformat(),
            "timezone": cfg.job.timezone,
            "max_cells_per_window": cfg.privacy.max_cells_per_window,
            "max_windows": cfg.privacy.max_windows,
            "bounding": {"rule": BOUNDING_RULE},
            "sensitivity": {"l1": self.sensitivity.l1, "l2": self.sensitivity.l2},
            "mechanism": self.noise.mechanism,
            "epsilon": s["epsilon"],
            "delta": s["delta"],
            "rho": s["rho"],
            "budget_exact": {k: v for k, v in self.cost.as_dict().items() if k.endswith("_exact")},
            "budget_split": {
                name: {k: v for k, v in c.as_dict().items() if not k.endswith("_exact")}
                for name, c in (("occupancy", self.occupancy_cost), ("flows", self.flows_cost),
                                *((f"occupancy_res{r}", c) for r, c in self.level_costs.items()))
                if c is not None
            },
            "noise_scale": self.noise.scale,
            "noise_std": s["noise_std"],
            "ci_level": 0.95,
            "ci95_halfwidth": s["ci95_halfwidth"],
            "ci_method": CI_METHOD,
            "keys": self.boundary.key_label if self.boundary is not None else "threshold",
            "key_cells": s["key_cells"],
            "n_keys": n_keys,
            "noise_sampling": sparse.DESCRIPTION if self.public_keys else (
                f"OpenDP make_{self.noise.mechanism}_threshold: noised key by key"),
            "threshold": None if self.public_keys else {
                "value": threshold, "delta": threshold_delta,
                "mechanism": f"OpenDP make_{self.noise.mechanism}_threshold",
            },
            "min_count": cfg.privacy.min_count,
            "release_threshold": threshold,
            "max_spurious_rate": cfg.privacy.max_spurious_rate,
            "spurious_rate": s["spurious_rate"],
            "cells_released": released,
            "cells_suppressed": None if n_keys is None else n_keys - released,
            "stages": list(self.stages),
        }

    @property
    def privacy_unit(self) -> str:
        """What one unit of the privacy guarantee covers, in words (manifest, report)."""
        days = self.config.job.period_days
        if days == 1:
            return "one person over one release period (person-day)"
        return f"one person over one release period of {days} days (person-period)"

    def _operator_record(self, release_id: str, exact: Any, pseudonymiser: Pseudonymiser,
                         input_sha: str | None, source: Any) -> dict[str, Any]:
        """The exact, non-DP figures of a run, for the operator only (never published).

        Dropped identifier columns are named by 1-based position and kind, never by header
        text: a header can itself be data (a headerless file's first row).
        """
        cfg = self.config
        by_status = exact.rows_by_status
        record: dict[str, Any] = {
            "release_id": release_id,
            "dataset": cfg.dataset,
            "key_period": self.key_period,
            "note": ("exact figures of the input and the run, not differentially private: "
                     "for the operator only, never to be published with the release"),
            "input_sha256": input_sha,
            "config_sha256": cfg.sha256(),
            "key_id": pseudonymiser.key_id,
            "rows_in": exact.rows_in,
            "rows_bad": {r: n for r, n in sorted(by_status.items()) if r in BAD_REASONS},
            "rows_out_of_scope": by_status.get(OUT_OF_SCOPE, 0),
            "rows_out_of_period": by_status.get(OUT_OF_PERIOD, 0),
            "rows_outside_boundary": by_status.get("outside_boundary", 0),
            "rows_used": by_status.get(OK, 0),
            "persons": exact.persons,
            "identifier_columns_dropped": dropped_identifiers(
                exact.pii, exact.identifier_names, _source_columns(source)),
            "bounding": exact.bounding.as_dict(),
        }
        by_group = getattr(exact, "out_of_scope_by_group", None)
        if by_group is not None:
            record["out_of_scope_by_group"] = by_group
        return record

    def _bad_rows_message(self, engine: Any, source: Any, pseudonymiser: Pseudonymiser,
                          bad: dict[str, int]) -> str:
        first = engine.bad_rows(source, self.config, pseudonymiser, limit=5)
        where = "; ".join(
            f"row {row}: {BAD_REASONS[reason][0]} {BAD_REASONS[reason][1]}"
            for row, reason in first.select("row", "reason").iter_rows()
        )
        counts = ", ".join(f"{n} {r}" for r, n in sorted(bad.items()))
        return (
            f"{sum(bad.values())} bad row(s) ({counts}); first: {where}. "
            "Fix the input, or set [job] on_bad_rows = \"quarantine\" to count and set them aside"
        )

    def _write_quarantine(self, engine: Any, source: Any, pseudonymiser: Pseudonymiser) -> None:
        """Bad rows, ids pseudonymised, for the operator: private data, mode 0600."""
        path = self.config.job.quarantine
        assert path is not None
        rows = engine.bad_rows(source, self.config, pseudonymiser, limit=None)
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
