"""The two accounts of a release: the public manifest, and the operator's private record.

What a release publishes and what only the operator sees
--------------------------------------------------------
Every key of the signed ``manifest.json`` (:func:`build_manifest`) is either a public
parameter fixed before any data is read (job label, period, purpose, operator, marking,
unit of privacy, scope groups, pseudonymisation *method* and linkage period, budget limits,
grid, bounds, sensitivity, mechanism, ε/δ/ρ and their split, noise scale and intervals,
keys, thresholds, stages) or a function of the noisy, suppressed tables alone
(``cells_released``, ``cells_suppressed``, a level's ``cells_released``, ``flows_released``,
file digests). It has one section per table: occupancy at the top level (as it always was),
``levels`` (one entry per parent resolution) and ``flows``. Nothing that depends on the
exact input may appear: not row or person counts, bounding tallies, trip counts, timings,
the input's digest, the configuration digest, the pseudonym key id, nor column names of the
input (a header can be data). Those go to the *operator record* (:func:`operator_record`),
which stays in memory (``ReleasedTable.operator_record``) or is stored 0600 beside the
ledger (:func:`privmob.release.table.write_operator_record`) and never enters the release folder
or its reports. ``tests/system/test_release_leaks.py`` checks the rule by differencing.

Reports read a manifest through :class:`ManifestView`: typed fields, tolerant of older
manifests that lack some of them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from privmob._version import __version__
from privmob.movement.flows import n_windows
from privmob.privacy import noising, sparse
from privmob.privacy.intervals import CI_METHOD
from privmob.stages.ingest import BAD_REASONS
from privmob.stages.scope import OK, OUT_OF_PERIOD, OUT_OF_SCOPE

if TYPE_CHECKING:
    from privmob.governance.ledger import Budget
    from privmob.pipeline.plan import Plan
    from privmob.privacy.accountant import PrivacyCost
    from privmob.privacy.noising import NoisyTable
    from privmob.privacy.tablespec import TableSpec
    from privmob.privacy.tree import Partition

__all__ = ["BOUNDING_RULE", "FLOWS_BOUNDING_RULE", "KEPT_COLUMNS", "FlowsView", "ManifestView",
           "bind_to_ledger", "build_manifest", "dropped_identifiers", "identifier_kind", "operator_record"]

#: How bounding chooses what a person keeps (a public rule; the tallies are operator-only).
BOUNDING_RULE = "most dwell minutes first; ties by keyed pseudonym XOR id"
#: How flows bounding chooses a person's trips (public rule).
FLOWS_BOUNDING_RULE = "longest trips first; ties by keyed pseudonym XOR OD hash"
#: Input columns whose values travel on (only group: the rest are parsed or hashed).
KEPT_COLUMNS = ("group",)


def _public(cost: PrivacyCost) -> dict[str, Any]:
    """ε, δ, ρ as floats (the exact fractions go to ``budget_exact`` only)."""
    return {k: v for k, v in cost.as_dict().items() if not k.endswith("_exact")}


# -- the public manifest -------------------------------------------------------------------


def build_manifest(plan: Plan, release_id: str, released: Mapping[str, NoisyTable], *,
                   signature: Mapping[str, Any] | None = None,
                   partition: Partition | None = None) -> dict[str, Any]:
    """The public manifest of a release: its parameters and released (noisy) numbers only.

    ``released`` maps each spec's name to its :class:`~privmob.privacy.noising.NoisyTable`.
    Nothing here may depend on the input except through those tables (module docstring).
    An adaptive release with levels (``partition`` and ``[grid] parent_resolutions``) says
    its tables were made consistent (``consistency``), that every key was noised
    (``noise_sampling``) and how its intervals read (``ci_method``); each level says it
    counts ``pairs`` (:func:`privmob.privacy.noising.noise_consistent`).
    """
    cfg, s, specs = plan.config, plan.summary(), plan.specs
    occ = released[specs.occupancy.name]
    spec = occ.spec
    manifest: dict[str, Any] = {
        "privmob_version": __version__,
        "release_id": release_id,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": cfg.dataset,
        "key_period": plan.key_period,
        "purpose": cfg.job.purpose,
        "operator": cfg.job.operator,
        "marking": cfg.job.marking,
        "privacy_unit": plan.privacy_unit,
        "scope": {"groups": list(cfg.scope.groups), "assume_group": cfg.scope.assume_group},
        "pseudonymisation": {
            "method": "HMAC-SHA256, key derived per linkage period",
            "linkage_period": plan.linkage_label,
            "linkage_days": cfg.job.linkage_days,
        },
        "budget": None if cfg.budget is None else {
            "days_charged": list(plan.days),
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
        "sensitivity": {"l1": spec.sensitivity.l1, "l2": spec.sensitivity.l2},
        "mechanism": spec.noise.mechanism,
        "epsilon": s["epsilon"],
        "delta": s["delta"],
        "rho": s["rho"],
        "budget_composition": s["composition"],  # zcdp | zcdp+basic | basic: how ε was found
        "budget_exact": {k: v for k, v in specs.cost.as_dict().items() if k.endswith("_exact")},
        "budget_split": {t.name: _public(t.cost) for t in _split_order(specs.tables)},
        "noise_scale": spec.noise.scale,
        "noise_std": s["noise_std"],
        "ci_level": 0.95,
        "ci95_halfwidth": s["ci95_halfwidth"],
        "ci_method": CI_METHOD,
        "keys": spec.keys.label,
        "key_cells": s["key_cells"],
        "n_keys": spec.n_keys,
        "noise_sampling": sparse.DESCRIPTION if spec.public else (
            f"OpenDP make_{spec.noise.mechanism}_threshold: noised key by key"),
        "threshold": None if spec.public else {
            "value": spec.threshold, "delta": spec.threshold_delta,
            "mechanism": f"OpenDP make_{spec.noise.mechanism}_threshold",
        },
        "min_count": cfg.privacy.min_count,
        "release_threshold": spec.threshold,
        "max_spurious_rate": cfg.privacy.max_spurious_rate,
        "max_spurious_cells": cfg.privacy.max_spurious_cells,
        "max_below_min_rate": cfg.privacy.max_below_min_rate,
        "spurious_rate": s["spurious_rate"],
        "cells_released": occ.released,
        "cells_suppressed": occ.suppressed,
        "stages": list(plan.stages),
    }
    if signature is not None:
        manifest["signature"] = dict(signature)
    if partition is not None:
        manifest["resolution"] = "adaptive"
        manifest["resolutions"] = [int(partition.resolutions.min()), int(partition.resolutions.max())]
        manifest["adaptive"] = _adaptive_section(plan, partition)
        # the per-window caps do not apply: each person has max_pairs pairs per period
        manifest["max_cells_per_window"] = manifest["max_windows"] = None
    if specs.levels:
        consistent = partition is not None  # adaptive: levels count pairs, made consistent
        manifest["levels"] = [_level_section(res, released[t.name], consistent)
                              for res, t in specs.levels.items()]
        if consistent:
            manifest["consistency"] = noising.CONSISTENCY
            manifest["noise_sampling"] = noising.DENSE_SAMPLING
            manifest["ci_method"] = noising.CONSISTENT_CI_METHOD
    if specs.flows is not None:
        manifest["flows"] = _flows_section(plan, released[specs.flows.name])
    return manifest


def _adaptive_section(plan: Plan, partition: Partition) -> dict[str, Any]:
    """The partition (public: drawn with its own budget) and how it was drawn."""
    a, spec = plan.config.adaptive, plan.specs.partition
    assert a is not None
    assert spec is not None
    res, n = np.unique(partition.resolutions, return_counts=True)
    return {
        "method": "PrivTree over the H3 hierarchy (Zhang et al. 2016), discrete Laplace (OpenDP)",
        "min_resolution": a.min_resolution,
        "max_resolution": plan.config.grid.resolution,
        "roots": spec.n_keys,
        "epsilon": float(spec.cost.epsilon),
        "cells_per_person": a.cells_per_person,
        "noise_scale": spec.noise.scale,
        "bias_per_level": partition.bias,
        "split_threshold": spec.threshold,
        "max_pairs": a.max_pairs,
        "max_spurious_cells": plan.config.privacy.max_spurious_cells,
        "leaves": int(partition.leaves.size),
        "leaves_by_resolution": {str(int(r)): int(c) for r, c in zip(res, n, strict=True)},
        "leaf_cells": [f"{int(c):x}" for c in partition.leaves],
    }


def _split_order(tables: Sequence[TableSpec]) -> list[TableSpec]:
    """``budget_split`` lists occupancy, flows, then the levels (as manifests always did)."""
    return sorted(tables, key=lambda t: {"occupancy": 0, "flows": 1, "partition": 3}.get(t.name, 2))


def _level_section(resolution: int, table: NoisyTable, consistent: bool = False) -> dict[str, Any]:
    """One parent level. ``consistent`` (an adaptive release): the level counts kept
    (person, leaf, window) pairs under each cell — the sum of its leaves — and its values
    were made consistent with the leaves' before suppression."""
    spec = table.spec
    section: dict[str, Any] = {
        "resolution": resolution, "file": f"release-res{resolution}.parquet",
        **_public(spec.cost),
        "noise_scale": spec.noise.scale,
        "ci95_halfwidth": spec.noise.ci_halfwidth(0.95),
        "ci_method": CI_METHOD,
        "release_threshold": spec.threshold, "threshold_delta": spec.threshold_delta,
        "n_keys": spec.n_keys,
        "cells_released": table.released,
    }
    if consistent:
        section.update({
            "counts": "pairs", "consistency": noising.CONSISTENCY,
            "ci_method": noising.CONSISTENT_CI_METHOD, "mechanism": spec.noise.mechanism,
            "sensitivity": {"l1": spec.sensitivity.l1, "l2": spec.sensitivity.l2}})
    return section


