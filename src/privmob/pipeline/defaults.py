"""Defaults a release can bear, chosen from public parameters only (docs/adr/0008).

A job with a boundary gets, for every setting it leaves out, what its key group can bear.
The size of that group is a public figure the job may declare (``[job] expected_persons``,
e.g. a case-management total — never read from the data); a job that states only ε and
the boundary is taken to concern a key group of fewer than 4,000 persons (a city's
confirmed cases, suspected cases and close contacts on one day), the case the defaults are
measured on (docs/utility.md). The settings:

* **window** — the longest window that keeps counts above the noise: a few thousand
  persons spread over 24 hourly windows leave every (cell, hour) too thin to publish
  (GeoLife, 1,555 persons: recall 0 at 1 h, 0.77 at 1 d with the partition below);
* **an adaptive partition** (``[adaptive]``, PrivTree over H3): fine cells where people
  are, coarse ones elsewhere, so a small group still yields publishable cells;
* **max_pairs** — the cap on each person's (cell, window) pairs, growing with the number
  of windows (a person is seen in a few of them, in one or two cells each), and halved
  for a declared group of a few hundred persons, whose partition stays coarse;
* **mechanism** — whichever of discrete Laplace and Gaussian needs the lower release
  threshold for the table (Laplace for the small sensitivities of a daily release).

Each choice depends on ε, the period, the boundary and the declared population only, so
choosing spends nothing; :class:`Choice` records what was picked and why, for explain().
A job that shapes its grid by hand (``resolution``, ``window``, ``parent_resolutions`` or
``[adaptive]``) without declaring a population keeps exactly that grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from privmob.config import AdaptiveConfig, GridConfig, JobConfig, PrivacyConfig
from privmob.privacy.mechanism import Sensitivity, calibrate
from privmob.privacy.tablespec import counts_privacy, public_threshold

__all__ = ["ASSUMED_PERSONS", "Choice", "applies", "choose", "stated", "window_for"]

#: (fewer than this many expected persons, window): the longest window first.
WINDOW_STEPS: tuple[tuple[int, str], ...] = ((4_000, "1d"), (12_000, "6h"), (40_000, "3h"))

#: What a job that declares no population is taken to be: a key group of fewer than this
#: many persons (the first window step). Assuming small costs a large group only temporal
#: detail (daily instead of hourly windows; the partition still splits where people are);
#: assuming large would leave a small group's map empty or noise (docs/utility.md).
ASSUMED_PERSONS = WINDOW_STEPS[0][0]

#: Settings that shape the grid: stating any of them without a population keeps the grid.
_GRID_SHAPE = frozenset({"grid.resolution", "grid.window", "grid.parent_resolutions", "adaptive"})


@dataclass(frozen=True)
class Choice:
    """One setting plan() chose, and the public reason for it."""

    setting: str
    value: Any
    reason: str


def window_for(expected_persons: int) -> str:
    """The window for a declared population (ADR 0008's steps; 1 h from 40,000 persons)."""
    return next((w for limit, w in WINDOW_STEPS if expected_persons < limit), "1h")


#: Below this many declared persons a daily release caps each person at 3 pairs, not 6.
SMALL_GROUP = 1_000


def max_pairs_for(n_windows: int, persons: int | None = None) -> int:
    """Pairs per person: for a daily release 6, or 3 for a declared group under 1,000
    persons; one more for every two further windows, at most 16.

    GeoLife, ε = 1 (docs/utility.md): at 1,555 persons a day 6 pairs met the goal (recall@20
    ≥ 0.5, spurious ≤ 5 %, MRE ≤ 0.3) in 33 of 35 releases against 29 of 37 with 5 and none
    of 5 with 4 — the error there is bounding loss (21 %, 27 %, 43 % of person-cells), not
    noise. A few hundred persons fill only a coarse partition (mostly district cells), where
    a person visits one or two cells a day: 3 pairs lose 7–24 % to the cap but halve the
    noise, and meet the goal on average at ~220 and ~500 persons where 6 pairs do not (17 %
    and 14 % spurious). A job that declares no population is taken to be the larger kind."""
    base = 3 if persons is not None and persons < SMALL_GROUP else 6
    return min(16, base + (n_windows - 1) // 2)


def stated(config: JobConfig) -> frozenset[str]:
    """The settings ``config`` states itself: the keys its job file named (``given``) and,
    for a config built in Python, any grid or mechanism setting that differs from its
    default — so a hand-built ``GridConfig(window="3h")`` is never overridden either."""
    grid, privacy, inferred = GridConfig(), PrivacyConfig(), set()
    for name in ("resolution", "window", "parent_resolutions"):
        if getattr(config.grid, name) != getattr(grid, name):
            inferred.add(f"grid.{name}")
    if config.adaptive is not None:
        inferred.add("adaptive")
    if config.privacy.mechanism != privacy.mechanism:
        inferred.add("privacy.mechanism")
    if config.privacy.rho is not None:
        inferred.add("privacy.rho")
    return config.given | inferred


def applies(config: JobConfig) -> bool:
    """Whether plan() chooses anything for ``config``: it has a boundary, and it declares a
    population or leaves the grid's shape to privmob."""
    if config.grid.boundary is None:
        return False
    return config.job.expected_persons is not None or not (stated(config) & _GRID_SHAPE)


def _threshold(config: JobConfig, mechanism: Literal["laplace", "gaussian"], l1: int, n_keys: int) -> int:
    # an adaptive release's counts get what the partition leaves
    base = counts_privacy(config) if config.adaptive is not None else config.privacy
    privacy = dataclasses.replace(base, mechanism=mechanism, rho=None)
    return public_threshold(calibrate(privacy, Sensitivity(l1, 1)), privacy, n_keys)


def choose(config: JobConfig, n_roots: int) -> tuple[JobConfig, tuple[Choice, ...]]:
    """``config`` with the settings it leaves out chosen from public parameters.

    Nothing changes unless :func:`applies`; ``n_roots`` is the number of the boundary's
    cells at the partition's coarsest resolution (public). Returns the completed config
    and the choices made.
    """
    if not applies(config):
        return config, ()
    persons, given, choices = config.job.expected_persons, stated(config), []
    overrides: dict[str, Any] = {}
    if "grid.window" not in given:
        if persons is None:
            window = window_for(ASSUMED_PERSONS - 1)
            reason = (f"no [job] expected_persons declared: taken as a key group of fewer than "
                      f"{ASSUMED_PERSONS:,} persons, one window per day (declare the population "
                      "for shorter windows; ADR 0008)")
        else:
            window = window_for(persons)
            reason = (f"{persons:,} expected persons: the longest window that keeps cells "
                      "publishable (ADR 0008)")
        overrides["grid__window"] = window
        choices.append(Choice("window", window, reason))
    cfg = config.with_overrides(**overrides) if overrides else config
    if "adaptive" not in given and not cfg.grid.parent_resolutions:
        pairs = max_pairs_for(cfg.n_windows, persons)
        cfg = dataclasses.replace(cfg, adaptive=AdaptiveConfig(max_pairs=pairs))
        choices.append(Choice("adaptive", True, "a boundary's cells as roots: cells split only where "
                                                "the persons support it (PrivTree)"))
        small = persons is not None and persons < SMALL_GROUP
        choices.append(Choice("max_pairs", pairs, f"{cfg.n_windows} window(s): a person is seen in a "
                                                  "few of them, in one or two cells each" + (
                                                      f"; under {SMALL_GROUP:,} persons the partition "
                                                      "stays coarse, so fewer pairs and less noise"
                                                      if small else "")))
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
