"""Defaults a release can bear, chosen from public parameters only (docs/adr/0008).

A job that declares how many key-group persons it expects (``[job] expected_persons``, a
public figure such as a case-management total — never read from the data) and a boundary
gets, for every setting it leaves out:

* **window** — the longest window that keeps counts above the noise: a few thousand
  persons spread over 24 hourly windows leave every (cell, hour) too thin to publish
  (GeoLife, 1,555 persons: recall 0 at 1 h, 0.77 at 1 d with the partition below);
* **an adaptive partition** (``[adaptive]``, PrivTree over H3): fine cells where people
  are, coarse ones elsewhere, so a small group still yields publishable cells;
* **max_pairs** — the cap on each person's (cell, window) pairs, growing with the number
  of windows (a person is seen in a few of them, in one or two cells each);
* **mechanism** — whichever of discrete Laplace and Gaussian needs the lower release
  threshold for the table (Laplace for the small sensitivities of a daily release).

Each choice depends on ε, the period, the boundary and the declared population only, so
choosing spends nothing; :class:`Choice` records what was picked and why, for explain().
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from privmob.config import AdaptiveConfig, JobConfig
from privmob.privacy.mechanism import Sensitivity, calibrate
from privmob.privacy.tablespec import public_threshold

__all__ = ["Choice", "choose", "window_for"]

#: (fewer than this many expected persons, window): the longest window first.
WINDOW_STEPS: tuple[tuple[int, str], ...] = ((4_000, "1d"), (12_000, "6h"), (40_000, "3h"))


@dataclass(frozen=True)
class Choice:
    """One setting plan() chose, and the public reason for it."""

    setting: str
    value: Any
    reason: str


def window_for(expected_persons: int) -> str:
    """The window for a declared population (ADR 0008's steps; 1 h from 40,000 persons)."""
    return next((w for limit, w in WINDOW_STEPS if expected_persons < limit), "1h")


def max_pairs_for(n_windows: int) -> int:
    """Pairs per person: 6 for a daily release, one more for every two further windows, at
    most 16. GeoLife, ε = 1, 1,555 persons a day (docs/utility.md): the goal (recall@20 ≥
    0.5, spurious ≤ 5 %, MRE ≤ 0.3) met in 33 of 35 releases with 6 against 29 of 37 with 5
    and none of 5 with 4 — the remaining error is bounding loss (21 %, 27 %, 43 % of
    person-cells), not noise; at ~500 persons 6 published no more spurious cells than 5."""
    return min(16, 6 + (n_windows - 1) // 2)


def _threshold(config: JobConfig, mechanism: Literal["laplace", "gaussian"], l1: int, n_keys: int) -> int:
    privacy = dataclasses.replace(config.privacy, mechanism=mechanism, rho=None)
    return public_threshold(calibrate(privacy, Sensitivity(l1, 1)), privacy, n_keys)


def choose(config: JobConfig, n_roots: int) -> tuple[JobConfig, tuple[Choice, ...]]:
    """``config`` with the settings it leaves out chosen from public parameters.

    Nothing changes unless the job declares ``expected_persons`` and a boundary;
    ``n_roots`` is the number of the boundary's cells at the partition's coarsest
    resolution (public). Returns the completed config and the choices made.
    """
    persons = config.job.expected_persons
    if persons is None or config.grid.boundary is None:
        return config, ()
    given, choices = config.given, []
    overrides: dict[str, Any] = {}
    if "grid.window" not in given:
        window = window_for(persons)
        overrides["grid__window"] = window
        choices.append(Choice("window", window, f"{persons:,} expected persons: the longest window "
                                                "that keeps cells publishable (ADR 0008)"))
    cfg = config.with_overrides(**overrides) if overrides else config
    if "adaptive" not in given and not cfg.grid.parent_resolutions:
        pairs = max_pairs_for(cfg.n_windows)
        cfg = dataclasses.replace(cfg, adaptive=AdaptiveConfig(max_pairs=pairs))
        choices.append(Choice("adaptive", True, "a boundary and a declared population: cells split "
                                                "only where the persons support it (PrivTree)"))
        choices.append(Choice("max_pairs", pairs, f"{cfg.n_windows} window(s): a person is seen in a "
                                                  "few of them, in one or two cells each"))
    if "privacy.mechanism" not in given and "privacy.rho" not in given:
        l1 = cfg.adaptive.max_pairs if cfg.adaptive is not None else (
            cfg.privacy.max_cells_per_window * min(cfg.privacy.max_windows, cfg.n_windows))
        n_keys = n_roots * cfg.n_windows
        mechanisms: tuple[Literal["laplace", "gaussian"], ...] = ("laplace", "gaussian")
        thresholds = {m: _threshold(cfg, m, l1, n_keys) for m in mechanisms}
        best = min(thresholds, key=lambda m: (thresholds[m], m != "laplace"))
        if best != cfg.privacy.mechanism:
            cfg = cfg.with_overrides(privacy__mechanism=best)
        choices.append(Choice("mechanism", best, f"release threshold {thresholds['laplace']} (Laplace) "
                                                 f"vs {thresholds['gaussian']} (Gaussian) at L1 = {l1}"))
    # what plan() chose is not what the job stated: keep ``given`` as the job had it
    return dataclasses.replace(cfg, given=config.given), tuple(choices)