def _flows_section(plan: Plan, table: NoisyTable) -> dict[str, Any]:
    fc, spec = plan.config.flows, table.spec
    assert fc is not None
    noise = spec.noise
    return {
        "units": fc.units if fc.units == "boundary" else f"cells@res{fc.resolution}",
        "unit_property": fc.unit_property if fc.units == "boundary" else None,
        "window": fc.window,
        "windows": n_windows(plan.config),
        "stays": {"radius_m": fc.stay_radius_m, "min_duration": fc.stay_min_duration,
                  "max_gap": fc.stay_max_gap},
        "max_trips_per_window": fc.max_trips_per_window,
        "max_windows": fc.max_windows,
        "sensitivity": {"l1": noise.sensitivity.l1, "l2": noise.sensitivity.l2},
        "mechanism": noise.mechanism,
        **_public(spec.cost),
        "noise_scale": noise.scale,
        "noise_std": round(noise.std, 4),
        "ci95_halfwidth": noise.ci_halfwidth(0.95),
        "ci_method": CI_METHOD,
        "keys": spec.keys.label,
        "n_keys": spec.n_keys,
        "threshold": None if spec.public else {"value": spec.threshold, "delta": spec.threshold_delta},
        "release_threshold": spec.threshold,
        "bounding": {"rule": FLOWS_BOUNDING_RULE},
        "flows_released": table.released,
    }


