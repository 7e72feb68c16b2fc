"""A plan in words (``Plan.explain``): what a release will do and what its numbers can bear.

Kept apart from :mod:`privmob.pipeline.plan` so the plan holds decisions and this module
the one place they are put into sentences for the operator (and the CLI's ``explain``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from privmob._version import __version__

if TYPE_CHECKING:
    from privmob.pipeline.plan import Plan

__all__ = ["explain"]


def explain(plan: Plan) -> str:
    """The plan in words: stages, bounding, noise, keys, suppression, detectability,
    flows and budget, each with the numbers behind it. Reads no data, spends nothing."""
    s, cfg = plan.summary(), plan.config
    p = cfg.privacy
    occ = plan.specs.occupancy.cost
    lines = [
        f"privmob {__version__} — release plan for {cfg.dataset!r}, period {plan.key_period} "
        f"({cfg.job.timezone})",
        f"  purpose {cfg.job.purpose!r}, operator {cfg.job.operator!r}",
        "  stages: " + " → ".join(plan.stages),
        f"  scope: key groups {', '.join(cfg.scope.groups)}"
        + (f" (whole input assumed {cfg.scope.assume_group!r})" if cfg.scope.assume_group else ""),
    ]
    if plan.choices:
        lines.append("  chosen from public parameters (ε, period, boundary, expected persons; ADR 0008):")
        lines += [f"    {c.setting} = {c.value}: {c.reason}" for c in plan.choices]
    elif cfg.job.expected_persons is None and cfg.grid.boundary is not None and cfg.adaptive is None:
        lines.append("  tip: this job shapes its grid by hand; leave resolution and window out, or "
                     "declare [job] expected_persons (a public figure), and privmob picks a window "
                     "and cell sizes the key group can bear (ADR 0008)")
    if cfg.adaptive is None:
        lines += [
            f"  grid: H3 resolution {cfg.grid.resolution}, {cfg.n_windows} windows of "
            f"{cfg.grid.window}",
            f"  bounding: ≤ {p.max_cells_per_window} cell(s) per window, ≤ "
            f"{plan.sensitivity.windows} window(s) per person → L1 = {s['sensitivity_l1']}, "
            f"L2 = {s['sensitivity_l2']:.3f}",
        ]
    else:
        lines += _adaptive_lines(plan)
    if plan.noise.mechanism == "laplace":
        lines.append(
            f"  mechanism: discrete Laplace (OpenDP), scale {s['noise_scale']:.4g}, "
            + ("pure " if plan.public_keys else "")
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
    if cfg.adaptive is not None:
        lines.append(
            f"  keys: public once drawn — the partition's cells × {cfg.n_windows} window(s), all "
            "noised; the threshold is set for that many keys"
        )
    elif plan.public_keys:
        assert plan.boundary is not None
        lines.append(
            f"  keys: public — {s['key_cells']:,} cells covering {plan.boundary.path.name} × "
            f"{cfg.n_windows} windows = {s['n_keys']:,} keys, all noised (empty ones too;"
            " those far below the threshold by exact sparse sampling, ADR 0005)"
        )
    else:
        lines.append(
            f"  keys: data-dependent, selected by OpenDP's noise threshold "
            f"(δ = {plan.threshold_delta:.3g} spent on selection)"
        )
    spur = s["spurious_rate"]
    lines.append(
        f"  suppression: publish noisy counts ≥ {s['release_threshold']} "
        f"(min_count {p.min_count}, a key of {p.min_count - 1} published ≤ "
        f"{p.max_below_min_rate:.0%} of the time; noise alone passes an empty key with p = {spur:.2e}"
        + (f", ≈ {s['expected_spurious_cells']:.1f} spurious cells expected)"
           if s["expected_spurious_cells"] is not None else ")")
    )
    lines.append(
        f"  detectability: a cell with {s['count_released_50pct']} persons is published "
        f"half the time; with {s['count_released_95pct']} persons, 95% of the time"
    )
    fc, fspec = cfg.flows, plan.specs.flows
    if fc is not None and fspec is not None:
        fnoise = fspec.noise
        units = "districts" if fc.units == "boundary" else f"H3 res-{fc.resolution} cells"
        lines.append(
            f"  flows: trips between stays (≥ {fc.stay_min_duration} within {fc.stay_radius_m:g} m) "
            f"by {units}, {fc.window} windows; ≤ {fc.max_trips_per_window} trip(s) per window, "
            f"≤ {fnoise.sensitivity.windows} window(s) per person; {fnoise.mechanism} noise std "
            f"{fnoise.std:.1f} (±{fnoise.ci_halfwidth(0.95)} at 95%); publish ≥ {fspec.threshold}; "
            f"ε = {fc.epsilon:g} of the total"
        )
    lines.append("  budget: this release spends " + plan.cost.describe())
    b = plan.budget_config()
    lines.append(
        f"  ledger: charges {b.ledger}"
        + ("" if cfg.budget is not None else " (no [budget]: the default ledger, $PRIVMOB_LEDGER)")
        + f"; caps {plan.budget().describe()} per day bind once declared there"
    )
    return "\n".join(lines)


def _adaptive_lines(plan: Plan) -> list[str]:
    """How the adaptive partition is drawn and what each person may contribute."""
    cfg, a, part = plan.config, plan.config.adaptive, plan.specs.partition
    assert a is not None
    assert part is not None
    tree = plan.tree_params
    roots = part.n_keys or 0
    return [
        f"  grid: adaptive H3 — {roots:,} cells at resolution {a.min_resolution} covering the "
        f"boundary, each split into its 7 children down to resolution {cfg.grid.resolution} only "
        f"where the noisy count of persons supports it (PrivTree, ADR 0007); {cfg.n_windows} "
        f"window(s) of {cfg.grid.window}",
        f"  partition: ε = {float(part.cost.epsilon):g} ({a.tree_share:.0%} of ε), pure and "
        f"independent of depth; discrete Laplace scale {tree.lam:.3g}, bias {tree.delta} "
        f"per level, split above {part.threshold} persons ({a.cells_per_person} cell(s) per "
        "person, those of most dwell)",
        f"  bounding: ≤ {a.max_pairs} (cell, window) pair(s) per person over the period, most "
        f"dwell first → L1 = {a.max_pairs}, L2 = {math.sqrt(a.max_pairs):.3f}",
        *([f"  levels: res {', '.join(str(r) for r in plan.specs.levels)} — each the sum of its "
           f"cells' counts (person-cell pairs), ε = {cfg.grid.parent_epsilon:g} each, made "
           "consistent with the cells (least squares, Hay et al. 2010; non-negative, whole "
           "numbers): every parent equals the sum of its children"] if plan.specs.levels else []),
    ]
