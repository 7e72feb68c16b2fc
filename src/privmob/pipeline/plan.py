"""The release plan: everything decided before any data is read, and the run that follows.

``plan(config)`` fixes every released table (:mod:`privmob.privacy.tablespec`: keys,
sensitivity, OpenDP noise, threshold, cost — the budget split) and can ``explain()`` all of
it while spending nothing. ``Plan.release(pings)`` charges the ledger
(:mod:`privmob.pipeline.charging`), runs the pipeline once (:mod:`privmob.pipeline.run`:
every table through :func:`privmob.privacy.noising.noise_table`, the manifest and operator
record of :mod:`privmob.release.manifest`) and publishes the folder
(:mod:`privmob.pipeline.publish`). It returns the only public result type,
:class:`ReleasedTable`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privmob.config import AdaptiveConfig, BudgetConfig, JobConfig
from privmob.errors import ConfigError, PrivmobError
from privmob.governance.audit import AuditLog
from privmob.governance.ledger import Budget, Ledger, bind_dataset, budget_from
from privmob.governance.signing import load_private_key
from privmob.governance.store import WorkingStore
from privmob.movement.flows import Units, load_units
from privmob.pipeline import charging, run
from privmob.pipeline.defaults import Choice, applies, choose
from privmob.pipeline.explain import explain
from privmob.pipeline.publish import check_reports, publish
from privmob.privacy.accountant import PrivacyCost
from privmob.privacy.keys import Boundary, load_boundary
from privmob.privacy.mechanism import NoiseModel, Sensitivity
from privmob.privacy.tablespec import TableSpecs, table_specs
from privmob.privacy.tree import TreeParams
from privmob.release.manifest import bind_to_ledger
from privmob.release.table import ReleasedTable
from privmob.stages.ingest import Pings, read_pings
from privmob.stages.pseudonymise import Pseudonymiser, check_job_keys, load_key

__all__ = ["Plan", "plan", "release_flows"]

STAGES = ("ingest", "pii-scan", "scope", "pseudonymise", "index", "bound", "aggregate")


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
    choices: tuple[Choice, ...] = ()
    g = config.grid
    if applies(config):
        assert g.boundary is not None
        coarsest = config.adaptive.min_resolution if config.adaptive else AdaptiveConfig().min_resolution
        roots = load_boundary(g.boundary, g.boundary_where, g.boundary_crs).cells(coarsest).size
        config, choices = choose(config, roots)
    p = Plan(config, choices)
    _ = p.specs, config.period_start  # fail now, not after reading data
    return p


def release_flows(pings: object, config: JobConfig, **options: object) -> ReleasedTable:
    """Release occupancy and origin–destination flows of ``pings`` in one budgeted run.

    ``options`` are ``[flows]`` settings (``units``, ``boundary``, ``epsilon``,
    ``max_trips_per_window``, ...) added to ``config``; the result's ``.flows`` holds the
    OD table.

    Examples
    --------
    >>> release = pm.flows("pings.parquet", cfg, units="boundary",  # doctest: +SKIP
    ...                    boundary="districts.geojson", epsilon=0.5)
    >>> release.flows.head()  # doctest: +SKIP
    """
    overrides = {f"flows__{k}": v for k, v in options.items()}
    if config.flows is None and "flows__units" not in overrides:
        overrides["flows__units"] = "cells"
    return plan(config.with_overrides(**overrides)).release(pings)


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated, calibrated release job. Make it with :func:`plan`."""

    config: JobConfig
    #: Settings plan() chose from public parameters (:mod:`privmob.pipeline.defaults`).
    choices: tuple[Choice, ...] = ()

    # -- what is fixed before reading data ----------------------------------------------
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

    @property
    def tree_params(self) -> TreeParams:
        """PrivTree's parameters for an adaptive release (the ε, m_t and θ of ``specs``)."""
        a, spec = self.config.adaptive, self.specs.partition
        if a is None or spec is None:
            raise ConfigError("this job has no [adaptive] section: it draws no partition")
        return TreeParams(min_resolution=a.min_resolution, max_resolution=self.config.grid.resolution,
                          epsilon=float(spec.cost.epsilon), cells_per_person=a.cells_per_person,
                          theta=spec.threshold)

    @cached_property
    def flows_units(self) -> Units | None:
        """The flows units (districts) when ``[flows] units = "boundary"``."""
        fc = self.config.flows
        if fc is None or fc.units != "boundary":
            return None
        assert fc.boundary is not None
        return load_units(fc.boundary, fc.unit_property, fc.boundary_crs)

    @cached_property
    def specs(self) -> TableSpecs:
        """Every table this plan releases, with its share of the budget (the one split)."""
        return table_specs(self.config, key_cells=self.key_cells, units=self.flows_units,
                           key_label="threshold" if self.boundary is None else self.boundary.key_label)

    @property
    def sensitivity(self) -> Sensitivity:
        return self.specs.occupancy.sensitivity

    @property
    def noise(self) -> NoiseModel:
        return self.specs.occupancy.noise

    @property
    def release_threshold(self) -> int:
        """max(min_count as it holds under noise, the noise threshold that keeps spurious
        cells rare) — and, with data-dependent keys, at least the threshold OpenDP's δ for
        key selection needs (``privacy.tablespec.public_threshold``)."""
        return self.specs.occupancy.threshold

    @property
    def threshold_delta(self) -> float:
        """δ reserved for selecting data-dependent keys (0 with public keys)."""
        return self.specs.occupancy.selection_delta

    @property
    def cost(self) -> PrivacyCost:
        """What a release under this plan spends, at most: all its tables together."""
        return self.specs.cost

    @property
    def key_period(self) -> str:
        job = self.config.job
        assert job.period is not None
        return job.period.isoformat() + ("" if job.period_days == 1 else f"+{job.period_days}d")

    def summary(self) -> dict[str, Any]:
        """The numbers behind :meth:`explain`, as a dict."""
        cfg, noise, thr = self.config, self.noise, self.release_threshold
        n_keys, spurious = self.specs.occupancy.n_keys, noise.tail(thr)
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
        stages: tuple[str, ...] = STAGES
        if self.config.adaptive is not None:  # the partition is drawn before the pairs are bounded
            stages = (*STAGES[:5], "partition:privtree (laplace)", "bound-pairs", *STAGES[6:])
        return (*stages, f"mechanism:{self.noise.mechanism} ({keys})", "suppress", "release")

    def explain(self) -> str:
        """What the release will do and what its numbers can bear. Spends nothing."""
        return explain(self)

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

    def release(self, pings: Any, *, backend: str | None = None,
                write_to: str | Path | None = None, store: bool = True, force: bool = False,
                progress: Callable[[str], None] | None = None) -> ReleasedTable:
        """Run the job on ``pings`` (a path, a frame or :func:`read_pings` handle).

        Every release is charged (:mod:`privmob.pipeline.charging`): the ledger (``[budget]``, else the
        default one, :meth:`budget_config`) is checked first — a broken audit chain, a charge
        refunded outside the log, a deleted or replaced ledger is refused
        (:class:`~privmob.errors.LedgerIntegrityError`); the cost is reserved *before* any
        data is read (over budget: :class:`BudgetExceededError`) against the dataset and caps
        declared in the ledger (:func:`privmob.governance.ledger.bind_dataset`), committed when the
        release is out and returned if the run fails first; every outcome is audited, and the
        manifest carries the reservation's audit entry (``ledger``). With ``write_to`` the
        release is published (:func:`privmob.pipeline.publish.publish`: atomically, with its reports,
        signed if ``[job] signing_key`` is set) before the commit, so a failed write spends
        nothing; the operator record (exact figures) goes 0600 under ``records/`` beside the
        ledger. With ``[store]`` (and ``store``) the period's pseudonymised positions are kept,
        encrypted. A period already released with the same configuration is refused unless
        ``force`` (spends again, recorded). ``progress`` gets each stage's name as it starts.
        On bad configuration, input or budget a :class:`~privmob.errors.PrivmobError` is
        raised and nothing is released.
        """
        check_reports(write_to, self.config.job.reports)  # no [report] extra: refuse before the ledger
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
            ledger = charging.open_ledger(self.budget_config(), out)
            audit = ledger.audit
            dataset, caps = bind_dataset(ledger, requested=cfg.job.dataset, derived=cfg.dataset,
                                         budget=self.budget(), operator=cfg.job.operator,
                                         check_caps=cfg.budget is not None)
            record["dataset"] = dataset
            charging.refuse_existing(out)
            key = load_key(cfg.job.key_file, cfg.job.key_env)
            pseudonymiser = Pseudonymiser(key, self.linkage_label)
            del key
            signer = None if cfg.job.signing_key is None else load_private_key(cfg.job.signing_key)
            check_job_keys(cfg)  # the pseudonymisation key is neither the signing nor the store key
            working = self.working_store() if store else None
            step("reserve budget")
            charge = charging.reserve(self, ledger, record, dataset, caps, out=out, force=force)
        except PrivmobError as exc:
            charging.audit_refusal(audit, exc, record)
            raise
        try:
            released = self._compute(pings, release_id, pseudonymiser, backend, signer, step)
            released = dataclasses.replace(released, manifest=bind_to_ledger(
                released.manifest, dataset, charge.anchor(), self.days, caps))
            if working is not None:
                step("store positions")
                run.store_positions(self, pings, backend, working, pseudonymiser)
            if out is not None:
                step("write release")
                publish(released, out, reports=cfg.job.reports, signing_key=signer)
        except BaseException as exc:
            charging.cancel(ledger, charge, exc, record)
            raise
        charging.settle(ledger, charge, released, record, cost=self.cost, days=self.days,
                        stored=working is not None, step=step)
        return released

    def _compute(self, pings: Any, release_id: str, pseudonymiser: Pseudonymiser,
                 backend: str | None, signer: Any, step: Callable[[str], None]) -> ReleasedTable:
        return run.compute(self, pings, release_id, pseudonymiser, backend, signer, step)

    @property
    def privacy_unit(self) -> str:
        """What one unit of the privacy guarantee covers, in words (manifest, report)."""
        days = self.config.job.period_days
        if days == 1:
            return "one person over one release period (person-day)"
        return f"one person over one release period of {days} days (person-period)"