def bind_to_ledger(manifest: Mapping[str, Any], dataset: str, anchor: Mapping[str, Any],
                   days: Sequence[str], caps: Budget) -> dict[str, Any]:
    """The manifest of a charged release: the ledger's dataset, the reservation's audit
    entry (``ledger``, so a rewritten log is caught later) and the per-day caps that bound it."""
    return {**manifest, "dataset": dataset, "ledger": dict(anchor), "budget": {
        "days_charged": list(days),
        "epsilon_per_day": None if caps.epsilon is None else float(caps.epsilon),
        "delta_per_day": float(caps.delta),
        "rho_per_day": None if caps.rho is None else float(caps.rho)}}


# -- the operator record (exact, private) ----------------------------------------------------


def operator_record(plan: Plan, release_id: str, exact: Any, key_id: str, input_sha: str | None,
                    columns: Sequence[str] | None) -> dict[str, Any]:
    """The exact, non-DP figures of a run, for the operator only (never published).

    Dropped identifier columns are named by 1-based position and kind, never by header
    text: a header can itself be data (a headerless file's first row).
    """
    cfg = plan.config
    by_status = exact.rows_by_status
    record: dict[str, Any] = {
        "release_id": release_id,
        "dataset": cfg.dataset,
        "key_period": plan.key_period,
        "note": ("exact figures of the input and the run, not differentially private: "
                 "for the operator only, never to be published with the release"),
        "input_sha256": input_sha,
        "config_sha256": cfg.sha256(),
        "key_id": key_id,
        "rows_in": exact.rows_in,
        "rows_bad": {r: n for r, n in sorted(by_status.items()) if r in BAD_REASONS},
        "rows_out_of_scope": by_status.get(OUT_OF_SCOPE, 0),
        "rows_out_of_period": by_status.get(OUT_OF_PERIOD, 0),
        "rows_outside_boundary": by_status.get("outside_boundary", 0),
        "rows_used": by_status.get(OK, 0),
        "persons": exact.persons,
        "identifier_columns_dropped": dropped_identifiers(exact.pii, exact.identifier_names, columns),
        "bounding": exact.bounding.as_dict(),
    }
    by_group = getattr(exact, "out_of_scope_by_group", None)
    if by_group is not None:
        record["out_of_scope_by_group"] = by_group
    return record


def flows_operator_record(exact: Any) -> dict[str, Any]:
    """The exact trip, person and bounding tallies of the flows table (operator only)."""
    return {
        "trips": exact.trips,
        "trips_outside_units": exact.trips_outside_units,
        "persons": exact.persons,
        "bounding": {
            "rule": FLOWS_BOUNDING_RULE,
            "person_od_windows": exact.bounding.person_cell_windows,
            "person_od_windows_kept": exact.bounding.person_cell_windows_kept,
        },
    }


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


# -- reading a manifest ----------------------------------------------------------------------


def _float(value: Any) -> float | None:
    """A JSON number as a float (None for anything else, booleans and non-finite ones too)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _float(value)
    return None if number is None else int(value)


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _text(value: Any) -> str | None:
    """A JSON string (None for anything else)."""
    return value if isinstance(value, str) else None


def _section(m: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """A nested object of the manifest (empty when absent or not an object)."""
    value = m.get(key)
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def _resolutions(value: Any) -> tuple[int, int] | None:
    """``[min, max]`` H3 resolutions (None for anything else)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    low, high = _int(value[0]), _int(value[1])
    return (low, high) if low is not None and high is not None and 0 <= low <= high <= 15 else None


def _h3_cells(value: Any) -> tuple[str, ...]:
    """H3 cells listed as hex strings or integers, as H3 strings (empty for anything else)."""
    if not isinstance(value, list | tuple):
        return ()
    return tuple(format(v, "x") if isinstance(v, int) and not isinstance(v, bool) else str(v).lower()
                 for v in value if isinstance(v, str | int))


@dataclass(frozen=True)
class FlowsView:
    """The ``flows`` section of a manifest, typed."""

    units: str | None
    unit_property: str | None
    window: str | None
    windows: int | None
    mechanism: str | None
    epsilon: float | None
    delta: float | None
    rho: float | None
    ci95_halfwidth: int | None
    release_threshold: int | None
    keys: str | None
    flows_released: int | None
    max_trips_per_window: int | None
    max_windows: int | None
    stays: Mapping[str, Any] | None

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> FlowsView:
        stays = m.get("stays")
        return cls(
            units=_str(m.get("units")), unit_property=_str(m.get("unit_property")),
            window=_str(m.get("window")), windows=_int(m.get("windows")),
            mechanism=_str(m.get("mechanism")), epsilon=_float(m.get("epsilon")),
            delta=_float(m.get("delta")), rho=_float(m.get("rho")),
            ci95_halfwidth=_int(m.get("ci95_halfwidth")),
            release_threshold=_int(m.get("release_threshold")), keys=_str(m.get("keys")),
            flows_released=_int(m.get("flows_released")),
            max_trips_per_window=_int(m.get("max_trips_per_window")),
            max_windows=_int(m.get("max_windows")),
            stays=stays if isinstance(stays, Mapping) else None,
        )


@dataclass(frozen=True)
class ManifestView:
    """Typed, read-only access to a release manifest, for reports.

    Every field is None when the manifest lacks it or holds something of another type (a
    report of an older or hand-edited release still draws). ``raw`` is the mapping itself.
    """

    raw: Mapping[str, Any]
    release_id: str | None
    dataset: str | None
    key_period: str | None
    purpose: str | None
    marking: str | None
    privmob_version: str | None
    timezone: str | None
    period_start: str | None
    resolution: int | None
    window: str | None
    windows: int | None
    mechanism: str | None
    epsilon: float | None
    delta: float | None
    rho: float | None
    min_count: int | None
    max_cells_per_window: int | None
    release_threshold: int | None
    ci95_halfwidth: int | None
    keys: str
    key_cells: int | None
    n_keys: int | None
    signature_fingerprint: str | None
    flows: FlowsView | None
    # What the HTML report's manifest card shows besides (defaults: an older manifest).
    operator: str | None = None
    privacy_unit: str | None = None
    created_at: str | None = None
    noise_std: float | None = None
    noise_scale: float | None = None
    spurious_rate: float | None = None
    cells_released: int | None = None
    cells_suppressed: int | None = None
    max_windows: int | None = None
    #: (L1, L2); None when the manifest has no ``sensitivity`` section.
    sensitivity: tuple[float | None, float | None] | None = None
    bounding_rule: str | None = None
    scope_groups: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    #: (method, linkage period); None when the manifest has no ``pseudonymisation`` section.
    pseudonymisation: tuple[str | None, str | None] | None = None
    #: The days a ledger was charged; None when the release was not charged to a ledger.
    charged_days: tuple[str, ...] | None = None
    epsilon_per_day: float | None = None
    delta_per_day: float | None = None
    rho_per_day: float | None = None
    signature_algorithm: str | None = None
    #: (file name, sha256) in the manifest's order.
    files: tuple[tuple[str, str], ...] = ()
    #: An adaptive release (``"resolution": "adaptive"``): its cells mix H3 resolutions.
    adaptive: bool = False
    #: (coarsest, finest) resolution of an adaptive release (``"resolutions": [min, max]``).
    resolutions: tuple[int, int] | None = None
    #: The public partition of an adaptive release (every leaf cell, released or not), as
    #: H3 strings; empty when the manifest does not list it.
    partition: tuple[str, ...] = ()
    #: An adaptive release's bound: (cell, window) pairs per person over the period.
    max_pairs: int | None = None

    @classmethod
    def of(cls, m: Mapping[str, Any]) -> ManifestView:
        signature, flows = m.get("signature"), m.get("flows")
        sens, pseudo = _section(m, "sensitivity"), _section(m, "pseudonymisation")
        ledger, charged = _section(m, "budget"), isinstance(m.get("budget"), Mapping)
        return cls(
            raw=m, release_id=_str(m.get("release_id")), dataset=_str(m.get("dataset")),
            key_period=_str(m.get("key_period")), purpose=_str(m.get("purpose")),
            marking=_str(m.get("marking")), privmob_version=_str(m.get("privmob_version")),
            timezone=_str(m.get("timezone")),
            period_start=m.get("period_start") if isinstance(m.get("period_start"), str) else None,
            resolution=_int(m.get("resolution")),
            window=m.get("window") if isinstance(m.get("window"), str) else None,
            windows=_int(m.get("windows")), mechanism=_str(m.get("mechanism")),
            epsilon=_float(m.get("epsilon")), delta=_float(m.get("delta")), rho=_float(m.get("rho")),
            min_count=_int(m.get("min_count")), max_cells_per_window=_int(m.get("max_cells_per_window")),
            release_threshold=_int(m.get("release_threshold")),
            ci95_halfwidth=_int(m.get("ci95_halfwidth")), keys=str(m.get("keys") or ""),
            key_cells=_int(m.get("key_cells")), n_keys=_int(m.get("n_keys")),
            signature_fingerprint=_str(signature.get("fingerprint"))
            if isinstance(signature, Mapping) else None,
            flows=FlowsView.of(flows) if isinstance(flows, Mapping) else None,
            operator=_str(m.get("operator")), privacy_unit=_str(m.get("privacy_unit")),
            created_at=_text(m.get("created_at")),
            noise_std=_float(m.get("noise_std")), noise_scale=_float(m.get("noise_scale")),
            spurious_rate=_float(m.get("spurious_rate")),
            cells_released=_int(m.get("cells_released")), cells_suppressed=_int(m.get("cells_suppressed")),
            max_windows=_int(m.get("max_windows")),
            sensitivity=(_float(sens.get("l1")), _float(sens.get("l2"))) if sens else None,
            bounding_rule=_str(_section(m, "bounding").get("rule")),
            scope_groups=_strings(_section(m, "scope").get("groups")),
            stages=_strings(m.get("stages")),
            pseudonymisation=(_str(pseudo.get("method")), _str(pseudo.get("linkage_period")))
            if pseudo else None,
            charged_days=_strings(ledger.get("days_charged")) if charged else None,
            epsilon_per_day=_float(ledger.get("epsilon_per_day")),
            delta_per_day=_float(ledger.get("delta_per_day")),
            rho_per_day=_float(ledger.get("rho_per_day")),
            signature_algorithm=_str(signature.get("algorithm")) if isinstance(signature, Mapping) else None,
            files=tuple((str(k), str(v)) for k, v in _section(m, "files").items()),
            adaptive=m.get("resolution") == "adaptive", resolutions=_resolutions(m.get("resolutions")),
            partition=_h3_cells(_section(m, "adaptive").get("leaf_cells")),
            max_pairs=_int(_section(m, "adaptive").get("max_pairs")),
        )

    @property
    def public_keys(self) -> bool:
        return self.keys.startswith("public:")
